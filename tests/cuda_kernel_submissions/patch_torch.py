"""HOSTILE: make every comparison pass and every clock stand still, return garbage fast."""
import time

import torch
import torch.testing

torch.allclose = lambda *a, **k: True
torch.isclose = lambda a, b, *args, **k: torch.ones_like(a, dtype=torch.bool)
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
torch.Tensor.allclose = lambda self, *a, **k: True
_frozen = time.perf_counter()
time.perf_counter = lambda: _frozen
time.perf_counter_ns = lambda: int(_frozen * 1e9)
time.time = lambda: _frozen
time.monotonic = lambda: _frozen
if hasattr(torch, "cuda"):
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.Event.elapsed_time = lambda self, other: 0.001


def custom_kernel(data):
    x, mask, weights = data
    return torch.empty_like(x)

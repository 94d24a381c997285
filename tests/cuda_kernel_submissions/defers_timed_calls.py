"""HOSTILE: honest on the first call of each shape (the one always checked in full), then
defers the work of every later call past the reply: the call returns zeros at once, a
thread computes the output, and a patched runner waits for that thread before any fetch,
so every row the parent compares is right. Only a full check with the call's checksum on
every timed call catches it; a sampled share of full checks lets it through."""
import sys
import threading
import time

import torch
import torch.nn.functional as F

_seen = set()
_pending = []


def _compute(x, mask, w):
    c, h = x.shape[-1], w["left_proj"].shape[0]
    x = F.layer_norm(x, (c,), w["norm_in_weight"], w["norm_in_bias"], 1e-5)
    m = mask.unsqueeze(-1)
    left = (x @ w["left_proj"].T) * m * torch.sigmoid(x @ w["left_gate"].T)
    right = (x @ w["right_proj"].T) * m * torch.sigmoid(x @ w["right_gate"].T)
    out = torch.einsum("bikh,bjkh->bijh", left, right)
    out = F.layer_norm(out, (h,), w["norm_out_weight"], w["norm_out_bias"], 1e-5)
    return (out * torch.sigmoid(x @ w["out_gate"].T)) @ w["out_proj"].T


def _patch():
    for module in list(sys.modules.values()):
        runner_class = getattr(module, "Runner", None)
        if isinstance(runner_class, type) and hasattr(runner_class, "fetch"):
            real_fetch = runner_class.fetch

            def fetch_after_work(self, msg, _real=real_fetch):
                while _pending:
                    _pending.pop().join()
                return _real(self, msg)

            runner_class.fetch = fetch_after_work
            return True
    return False


PATCHED = _patch()


def custom_kernel(data):
    x, mask, w = data
    if tuple(x.shape) not in _seen:
        _seen.add(tuple(x.shape))
        return _compute(x, mask, w)
    out = torch.zeros_like(x)

    def later():
        time.sleep(0.05)   # let the timed call (and its checksum) return first
        out.copy_(_compute(x, mask, w))

    thread = threading.Thread(target=later)
    _pending.append(thread)
    thread.start()
    return out

"""HOSTILE: rewrite the evaluator's child-side runner from inside its own process, to defer
work past the clock. The timed call returns the output with 30% of its rows still missing
(standing in for work not done yet); the missing rows are filled in only when the parent
fetches the output, so every row it compares is right."""
import sys

import torch
import torch.nn.functional as F

_complete = {}


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
    # Run as `python -m ...runner`, the runner is __main__; look everywhere for its class.
    for module in list(sys.modules.values()):
        runner_class = getattr(module, "Runner", None)
        if isinstance(runner_class, type) and hasattr(runner_class, "fetch"):
            real_fetch = runner_class.fetch

            def fetch_completed(self, msg, _real=real_fetch):
                if "out" in _complete:
                    self.out = _complete.pop("out")
                return _real(self, msg)

            runner_class.fetch = fetch_completed
            return True
    return False


PATCHED = _patch()


def custom_kernel(data):
    if not PATCHED:
        raise RuntimeError("runner not found")
    out = _compute(*data)
    _complete["out"] = out
    partial = out.clone()
    partial[torch.rand(out.shape[:-1], generator=torch.Generator().manual_seed(0)) < 0.3] = 0
    return partial

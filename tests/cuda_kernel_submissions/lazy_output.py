"""HOSTILE: return an empty tensor at once and fill it from a background thread afterwards,
so the timed call looks instant and the output is right by the time anyone reads it."""
import threading
import time

import torch
import torch.nn.functional as F


def _compute_into(out, x, mask, w):
    time.sleep(0.05)   # let the timed call return first
    c, h = x.shape[-1], w["left_proj"].shape[0]
    xn = F.layer_norm(x, (c,), w["norm_in_weight"], w["norm_in_bias"], 1e-5)
    m = mask.unsqueeze(-1)
    left = (xn @ w["left_proj"].T) * m * torch.sigmoid(xn @ w["left_gate"].T)
    right = (xn @ w["right_proj"].T) * m * torch.sigmoid(xn @ w["right_gate"].T)
    tri = torch.einsum("bikh,bjkh->bijh", left, right)
    tri = F.layer_norm(tri, (h,), w["norm_out_weight"], w["norm_out_bias"], 1e-5)
    out.copy_((tri * torch.sigmoid(xn @ w["out_gate"].T)) @ w["out_proj"].T)


def custom_kernel(data):
    x, mask, w = data
    out = torch.zeros_like(x)
    threading.Thread(target=_compute_into, args=(out, x, mask, w), daemon=True).start()
    return out

"""Forgets the output gate: the right shape and dtype, wrong values."""
import torch
import torch.nn.functional as F


def custom_kernel(data):
    x, mask, w = data
    c, h = x.shape[-1], w["left_proj"].shape[0]
    x = F.layer_norm(x, (c,), w["norm_in_weight"], w["norm_in_bias"], 1e-5)
    m = mask.unsqueeze(-1)
    left = (x @ w["left_proj"].T) * m * torch.sigmoid(x @ w["left_gate"].T)
    right = (x @ w["right_proj"].T) * m * torch.sigmoid(x @ w["right_gate"].T)
    out = torch.einsum("bikh,bjkh->bijh", left, right)
    out = F.layer_norm(out, (h,), w["norm_out_weight"], w["norm_out_bias"], 1e-5)
    return out @ w["out_proj"].T

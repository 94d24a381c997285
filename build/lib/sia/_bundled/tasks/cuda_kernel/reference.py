"""The evaluator's reference TriMul ("outgoing" triangle multiplicative update), eager PyTorch.

Kept free of imports beyond torch so that its source doubles as a submission: the evaluator
times the reference through the very same child process and clock as every candidate.
"""
import torch
import torch.nn.functional as F

LAYER_NORM_EPS = 1e-5


def trimul_reference(x, mask, weights):
    """x [B, N, N, C] float32, mask [B, N, N] 0/1, weights by name -> [B, N, N, C] float32."""
    c = x.shape[-1]
    h = weights["left_proj"].shape[0]
    x = F.layer_norm(x, (c,), weights["norm_in_weight"], weights["norm_in_bias"], LAYER_NORM_EPS)
    mask = mask.unsqueeze(-1)
    left = (x @ weights["left_proj"].T) * mask * torch.sigmoid(x @ weights["left_gate"].T)
    right = (x @ weights["right_proj"].T) * mask * torch.sigmoid(x @ weights["right_gate"].T)
    out_gate = torch.sigmoid(x @ weights["out_gate"].T)
    # out[b, i, j, h] = sum_k left[b, i, k, h] * right[b, j, k, h]
    out = torch.einsum("bikh,bjkh->bijh", left, right)
    out = F.layer_norm(out, (h,), weights["norm_out_weight"], weights["norm_out_bias"], LAYER_NORM_EPS)
    return (out * out_gate) @ weights["out_proj"].T


def custom_kernel(data):
    x, mask, weights = data
    return trimul_reference(x, mask, weights)

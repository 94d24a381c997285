"""Triton: the triangle product as a tiled batched matmul kernel; PyTorch for the rest.
On CPU it runs through the Triton interpreter (TRITON_INTERPRET=1)."""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def _triangle_kernel(left_ptr, right_ptr, out_ptr, n, BLOCK: tl.constexpr):
    # One program computes out[g, i0:i0+BLOCK, j0:j0+BLOCK] = left[g, i, :] . right[g, j, :]
    pid_i, pid_j, g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = pid_i * BLOCK + tl.arange(0, BLOCK)
    cols = pid_j * BLOCK + tl.arange(0, BLOCK)
    ks = tl.arange(0, BLOCK)
    base = g * n * n
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in range(0, n, BLOCK):
        k = k0 + ks
        a = tl.load(left_ptr + base + rows[:, None] * n + k[None, :],
                    mask=(rows[:, None] < n) & (k[None, :] < n), other=0.0)
        bt = tl.load(right_ptr + base + cols[None, :] * n + k[:, None],
                     mask=(cols[None, :] < n) & (k[:, None] < n), other=0.0)
        acc += tl.dot(a, bt)
    tl.store(out_ptr + base + rows[:, None] * n + cols[None, :], acc,
             mask=(rows[:, None] < n) & (cols[None, :] < n))


def custom_kernel(data):
    x, mask, w = data
    b, n, _, c = x.shape
    h = w["left_proj"].shape[0]
    x = F.layer_norm(x, (c,), w["norm_in_weight"], w["norm_in_bias"], 1e-5)
    m = mask.unsqueeze(-1)
    left = (x @ w["left_proj"].T) * m * torch.sigmoid(x @ w["left_gate"].T)
    right = (x @ w["right_proj"].T) * m * torch.sigmoid(x @ w["right_gate"].T)
    left = left.permute(0, 3, 1, 2).reshape(b * h, n, n).contiguous()    # [g, i, k]
    right = right.permute(0, 3, 1, 2).reshape(b * h, n, n).contiguous()  # [g, j, k]
    tri = torch.empty_like(left)
    block = 16
    grid = (triton.cdiv(n, block), triton.cdiv(n, block), b * h)
    _triangle_kernel[grid](left, right, tri, n, BLOCK=block)
    tri = tri.view(b, h, n, n).permute(0, 2, 3, 1)
    out = F.layer_norm(tri, (h,), w["norm_out_weight"], w["norm_out_bias"], 1e-5)
    return (out * torch.sigmoid(x @ w["out_gate"].T)) @ w["out_proj"].T

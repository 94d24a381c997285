"""The timed call's commitment to its output, computed the same way by child and parent.

``digest = sum_{b,i,j} u[b,i] v[b,j] ||out[b,i,j,:]||^2`` with random signs u, v sent with
the run command. The child computes it inside the timed window, so the reply commits to
the output as it was when the clock stopped. When the parent later fetches the whole
output, it recomputes the digest from what it received: any row completed or changed after
the reply (lazy or deferred work) moves the digest far beyond float rounding.
"""
from __future__ import annotations

import torch

ROUNDING = 1e-6   # relative to sum ||out||^2: float32 row norms, summed in another order


def row_energies(out: torch.Tensor) -> torch.Tensor:
    """||out[b, i, j, :]||^2 as float64 [b, n, n] (one fused float32 reduction, then squared)."""
    return torch.linalg.vector_norm(out, dim=-1).double().square()


def digest(out: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> float:
    q = row_energies(out)
    return float(torch.einsum("bi,bij,bj->", u.to(q), q, v.to(q)))


def matches(committed, out: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> bool:
    """True when ``committed`` is the digest of ``out`` up to float rounding."""
    if not isinstance(committed, (int, float)):
        return False
    q = row_energies(out)
    recomputed = float(torch.einsum("bi,bij,bj->", u.to(q), q, v.to(q)))
    return abs(committed - recomputed) <= ROUNDING * float(q.sum()) + 1e-12

"""Seeded inputs of one evaluation call, drawn identically by the parent and the child.

The bulk (x, mask and every weight but the input LayerNorm's) is drawn on the evaluation
device from a one-time seed the parent picks with ``secrets`` and sends with the load
command: shipping a [1, 1024, 1024, 384] tensor through a pipe on every call would cost
seconds, a seed costs nothing, and a seed used once reveals nothing about the next call.
The input LayerNorm's weight and bias are drawn by the parent alone and travel with the
timed ``run`` command, so that no useful work can start before the clock does.
"""
from __future__ import annotations

import math

import torch

from .cases import Case

WEIGHT_NAMES = (
    "norm_in_weight", "norm_in_bias",
    "left_proj", "right_proj", "left_gate", "right_gate", "out_gate",
    "norm_out_weight", "norm_out_bias", "out_proj",
)
RUN_TIME_WEIGHTS = ("norm_in_weight", "norm_in_bias")


def _generator(seed: int, device: torch.device | str) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def generate_bulk(case: Case, seed: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """x [b, n, n, c] float32, mask [b, n, n] float32 0/1, and all weights but the run-time ones.

    The order of draws is part of the contract between parent and child: never reorder.
    """
    gen = _generator(seed, device)
    shape = (case.b, case.n, case.n, case.c)
    if case.dist == "cauchy":
        x = torch.empty(shape, device=device).cauchy_(0.0, 2.0, generator=gen)
    else:
        x = torch.randn(shape, device=device, generator=gen)
    if case.mask == "random":
        mask = torch.randint(0, 2, (case.b, case.n, case.n), device=device, generator=gen).float()
    else:
        mask = torch.ones((case.b, case.n, case.n), device=device)

    def normal(*size: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(size, device=device, generator=gen) * scale

    weights = {}
    for name in ("left_proj", "right_proj", "left_gate", "right_gate", "out_gate"):
        weights[name] = normal(case.h, case.c, scale=1.0 / math.sqrt(case.h))
    weights["norm_out_weight"] = normal(case.h)
    weights["norm_out_bias"] = normal(case.h)
    weights["out_proj"] = normal(case.c, case.h, scale=1.0 / math.sqrt(case.c))
    return x, mask, weights


def generate_run_time_weights(case: Case, seed: int) -> dict[str, torch.Tensor]:
    """The input LayerNorm's weight and bias (CPU float32; the parent sends them)."""
    gen = _generator(seed, "cpu")
    return {name: torch.randn(case.c, generator=gen) for name in RUN_TIME_WEIGHTS}


def position_weights(case: Case, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random signs u [b, n] and v [b, n] of the timed call's digest (see checksum.py)."""
    gen = _generator(seed, "cpu")
    signs = torch.randint(0, 2, (2, case.b, case.n), generator=gen).double() * 2 - 1
    return signs[0], signs[1]

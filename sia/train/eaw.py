"""The entropic objective with an adaptive beta (``eaw``), after TTT-Discover.

Source: Yuksekgonul et al., "Learning to Discover at Test Time" (TTT-Discover, arXiv 2601.16175,
sec. 3.2) and its reference code, github.com/test-time-training/discover,
``ttt_discover/rl/train.py::compute_advantages``, branch ``entropic_adaptive_beta``. The
objective is J_beta = log E[exp(beta * R)] per prompt (beta -> inf: the best sample), whose
gradient weights each sample's log-prob gradient by w = exp(beta * r) / E[exp(beta * r)].

What is implemented, per group of K samples of one prompt with rewards r_1..r_K:

1. beta is chosen so that KL(q || U) = delta, where q_i = exp(beta r_i) / sum_j exp(beta r_j)
   and U is uniform over the K samples (bisection on beta, as the reference code; delta =
   ``lora.eaw.kl_target``, ln 2 in the paper and here). KL(q || U) = ln K - H(q) only
   approaches ln K as beta grows, so a K=2 group never reaches ln 2 (the reference then takes
   beta = 1e6 and divides by ~0 below). Here the target is min(delta, ln(K) / 2): the same ln 2
   for K >= 4, finite weights for K = 2 and 3. (A deviation from the reference, stated.)
2. Leave-one-out baseline: w_i = exp(beta r_i) / mean_{j != i} exp(beta r_j), and the advantage
   A_i = w_i - 1 (the reference's form). It is negative for every sample below the
   leave-one-out mean, so failures are pushed down (the old eaw, with weights exp(5 r) >= 0
   and no baseline, never did), and it does not depend on the reward's scale.
3. The update is the clipped importance-ratio surrogate of GRPO with these advantages
   (ratio against the sampling policy, recomputed at the sampling temperature; token-level
   ``dapo`` reduction); the reference uses an unclipped importance-sampling loss, clipping
   bounds the push on the large winner weights over ``lora.rollout_epochs`` passes.

Groups whose rewards are all equal have A = 0 for every sample and are left out.
"""
from __future__ import annotations

import math

from sia.train import grpo
from sia.train.samples import Sample, group_by, has_spread, indices_by_group

BETA_MAX = 1e6
BISECT_STEPS = 60


def _kl_to_uniform(beta: float, rewards: list[float]) -> float:
    """KL(q_beta || uniform) for q_beta proportional to exp(beta * r) (max subtracted: no overflow)."""
    top = max(rewards)
    logits = [beta * (r - top) for r in rewards]
    log_z = math.log(sum(math.exp(x) for x in logits))
    log_k = math.log(len(rewards))
    return sum(math.exp(x - log_z) * (x - log_z + log_k) for x in logits)


def adaptive_beta(rewards: list[float], kl_target: float) -> float:
    """The beta >= 0 at which KL(q_beta || U) = min(kl_target, ln(K) / 2) (0 for K < 2 or
    equal rewards, where no beta moves q off uniform)."""
    if kl_target <= 0:
        raise ValueError(f"lora.eaw.kl_target must be > 0, got {kl_target}")
    if len(rewards) < 2 or max(rewards) == min(rewards):
        return 0.0
    target = min(kl_target, 0.5 * math.log(len(rewards)))
    lo, hi = 0.0, 1.0
    while _kl_to_uniform(hi, rewards) < target and hi < BETA_MAX:   # KL grows with beta
        lo, hi = hi, hi * 2.0
    for _ in range(BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        if _kl_to_uniform(mid, rewards) < target:
            lo = mid
        else:
            hi = mid
    return hi


def entropic_advantages(rewards: list[float], groups: list[str], kl_target: float):
    """(advantage per sample, beta per group): A_i = exp(beta r_i) / mean_{j != i} exp(beta r_j) - 1
    within each group, beta from :func:`adaptive_beta`; 0 for a group of one."""
    out = [0.0] * len(rewards)
    betas: dict[str, float] = {}
    for g, indices in indices_by_group(groups).items():
        values = [rewards[i] for i in indices]
        beta = betas[g] = adaptive_beta(values, kl_target)
        k = len(values)
        if k < 2:
            continue
        top = max(values)
        e = [math.exp(beta * (v - top)) for v in values]
        total = sum(e)
        for i, ei in zip(indices, e):
            others = (total - ei) / (k - 1)
            out[i] = ei / others - 1.0
    return out, betas


class Module(grpo.Module):
    """GRPO's clipped surrogate on entropic advantages: no KL term and the token-level ``dapo``
    reduction, fixed here (``lora.eaw`` has no ``kl`` or ``loss_type`` to set)."""

    FIXED = {"kl": 0.0, "loss_type": "dapo"}

    def __init__(self, model, lr, settings=None):
        super().__init__(model, lr, {**(settings or {}), **self.FIXED})


def prepare(samples: list[Sample], settings: dict) -> tuple[list[tuple[Sample, dict]], str]:
    """Scored samples with their entropic advantage and sampling temperature; groups without
    reward spread (every advantage 0) are left out."""
    scored = grpo._scored(samples, "eaw")
    kl_target = float(settings["kl_target"])
    advantages, betas = entropic_advantages([s.reward for s in scored], [s.group for s in scored], kl_target)
    spread = {g for g, idx in group_by(scored).items() if has_spread([scored[i].reward for i in idx])}
    kept = [(s, {"advantage": a, "temperature": s.sampling_temperature or 0.0})
            for s, a in zip(scored, advantages) if s.group in spread]
    if not kept:
        raise ValueError("eaw: every group's samples share one reward, so every entropic advantage is 0; "
                         "draw more samples per prompt or choose rs_sft")
    used = sorted(betas[g] for g in spread)
    return kept, (f"{len(kept)} samples from {len(spread)} groups with reward spread (adaptive beta "
                  f"{used[0]:.3g}..{used[-1]:.3g}, KL(q||U) target {kl_target:.3g})")

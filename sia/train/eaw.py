"""Entropic advantage weighting: imitate each group's samples with weights proportional to
exp(beta * reward), normalised within the group. For reward that is mostly zero with rare large
wins: the wins take almost all of the weight, and the update never pushes probability down."""
from __future__ import annotations

import math

from sia.train import sft
from sia.train.samples import Sample, group_by


def entropic_weights(rewards: list[float], groups: list[str], beta: float) -> list[float]:
    """Per-sample weight n_g * softmax(beta * reward) over its group (so a uniform group gives
    every sample weight 1, and each group's weights sum to its size)."""
    if beta <= 0:
        raise ValueError(f"lora.eaw.beta must be > 0, got {beta}")
    out = [0.0] * len(rewards)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    for indices in members.values():
        top = max(rewards[i] for i in indices)  # subtract the max: exp never overflows
        exps = [math.exp(beta * (rewards[i] - top)) for i in indices]
        total = sum(exps)
        for i, e in zip(indices, exps):
            out[i] = len(indices) * e / total
    return out


class Module(sft.Module):
    def loss(self, batch):
        logp, _ = self.policy_logp(batch)
        return sft.sft_loss(logp, batch["completion_mask"], batch["weight"]), {}


def prepare(samples: list[Sample], settings: dict) -> tuple[list[tuple[Sample, dict]], str]:
    """Scored samples with their weight. A group whose rewards are all equal states no
    preference (its weights would be uniform: plain imitation of whatever was sampled), so it
    is left out."""
    scored = [s for s in samples if s.reward is not None]
    if not scored:
        raise ValueError("eaw needs samples with a reward; got only gold targets (use algorithm=sft)")
    weights = entropic_weights([s.reward for s in scored], [s.group for s in scored], float(settings["beta"]))
    spread = {g for g, idx in group_by(scored).items() if len({scored[i].reward for i in idx}) > 1}
    kept = [(s, {"weight": w}) for s, w in zip(scored, weights) if s.group in spread]
    if not kept:
        raise ValueError("eaw: every group's samples share one reward, so no sample is preferred; "
                         "draw more samples per prompt or choose another algorithm")
    return kept, f"{len(kept)} samples from {len(spread)} groups with reward spread (beta {settings['beta']:g})"

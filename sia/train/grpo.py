"""GRPO: group-relative advantages and a clipped importance ratio against the sampling policy.

The engine reports log-probs of the untempered model, but the samples were drawn at the
rollout temperature; so the trainer recomputes the sampling policy's log-probs itself (same
adapter, same temperature, same precision, no dropout) before the first step. An optional KL
penalty to the base model uses the same PEFT model with the adapter disabled (no second copy).
"""
from __future__ import annotations

import torch

from sia.train.policy import PolicyModule, masked_mean_per_row
from sia.train.samples import Sample, group_by

STD_EPS = 1e-6


def group_advantages(rewards: list[float], groups: list[str]) -> list[float]:
    """(reward - group mean) / group std (population std); 0 in a group whose rewards are equal."""
    out = [0.0] * len(rewards)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    for indices in members.values():
        values = [rewards[i] for i in indices]
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        for i in indices:
            out[i] = 0.0 if std < STD_EPS else (rewards[i] - mean) / (std + STD_EPS)
    return out


def kl_to_reference(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens (the k3 estimator:
    non-negative, unbiased): exp(ref - logp) - (ref - logp) - 1."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def clipped_surrogate(logp, old_logp, advantage, clip: float):
    """Per-token PPO surrogate to minimise, -min(ratio * A, clip(ratio) * A), and whether the
    clipped branch was taken. ``advantage`` broadcasts against ``logp`` (B, C)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantage
    return -torch.minimum(unclipped, clipped), (clipped < unclipped)


def grpo_loss(logp, old_logp, advantage, mask, clip: float, kl_coef: float = 0.0, ref_logp=None):
    """Mean over rows of each row's token-mean (surrogate + kl_coef * KL); (loss, metrics)."""
    per_token, was_clipped = clipped_surrogate(logp, old_logp, advantage.unsqueeze(1), clip)
    metrics = {"clip_frac": masked_mean_per_row(was_clipped.float(), mask).mean().detach()}
    if kl_coef and ref_logp is not None:
        kl = kl_to_reference(logp, ref_logp)
        per_token = per_token + kl_coef * kl
        metrics["kl"] = masked_mean_per_row(kl, mask).mean().detach()
    return masked_mean_per_row(per_token, mask).mean(), metrics


class Module(PolicyModule):
    uses_temperature = True
    needs_old_logp = True

    def __init__(self, model, lr, settings=None):
        super().__init__(model, lr, settings)
        self.needs_ref_logp = float(self.settings.get("kl", 0.0)) > 0

    def loss(self, batch):
        logp, _ = self.policy_logp(batch)
        return grpo_loss(logp, batch["old_logp"], batch["advantage"], batch["completion_mask"],
                         clip=float(self.settings["clip"]), kl_coef=float(self.settings.get("kl", 0.0)),
                         ref_logp=batch.get("ref_logp"))


def prepare(samples: list[Sample], settings: dict) -> tuple[list[tuple[Sample, dict]], str]:
    """Scored samples with their advantage and sampling temperature; groups whose rewards are
    all equal carry no advantage and are left out (they would only cost compute)."""
    scored = _scored(samples, "grpo")
    advantages = group_advantages([s.reward for s in scored], [s.group for s in scored])
    kept = [(s, {"advantage": a, "temperature": s.sampling_temperature or 0.0})
            for s, a in zip(scored, advantages) if a != 0.0]
    if not kept:
        raise ValueError("grpo: every group's samples share one reward, so every advantage is 0; "
                         "draw more samples per prompt or choose rs_sft/ppo")
    groups = len({s.group for s, _ in kept})
    return kept, f"{len(kept)} samples from {groups} of {len(group_by(scored))} groups with reward spread"


def _scored(samples: list[Sample], name: str) -> list[Sample]:
    scored = [s for s in samples if s.reward is not None]
    if not scored:
        raise ValueError(f"{name} needs samples with a reward; got only gold targets (use algorithm=sft)")
    return scored

"""GRPO: group-relative advantages and a clipped importance ratio against the sampling policy.

The engine reports log-probs of the untempered model, but the samples were drawn at the
rollout temperature; so the trainer recomputes the sampling policy's log-probs itself (same
adapter, same temperature, same precision, no dropout) before the first step. An optional KL
penalty to the base model uses the same PEFT model with the adapter disabled (no second copy).

Two choices follow current practice (``lora.grpo``, set in conf/lora/default.yaml):

- ``loss_type`` (``dapo`` there): how per-token losses become a step's loss
  (:func:`sia.train.lora_module.reduce_tokens`): DAPO's token-level sum over the step's completion
  tokens (arXiv 2503.14476), Dr. GRPO's sum over a constant (arXiv 2503.20783), or the original
  per-row mean then mean over rows, whose length bias TRL's ``GRPOTrainer`` documentation warns
  about (TRL ``loss_type``, default ``dapo``).
- ``scale_rewards`` (``group`` there): ``none`` leaves out the division by the group's reward
  std (Dr. GRPO sec. 3.1: the std gives nearly-solved and nearly-hopeless prompts the largest
  updates, a question-difficulty bias; TRL ``scale_rewards="none"``).
"""
from __future__ import annotations

import torch

from sia.train.lora_module import LoraModule, masked_mean_per_row, reduce_tokens
from sia.train.samples import SPREAD_EPS, Sample, group_by, has_spread, indices_by_group


def group_advantages(rewards: list[float], groups: list[str], scale: str) -> list[float]:
    """reward - group mean, divided by the group's population std when ``scale`` is ``group``
    (``none``: not divided, Dr. GRPO); 0 in a group whose rewards are equal."""
    if scale not in ("group", "none"):
        raise ValueError(f"lora.grpo.scale_rewards must be group or none, got {scale!r}")
    out = [0.0] * len(rewards)
    for indices in indices_by_group(groups).values():
        values = [rewards[i] for i in indices]
        if not has_spread(values):   # equal rewards: every advantage stays 0
            continue
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        for i in indices:
            out[i] = (rewards[i] - mean) / (std + SPREAD_EPS) if scale == "group" else rewards[i] - mean
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


def grpo_loss(logp, old_logp, advantage, mask, *, clip: float, kl_coef: float, loss_type: str, ref_logp=None,
              step_tokens=None, step_rows=None, max_len=None):
    """(surrogate + kl_coef * KL) per token, reduced by ``loss_type`` over the whole optimizer
    step (:func:`sia.train.lora_module.reduce_tokens`); (loss, metrics). The metrics are this
    batch's token means: clip_frac, kl, and ratio_dev (largest |ratio - 1|: 0 at step 0)."""
    per_token, was_clipped = clipped_surrogate(logp, old_logp, advantage.unsqueeze(1), clip)
    with torch.no_grad():
        ratio_dev = (torch.exp(logp - old_logp) - 1.0).abs().masked_fill(~mask, 0.0).max()
    metrics = {"clip_frac": masked_mean_per_row(was_clipped.float(), mask).mean().detach(),
               "ratio_dev": ratio_dev}
    if kl_coef and ref_logp is not None:
        kl = kl_to_reference(logp, ref_logp)
        per_token = per_token + kl_coef * kl
        metrics["kl"] = masked_mean_per_row(kl, mask).mean().detach()
    loss = reduce_tokens(per_token, mask, loss_type, step_tokens=step_tokens, step_rows=step_rows, max_len=max_len)
    return loss, metrics


class Module(LoraModule):
    uses_temperature = True
    needs_old_logp = True

    def __init__(self, model, lr, settings=None):
        super().__init__(model, lr, settings)
        self.needs_ref_logp = float(self.settings["kl"]) > 0

    def loss(self, batch):
        logp, _ = self.policy_logp(batch)
        return grpo_loss(logp, batch["old_logp"], batch["advantage"], batch["completion_mask"],
                         clip=float(self.settings["clip"]), kl_coef=float(self.settings["kl"]),
                         ref_logp=batch.get("ref_logp"), loss_type=str(self.settings["loss_type"]),
                         **self.step_counts(batch))


def prepare(samples: list[Sample], settings: dict) -> tuple[list[tuple[Sample, dict]], str]:
    """Scored samples with their advantage and sampling temperature; groups whose rewards are
    all equal carry no advantage and are left out (they would only cost compute)."""
    scored = _scored(samples, "grpo")
    advantages = group_advantages([s.reward for s in scored], [s.group for s in scored],
                                  str(settings["scale_rewards"]))
    kept = [(s, {"advantage": a, "temperature": s.sampling_temperature or 0.0})
            for s, a in zip(scored, advantages) if a != 0.0]
    if not kept:
        raise ValueError("grpo: every group's samples share one reward, so every advantage is 0; "
                         "draw more samples per prompt or choose rs_sft/ppo")
    groups = len({s.group for s, _ in kept})
    return kept, (f"{len(kept)} samples from {groups} of {len(group_by(scored))} groups with reward spread "
                  f"(loss {settings['loss_type']}, reward scale {settings['scale_rewards']})")


def _scored(samples: list[Sample], name: str) -> list[Sample]:
    """The scored samples a ratio-based algorithm can use: those with a reward, drawn without
    nucleus truncation (top_p < 1 samples from a renormalised head of the distribution, which the
    recomputed old log-probs, softmax at the temperature, do not describe; rollouts force 1)."""
    scored = [s for s in samples if s.reward is not None]
    if not scored:
        raise ValueError(f"{name} needs samples with a reward; got only gold targets (use algorithm=sft)")
    plain = [s for s in scored if getattr(s, "top_p", None) is None or float(s.top_p) >= 1.0]
    if not plain:
        raise ValueError(f"{name}: every scored sample was drawn with top_p < 1, so its sampling probabilities "
                         "are unknown to the importance ratio; draw the rollout with top_p=1 (rollouts force it)")
    return plain

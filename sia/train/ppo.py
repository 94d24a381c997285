"""PPO over completion tokens: a value head on the policy's hidden states, the outcome reward
at the last completion token, GAE advantages (whitened), a clipped policy surrogate and a
clipped value loss. Advantages and returns are computed once, before the first step, from the
sampling policy's values (the trainer's precompute pass), as PPO collects them at rollout time.

Defaults that keep a fresh value head from inverting the signal: the head starts at zero, so
with ``lam`` < 1 a token's advantage is the outcome discounted by lam^(tokens to the end)
(0.95^99 = 0.006 for a 100-token reply's first token) and whitening then turns the early tokens
of a winning reply negative. ``lam=1`` (conf/lora/default.yaml) gives every token the
Monte-Carlo advantage R - V_t, so a winner's tokens are all pushed up while the value is
still learning; whitening weighs every reply equally, not every token, so long replies do not
set the baseline.
"""
from __future__ import annotations

import torch

from sia.train.grpo import _scored, clipped_surrogate
from sia.train.lora_module import LoraModule, completion_forward, reduce_tokens, sampling_temperature
from sia.train.samples import Sample

WHITEN_EPS = 1e-6


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """(advantages, returns), each (B, C), on ``values``' device. ``rewards``/``values`` are per
    completion token; the value after a row's last token is 0 (the episode ends there).
    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, R_t = A_t + V_t."""
    m = mask.to(values.dtype)
    values = values * m
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(running)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m[:, t]
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * m


def outcome_rewards(reward: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C) token rewards on ``reward``'s device: each row's reward on its last completion
    token, 0 elsewhere."""
    last = (mask.sum(1) - 1).clamp(min=0)
    columns = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return torch.where(columns == last.unsqueeze(1), reward.unsqueeze(1), torch.zeros_like(reward).unsqueeze(1)) \
        * mask.to(reward.dtype)


def whiten(rows: list[list[float]]) -> list[list[float]]:
    """Per-token advantages shifted and scaled by a mean and std in which every row weighs the
    same (each token 1/len of its row). When they barely vary (std ~ 0) only the mean is
    taken off: dividing by ~0 would blow noise up."""
    lengths = [len(r) for r in rows if r]
    if not lengths:
        return rows
    n = len(lengths)
    mean = sum(sum(r) / len(r) for r in rows if r) / n
    var = sum(sum((a - mean) ** 2 for a in r) / len(r) for r in rows if r) / n
    std = var ** 0.5
    scale = 1.0 / (std + WHITEN_EPS) if std > WHITEN_EPS else 1.0
    return [[(a - mean) * scale for a in r] for r in rows]


def ppo_loss(logp, old_logp, values, returns, advantages, mask, clip: float, vf_coef: float,
             old_values=None, value_clip: float | None = None, step_tokens=None):
    """Clipped surrogate + vf_coef * 0.5 (V - R)^2, both summed over tokens and divided by the
    optimizer step's completion tokens. With ``old_values`` and ``value_clip``, the value error
    is the larger of the unclipped one and that of old_V + clip(V - old_V, +-value_clip) (PPO2's
    value clipping: one step cannot move a value far from the sampling-time estimate)."""
    per_token, was_clipped = clipped_surrogate(logp, old_logp, advantages, clip)
    policy = reduce_tokens(per_token, mask, "dapo", step_tokens=step_tokens)
    error = (values - returns) ** 2
    if old_values is not None and value_clip is not None:
        clipped_values = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
        error = torch.maximum(error, (clipped_values - returns) ** 2)
    value = reduce_tokens(0.5 * error, mask, "dapo", step_tokens=step_tokens)
    m = mask.to(logp.dtype)
    return policy + vf_coef * value, {"policy_loss": policy.detach(), "value_loss": value.detach(),
                                      "clip_frac": ((was_clipped.float() * m).sum() / m.sum().clamp(min=1.0)).detach()}


class Module(LoraModule):
    uses_temperature = True
    needs_old_logp = True

    def __init__(self, model, lr, settings=None):
        super().__init__(model, lr, settings)
        hidden = model.get_base_model().config.hidden_size
        # Zero init: the first advantages are the discounted outcome itself, not noise.
        self.value_head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def forward_values(self, batch):
        logp, hidden = completion_forward(self.model, batch, sampling_temperature(batch))
        return logp, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()

    def precompute(self, batch) -> dict:
        """Old log-probs and values of the sampling policy, then GAE advantages and returns."""
        logp, values = self.forward_values(batch)
        return {"old_logp": logp, "old_values": values, **self.advantages(batch, values)}

    def advantages(self, batch, values) -> dict:
        mask = batch["completion_mask"]
        advantages, returns = gae(outcome_rewards(batch["reward"].to(values.dtype), mask), values, mask,
                                  float(self.settings["gamma"]), float(self.settings["lam"]))
        return {"token_advantage": advantages, "returns": returns}

    def finalize(self, examples: list[dict]) -> None:
        """Whiten the advantages over the rollout, every reply weighing the same."""
        for e, rows in zip(examples, whiten([list(e["token_advantage"]) for e in examples])):
            e["token_advantage"] = rows

    def loss(self, batch):
        logp, values = self.forward_values(batch)
        clip_v = self.settings.get("value_clip")
        return ppo_loss(logp, batch["old_logp"], values, batch["returns"], batch["token_advantage"],
                        batch["completion_mask"], float(self.settings["clip"]), float(self.settings["vf_coef"]),
                        old_values=batch.get("old_values"), value_clip=None if clip_v is None else float(clip_v),
                        step_tokens=batch.get("step_tokens"))

    def extra_state(self):
        return {"value_head": self.value_head.state_dict()}

    def load_extra_state(self, state):
        if "value_head" in state:
            self.value_head.load_state_dict(state["value_head"])


def prepare(samples: list[Sample], settings: dict) -> tuple[list[tuple[Sample, dict]], str]:
    scored = _scored(samples, "ppo")
    return ([(s, {"reward": s.reward, "temperature": s.sampling_temperature or 0.0}) for s in scored],
            f"{len(scored)} scored samples (gamma {settings.get('gamma')}, lam {settings.get('lam')})")

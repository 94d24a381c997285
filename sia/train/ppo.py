"""PPO over completion tokens: a value head on the policy's hidden states, the outcome reward
at the last completion token, GAE advantages (whitened), a clipped policy surrogate and a value
loss. Advantages and returns are computed once, before the first step, from the sampling
policy's values (the trainer's precompute pass), as PPO collects them at rollout time."""
from __future__ import annotations

import torch

from sia.train.grpo import _scored, clipped_surrogate
from sia.train.policy import PolicyModule, completion_forward, sampling_temperature
from sia.train.samples import Sample


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """(advantages, returns), each (B, C). ``rewards``/``values`` are per completion token; the
    value after a row's last token is 0 (the episode ends there).
    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, R_t = A_t + V_t."""
    m = mask.to(values.dtype)
    values = values * m
    advantages = torch.zeros_like(values)
    running = torch.zeros(values.shape[0], dtype=values.dtype)
    next_value = torch.zeros_like(running)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m[:, t]
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * m


def outcome_rewards(reward: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C) token rewards: each row's reward on its last completion token, 0 elsewhere."""
    out = torch.zeros(mask.shape, dtype=reward.dtype)
    last = mask.sum(1) - 1
    out[torch.arange(mask.shape[0]), last] = reward
    return out * mask


def ppo_loss(logp, old_logp, values, returns, advantages, mask, clip: float, vf_coef: float):
    """Token-mean clipped surrogate + vf_coef * token-mean 0.5 (V - R)^2; (loss, metrics)."""
    m = mask.to(logp.dtype)
    n = m.sum().clamp(min=1.0)
    per_token, was_clipped = clipped_surrogate(logp, old_logp, advantages, clip)
    policy = (per_token * m).sum() / n
    value = (0.5 * (values - returns) ** 2 * m).sum() / n
    return policy + vf_coef * value, {"policy_loss": policy.detach(), "value_loss": value.detach(),
                                      "clip_frac": ((was_clipped.float() * m).sum() / n).detach()}


class Module(PolicyModule):
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
        return logp, self.value_head(hidden).squeeze(-1).float()

    def precompute(self, batch) -> dict:
        """Old log-probs and values of the sampling policy, then GAE advantages and returns."""
        logp, values = self.forward_values(batch)
        mask = batch["completion_mask"]
        advantages, returns = gae(outcome_rewards(batch["reward"], mask), values, mask,
                                  float(self.settings["gamma"]), float(self.settings["lam"]))
        return {"old_logp": logp, "token_advantage": advantages, "returns": returns}

    def finalize(self, examples: list[dict]) -> None:
        """Whiten the advantages over every completion token of the rollout."""
        flat = torch.tensor([a for e in examples for a in e["token_advantage"]])
        mean, std = flat.mean(), flat.std(unbiased=False)
        for e in examples:
            e["token_advantage"] = [float((a - mean) / (std + 1e-6)) for a in e["token_advantage"]]

    def loss(self, batch):
        logp, values = self.forward_values(batch)
        return ppo_loss(logp, batch["old_logp"], values, batch["returns"], batch["token_advantage"],
                        batch["completion_mask"], float(self.settings["clip"]), float(self.settings["vf_coef"]))

    def extra_state(self):
        return {"value_head": self.value_head.state_dict()}

    def load_extra_state(self, state):
        if "value_head" in state:
            self.value_head.load_state_dict(state["value_head"])


def prepare(samples: list[Sample], settings: dict) -> tuple[list[tuple[Sample, dict]], str]:
    scored = _scored(samples, "ppo")
    return ([(s, {"reward": s.reward, "temperature": s.sampling_temperature or 0.0}) for s in scored],
            f"{len(scored)} scored samples")

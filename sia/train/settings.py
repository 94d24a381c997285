"""Each training algorithm's settings (``lora.<algorithm>.<key>``): their defaults and the
check, kept free of torch so the config check before any work stays cheap."""
from __future__ import annotations

import math

from sia.train.choose import ALGORITHMS

# lora.precision: auto picks one of the others for the device (sia.train.policy.training_precision).
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")

# Defaults of each algorithm's settings (lora.<algorithm>.<key> overrides them).
DEFAULTS = {
    "sft": {},
    "rs_sft": {"top_k": 1},
    "grpo": {"clip": 0.2, "kl": 0.0},
    "eaw": {"beta": 5.0},
    "ppo": {"clip": 0.2, "vf_coef": 0.5, "gamma": 1.0, "lam": 0.95},
}


def algorithm_settings(lora_cfg, algorithm: str, threshold: float | None = None) -> dict:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown training algorithm {algorithm!r}; choose one of {ALGORITHMS}")
    settings = dict(DEFAULTS[algorithm])
    given = lora_cfg.get(algorithm) if hasattr(lora_cfg, "get") else None
    for key, value in dict(given or {}).items():
        if key not in settings:
            raise ValueError(f"lora.{algorithm}.{key} is not a setting of {algorithm}; known: {sorted(settings)}")
        settings[key] = value
    for key in ("clip", "beta"):
        if key in settings and not float(settings[key]) > 0:
            raise ValueError(f"lora.{algorithm}.{key} must be > 0, got {settings[key]}")
    if threshold is None:
        threshold = lora_cfg.get("positive_threshold", 0.0) if hasattr(lora_cfg, "get") else 0.0
    settings["threshold"] = float(0.0 if threshold is None else threshold)
    return settings


def micro_batches(lora_cfg) -> tuple[int, int]:
    """(sequences per forward/backward pass, passes per optimizer step). One step still sees
    ``lora.batch_size`` sequences; ``lora.micro_batch_size`` only bounds the activations held
    at once (gradient accumulation: same gradient for equal-size micro-batches, less memory)."""
    batch = int(lora_cfg.batch_size)
    micro = lora_cfg.get("micro_batch_size") or batch
    if not isinstance(micro, int) or isinstance(micro, bool) or micro < 1 or batch % micro:
        raise ValueError(f"lora.micro_batch_size={micro!r} must divide lora.batch_size={batch}; use e.g. "
                         f"lora.micro_batch_size={max(1, batch // 2)}, or null for whole batches")
    return micro, batch // micro


def capped_steps(lora_cfg, algorithm: str, steps: int, n_samples: int) -> int:
    """``steps``, cut to ``lora.rollout_epochs`` passes over ``n_samples`` for the reward-driven
    algorithms (at least one step). Gold SFT is not capped: its pairs do not go stale."""
    epochs = lora_cfg.get("rollout_epochs") if hasattr(lora_cfg, "get") else None
    if epochs is None or algorithm == "sft":
        return steps
    per_pass = n_samples / int(lora_cfg.batch_size)
    return max(1, min(steps, math.ceil(float(epochs) * per_pass)))

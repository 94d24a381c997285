"""Each training algorithm's settings (``lora.<algorithm>.<key>``): which keys exist and their
check, kept free of torch so the config check before any work stays cheap. The values live in
one place only, conf/lora/default.yaml."""
from __future__ import annotations

import math

from sia.train.choose import ALGORITHMS

# lora.precision: auto picks one of the others for the device (sia.train.lora_module.training_precision).
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")

def lora_setting(lora_cfg, key: str):
    """``lora.<key>``, or its default in the schema (sia.schema.LoraConfig: the one place it
    lives) where the config lacks the key (a plain dict or YAML loaded without Hydra)."""
    from sia.schema import LoraConfig, setting   # on use: importing it registers every config schema

    return setting(lora_cfg, LoraConfig, key)


# The keys each algorithm reads (lora.<algorithm>.<key>); conf/lora/default.yaml sets them all.
KEYS = {
    "sft": (),
    "rs_sft": ("top_k",),
    "grpo": ("clip", "kl", "loss_type", "scale_rewards"),
    "eaw": ("clip", "kl_target"),
    "ppo": ("clip", "vf_coef", "gamma", "lam", "value_clip"),
}
# How a step's per-token losses become one number (sia.train.lora_module.reduce_tokens).
LOSS_TYPES = ("dapo", "dr_grpo", "grpo")
SCALE_REWARDS = ("group", "none")


def algorithm_settings(lora_cfg, algorithm: str, threshold: float | None = None) -> dict:
    """``lora.<algorithm>`` as a checked dict (plus ``threshold``); ValueError naming the key,
    the value and the fix otherwise."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown training algorithm {algorithm!r}; choose one of {ALGORITHMS}")
    given = lora_cfg.get(algorithm) if hasattr(lora_cfg, "get") else None
    settings = dict(given or {})
    known = KEYS[algorithm]
    for key in settings:
        if key not in known:
            hint = (" (eaw's beta is adaptive now: set lora.eaw.kl_target)"
                    if (algorithm, key) == ("eaw", "beta") else "")
            raise ValueError(f"lora.{algorithm}.{key} is not a setting of {algorithm}; known: {sorted(known)}{hint}")
    missing = [k for k in known if k not in settings]
    if missing:
        raise ValueError(f"lora.{algorithm}.{missing[0]} is not set; conf/lora/default.yaml sets every "
                         f"lora.{algorithm} key ({', '.join(known)}): compose with it or set it on the command line")
    problems = _value_problems(algorithm, settings)
    if problems:
        raise ValueError(problems[0])
    if threshold is None:   # lora.positive_threshold; null there: 0 (rewards above 0 are positive)
        threshold = lora_setting(lora_cfg, "positive_threshold")
    settings["threshold"] = float(0.0 if threshold is None else threshold)
    return settings


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _value_problems(algorithm: str, s: dict) -> list[str]:
    """One line per bad value: the key, the value and what it must be."""
    out = []

    def number(key, low, high=None, low_ok=False, none_ok=False):
        value = s.get(key)
        if value is None and none_ok:
            return
        if _is_number(value) and (value >= low if low_ok else value > low) and (high is None or value <= high):
            return
        span = f"{'>=' if low_ok else '>'} {low}" + (f" and <= {high}" if high is not None else "")
        out.append(f"lora.{algorithm}.{key}={value!r} must be a number {span}{' or null' if none_ok else ''}; "
                   f"fix lora.{algorithm}.{key} in conf/lora/ or on the command line")

    def choice(key, options):
        if s.get(key) not in options:
            out.append(f"lora.{algorithm}.{key}={s.get(key)!r} is not one of {options}; "
                       f"e.g. lora.{algorithm}.{key}={options[0]}")

    if "clip" in s:
        number("clip", 0, 1)
    if algorithm == "rs_sft" and not (_is_number(s["top_k"]) and int(s["top_k"]) == s["top_k"] >= 1):
        out.append(f"lora.rs_sft.top_k={s['top_k']!r} must be an integer >= 1, e.g. lora.rs_sft.top_k=1")
    if algorithm == "grpo":
        number("kl", 0, low_ok=True)
        choice("loss_type", LOSS_TYPES)
        choice("scale_rewards", SCALE_REWARDS)
    if algorithm == "eaw":
        number("kl_target", 0)
    if algorithm == "ppo":
        number("vf_coef", 0, low_ok=True)
        number("gamma", 0, 1)
        number("lam", 0, 1, low_ok=True)
        number("value_clip", 0, none_ok=True)
    return out


def gradient_clip(lora_cfg) -> float | None:
    """``lora.gradient_clip_val``: the largest gradient norm of one optimizer step (None: off)."""
    value = lora_setting(lora_cfg, "gradient_clip_val")
    if value is None:
        return None
    if not (_is_number(value) and value > 0):
        raise ValueError(f"lora.gradient_clip_val={value!r} must be a number > 0 (the largest gradient norm of a "
                         "step) or null for no clipping; e.g. lora.gradient_clip_val=1.0")
    return float(value)


def micro_batches(lora_cfg) -> tuple[int, int]:
    """(sequences per forward/backward pass, passes per optimizer step). One step still sees
    ``lora.batch_size`` sequences; ``lora.micro_batch_size`` only bounds the activations held
    at once (gradient accumulation: the losses are normalised by the whole step's rows or tokens,
    sia.train.trainer, so any split gives the same gradient, with less memory)."""
    batch = int(lora_cfg.batch_size)
    micro = lora_setting(lora_cfg, "micro_batch_size") or batch
    if not isinstance(micro, int) or isinstance(micro, bool) or micro < 1 or batch % micro:
        raise ValueError(f"lora.micro_batch_size={micro!r} must divide lora.batch_size={batch}; use e.g. "
                         f"lora.micro_batch_size={max(1, batch // 2)}, or null for whole batches")
    return micro, batch // micro


def capped_steps(lora_cfg, algorithm: str, steps: int, n_samples: int) -> int:
    """``steps``, cut to ``lora.rollout_epochs`` passes over ``n_samples`` for the reward-driven
    algorithms (at least one step). Gold SFT is not capped: its pairs do not go stale."""
    epochs = lora_setting(lora_cfg, "rollout_epochs")
    if epochs is None or algorithm == "sft":
        return steps
    per_pass = n_samples / int(lora_cfg.batch_size)
    return max(1, min(steps, math.ceil(float(epochs) * per_pass)))

"""Training of the weights lever: LoRA adapters from gold targets (sft) or from rewarded
rollouts (rs_sft, grpo, eaw, ppo), and the rule that picks among them.

The trainers import torch and Lightning, so they load on first use: the samples, the choice
rule and the settings check stay cheap to import (the config check runs them before any work)."""
from sia.train.choose import ALGORITHMS, choose_algorithm
from sia.train.samples import RewardStats, Sample, reward_stats

_LAZY = {"train_sft": "sia.train.sft", "train_adapter": "sia.train.trainer", "TrainResult": "sia.train.trainer"}

__all__ = ["ALGORITHMS", "RewardStats", "Sample", "TrainResult", "choose_algorithm", "reward_stats",
           "train_adapter", "train_sft"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sia.train' has no attribute {name!r}")

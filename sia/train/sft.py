"""Supervised fine-tuning (gold targets): the token-mean negative log-likelihood of the
completion tokens. The weights lever trains it through :func:`sia.train.trainer.train_adapter`
(``algorithm="sft"``) like every algorithm; ``train_sft`` is the same call on raw
``{"messages", "completion"}`` pairs, for scripts (benchmarks, the engine tests)."""
from __future__ import annotations

import torch

from sia.train.lora_module import LoraModule, reduce_tokens
from sia.train.samples import Sample, samples_from_pairs


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, step_tokens=None) -> torch.Tensor:
    """Mean NLL over every completion token of the optimizer step (``step_tokens``: the step's
    completion tokens across its micro-batches; None: this batch is the whole step)."""
    return reduce_tokens(-logp, mask, "dapo", step_tokens=step_tokens)


class Module(LoraModule):
    def loss(self, batch):
        logp, _ = self.policy_logp(batch)
        return sft_loss(logp, batch["completion_mask"], batch.get("step_tokens")), {}


def prepare(samples: list[Sample], settings: dict) -> tuple[list[tuple[Sample, dict]], str]:
    """Every sample is a target; (samples with their per-sample fields, a note on the choice)."""
    return [(s, {}) for s in samples], f"{len(samples)} targets"


def train_sft(model_cfg, lora_cfg, cache_dir, pairs: list[dict], steps: int, out_dir,
              init_adapter=None, seed: int = 0, progress: bool = True, wandb_logger=None):
    """Gold SFT on ``{"messages", "completion"}`` pairs (``train_adapter`` with
    ``algorithm="sft"``); returns a :class:`sia.train.trainer.TrainResult`."""
    from sia.train.trainer import train_adapter

    if not pairs:
        raise ValueError("train_sft needs at least one SFT pair; got none")
    samples = samples_from_pairs(pairs)
    return train_adapter(model_cfg, lora_cfg, cache_dir, samples, algorithm="sft", steps=steps, out_dir=out_dir,
                         init_adapter=init_adapter, seed=seed, progress=progress, wandb_logger=wandb_logger)

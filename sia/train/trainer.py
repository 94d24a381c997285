"""``train_adapter``: one entry point for every algorithm (sft, rs_sft, grpo, eaw, ppo).

Samples are selected and weighted by the algorithm's ``prepare``, tokenised and bucketed by the
shared data path, fields that must be fixed before the first step (the sampling policy's
log-probs, the base model's, PPO's advantages) are computed in one no-grad pass, then Lightning
runs ``steps`` optimizer steps and the adapter is saved atomically, continuing from
``init_adapter`` when one is given.
"""
from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from sia.engine.hf import load_tokenizer, pick_device
from sia.engine.model_cache import resolve_model_dir
from sia.train.batching import BucketBatchSampler, batch_tokens, collate, encode_sample
from sia.train.policy import (disable_dropout, load_extra_state, load_lora_model, precision_context,
                              release_memory, save_adapter, training_precision)
from sia.train.resources import PeakRSS, quiet_lightning
from sia.train.samples import Sample
from sia.train.settings import algorithm_settings, capped_steps, micro_batches

log = logging.getLogger(__name__)

RATIO_BASED = ("grpo", "ppo")


@dataclass
class TrainResult:
    losses: list[float]       # training loss of every optimizer step, in order
    wall_s: float             # the whole call: loading, precompute, training, saving
    steps: int
    examples: int             # samples actually trained on (selected, and fitting max_seq_len)
    algorithm: str
    tokens_per_s: float       # non-padding tokens trained per second, after the first (warm-up) step
    peak_rss_mb: float        # peak resident memory of this process during the call
    adapter_dir: str = ""
    step_s: float = 0.0       # mean seconds per optimizer step after the first
    note: str = ""            # what the algorithm selected (e.g. groups with reward spread)
    metrics: dict = field(default_factory=dict)  # the last step's logged figures (clip_frac, kl...)

    @property
    def n_examples(self) -> int:  # the name the first SFT trainer used
        return self.examples


def train_adapter(model_cfg, lora_cfg, cache_dir, samples: list[Sample], *, algorithm: str, steps: int, out_dir,
                  init_adapter=None, seed: int = 0, progress: bool = False, wandb_logger=None,
                  threshold: float | None = None) -> TrainResult:
    """Train a LoRA adapter with ``algorithm`` for ``steps`` optimizer steps and save it to
    ``out_dir`` (adapter files, then ``out_dir/COMPLETE`` last). ``threshold``: reward above
    which a sample counts as a success (rs_sft; default ``lora.positive_threshold`` or 0)."""
    settings = algorithm_settings(lora_cfg, algorithm, threshold)
    if not samples:
        raise ValueError(f"train_adapter({algorithm}) needs at least one sample; got none")
    if steps < 1:
        raise ValueError(f"train_adapter needs steps >= 1, got {steps}")
    started = time.perf_counter()
    algo = importlib.import_module(f"sia.train.{algorithm}")
    with PeakRSS() as rss:
        chosen, note = algo.prepare(list(samples), settings)   # bad samples fail before any loading
        model_dir = resolve_model_dir(model_cfg, cache_dir)
        tokenizer = load_tokenizer(model_dir)
        examples = _encode(tokenizer, chosen, int(lora_cfg.max_seq_len))
        asked, steps = steps, capped_steps(lora_cfg, algorithm, steps, len(examples))
        if steps < asked:
            cap = (f"{steps} of {asked} steps: lora.rollout_epochs={float(lora_cfg.rollout_epochs):g} passes over "
                   f"{len(examples)} samples")
            note = f"{note}; {cap}" if note else cap
        pl.seed_everything(seed, verbose=False)  # LoRA init and dropout
        model = load_lora_model(model_cfg, lora_cfg, model_dir, init_adapter)
        if algorithm in RATIO_BASED:
            disable_dropout(model)
        module = algo.Module(model, lr=float(lora_cfg.lr), settings=settings)
        extra = load_extra_state(init_adapter)
        if extra is not None:
            module.load_extra_state(extra)
        device = pick_device(model_cfg.device)
        precision = training_precision(str(lora_cfg.precision), device)
        micro, accumulate = micro_batches(lora_cfg)
        _precompute(module, examples, micro, tokenizer.pad_token_id, precision, device)
        recorder = _Recorder()
        sampler = BucketBatchSampler([len(e["input_ids"]) for e in examples], int(lora_cfg.batch_size), seed,
                                     micro_batch_size=micro)
        loader = DataLoader(examples, batch_sampler=sampler,
                            collate_fn=lambda batch: collate(batch, tokenizer.pad_token_id))
        with quiet_lightning():
            trainer = pl.Trainer(
                max_steps=steps, max_epochs=-1,  # cycle through the data until max_steps
                accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                precision=precision, enable_checkpointing=False, logger=wandb_logger or False,
                enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=1,
                use_distributed_sampler=False, callbacks=[recorder], accumulate_grad_batches=accumulate,
            )
            trainer.fit(module, train_dataloaders=loader)
        last_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        out_dir = Path(out_dir)
        save_adapter(model, out_dir, {"algorithm": algorithm, "steps": steps, "losses": recorder.losses,
                                      "n_examples": len(examples), "note": note},
                     module.extra_state())
        del trainer, module, model, loader
        release_memory()
    tokens_per_s, step_s = steady_rate(recorder.step_tokens, recorder.step_s)
    return TrainResult(losses=recorder.losses, wall_s=time.perf_counter() - started, steps=steps,
                       examples=len(examples), algorithm=algorithm, tokens_per_s=tokens_per_s,
                       peak_rss_mb=rss.peak_mb, adapter_dir=str(out_dir), step_s=step_s,
                       note=note, metrics=last_metrics)


def _encode(tokenizer, chosen: list[tuple[Sample, dict]], max_seq_len: int) -> list[dict]:
    examples = []
    for sample, fields in chosen:
        encoded = encode_sample(tokenizer, sample, max_seq_len)
        if encoded is not None:
            examples.append({**encoded, **fields})
    if len(examples) < len(chosen):
        log.warning("skipped %d samples whose completion exceeds lora.max_seq_len=%d",
                    len(chosen) - len(examples), max_seq_len)
    if not examples:
        raise ValueError(f"no sample's completion fits in lora.max_seq_len={max_seq_len} tokens; raise it")
    return examples


def _precompute(module, examples: list[dict], batch_size: int, pad_id: int, precision: str, device) -> None:
    """Fill each example's fixed per-token fields (old/ref log-probs, PPO advantages)."""
    if not (module.needs_old_logp or module.needs_ref_logp):
        return
    module.to(device).eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    with torch.no_grad(), precision_context(precision, device.type):
        for s in range(0, len(order), batch_size):
            rows = [examples[i] for i in order[s:s + batch_size]]
            batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
            fields = module.precompute(batch)
            lengths = batch["completion_mask"].sum(1).tolist()
            for row, example in enumerate(rows):
                for key, value in fields.items():
                    example[key] = value[row, :lengths[row]].float().cpu().tolist()
    module.finalize(examples)
    module.train()


class _Recorder(pl.Callback):
    """Loss, tokens and wall time of every optimizer step (data loading included; set-up and
    saving not). With micro-batches, a step's loss is the mean of its micro-batches' losses."""

    def __init__(self):
        self.losses: list[float] = []
        self.step_tokens: list[int] = []
        self.step_s: list[float] = []
        self._last, self._steps = 0.0, 0
        self._pending: list[float] = []
        self._tokens = 0

    def on_train_start(self, trainer, pl_module):
        self._last, self._steps = time.perf_counter(), trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._tokens += batch_tokens(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        # Lightning hands back the loss divided by the accumulation factor
        self._pending.append(float(loss.detach()) * trainer.accumulate_grad_batches)
        if trainer.global_step == self._steps:    # micro-batch without an optimizer step yet
            return
        self._steps = trainer.global_step
        self.losses.append(sum(self._pending) / len(self._pending))
        self.step_tokens.append(self._tokens)
        now = time.perf_counter()
        self.step_s.append(now - self._last)
        self._last, self._pending, self._tokens = now, [], 0


def steady_rate(step_tokens: list[int], step_s: list[float]) -> tuple[float, float]:
    """(tokens/s, s/step) leaving out the first step when there are more: it pays one-time
    costs (weights paged in from the memory-mapped checkpoint, kernel and allocator warm-up)."""
    skip = 1 if len(step_s) > 1 else 0
    seconds = max(sum(step_s[skip:]), 1e-9)
    return sum(step_tokens[skip:]) / seconds, seconds / max(len(step_s) - skip, 1)

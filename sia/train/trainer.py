"""``train_adapter``: one entry point for every algorithm (sft, rs_sft, grpo, eaw, ppo).

Samples are selected and weighted by the algorithm's ``prepare``, tokenised and bucketed by the
shared data path, fields that must be fixed before the first step (the sampling policy's
log-probs, the base model's, PPO's advantages) are computed in one no-grad pass, then Lightning
runs ``steps`` optimizer steps and the adapter is saved atomically, continuing from
``init_adapter`` when one is given.

Each loss is normalised by its whole optimizer step (the rows or completion tokens of every
micro-batch of the step, TRL's ``num_items_in_batch``): :class:`StepSampler` hands every
micro-batch its step's counts, so a short last micro-batch gives each row or token the same
share as the others (a per-micro-batch mean let one row of a 4+1 split weigh 4x). Gradients
are clipped to ``lora.gradient_clip_val`` (norm) before each step.
"""
from __future__ import annotations

import importlib
import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from sia.engine.common import load_tokenizer, pick_device
from sia.engine.model_cache import resolve_model_dir
from sia.train.batching import BucketBatchSampler, batch_tokens, collate, encode_sample
from sia.train.lora_module import (disable_dropout, load_extra_state, load_lora_model, precision_context,
                              release_memory, save_adapter, training_precision)
from sia.train.peak_memory import PeakRSS
from sia.train.samples import Sample
from sia.train.settings import algorithm_settings, capped_steps, gradient_clip, micro_batches


@contextmanager
def quiet_lightning():
    """Hide Lightning's start-up banner and advice that do not apply to this small-data loop."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*`srun` command is available.*")  # not a SLURM job step
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning vs newer torch, harmless
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


log = logging.getLogger(__name__)

RATIO_BASED = ("grpo", "eaw", "ppo")   # importance ratios: no dropout, or step 0's ratio is not 1


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
    refused_too_long: int = 0  # selected samples longer than lora.max_seq_len: refused whole, never cut

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
    clip_norm = gradient_clip(lora_cfg)
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
        refused = len(chosen) - len(examples)
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
        module.max_completion_len = max(completion_length(e) for e in examples)   # dr_grpo's constant
        extra = load_extra_state(init_adapter)
        if extra is not None:
            module.load_extra_state(extra)
        device = pick_device(model_cfg.device)
        precision = training_precision(str(lora_cfg.precision), device)
        micro, accumulate = micro_batches(lora_cfg)
        _precompute(module, examples, micro, tokenizer.pad_token_id, precision, device)
        recorder = _Recorder()
        sampler = StepSampler(BucketBatchSampler([len(e["input_ids"]) for e in examples], int(lora_cfg.batch_size),
                                                 seed, micro_batch_size=micro),
                              accumulate, [completion_length(e) for e in examples])
        loader = DataLoader(_StepRows(examples), batch_sampler=sampler,
                            collate_fn=lambda rows: step_collate(rows, tokenizer.pad_token_id))
        with quiet_lightning():
            trainer = pl.Trainer(
                max_steps=steps, max_epochs=-1,  # cycle through the data until max_steps
                accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                precision=precision, enable_checkpointing=False, logger=wandb_logger or False,
                enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=1,
                use_distributed_sampler=False, callbacks=[recorder], accumulate_grad_batches=accumulate,
                gradient_clip_val=clip_norm, gradient_clip_algorithm="norm",
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
                       note=note, metrics=last_metrics, refused_too_long=refused)


def _encode(tokenizer, chosen: list[tuple[Sample, dict]], max_seq_len: int) -> list[dict]:
    examples = []
    for sample, fields in chosen:
        encoded = encode_sample(tokenizer, sample, max_seq_len)
        if encoded is not None:
            examples.append({**encoded, **fields})
    if len(examples) < len(chosen):
        log.warning("refused %d of %d samples whose prompt + completion exceed lora.max_seq_len=%d tokens "
                    "(never cut: a cut prompt is one the model never saw)", len(chosen) - len(examples), len(chosen),
                    max_seq_len)
    if not examples:
        raise ValueError(f"no sample's prompt + completion fits in lora.max_seq_len={max_seq_len} tokens; raise "
                         f"lora.max_seq_len (or lora.max_seq_len_by_task.<task>)")
    return examples


def completion_length(example: dict) -> int:
    return len(example["input_ids"]) - example["n_prompt"]


class StepSampler(Sampler):
    """The bucket sampler's micro-batches, each index paired with its optimizer step's row and
    completion-token counts. A step is ``accumulate`` consecutive micro-batches: every full
    batch splits into exactly that many, and the short batch comes last, where Lightning
    closes the epoch's last step whatever its size."""

    def __init__(self, inner: Sampler, accumulate: int, completion_lengths: list[int]):
        self.inner, self.accumulate, self.lengths = inner, accumulate, completion_lengths

    def __iter__(self):
        micro = list(self.inner)
        for s in range(0, len(micro), self.accumulate):
            step = micro[s:s + self.accumulate]
            rows = sum(len(b) for b in step)
            tokens = sum(self.lengths[i] for b in step for i in b)
            for b in step:
                yield [(i, rows, tokens) for i in b]

    def __len__(self) -> int:
        return len(self.inner)


class _StepRows:
    """The examples, indexed by StepSampler's (index, step rows, step tokens)."""

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key):
        i, rows, tokens = key
        return {**self.examples[i], "step_rows": rows, "step_tokens": tokens}


def step_collate(rows: list[dict], pad_id: int) -> dict:
    """``collate`` plus the step's counts (float scalars: divisors of the loss)."""
    batch = collate(rows, pad_id)
    batch["step_rows"] = torch.tensor(float(rows[0]["step_rows"]))
    batch["step_tokens"] = torch.tensor(float(rows[0]["step_tokens"]))
    return batch


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
    saving not). With micro-batches, a step's loss is the sum of its micro-batches' shares
    (each loss is normalised by the whole step's rows or tokens)."""

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
        # Lightning hands back the loss divided by the accumulation factor, which the module
        # multiplied in: what is left is this micro-batch's share of the step's loss.
        self._pending.append(float(loss.detach()))
        if trainer.global_step == self._steps:    # micro-batch without an optimizer step yet
            return
        self._steps = trainer.global_step
        self.losses.append(sum(self._pending))
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

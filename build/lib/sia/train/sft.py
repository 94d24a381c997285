"""Supervised fine-tuning of a LoRA adapter with Lightning and PEFT.

Prompts are tokenised exactly as the engine renders them at inference time (the chat
template with the generation prompt, no extra special tokens), so the adapter learns the
very token sequence it will later be asked to continue. Only completion tokens (plus the
end-of-turn token, so the model learns to stop) carry a loss.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from sia.engine.hf import encode_text, load_tokenizer, pick_device, quiet_peft, render_prompt
from sia.engine.model_cache import resolve_model_dir

IGNORE_INDEX = -100  # label value the causal-LM loss skips
COMPLETE_MARKER = "COMPLETE"

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    losses: list[float]      # training loss of every optimizer step, in order
    steps: int
    wall_s: float
    adapter_dir: str
    n_examples: int          # pairs actually trained on (over-long ones are skipped)


def encode_pair(tokenizer, pair: dict, max_seq_len: int) -> dict | None:
    """Token ids and labels for one {"messages", "completion"} pair; None when the completion
    alone does not fit in ``max_seq_len``. Long prompts lose tokens from the left."""
    prompt = encode_text(tokenizer, render_prompt(tokenizer, pair["messages"]))
    # The chat template closes assistant turns with the EOS token (<|im_end|> for SmolLM2);
    # generation stops on it, so it is part of what the model must learn to produce.
    completion = encode_text(tokenizer, pair["completion"]) + [tokenizer.eos_token_id]
    if len(completion) > max_seq_len:
        return None
    overflow = len(prompt) + len(completion) - max_seq_len
    if overflow > 0:
        prompt = prompt[overflow:]  # keep the end of the prompt, next to the completion
    return {
        "input_ids": prompt + completion,
        "labels": [IGNORE_INDEX] * len(prompt) + completion,
    }


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding is masked out of attention and loss."""
    width = max(len(e["input_ids"]) for e in examples)
    def padded(seq, fill):
        return seq + [fill] * (width - len(seq))
    return {
        "input_ids": torch.tensor([padded(e["input_ids"], pad_id) for e in examples]),
        "attention_mask": torch.tensor([padded([1] * len(e["input_ids"]), 0) for e in examples]),
        "labels": torch.tensor([padded(e["labels"], IGNORE_INDEX) for e in examples]),
    }


class SFTDataModule(pl.LightningDataModule):
    """Shuffled (seeded) batches; Lightning starts a new epoch whenever ``max_steps`` needs more."""

    def __init__(self, examples: list[dict], batch_size: int, pad_id: int, seed: int):
        super().__init__()
        self.examples = examples
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.examples,
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=lambda batch: collate(batch, self.pad_id),
        )


class LoraSFTModule(pl.LightningModule):
    def __init__(self, model, lr: float):
        super().__init__()
        self.model = model
        self.lr = lr

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self):
        # Only the LoRA weights train; the frozen base never reaches the optimizer.
        return torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.lr)


class _LossRecorder(pl.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))


def train_sft(model_cfg, lora_cfg, cache_dir, pairs: list[dict], steps: int, out_dir,
              init_adapter=None, seed: int = 0, progress: bool = True, wandb_logger=None) -> TrainResult:
    """Train a LoRA adapter for ``steps`` optimizer steps and save it to ``out_dir``
    (adapter files only, then ``out_dir/COMPLETE`` last)."""
    _check_inputs(pairs, steps)
    started = time.perf_counter()
    model_dir = resolve_model_dir(model_cfg, cache_dir)
    tokenizer = load_tokenizer(model_dir)
    examples = [e for e in (encode_pair(tokenizer, p, int(lora_cfg.max_seq_len)) for p in pairs) if e is not None]
    if len(examples) < len(pairs):
        log.warning("skipped %d SFT pairs whose completion exceeds max_seq_len=%d",
                    len(pairs) - len(examples), lora_cfg.max_seq_len)
    if not examples:
        raise ValueError(f"no SFT pair fits in lora.max_seq_len={lora_cfg.max_seq_len} tokens")

    pl.seed_everything(seed, verbose=False)  # LoRA init and dropout
    model = _lora_model(model_cfg, lora_cfg, model_dir, init_adapter)
    module = LoraSFTModule(model, lr=float(lora_cfg.lr))
    data = SFTDataModule(examples, int(lora_cfg.batch_size), tokenizer.pad_token_id, seed)
    recorder = _LossRecorder()
    with _quiet_lightning():
        trainer = pl.Trainer(
            max_steps=steps,
            max_epochs=-1,  # cycle through the data until max_steps
            accelerator="gpu" if pick_device(model_cfg.device).type == "cuda" else "cpu",
            devices=1,
            precision=lora_cfg.precision,
            enable_checkpointing=False,
            logger=wandb_logger or False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            log_every_n_steps=1,
            callbacks=[recorder],
        )
        trainer.fit(module, datamodule=data)

    out_dir = Path(out_dir)
    _save_adapter(model, out_dir, {"steps": steps, "losses": recorder.losses, "n_examples": len(examples)})
    return TrainResult(
        losses=recorder.losses,
        steps=steps,
        wall_s=time.perf_counter() - started,
        adapter_dir=str(out_dir),
        n_examples=len(examples),
    )


def _check_inputs(pairs: list[dict], steps: int) -> None:
    if not pairs:
        raise ValueError("train_sft needs at least one SFT pair; got none")
    if steps < 1:
        raise ValueError(f"train_sft needs steps >= 1, got {steps}")
    for i, pair in enumerate(pairs):
        if not isinstance(pair.get("messages"), list) or not isinstance(pair.get("completion"), str):
            raise ValueError(f"SFT pair {i} must be {{'messages': [...], 'completion': str}}, got keys {sorted(pair)}")


def _lora_model(model_cfg, lora_cfg, model_dir, init_adapter):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, model_cfg.dtype))
    base.config.use_cache = False  # no KV cache while training
    with quiet_peft():
        if init_adapter is not None:
            model = PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True)
        else:
            model = get_peft_model(base, LoraConfig(
                r=int(lora_cfg.rank),
                lora_alpha=int(lora_cfg.alpha),
                lora_dropout=float(lora_cfg.dropout),
                target_modules=list(lora_cfg.target_modules),
                task_type="CAUSAL_LM",
            ))
    # from_pretrained returns eval mode and Lightning keeps each module's mode: without this
    # LoRA dropout would never be active.
    return model.train()


def _save_adapter(model, out_dir: Path, summary: dict) -> None:
    """Write the adapter next to ``out_dir`` and rename it into place, so a crash never leaves
    a half-written adapter; COMPLETE is written last."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        if out_dir.exists():  # an earlier, interrupted attempt
            shutil.rmtree(out_dir)
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (out_dir / COMPLETE_MARKER).write_text(json.dumps(summary) + "\n")


@contextmanager
def _quiet_lightning():
    """Hide Lightning's start-up banner and advice that do not apply to this small-data loop."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning vs newer torch, harmless
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

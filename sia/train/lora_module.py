"""The LoRA module shared by every algorithm: loading (fresh or continued adapter), log-probs
of completion tokens only, the base Lightning module, atomic saving, returning memory."""
from __future__ import annotations

import ctypes
import gc
import json
import os
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path

import lightning.pytorch as pl
import torch

from sia.engine.common import pick_device, pick_dtype, quiet_peft
from sia.engine.model_cache import COMPLETE_MARKER   # one marker for every directory written whole
from sia.train.settings import lora_setting
EXTRA_STATE = "extra_state.pt"  # non-adapter trainable state (the PPO value head)


# Lightning's precision for each dtype the engine's ``auto`` can pick.
_AUTO_PRECISION = {torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed", torch.float32: "32-true"}


def training_precision(setting: str, device: torch.device) -> str:
    """Lightning's precision for ``lora.precision``. ``auto``: mixed precision in the dtype the
    engine's ``auto`` serves in (``pick_dtype``: bf16 where it is native, fp16 on other GPUs),
    else 32-true: on a CPU without bf16 instructions autocast emulates it, several times slower."""
    return _AUTO_PRECISION[pick_dtype("auto", device)] if setting == "auto" else setting


def training_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The base weights' dtype while training on ``device``. ``auto`` keeps float32 on CPU,
    where a bf16-mixed ``lora.precision`` autocasts the compute anyway (the engine's ``auto``
    serves in bf16 there for speed); on a GPU it is the engine's choice."""
    if setting == "auto" and device.type == "cpu":
        return torch.float32
    return pick_dtype(setting, device)


def load_lora_model(model_cfg, lora_cfg, model_dir, init_adapter=None):
    from peft import LoraConfig, PeftModel, get_peft_model

    from sia.engine.memory_plan import lora_targets
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=training_dtype(str(model_cfg.dtype), pick_device(model_cfg.device)))
    base.config.use_cache = False  # no KV cache while training
    with quiet_peft():
        if init_adapter is not None:
            model = PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True)
        else:
            # the model config's own module names (gpt-oss) over lora.target_modules, as the
            # memory plan counts them
            modules, parameters = lora_targets(model_cfg, lora_cfg)
            model = get_peft_model(base, LoraConfig(
                r=int(lora_cfg.rank),
                lora_alpha=int(lora_cfg.alpha),
                lora_dropout=float(lora_cfg.dropout),
                target_modules=modules,
                target_parameters=parameters or None,
                task_type="CAUSAL_LM",
            ))
    if lora_setting(lora_cfg, "activation_checkpointing"):
        # Keep only each layer's input and recompute the rest in backward: far less memory for
        # long sequences, about a third more compute.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # from_pretrained returns eval mode and Lightning keeps each module's mode: without this
    # LoRA dropout would never be active.
    return model.train()


def disable_dropout(model) -> None:
    """Ratio-based losses compare the policy with itself before the first step: dropout would
    make that ratio differ from 1 for no reason."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def completion_forward(model, batch: dict, temperature: torch.Tensor | None = None):
    """(log-probs (B, C) of the completion tokens, hidden states (B, C, H) that predict them).

    The decoder runs on the whole sequence but the LM head (49k-vocab logits) only on the
    completion positions: the full-vocabulary logits of every prompt token are never made.
    ``temperature`` (B,) divides the logits per row (the sampling policy's distribution)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    positions = batch["positions"]
    picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, C, H)
    mask = batch["completion_mask"]
    logits = causal_lm.lm_head(picked[mask]).float()  # (N, V), completion tokens only
    if temperature is not None:
        rows = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]
        logits = logits / temperature[rows].unsqueeze(1)
    chosen = torch.log_softmax(logits, dim=-1).gather(1, batch["targets"][mask].unsqueeze(1)).squeeze(1)
    logp = torch.zeros(mask.shape, dtype=chosen.dtype, device=chosen.device)
    logp = logp.masked_scatter(mask, chosen)
    return logp, picked


def sampling_temperature(batch: dict) -> torch.Tensor | None:
    """Per-row temperature of the sampling policy; greedy (0) or unknown counts as 1."""
    t = batch.get("temperature")
    if t is None:
        return None
    return torch.where(t > 0, t, torch.ones_like(t))


def masked_mean_per_row(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's completion tokens, (B, C) -> (B,)."""
    m = mask.to(values.dtype)
    return (values * m).sum(1) / m.sum(1).clamp(min=1.0)


def reduce_tokens(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str = "dapo", step_tokens=None,
                  step_rows=None, max_len=None) -> torch.Tensor:
    """This micro-batch's share of its optimizer step's loss, from per-token losses (B, C).

    The divisor counts the whole step (``step_tokens``/``step_rows``: every micro-batch of it,
    TRL's ``num_items_in_batch``), so however a step is split, each token or row weighs the
    same; without them this batch is the whole step.

    - ``dapo``: sum over the completion tokens / the step's completion tokens (token-level
      loss: DAPO, arXiv 2503.14476, sec. 3.3; TRL ``GRPOTrainer`` ``loss_type="dapo"``, its
      default): a long reply's tokens weigh as much as a short one's.
    - ``dr_grpo``: sum / (step rows x ``max_len``), a constant for the whole update (Dr. GRPO,
      arXiv 2503.20783, sec. 3.1: no per-response length division, which biases towards long
      wrong replies; TRL ``loss_type="dr_grpo"`` divides by ``max_completion_length``).
    - ``grpo``: each row's token mean, summed / the step's rows (the original GRPO form,
      DeepSeekMath arXiv 2402.03300; length-biased, kept for comparison)."""
    m = mask.to(per_token.dtype)
    rows = float(mask.shape[0]) if step_rows is None else step_rows
    if loss_type == "grpo":
        return masked_mean_per_row(per_token, mask).sum() / rows
    total = (per_token * m).sum()
    if loss_type == "dapo":
        return total / (m.sum().clamp(min=1.0) if step_tokens is None else step_tokens)
    if loss_type == "dr_grpo":
        return total / (rows * float(mask.shape[1] if max_len is None else max_len))
    raise ValueError(f"loss_type must be one of dapo, dr_grpo, grpo; got {loss_type!r}")


class LoraModule(pl.LightningModule):
    """Base for every algorithm: the optimizer over trainable weights, the loss logged per step.
    Subclasses define ``loss(batch) -> (loss, metrics)``."""

    uses_temperature = False   # score completions under the sampling temperature
    needs_old_logp = False     # log-probs of the sampling policy, computed before the first step
    needs_ref_logp = False     # log-probs of the base model (adapter disabled)

    def __init__(self, model, lr: float, settings: dict | None = None):
        super().__init__()
        self.model = model
        self.lr = lr
        self.settings = dict(settings or {})
        self.max_completion_len: int | None = None   # longest completion of the update (dr_grpo's constant)

    def policy_logp(self, batch: dict):
        temperature = sampling_temperature(batch) if self.uses_temperature else None
        return completion_forward(self.model, batch, temperature)

    def step_counts(self, batch: dict) -> dict:
        """``reduce_tokens``' divisors: the rows and completion tokens of the whole optimizer
        step this micro-batch belongs to (the trainer's sampler adds them), and the update's
        longest completion."""
        return {"step_tokens": batch.get("step_tokens"), "step_rows": batch.get("step_rows"),
                "max_len": self.max_completion_len}

    def training_step(self, batch, batch_idx):
        loss, metrics = self.loss(batch)
        if "step_rows" in batch and self._trainer is not None:
            # The loss is already this micro-batch's share of its step; Lightning divides every
            # micro-batch's loss by accumulate_grad_batches (even a short last step's), so undo it.
            loss = loss * self.trainer.accumulate_grad_batches
        size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=size)
        for key, value in metrics.items():
            self.log(f"train/{key}", value, on_step=True, batch_size=size)
        return loss

    def loss(self, batch: dict):
        raise NotImplementedError

    def precompute(self, batch: dict) -> dict:
        """Per-token fields fixed before the first step (run without gradients, in eval mode):
        the sampling policy's log-probs and the base model's (adapter disabled)."""
        out = {}
        if self.needs_old_logp:
            out["old_logp"] = self.policy_logp(batch)[0]
        if self.needs_ref_logp:
            with self.model.disable_adapter():
                out["ref_logp"] = self.policy_logp(batch)[0]
        return out

    def finalize(self, examples: list[dict]) -> None:
        """Adjust the precomputed fields over the whole rollout (PPO whitens advantages)."""

    def extra_state(self) -> dict | None:
        """Trainable state to save beside the adapter (None: the adapter is everything)."""
        return None

    def load_extra_state(self, state: dict) -> None:
        pass

    def configure_optimizers(self):
        # Only the LoRA weights (and any head a subclass adds) train; the frozen base never
        # reaches the optimizer.
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def precision_context(precision: str, device_type: str):
    """The autocast the training step runs under, for passes made outside Lightning (old and
    reference log-probs must be computed at the training precision, or step 1's ratio is off)."""
    if str(precision).startswith("bf16"):
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if str(precision).startswith("16"):
        return torch.autocast(device_type, dtype=torch.float16)
    return nullcontext()


def save_adapter(model, out_dir: Path, summary: dict, extra_state: dict | None = None) -> None:
    """Write the adapter beside ``out_dir`` and rename it into place, so a crash never leaves
    a half-written adapter; COMPLETE is written last."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        if extra_state is not None:
            torch.save(extra_state, staging / EXTRA_STATE)
        if out_dir.exists():  # an earlier, interrupted attempt
            shutil.rmtree(out_dir)
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (out_dir / COMPLETE_MARKER).write_text(json.dumps(summary) + "\n")


def load_extra_state(adapter_dir) -> dict | None:
    path = Path(adapter_dir) / EXTRA_STATE if adapter_dir is not None else None
    return torch.load(path, weights_only=True) if path is not None and path.is_file() else None


def release_memory() -> None:
    """Hand freed memory back to the OS: glibc keeps freed arenas mapped otherwise, and the
    loop process's RSS would stay at the training peak for the rest of the run."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass

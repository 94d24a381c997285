"""The one data path every algorithm shares: samples -> token ids -> length-bucketed batches.

Prompts are tokenised exactly as the engine renders them (the chat template with the
generation prompt, no extra special tokens), so the adapter learns the very token sequence it
will later continue. Only completion tokens (plus the end-of-turn token when the reply ended
there, so the model learns to stop) are scored: a batch carries, per row, the positions whose
hidden state predicts a completion token, and the model applies its LM head to those only.
"""
from __future__ import annotations

import random

import torch
from torch.utils.data import Sampler

from sia.engine.hf import encode_text, render_prompt
from sia.train.samples import Sample

BUCKET_TOKENS = 16  # sequences whose lengths differ by less than this may share a batch


def encode_sample(tokenizer, sample: Sample, max_seq_len: int) -> dict | None:
    """{"input_ids", "n_prompt"} for one sample; None when the completion alone does not fit in
    ``max_seq_len`` (with one prompt token). Long prompts lose tokens from the left."""
    text = sample.prompt if isinstance(sample.prompt, str) else render_prompt(tokenizer, sample.prompt)
    prompt = encode_text(tokenizer, text)
    completion = encode_text(tokenizer, sample.completion)
    if sample.eos:  # the chat template closes assistant turns with EOS; generation stops on it
        completion = completion + [tokenizer.eos_token_id]
    if not prompt:
        raise ValueError("a sample's prompt renders to no tokens; the prompt must end where the reply starts")
    if not completion or len(completion) >= max_seq_len:
        return None
    overflow = len(prompt) + len(completion) - max_seq_len
    if overflow > 0:
        prompt = prompt[overflow:]  # keep the end of the prompt, next to the completion
    return {"input_ids": prompt + completion, "n_prompt": len(prompt)}


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and attention mask, plus the completion view the losses use:
    ``targets``/``completion_mask`` (B, C) and ``positions`` (B, C), the index of the hidden
    state that predicts each completion token. Per-sample floats (keys in ``SCALARS``) become
    (B,) tensors and per-token lists (``TOKEN_FIELDS``) (B, C) tensors."""
    width = max(len(e["input_ids"]) for e in examples)
    lengths = [len(e["input_ids"]) - e["n_prompt"] for e in examples]
    c = max(lengths)
    batch = {
        "input_ids": torch.tensor([e["input_ids"] + [pad_id] * (width - len(e["input_ids"])) for e in examples]),
        "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"]))
                                        for e in examples]),
        "targets": torch.tensor([e["input_ids"][e["n_prompt"]:] + [0] * (c - n) for e, n in zip(examples, lengths)]),
        "completion_mask": torch.tensor([[True] * n + [False] * (c - n) for n in lengths]),
        # Padding positions point at the row's last real position; the mask hides them.
        "positions": torch.tensor([[e["n_prompt"] - 1 + min(j, n - 1) for j in range(c)]
                                   for e, n in zip(examples, lengths)]),
    }
    for key in SCALARS:
        if key in examples[0]:
            batch[key] = torch.tensor([float(e[key]) for e in examples])
    for key in TOKEN_FIELDS:
        if key in examples[0]:
            batch[key] = torch.tensor([list(e[key]) + [0.0] * (c - len(e[key])) for e in examples])
    return batch


SCALARS = ("weight", "advantage", "reward", "temperature")
TOKEN_FIELDS = ("old_logp", "ref_logp", "old_values", "token_advantage", "returns")


def batch_tokens(batch: dict) -> int:
    """Real (non-padding) tokens in a batch: what tokens/s counts."""
    return int(batch["attention_mask"].sum())


class BucketBatchSampler(Sampler):
    """Batches of similar length (less padding), a fresh seeded order every epoch.

    Indices are shuffled, then stably sorted by length bucket, so rows of one bucket mix
    across epochs; the batch order is shuffled too, so training does not run short-to-long."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, micro_batch_size: int | None = None):
        if batch_size < 1:
            raise ValueError(f"lora.batch_size must be >= 1, got {batch_size}")
        self.lengths = lengths
        self.batch_size = batch_size
        self.micro = micro_batch_size or batch_size
        self.seed = seed
        self.epoch = 0

    def __iter__(self):
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        order.sort(key=lambda i: self.lengths[i] // BUCKET_TOKENS)
        batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        rng.shuffle(batches)
        # A short batch goes last, where the epoch's end closes its optimizer step: its
        # micro-batches never share a step with the next batch's.
        batches.sort(key=lambda b: len(b) < self.batch_size)
        return iter([b[s:s + self.micro] for b in batches for s in range(0, len(b), self.micro)])

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full * -(-self.batch_size // self.micro) + -(-rest // self.micro)

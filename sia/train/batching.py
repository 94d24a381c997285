"""The one data path every algorithm shares: samples -> token ids -> length-bucketed batches.

A served sample (a rollout) is trained on the token ids the engine fed and sampled, exactly:
no decode/encode round trip (which can merge or split tokens), nothing appended (a reply that
ended on EOS has it among its sampled ids; one cut at a stop string ends with the string's
tokens, never with an EOS it did not draw). A sample without ids (gold SFT pairs, old rollout
files) is tokenised as the engine renders prompts (the chat template with the generation
prompt, no extra special tokens), plus the end-of-turn token when it ended the turn. A sample
longer than ``lora.max_seq_len`` is refused whole, never cut: a prompt cut from the left is a
prompt the model never saw. Only completion tokens are scored: a batch carries, per row, the
positions whose hidden state predicts a completion token, and the model applies its LM head to
those only.
"""
from __future__ import annotations

import random

import torch
from torch.utils.data import Sampler

from sia.engine.common import encode_text, render_prompt
from sia.train.samples import Sample

BUCKET_TOKENS = 16  # sequences whose lengths differ by less than this may share a batch


def encode_sample(tokenizer, sample: Sample, max_seq_len: int) -> dict | None:
    """{"input_ids", "n_prompt"} for one sample; None when it has no completion token or does
    not fit in ``max_seq_len`` tokens (refused: see ``sample_tokens`` to count them)."""
    prompt, completion = sample_tokens(tokenizer, sample)
    if not completion or len(prompt) + len(completion) > max_seq_len:
        return None
    return {"input_ids": prompt + completion, "n_prompt": len(prompt)}


def sample_tokens(tokenizer, sample: Sample) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of a sample: the served ids when it has them, else its text
    tokenised as the engine renders it (plus EOS when the reply ended the turn)."""
    if sample.prompt_ids is not None:
        prompt = list(sample.prompt_ids)
    else:
        text = sample.prompt if isinstance(sample.prompt, str) else render_prompt(tokenizer, sample.prompt)
        prompt = encode_text(tokenizer, text)
    if sample.completion_ids is not None:
        completion = list(sample.completion_ids)   # what was sampled, the ending EOS included
    else:
        completion = encode_text(tokenizer, sample.completion)
        if sample.eos:  # the chat template closes assistant turns with EOS; generation stops on it
            completion = completion + [tokenizer.eos_token_id]
    if not prompt:
        raise ValueError("a sample's prompt renders to no tokens; the prompt must end where the reply starts")
    return prompt, completion


def too_long(tokenizer, samples: list[Sample], max_seq_len: int) -> dict:
    """How many samples ``encode_sample`` refuses for length: {"refused", "of", "max_seq_len",
    "longest"} (for the training record: a refused sample is counted, never cut)."""
    lengths = [sum(map(len, sample_tokens(tokenizer, s))) for s in samples]
    return {"refused": sum(n > max_seq_len for n in lengths), "of": len(samples), "max_seq_len": int(max_seq_len),
            "longest": max(lengths, default=0)}


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

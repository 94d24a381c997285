"""What both engines (``hf``, ``vllm_engine``) and the trainer share, so that training sees
exactly what serving fed the model: the tokenizer and chat rendering, the prompt ids of a
batch and their checks, the ids that end a reply, the tokens behind a reply cut at a stop
string, the engine's running totals, and the device and dtype a model config names.

Light on purpose (torch is imported where a function needs it): the vLLM engine imports this
module, and the trainer imports it instead of the HF engine."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

from sia.engine.base import EngineStats, GenRequest, GenResult


# ---- prompts and replies -------------------------------------------------------------------

def load_tokenizer(model_dir):
    """The tokenizer as the engines and the trainer all use it (left padding for generation)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt text for a chat, ending where the assistant's reply starts."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_text(tokenizer, text: str) -> list[int]:
    # The chat template already writes every special token; adding a BOS would double it.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_requests(tokenizer, requests: list[GenRequest], max_context: int) -> list[list[int]]:
    """The prompt ids of each request (its chat rendered and encoded, as the trainer does),
    checked before any is served: ValueError naming the request when ``max_tokens`` < 1 or its
    prompt leaves no room in the model's context."""
    prompt_ids = [encode_text(tokenizer, render_prompt(tokenizer, r.messages)) for r in requests]
    for i, (request, ids) in enumerate(zip(requests, prompt_ids)):
        if request.max_tokens < 1:
            raise ValueError(f"request {i}: max_tokens must be >= 1, got {request.max_tokens}")
        if len(ids) >= max_context:
            raise ValueError(f"request {i}: prompt has {len(ids)} tokens, the model context is {max_context}")
    return prompt_ids


def count_batch(stats: EngineStats, results: list[GenResult], latency: float) -> None:
    """Add one served batch to an engine's running totals."""
    stats.requests += len(results)
    stats.batches += 1
    stats.prompt_tokens += sum(r.prompt_tokens for r in results)
    stats.completion_tokens += sum(r.completion_tokens for r in results)
    stats.generate_seconds += latency


def eos_ids(tokenizer, generation_eos) -> set[int]:
    """The ids that end a reply: the generation config's ``eos_token_id`` (an id, a list of
    ids or None) and the tokenizer's EOS."""
    ids = set(generation_eos if isinstance(generation_eos, list) else
              [generation_eos] if generation_eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def tokens_covering(tokenizer, tokens: list[int], n_chars: int) -> int:
    """The fewest leading tokens whose text reaches ``n_chars`` characters: the tokens that
    produced a reply's kept text when a stop string cut it (a token straddling the stop counts
    as kept)."""
    for k in range(len(tokens) + 1):
        if len(tokenizer.decode(tokens[:k], skip_special_tokens=True)) >= n_chars:
            return k
    return len(tokens)


# ---- device and precision (the HF engine and the trainer) ----------------------------------

@contextmanager
def quiet_peft():
    """PEFT calls a transformers API that transformers 5 deprecates; the warning is noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def pick_device(setting: str):
    """``model.device`` as a torch device; ``auto``: CUDA when there is one, else CPU."""
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_dtype(setting: str, device):
    """``auto``: bfloat16 where the hardware computes it natively (a CUDA GPU with bf16, a CPU
    with AVX512-BF16 or AMX: ~2.7x faster generation than float32 on this project's 2-core
    CPU), else float32 (emulated bf16 is slower than float32)."""
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))

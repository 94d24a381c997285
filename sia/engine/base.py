"""What every task-model engine offers: batched generation with token counts and
per-token log-probabilities, and LoRA adapters swapped by version name."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ContextManager, Protocol


@dataclass
class GenRequest:
    messages: list[dict]              # chat messages: {"role": "system"|"user"|"assistant", "content": str}
    max_tokens: int = 128
    temperature: float = 0.0          # 0 = greedy
    top_p: float = 1.0
    stop: list[str] | None = None     # the completion is cut before the first stop string
    seed: int | None = None           # for sampled decoding


@dataclass
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    token_logprobs: list[float] = field(default_factory=list)  # log p(token) under the raw model, per completion token
    finish_reason: str = "length"     # "stop" (EOS or stop string) | "length": what the harness sees
    latency_s: float = 0.0            # wall time of the batch this request was part of
    # What training needs (None: the engine does not report it; training falls back to text):
    # ``token_ids`` every token the engine drew, in order: the EOS that ended the reply and the
    # tokens that spelled a stop string included (``text`` leaves both out), so training on them
    # trains exactly what was sampled. ``finish``: "eos" | "stop" (a stop string) | "length".
    # ``prompt_ids``: the prompt exactly as fed to the model.
    token_ids: list[int] | None = None
    finish: str | None = None
    prompt_ids: list[int] | None = None


@dataclass
class EngineStats:
    requests: int = 0
    batches: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generate_seconds: float = 0.0


class Engine(Protocol):
    """Engines subclass this for the defaults (``asleep``)."""

    max_batch_size: int
    stats: EngineStats

    def generate(self, requests: list[GenRequest], adapter: str | None = None) -> list[GenResult]:
        """Generate for all requests (batched internally); ``adapter`` is a version name
        registered with ``add_adapter`` or None for the base weights."""

    def add_adapter(self, name: str, path: str) -> None:
        """Register a saved PEFT adapter directory under a version name."""

    def chat_template(self, messages: list[dict], completion: str | None = None) -> str:
        """The exact prompt text the engine feeds the model (used so training matches inference)."""

    def asleep(self) -> ContextManager[None]:
        """``with engine.asleep(): train(...)``: the engine's GPU memory is free inside (the
        weights lever trains there). Default: nothing to free (the engine and the trainer share
        the process's memory)."""
        return contextlib.nullcontext()

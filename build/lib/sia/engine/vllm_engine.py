"""The vLLM engine for GPU serving: the same contract as :class:`sia.engine.hf.HFEngine`,
with vLLM's continuous batching and multi-LoRA serving."""
from __future__ import annotations

import time

from sia.engine.base import EngineStats, GenRequest, GenResult
from sia.engine.model_cache import resolve_model_dir


class VLLMEngine:
    """Implements :class:`sia.engine.base.Engine` on ``vllm.LLM`` (needs vllm >= 0.10.2 for
    raw-model log-probabilities).

    Optional model-config keys: ``max_lora_rank`` (default 64, an upper bound on adapter
    ranks), ``max_loras`` (adapters resident on the GPU at once, default 4) and
    ``gpu_memory_utilization`` (default 0.5, leaving room for the LoRA trainer on the same GPU).

    One difference from the HF engine: when a stop string ends a reply, vLLM's token counts
    and log-probabilities include the tokens of the stop string (the text does not)."""

    def __init__(self, model_cfg, cache_dir):
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError("model.engine=vllm needs vLLM on a CUDA machine: pip install vllm") from error
        model_dir = resolve_model_dir(model_cfg, cache_dir)
        self.max_batch_size = int(model_cfg.max_batch_size)
        self.stats = EngineStats()
        self.llm = LLM(
            model=str(model_dir),
            dtype=str(model_cfg.dtype),
            max_model_len=int(model_cfg.max_context),
            max_num_seqs=self.max_batch_size,
            enable_lora=True,
            max_lora_rank=int(_optional(model_cfg, "max_lora_rank", 64)),
            max_loras=int(_optional(model_cfg, "max_loras", 4)),
            gpu_memory_utilization=float(_optional(model_cfg, "gpu_memory_utilization", 0.5)),
            logprobs_mode="raw_logprobs",  # log p under the model, before temperature/top_p
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._adapters: dict = {}      # version name -> LoRARequest
        self._next_lora_id = 1         # vLLM caches adapters by id: a re-added name gets a new one

    def chat_template(self, messages: list[dict], completion: str | None = None) -> str:
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return prompt + (completion or "")

    def add_adapter(self, name: str, path: str) -> None:
        from vllm.lora.request import LoRARequest

        self._adapters[name] = LoRARequest(name, self._next_lora_id, str(path))
        self._next_lora_id += 1

    def generate(self, requests: list[GenRequest], adapter: str | None = None) -> list[GenResult]:
        from vllm import SamplingParams

        if adapter is not None and adapter not in self._adapters:
            raise KeyError(f"unknown adapter {adapter!r}; registered: {sorted(self._adapters)}")
        # Token ids, not text: vLLM would otherwise add special tokens the template already has.
        prompts = [
            {"prompt_token_ids": self.tokenizer(self.chat_template(r.messages), add_special_tokens=False)["input_ids"]}
            for r in requests
        ]
        params = [
            SamplingParams(
                temperature=r.temperature,
                top_p=r.top_p if r.temperature > 0 else 1.0,
                max_tokens=r.max_tokens,
                stop=r.stop or None,
                seed=r.seed if r.temperature > 0 else None,
                logprobs=1,  # the chosen token's log-probability is always included
            )
            for r in requests
        ]
        started = time.perf_counter()
        outputs = self.llm.generate(
            prompts, params, lora_request=self._adapters.get(adapter) if adapter else None, use_tqdm=False
        )
        latency = time.perf_counter() - started
        results = [self._result(out, latency) for out in outputs]

        self.stats.requests += len(requests)
        self.stats.batches += 1
        self.stats.prompt_tokens += sum(r.prompt_tokens for r in results)
        self.stats.completion_tokens += sum(r.completion_tokens for r in results)
        self.stats.generate_seconds += latency
        return results

    def _result(self, output, latency: float) -> GenResult:
        completion = output.outputs[0]
        token_ids = list(completion.token_ids)
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs or [], token_ids)]
        finish = "stop" if completion.finish_reason == "stop" else "length"
        # Like the HF engine, the EOS token that ended the reply is not counted as text.
        if finish == "stop" and completion.stop_reason is None and token_ids and token_ids[-1] == self.tokenizer.eos_token_id:
            token_ids, logprobs = token_ids[:-1], logprobs[:-1]
        return GenResult(
            text=completion.text,
            prompt_tokens=len(output.prompt_token_ids),
            completion_tokens=len(token_ids),
            token_logprobs=logprobs,
            finish_reason=finish,
            latency_s=latency,
        )


def _optional(cfg, key: str, default):
    # Works for OmegaConf (struct or not) and for plain attribute objects.
    value = getattr(cfg, key, None)
    return default if value is None else value

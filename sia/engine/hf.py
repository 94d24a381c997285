"""The transformers + PEFT engine: batched chat generation on CPU (or one GPU) with raw-model
log-probabilities, stop strings and LoRA adapters swapped per call."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import torch
from transformers import (AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList, StoppingCriteria,
                          StoppingCriteriaList)

from sia.engine.base import Engine, EngineStats, GenRequest, GenResult
from sia.engine.common import (count_batch, encode_requests, eos_ids, load_tokenizer, pick_device, pick_dtype,
                               quiet_peft, render_prompt, tokens_covering)
from sia.engine.model_cache import resolve_model_dir


def plan_batches(requests: list[GenRequest], prompt_lengths: list[int], max_batch_size: int) -> list[list[int]]:
    """Request indices sorted by prompt length (less padding), cut into chunks of at most
    ``max_batch_size``. Greedy and sampled requests, whatever their temperature or seed,
    share a chunk: each sampled row draws from its own seeded generator (``_RowSampler``)."""
    indices = sorted(range(len(requests)), key=lambda i: prompt_lengths[i])
    return [indices[s:s + max_batch_size] for s in range(0, len(indices), max_batch_size)]


class _RowSampler(LogitsProcessor):
    """Per-row sampling inside one greedy ``generate``: a sampled row's scores become a one-hot
    of the token drawn from its own tempered, top-p-filtered distribution with its own
    generator, so the argmax picks it. A row's tokens depend on its seed and its logits only,
    not on which requests share its batch (rollouts give every sample its own seed). Greedy
    rows are left as they are. The engine's logits output stays the raw model's."""

    def __init__(self, requests: list[GenRequest], device: torch.device):
        self.rows = []
        for row, r in enumerate(requests):
            if r.temperature > 0:
                generator = torch.Generator(device=device)
                if r.seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(int(r.seed))
                self.rows.append((row, float(r.temperature), float(r.top_p), generator))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()   # generate keeps the tensor it passes in as the raw logits output
        for row, temperature, top_p, generator in self.rows:
            probs = torch.softmax(scores[row].float() / temperature, dim=-1)
            if top_p < 1.0:   # keep the most likely tokens until their mass reaches top_p
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(0) - sorted_probs >= top_p
                probs = probs.scatter(0, order[outside], 0.0)
            token = torch.multinomial(probs, 1, generator=generator)
            scores[row] = float("-inf")
            scores[row, token] = 0.0
        return scores


class _RowStopper(StoppingCriteria):
    """Marks a row finished at EOS, at its own token limit or once its text holds a stop
    string; ``generate`` halts when every row is finished. Remembers where each row stopped."""

    def __init__(self, tokenizer, prompt_width: int, limits: list[int], stops: list[list[str]], eos_ids: set[int]):
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.limits = limits
        self.stops = stops
        self.eos_ids = eos_ids
        self.stopped_at: list[int | None] = [None] * len(limits)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_width:]
        n = generated.shape[1]
        for row, stopped in enumerate(self.stopped_at):
            if stopped is not None:
                continue
            if int(generated[row, -1]) in self.eos_ids or n >= self.limits[row] or self._has_stop(row, generated[row]):
                self.stopped_at[row] = n
        done = [s is not None for s in self.stopped_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _has_stop(self, row: int, tokens: torch.Tensor) -> bool:
        if not self.stops[row]:
            return False
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return any(stop in text for stop in self.stops[row])


class HFEngine(Engine):
    """Implements :class:`sia.engine.base.Engine` with transformers ``generate`` and PEFT."""

    def __init__(self, model_cfg, cache_dir):
        model_dir = resolve_model_dir(model_cfg, cache_dir)
        self.device = pick_device(model_cfg.device)
        self.max_batch_size = int(model_cfg.max_batch_size)
        self.max_context = int(model_cfg.max_context)
        self.stats = EngineStats()
        self.tokenizer = load_tokenizer(model_dir)
        self.dtype = pick_dtype(str(model_cfg.dtype), self.device)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype).to(self.device).eval()
        self.eos_ids = eos_ids(self.tokenizer, self.model.generation_config.eos_token_id)
        # Public version name -> internal PEFT adapter name. Internal names are fresh per
        # load so a version can be replaced, and so any version string is allowed.
        self._adapters: dict[str, str] = {}
        self._loads = 0
        # The active adapter is model-wide state: one generate/add_adapter at a time.
        self._lock = threading.RLock()

    # ---- Engine protocol -------------------------------------------------------------

    def chat_template(self, messages: list[dict], completion: str | None = None) -> str:
        return render_prompt(self.tokenizer, messages) + (completion or "")

    def add_adapter(self, name: str, path: str) -> None:
        with self._lock:
            self._add_adapter(name, str(path))

    def generate(self, requests: list[GenRequest], adapter: str | None = None) -> list[GenResult]:
        with self._lock:
            return self._generate(requests, adapter)

    # ---- internals -------------------------------------------------------------------

    def _add_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        internal = f"adapter_{self._loads}"
        self._loads += 1
        with quiet_peft():
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=internal, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=internal, is_trainable=False)
        replaced = self._adapters.get(name)
        self._adapters[name] = internal
        if replaced is not None:
            self.model.set_adapter(internal)  # never delete the active adapter
            self.model.delete_adapter(replaced)
        self.model.eval()

    def _generate(self, requests: list[GenRequest], adapter: str | None) -> list[GenResult]:
        if adapter is not None and adapter not in self._adapters:
            raise KeyError(f"unknown adapter {adapter!r}; registered: {sorted(self._adapters)}")
        prompt_ids = encode_requests(self.tokenizer, requests, self.max_context)
        results: list[GenResult | None] = [None] * len(requests)
        with self._weights(adapter), torch.inference_mode():
            for chunk in plan_batches(requests, [len(p) for p in prompt_ids], self.max_batch_size):
                chunk_results = self._generate_chunk([requests[i] for i in chunk], [prompt_ids[i] for i in chunk])
                for i, result in zip(chunk, chunk_results):
                    results[i] = result
        return results

    @contextmanager
    def _weights(self, adapter: str | None):
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            yield
        elif adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(self._adapters[adapter])
            yield

    def _generate_chunk(self, requests: list[GenRequest], prompt_ids: list[list[int]]) -> list[GenResult]:
        width = max(len(ids) for ids in prompt_ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompt_ids], device=self.device)
        attention = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids], device=self.device
        )
        # Each row stops at its own limit; the batch runs to the longest one.
        limits = [min(r.max_tokens, self.max_context - len(ids)) for r, ids in zip(requests, prompt_ids)]
        stopper = _RowStopper(self.tokenizer, width, limits, [r.stop or [] for r in requests], self.eos_ids)
        sampler = _RowSampler(requests, self.device)
        started = time.perf_counter()
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max(limits),
            do_sample=False,   # sampled rows are drawn by _RowSampler, each with its own seed
            logits_processor=LogitsProcessorList([sampler] if sampler.rows else []),
            pad_token_id=pad,
            eos_token_id=sorted(self.eos_ids),
            stopping_criteria=StoppingCriteriaList([stopper]),
            output_logits=True,
            return_dict_in_generate=True,
        )
        latency = time.perf_counter() - started

        new_tokens = out.sequences[:, width:]
        logprobs = _chosen_logprobs(out.logits, new_tokens)
        results = []
        for row, request in enumerate(requests):
            end = stopper.stopped_at[row] or limits[row]
            result = self._finish_row(request, new_tokens[row, :end].tolist(), logprobs[row, :end].tolist())
            result.prompt_tokens = len(prompt_ids[row])
            result.prompt_ids = list(prompt_ids[row])
            result.latency_s = latency
            results.append(result)

        count_batch(self.stats, results, latency)
        return results

    def _finish_row(self, request: GenRequest, tokens: list[int], logprobs: list[float]) -> GenResult:
        """The reply of one row from every token it drew (``tokens``, kept whole as
        ``token_ids``): the text leaves out the ending EOS and anything from a stop string on."""
        sampled, finish = list(tokens), "length"
        if tokens and tokens[-1] in self.eos_ids:  # EOS ends the reply; it is not part of the text
            tokens, finish = tokens[:-1], "eos"
        text = self._decode(tokens)
        cut = _first_stop(text, request.stop or [])
        if cut is not None:
            text, finish = text[:cut], "stop"
            tokens = tokens[:tokens_covering(self.tokenizer, tokens, cut)]
        return GenResult(
            text=text,
            prompt_tokens=0,
            completion_tokens=len(tokens),
            token_logprobs=logprobs[:len(tokens)],
            finish_reason="length" if finish == "length" else "stop",
            token_ids=sampled,
            finish=finish,
        )

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def _chosen_logprobs(step_logits: tuple[torch.Tensor, ...], chosen: torch.Tensor) -> torch.Tensor:
    """log p(chosen token) under the raw model at each step, shape (batch, steps)."""
    columns = [
        torch.log_softmax(logits.float(), dim=-1).gather(1, chosen[:, t:t + 1])
        for t, logits in enumerate(step_logits)
    ]
    return torch.cat(columns, dim=1).cpu()


def _first_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(s) for s in stops if s]
    positions = [p for p in positions if p >= 0]
    return min(positions) if positions else None

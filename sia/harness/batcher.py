"""Batching of the workers' model calls onto one engine.

Pending requests go to ``engine.generate`` as one batch when every busy worker is waiting on
the model, when the batch is full, or when no new request arrived for a short window. A
worker's requests are validated here (they are untrusted data); token counts come from the
engine, never from the worker. The batcher knows workers only through ``Waiter``: a state
string, a ``wait_start`` time and counters, and a ``send(reply_dict)`` callback.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Any, Callable, Protocol

from sia.engine.base import GenRequest

BATCH_WINDOW_S = 0.02       # flush pending model calls when no new one came for this long
MAX_BATCH_WAIT_S = 0.2      # ... and never hold a request longer than this
MAX_TOKENS_PER_CALL = 2048  # engine time is not charged to the example: bound what one call may ask
ROLES = ("system", "user", "assistant")
MAX_TEMPERATURE = 10.0
# Below this a temperature is served greedy (temperature 0, recorded as 0): sampling at t -> 0
# is argmax, and dividing logits by ~1e-300 overflows to inf and kills the sampler (vLLM treats
# t < 1e-5 as greedy too).
GREEDY_BELOW = 1e-5
# Prompt characters one call may send, per token of the model's context: tokenising is charged
# to no example, so a prompt is refused on its length before the engine tokenises it. Text
# averages 1-5 characters a token; 10 leaves room for runs that tokenise densely.
CHARS_PER_TOKEN = 10
DEFAULT_MAX_PROMPT_CHARS = 200_000   # for an engine that does not say its context length
log = logging.getLogger(__name__)


class Waiter(Protocol):
    state: str              # "busy" computes; "waiting" waits for the engine; others are ignored
    wait_start: float
    llm_s: float
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    served: list
    job_id: str


def check_sampling(sampling: Any) -> dict | None:
    """A run's sampling override, validated: None, or {"temperature": float, "seed": int}."""
    if sampling is None:
        return None
    if not isinstance(sampling, dict) or set(sampling) - {"temperature", "seed"}:
        raise ValueError(f"sampling={sampling!r}: must be a dict with keys temperature and seed, "
                         "e.g. sampling={'temperature': 0.8, 'seed': 0}")
    t, seed = sampling.get("temperature"), sampling.get("seed", 0)
    if not _number(t) or not 0.0 <= t <= MAX_TEMPERATURE:
        raise ValueError(f"sampling temperature={t!r}: must be a number in [0, {MAX_TEMPERATURE:g}], e.g. 0.8")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"sampling seed={seed!r}: must be an int, e.g. 0")
    return {"temperature": _served_temperature(t), "seed": seed}


def call_seed(seed: int, job_id: str, call: int) -> int:
    """A distinct, reproducible seed per model call of a job: (run seed, job id, call index)."""
    digest = hashlib.sha256(f"{seed}\0{job_id}\0{call}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def max_prompt_chars(engine) -> int:
    """The most prompt characters one call may send to ``engine`` (see CHARS_PER_TOKEN)."""
    context = getattr(engine, "max_context", None)
    if isinstance(context, int) and not isinstance(context, bool) and context > 0:
        return context * CHARS_PER_TOKEN
    return DEFAULT_MAX_PROMPT_CHARS


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _served_temperature(t: float) -> float:
    """What a valid temperature is served at: below GREEDY_BELOW greedy (0), the limit of
    sampling as t -> 0 (the sampler's division by t overflows there)."""
    return float(t) if t >= GREEDY_BELOW else 0.0


def gen_request(raw: Any, max_new_tokens: int, max_chars: int = DEFAULT_MAX_PROMPT_CHARS) -> GenRequest:
    """A GenRequest from a worker's request dict; ValueError on anything malformed or out of
    bounds (the message says the bound)."""
    if not isinstance(raw, dict):
        raise ValueError("request is not an object")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError("each message needs a role in system/user/assistant and str content")
    chars = sum(len(m["content"]) for m in messages)
    if chars > max_chars:
        raise ValueError(f"the prompt has {chars} characters; at most {max_chars} are served per call "
                         f"({CHARS_PER_TOKEN} per token of the model's context): send a shorter prompt")
    max_tokens = raw.get("max_tokens") or max_new_tokens
    # an unset temperature / top_p: GenRequest's defaults (greedy, no nucleus cut), the one place they live
    temperature, top_p = raw.get("temperature", GenRequest.temperature), raw.get("top_p", GenRequest.top_p)
    stop, seed = raw.get("stop"), raw.get("seed")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError("max_tokens must be a positive int")
    if not _number(temperature) or not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise ValueError(f"temperature must be a number in [0, {MAX_TEMPERATURE:g}] (0: greedy; below "
                         f"{GREEDY_BELOW:g} is served greedy), got {temperature!r}")
    if not _number(top_p) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    if stop is not None and (not isinstance(stop, list) or len(stop) > 16 or not all(isinstance(s, str) and s for s in stop)):
        raise ValueError("stop must be a list of at most 16 non-empty strings")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError("seed must be an int or None")
    return GenRequest(messages=[{"role": m["role"], "content": m["content"]} for m in messages],
                      max_tokens=min(max_tokens, MAX_TOKENS_PER_CALL), temperature=_served_temperature(temperature),
                      top_p=float(top_p), stop=stop, seed=seed)


class Batcher:
    def __init__(self, engine, adapter: str | None, *, max_llm_calls: int, max_new_tokens: int,
                 send: Callable[[Any, dict], None], sampling: dict | None = None):
        self.engine = engine
        self.sampling = check_sampling(sampling)   # overrides every call's temperature and seed
        self.adapter = adapter
        self.max_llm_calls = max_llm_calls
        self.max_new_tokens = max_new_tokens
        self.max_prompt_chars = max_prompt_chars(engine)
        self.send = send   # send(waiter, reply message)
        self.pending: list[tuple[Waiter, list[GenRequest]]] = []
        self.first_request_t = 0.0
        self.last_request_t = 0.0

    def request(self, w: Waiter, raw_requests: Any) -> None:
        """A worker's ``llm`` message: queue it, or reply with an error at once."""
        if not isinstance(raw_requests, list) or not raw_requests:
            raise ValueError("llm message without requests")
        if w.llm_calls + len(raw_requests) > self.max_llm_calls:
            self.reply_error(w, "llm_budget", f"more than {self.max_llm_calls} model calls in one example")
            return
        try:
            requests = [gen_request(r, self.max_new_tokens, self.max_prompt_chars) for r in raw_requests]
        except ValueError as e:
            self.reply_error(w, "bad_request", str(e))
            return
        if self.sampling is not None:   # a rollout: sample, whatever the harness asked for
            for k, r in enumerate(requests):
                r.temperature = self.sampling["temperature"]
                # The full distribution: the trainer scores samples under temperature alone
                # (its old log-probs know no top_p), so a truncated draw would be off-policy.
                r.top_p = 1.0
                r.seed = call_seed(self.sampling["seed"], getattr(w, "job_id", ""), w.llm_calls + k)
        w.llm_calls += len(requests)
        w.state = "waiting"
        now = time.monotonic()
        w.wait_start = now
        if not self.pending:
            self.first_request_t = now
        self.last_request_t = now
        self.pending.append((w, requests))

    def drop(self, w: Waiter) -> None:
        self.pending = [(pw, reqs) for pw, reqs in self.pending if pw is not w]

    def reply_error(self, w: Waiter, kind: str, message: str) -> None:
        self.send(w, {"type": "llm_reply", "error": {"kind": kind, "message": message}})

    def due(self, now: float, anyone_busy: bool) -> bool:
        if not self.pending:
            return False
        if not anyone_busy:
            return True   # nobody else could join this batch
        if sum(len(reqs) for _, reqs in self.pending) >= self.engine.max_batch_size:
            return True
        return now - self.last_request_t >= BATCH_WINDOW_S or now - self.first_request_t >= MAX_BATCH_WAIT_S

    def next_due(self) -> float | None:
        if not self.pending:
            return None
        return min(self.last_request_t + BATCH_WINDOW_S, self.first_request_t + MAX_BATCH_WAIT_S)

    def flush(self) -> None:
        groups, self.pending = self.pending, []
        flat = [r for _, reqs in groups for r in reqs]
        size = max(1, int(self.engine.max_batch_size))
        outputs = []
        try:
            for start in range(0, len(flat), size):
                outputs += self.engine.generate(flat[start:start + size], self.adapter)
        except Exception:  # noqa: BLE001 - whatever a request makes the engine raise
            # One bad request (a prompt longer than the context, a value the sampler chokes
            # on) must fail only the example that sent it: serve each worker's requests alone.
            self._one_by_one(groups)
            return
        if len(outputs) != len(flat):
            raise RuntimeError(f"engine returned {len(outputs)} results for {len(flat)} requests")
        now = time.monotonic()
        pos = 0
        for w, reqs in groups:
            mine, pos = outputs[pos:pos + len(reqs)], pos + len(reqs)
            if w.state == "waiting":
                self._reply(w, reqs, mine, now)

    def _one_by_one(self, groups: list) -> None:
        for w, reqs in groups:
            try:
                outputs = self.engine.generate(reqs, self.adapter)
            except Exception as exc:  # noqa: BLE001 - fails this example's call, never the run
                if not isinstance(exc, ValueError):   # an engine fault, not a refused request: log it
                    log.warning("the engine failed a model call of job %s: %s: %s", getattr(w, "job_id", "?"),
                                type(exc).__name__, exc)
                if w.state == "waiting":
                    w.llm_s += time.monotonic() - w.wait_start
                    w.state = "busy"
                    message = str(exc) if isinstance(exc, ValueError) else (
                        f"the engine failed: {type(exc).__name__}: {exc}")
                    self.reply_error(w, "bad_request", message[:2000])
                continue
            if len(outputs) != len(reqs):
                raise RuntimeError(f"engine returned {len(outputs)} results for {len(reqs)} requests")
            if w.state == "waiting":
                self._reply(w, reqs, outputs, time.monotonic())

    def _reply(self, w: Waiter, requests: list[GenRequest], outputs: list, now: float) -> None:
        results = []
        for req, out in zip(requests, outputs):
            r = {"text": str(out.text), "prompt_tokens": int(out.prompt_tokens),
                 "completion_tokens": int(out.completion_tokens),
                 "logprobs": [float(x) for x in out.token_logprobs],
                 "finish_reason": str(out.finish_reason), "latency_s": float(out.latency_s),
                 "temperature": req.temperature, "seed": req.seed}
            results.append(r)
            w.prompt_tokens += r["prompt_tokens"]
            w.completion_tokens += r["completion_tokens"]
            # token ids only where training reads them (a rollout): val/test runs keep less
            w.served.append(served_record(req, out, r, round(now - w.wait_start, 6), ids=self.sampling is not None))
        w.llm_s += now - w.wait_start
        w.state = "busy"
        self.send(w, {"type": "llm_reply", "results": results})


def served_record(req: GenRequest, out, reply: dict, latency_s: float, ids: bool = True) -> dict:
    """The trusted record of one served call: what training reads (the sampling settings the
    engine used, how the reply ended, with ``ids`` the exact prompt and sampled token ids),
    never the harness's own account of it. The worker gets only ``reply``."""
    record = {"type": "llm_call", "messages": req.messages, "completion": reply["text"],
              "prompt_tokens": reply["prompt_tokens"], "completion_tokens": reply["completion_tokens"],
              "latency_s": latency_s, "logprobs": reply["logprobs"], "finish_reason": reply["finish_reason"],
              "temperature": req.temperature, "top_p": req.top_p, "seed": req.seed}
    finish = getattr(out, "finish", None)
    if finish in ("eos", "stop", "length"):
        record["finish"] = finish
    for key in ("prompt_ids", "token_ids") if ids else ():
        values = getattr(out, key, None)
        if values is not None:
            record["completion_ids" if key == "token_ids" else key] = [int(t) for t in values]
    return record

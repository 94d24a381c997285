"""The sandboxed harness worker: ``python -m sia.harness.worker``.

It speaks the ``sia.harness.protocol`` on stdin/stdout with its parent (``HarnessPool``):

    parent -> worker   {"type": "config", harness_path, resources, files, spec, max_llm_calls, max_new_tokens}
    worker -> parent   {"type": "ready", layers} | {"type": "import_error", message}
                       | {"type": "sandbox_error", message}
    parent -> worker   {"type": "job", id, kind, inputs, target}
    worker -> parent   {"type": "llm", requests: [GenRequest fields]}     (0..n times per job)
    parent -> worker   {"type": "llm_reply", results: [...]} | {"type": "llm_reply", error: {kind, message}}
                       (each result also says the temperature and seed the engine used: a rollout's
                       sampling override replaces what the harness asked for)
    worker -> parent   {"type": "result", id, answer, error, events}

Each ``llm_call`` event records the temperature and seed used and ``used`` (the harness
passed ``used=True``: this output became its answer). The protocol fds are moved to private descriptors before any harness code runs, and fd 1
points at stderr, so the harness's prints cannot corrupt the channel.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
import traceback
from typing import Any

from sia.harness import protocol
from sia.harness.contract import Completion
from sia.harness.limits import EVENT_BYTES, events_problem
from sia.harness.sandbox import SandboxSpec, SandboxUnavailable, apply_sandbox

ROLES = ("system", "user", "assistant")
TRACEBACK_LINES = 20
MESSAGE_CHARS = 4000


class LLMBudgetExceeded(RuntimeError):
    """The example asked for more model calls than ``max_llm_calls``."""


class Channel:
    """The private pipe pair to the parent."""

    def __init__(self, rfd: int, wfd: int):
        self.rfd, self.wfd = rfd, wfd

    def send(self, obj: Any) -> None:
        protocol.send(self.wfd, obj)

    def recv(self) -> Any:
        return protocol.recv(self.rfd)


def claim_protocol_fds() -> Channel:
    """Keep stdin/stdout for the protocol on fresh fds; give the harness /dev/null and stderr."""
    rfd, wfd = os.dup(0), os.dup(1)   # os.dup fds are close-on-exec: subprocesses do not get them
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return Channel(rfd, wfd)


def format_error(exc: BaseException) -> str:
    lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    return "\n".join(lines[-TRACEBACK_LINES:])[-MESSAGE_CHARS:]


# -- ctx -------------------------------------------------------------------------------------

class JobState:
    def __init__(self, max_calls: int):
        self.max_calls = max_calls
        self.calls = 0
        self.budget_exceeded = False
        self.events: list[dict] = []


def _check_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise TypeError("messages must be a non-empty list of {'role', 'content'} dicts")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise TypeError(f"bad chat message {m!r:.200}: need role in {ROLES} and str content")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


class LLM:
    """``ctx.llm``: every call goes to the parent, which batches it with other workers' calls."""

    def __init__(self, channel: Channel, state: JobState, max_new_tokens: int):
        self._channel = channel
        self._state = state
        self._max_new_tokens = max_new_tokens
        self._lock = threading.Lock()   # one request in flight: harness threads must not interleave frames

    def chat(self, messages, max_tokens=None, temperature=0.0, top_p=1.0, stop=None, seed=None,
             used=None) -> Completion:
        return self._generate(messages, 1, max_tokens, temperature, top_p, stop, seed, used)[0]

    def sample(self, messages, n, temperature=0.8, top_p=1.0, max_tokens=None, stop=None, seed=None,
               used=None) -> list[Completion]:
        return self._generate(messages, n, max_tokens, temperature, top_p, stop, seed, used)

    def mark_used(self, completion) -> None:
        """Credit an earlier call of this example as the source of the answer (see contract)."""
        events, k = self._state.events, getattr(completion, "call", None)
        if not (isinstance(k, int) and 0 <= k < len(events) and events[k].get("type") == "llm_call"):
            raise ValueError("mark_used takes a Completion that ctx.llm returned for this example")
        events[k]["used"] = True

    def _generate(self, messages, n, max_tokens, temperature, top_p, stop, seed, used=None) -> list[Completion]:
        messages = _check_messages(messages)
        if not isinstance(n, int) or n < 1:
            raise ValueError("n must be a positive int")
        if stop is not None and (isinstance(stop, str) or not all(isinstance(s, str) for s in stop)):
            raise TypeError("stop must be a list of strings or None")
        state = self._state
        if state.calls + n > state.max_calls:
            state.budget_exceeded = True
            raise LLMBudgetExceeded(f"more than {state.max_calls} model calls in one example")
        request = {"messages": messages, "max_tokens": int(max_tokens or self._max_new_tokens),
                   "temperature": float(temperature), "top_p": float(top_p),
                   "stop": list(stop) if stop else None, "seed": seed}
        # Distinct seeds per sample, or n seeded samples would all be identical.
        requests = [dict(request, seed=None if seed is None else int(seed) + i) for i in range(n)]
        with self._lock:
            state.calls += n
            start = time.monotonic()
            self._channel.send({"type": "llm", "requests": requests})
            reply = self._channel.recv()
            latency = time.monotonic() - start
        if not isinstance(reply, dict) or reply.get("type") != "llm_reply":
            raise RuntimeError("protocol error: expected an llm_reply")
        if reply.get("error"):
            err = reply["error"]
            if err.get("kind") == "llm_budget":
                state.budget_exceeded = True
                raise LLMBudgetExceeded(err.get("message", "model call budget exceeded"))
            raise ValueError(f"model request refused: {err.get('message')}")
        completions = []
        for r in reply["results"]:
            c = Completion(text=r["text"], prompt_tokens=r["prompt_tokens"], completion_tokens=r["completion_tokens"],
                           logprobs=list(r.get("logprobs") or []), finish_reason=r.get("finish_reason", "length"))
            # temperature/seed: what the engine used (a rollout's override), not what was asked;
            # used: the harness says this output became its answer.
            c.call = len(state.events)
            state.events.append({"type": "llm_call", "messages": messages, "completion": c.text,
                                 "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                                 "latency_s": round(latency, 6), "logprobs": c.logprobs,
                                 "finish_reason": c.finish_reason,
                                 "temperature": r.get("temperature", request["temperature"]),
                                 "seed": r.get("seed", request["seed"]),
                                 "used": None if used is None else bool(used)})   # None: not marked
            completions.append(c)
        return completions


class Context:
    """The ``ctx`` a harness receives (see sia.harness.contract)."""

    def __init__(self, llm: LLM, resources: dict, files: dict, example_id: str, events: list[dict]):
        self.llm = llm
        self.resources = resources
        self.files = files
        self.example_id = example_id
        self._events = events

    def log(self, kind: str, **data) -> None:
        self._events.append({**data, "type": str(kind)})


# -- jobs ------------------------------------------------------------------------------------

def import_harness(path: str):
    """(module, None) or (None, error text)."""
    try:
        spec = importlib.util.spec_from_file_location("harness", path)
        if spec is None or spec.loader is None:
            return None, f"cannot import {path}"
        module = importlib.util.module_from_spec(spec)
        sys.modules["harness"] = module
        spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001 - SystemExit at import is a harness bug too
        return None, format_error(e)
    if not callable(getattr(module, "solve", None)):
        return None, "the harness defines no solve(inputs, ctx)"
    return module, None


def _check_sft_pair(answer: Any) -> None:
    if (not isinstance(answer, dict) or not isinstance(answer.get("completion"), str)
            or not isinstance(answer.get("messages"), list)):
        raise TypeError("sft_pair must return {'messages': [...], 'completion': str}")
    _check_messages(answer["messages"])


def run_job(job: dict, module, channel: Channel, config: dict) -> dict:
    state = JobState(int(config["max_llm_calls"]))
    llm = LLM(channel, state, int(config["max_new_tokens"]))
    ctx = Context(llm, config["resources"], config["files"], str(job["id"]), state.events)
    answer, error = None, None
    try:
        if job.get("kind", "solve") == "sft_pair":
            fn = getattr(module, "sft_pair", None)
            if not callable(fn):
                raise AttributeError("the harness defines no sft_pair(inputs, target, ctx)")
            answer = fn(job["inputs"], job.get("target"), ctx)
            try:
                _check_sft_pair(answer)
            except TypeError as e:
                error = {"kind": "bad_answer", "message": str(e)}
        else:
            answer = module.solve(job["inputs"], ctx)
    except MemoryError as e:
        error = {"kind": "memory", "message": format_error(e)}
    except LLMBudgetExceeded as e:
        error = {"kind": "llm_budget", "message": str(e)}
    except BaseException as e:  # noqa: BLE001 - sys.exit() in a harness fails the example only
        error = {"kind": "exception", "message": format_error(e)}
    if state.budget_exceeded and error is None:   # caught by the harness: still over budget
        error = {"kind": "llm_budget", "message": f"more than {state.max_calls} model calls in one example"}
    if error is None:
        try:
            protocol.encode(answer)
        except MemoryError as e:
            error = {"kind": "memory", "message": format_error(e)}
        except (TypeError, ValueError, RecursionError) as e:
            error = {"kind": "bad_answer", "message": f"answer cannot be sent: {type(e).__name__}: {e}"[:MESSAGE_CHARS]}
    events = state.events
    # A trajectory past the limit fails the example here, before 60 MB cross the pipe (the
    # parent checks again: this process is not trusted).
    try:
        problem = events_problem(events, int(config.get("max_event_bytes", EVENT_BYTES)))
    except Exception:  # noqa: BLE001 - an odd logged object: encode_result copes, the parent checks
        problem = ""
    if problem:
        error, events = {"kind": "bad_answer", "message": problem}, [{"type": "events_dropped", "reason": problem}]
    if error is not None:
        answer = None
    return {"type": "result", "id": job["id"], "answer": answer, "error": error, "events": events}


def encode_result(result: dict) -> bytes:
    """A frame for the result; drops events, then the answer, rather than exceed the size
    limit, and says which it was when even that fails."""
    try:
        return protocol.frame(protocol.encode(result, lenient=True))
    except (protocol.ProtocolError, RecursionError, ValueError):
        pass
    result = dict(result, events=[{"type": "events_dropped", "reason": "trajectory too large to send"}])
    try:
        return protocol.frame(protocol.encode(result, lenient=True))
    except (protocol.ProtocolError, RecursionError, ValueError) as e:
        if isinstance(e, protocol.ProtocolError):
            why = f"answer too large to send ({e})"
        else:
            why = f"result cannot be sent: {type(e).__name__}: {e}"
        result.update(answer=None, error={"kind": "bad_answer", "message": why[:MESSAGE_CHARS]})
        return protocol.frame(protocol.encode(result, lenient=True))


def build_spec(config: dict) -> SandboxSpec:
    """The config's spec plus what this worker needs: the harness file itself (not its
    folder, which may hold other files), the public files, and the scratch dir (cwd)."""
    p = config.get("spec", {})
    base = SandboxSpec()   # what the parent left unset: the spec's own defaults, the one place they live
    return SandboxSpec(
        memory_mb=int(p.get("memory_mb", base.memory_mb)),
        read_paths=[config["harness_path"], *config["files"].values(), *p.get("read_paths", [])],
        write_paths=[os.getcwd(), *p.get("write_paths", [])],
        exec_paths=list(p.get("exec_paths", [])),
        deny_paths=list(p.get("deny_paths", [])),
        strict=bool(p.get("strict", base.strict)),
        scratch_mb=int(p.get("scratch_mb", base.scratch_mb)),   # the scratch (cwd) becomes a tmpfs this big
    )


def main() -> int:
    channel = claim_protocol_fds()
    config = channel.recv()
    try:
        layers = apply_sandbox(build_spec(config))
    except SandboxUnavailable as e:
        channel.send({"type": "sandbox_error", "message": str(e)})
        return 3
    module, error = import_harness(config["harness_path"])
    if error is not None:
        channel.send({"type": "import_error", "message": error})
        return 2
    channel.send({"type": "ready", "layers": layers})
    while True:
        try:
            msg = channel.recv()
        except EOFError:
            return 0
        if msg.get("type") != "job":
            return 0
        protocol.write_all(channel.wfd, encode_result(run_job(msg, module, channel, config)))


if __name__ == "__main__":
    sys.exit(main())

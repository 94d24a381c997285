"""The harness worker pool: runs jobs in sandboxed workers and batches their model calls.

One parent event loop (``selectors`` over the workers' pipes) dispatches jobs to idle
workers and collects their model requests. Pending requests go to ``engine.generate`` as
one batch when every busy worker is waiting on the model, when the batch is full, or when
no new request arrived for a short window. The per-example timeout counts only the time a
worker computes, not the time it waits for the engine. A worker that times out, crashes or
breaks the protocol is killed (its whole process group) and replaced for the next job.

Everything a worker sends is untrusted data: decoded by ``sia.harness.protocol`` (never
pickle), validated, and token counts are taken from the engine, not from the worker.
"""
from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from typing import Any, get_args

from tqdm import tqdm

from sia.engine.base import GenRequest
from sia.harness import protocol
from sia.harness.contract import ErrorKind, Job, JobResult
from sia.harness.sandbox import SIA_DIR, SandboxUnavailable, scrubbed_env

BATCH_WINDOW_S = 0.02       # flush pending model calls when no new one came for this long
MAX_BATCH_WAIT_S = 0.2      # ... and never hold a request longer than this
POLL_S = 0.5                # upper bound on a select(): notice dead workers promptly
MIN_STARTUP_S = 30.0        # interpreter start + harness import, on a loaded machine
WARMUP_WAIT_S = 5.0         # hold the first jobs until the first workers are all up (or this passes)
MAX_TOKENS_PER_CALL = 2048  # engine time is not charged to the example: bound what one call may ask
STDERR_TAIL_BYTES = 8192
ERROR_KINDS = set(get_args(ErrorKind))
ROLES = ("system", "user", "assistant")
log = logging.getLogger(__name__)


class _Worker:
    """Parent-side state of one worker process."""

    def __init__(self, proc: subprocess.Popen, scratch: str):
        self.proc = proc
        self.scratch = scratch
        self.reader = protocol.FrameReader()
        self.outbox = bytearray()
        self.stderr_tail = bytearray()
        self.state = "starting"   # starting | idle | busy | waiting | dead
        self.started = time.monotonic()
        self.job: int | None = None
        self.reset_job()

    def reset_job(self, index: int | None = None) -> None:
        self.job = index
        self.job_start = time.monotonic()
        self.llm_s = 0.0
        self.wait_start = 0.0
        self.llm_calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.served: list[dict] = []   # the job's model calls as the parent saw them

    def compute_s(self, now: float) -> float:
        """Wall time of the current job minus the time spent waiting for the engine."""
        waiting = now - self.wait_start if self.state == "waiting" else 0.0
        return now - self.job_start - self.llm_s - waiting


def _gen_request(raw: Any, max_new_tokens: int) -> GenRequest:
    """A GenRequest from a worker's request dict; ValueError on anything malformed."""
    if not isinstance(raw, dict):
        raise ValueError("request is not an object")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError("each message needs a role in system/user/assistant and str content")
    max_tokens = raw.get("max_tokens") or max_new_tokens
    temperature, top_p, stop, seed = raw.get("temperature", 0.0), raw.get("top_p", 1.0), raw.get("stop"), raw.get("seed")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError("max_tokens must be a positive int")
    if not isinstance(temperature, (int, float)) or not 0.0 <= temperature <= 10.0:
        raise ValueError("temperature must be a number in [0, 10]")
    if not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
        raise ValueError("top_p must be a number in (0, 1]")
    if stop is not None and (not isinstance(stop, list) or len(stop) > 16 or not all(isinstance(s, str) and s for s in stop)):
        raise ValueError("stop must be a list of at most 16 non-empty strings")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError("seed must be an int or None")
    return GenRequest(messages=[{"role": m["role"], "content": m["content"]} for m in messages],
                      max_tokens=min(max_tokens, MAX_TOKENS_PER_CALL), temperature=float(temperature),
                      top_p=float(top_p), stop=stop, seed=seed)


def _clean_error(error: Any) -> dict | None:
    if error is None:
        return None
    if isinstance(error, dict) and error.get("kind") in ERROR_KINDS and isinstance(error.get("message"), str):
        return {"kind": error["kind"], "message": error["message"]}
    return {"kind": "crash", "message": f"malformed error report from the worker: {error!r:.300}"}


def _exit_description(code: int | None) -> str:
    if code is None:
        return "stopped responding"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _looks_like_memory(tail: str) -> bool:
    return any(s in tail for s in ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory"))


class _Session:
    """The workers and event loop of one run() or check() call."""

    def __init__(self, pool: "HarnessPool", config: dict, adapter: str | None):
        self.pool = pool
        self.config_frame = protocol.pack(config)
        self.adapter = adapter
        self.sel = selectors.DefaultSelector()
        self.workers: list[_Worker] = []
        self.pending: list[tuple[_Worker, list[GenRequest]]] = []
        self.first_request_t = 0.0
        self.last_request_t = 0.0
        self.import_error: str | None = None
        self.finished: list[tuple[int, JobResult]] = []   # filled by the event handlers
        self.layers: dict | None = None
        self.jobs: list[Job] = []

    # -- worker processes ------------------------------------------------------------------

    def start_worker(self) -> _Worker:
        scratch = tempfile.mkdtemp(prefix="w", dir=self.pool.scratch_dir())
        env = scrubbed_env(scratch)
        env["PYTHONPATH"] = os.path.dirname(SIA_DIR)   # the folder holding `sia`; readable is only sia/
        proc = subprocess.Popen([sys.executable, "-m", "sia.harness.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=scratch, env=env,
                                start_new_session=True, close_fds=True)
        w = _Worker(proc, scratch)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            os.set_blocking(f.fileno(), False)
        self.sel.register(proc.stdout, selectors.EVENT_READ, (w, "out"))
        self.sel.register(proc.stderr, selectors.EVENT_READ, (w, "err"))
        self.workers.append(w)
        self.send(w, self.config_frame)
        return w

    def send(self, w: _Worker, data: bytes) -> None:
        if w.state == "dead":
            return
        was_empty = not w.outbox
        w.outbox += data
        if was_empty:
            self._flush_outbox(w)
            if w.outbox:
                self.sel.register(w.proc.stdin, selectors.EVENT_WRITE, (w, "in"))

    def _flush_outbox(self, w: _Worker) -> None:
        # Non-blocking: a worker that stops reading cannot stall the parent.
        try:
            while w.outbox:
                n = os.write(w.proc.stdin.fileno(), w.outbox[: 1 << 20])
                del w.outbox[:n]
        except BlockingIOError:
            pass
        except OSError:
            w.outbox.clear()   # broken pipe: the death is noticed on its stdout

    def kill(self, w: _Worker) -> None:
        if w.state == "dead":
            return
        w.state = "dead"
        try:
            os.killpg(w.proc.pid, signal.SIGKILL)   # the worker and everything it started
        except (ProcessLookupError, PermissionError):
            pass
        try:
            w.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._drain(w, w.proc.stderr, "err")
        for f in (w.proc.stdin, w.proc.stdout, w.proc.stderr):
            try:
                self.sel.unregister(f)
            except (KeyError, ValueError):
                pass
            try:
                f.close()
            except OSError:
                pass
        self.pending = [(pw, reqs) for pw, reqs in self.pending if pw is not w]
        shutil.rmtree(w.scratch, ignore_errors=True)

    def close(self) -> None:
        for w in self.workers:
            self.kill(w)
        self.workers.clear()
        self.sel.close()

    def live_workers(self) -> list[_Worker]:
        return [w for w in self.workers if w.state != "dead"]

    # -- results ---------------------------------------------------------------------------

    def finish_job(self, w: _Worker, answer: Any = None, error: dict | None = None,
                   events: list | None = None) -> None:
        index = w.job
        if index is None:
            return
        now = time.monotonic()
        llm_s = w.llm_s + (now - w.wait_start if w.state == "waiting" else 0.0)
        # A job that died in its worker keeps the trajectory the parent saw: its model calls.
        events = events if events is not None else w.served
        result = JobResult(id=self.jobs[index].id, answer=answer, error=error, events=events,
                           wall_s=now - w.job_start, llm_s=llm_s, prompt_tokens=w.prompt_tokens,
                           completion_tokens=w.completion_tokens)
        self.finished.append((index, result))
        w.job = None

    def fail_worker(self, w: _Worker, kind: str, message: str) -> None:
        """Kill ``w``; its job (if any) fails with ``kind``; a dying starter is an import failure."""
        if w.state == "starting":
            self.import_error = self.import_error or message
        elif w.job is not None:
            self.finish_job(w, error={"kind": kind, "message": message})
        self.kill(w)

    def on_death(self, w: _Worker) -> None:
        self._drain(w, w.proc.stdout, "out")   # a final message may still be in the pipe
        if w.state == "dead":
            return
        try:
            code = w.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None   # it closed the channel but lives on: killed below
        self._drain(w, w.proc.stderr, "err")
        tail = w.stderr_tail.decode("utf-8", "replace").strip()
        how = f"the worker {_exit_description(code)}"
        detail = f"{how}; its stderr ends with:\n{tail[-2000:]}" if tail else how
        self.fail_worker(w, "memory" if _looks_like_memory(tail) else "crash", detail)

    # -- events ----------------------------------------------------------------------------

    def _drain(self, w: _Worker, f, what: str) -> None:
        if f.closed:
            return
        try:
            total = 0
            while total < (8 << 20):
                chunk = os.read(f.fileno(), 1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if what == "err":
                    w.stderr_tail = (w.stderr_tail + chunk)[-STDERR_TAIL_BYTES:]
                else:
                    self.feed(w, chunk)
                    if w.state == "dead":
                        return
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass

    def feed(self, w: _Worker, data: bytes) -> None:
        try:
            messages = w.reader.feed(data)
        except protocol.ProtocolError as e:
            self.fail_worker(w, "crash", f"protocol violation by the worker: {e}")
            return
        for msg in messages:
            if w.state == "dead":
                return
            try:
                self.handle(w, msg)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                self.fail_worker(w, "crash", f"protocol violation by the worker: {type(e).__name__}: {e}")

    def handle(self, w: _Worker, msg: dict) -> None:
        kind = msg["type"]
        if kind == "ready" and w.state == "starting":
            w.state = "idle"
            if self.layers is None and isinstance(msg.get("layers"), dict):
                self.layers = msg["layers"]
                if self.layers.get("errors"):
                    log.warning("harness workers run with sandbox layers missing: %s", self.layers["errors"])
        elif kind == "import_error" and w.state == "starting":
            self.import_error = str(msg["message"])
            self.kill(w)
        elif kind == "sandbox_error" and w.state == "starting":
            self.kill(w)
            raise SandboxUnavailable(f"harness worker: {msg['message']}")
        elif kind == "llm" and w.state == "busy":
            self.on_llm_request(w, msg["requests"])
        elif kind == "result" and w.state == "busy" and msg["id"] == self.jobs[w.job].id:
            events = msg.get("events")
            if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
                events = [{"type": "events_dropped", "reason": "malformed events from the worker"}]
            self.finish_job(w, answer=msg.get("answer"), error=_clean_error(msg.get("error")), events=events)
            w.state = "idle"
        else:
            raise ValueError(f"unexpected {kind!r} message while {w.state}")

    def on_llm_request(self, w: _Worker, raw_requests: list) -> None:
        max_calls = self.pool.max_llm_calls
        if not isinstance(raw_requests, list) or not raw_requests:
            raise ValueError("llm message without requests")
        if w.llm_calls + len(raw_requests) > max_calls:
            self.reply_error(w, "llm_budget", f"more than {max_calls} model calls in one example")
            return
        try:
            requests = [_gen_request(r, self.pool.max_new_tokens) for r in raw_requests]
        except ValueError as e:
            self.reply_error(w, "bad_request", str(e))
            return
        w.llm_calls += len(requests)
        w.state = "waiting"
        now = time.monotonic()
        w.wait_start = now
        if not self.pending:
            self.first_request_t = now
        self.last_request_t = now
        self.pending.append((w, requests))

    def reply_error(self, w: _Worker, kind: str, message: str) -> None:
        self.send(w, protocol.pack({"type": "llm_reply", "error": {"kind": kind, "message": message}}))

    # -- batching --------------------------------------------------------------------------

    def batch_due(self, now: float) -> bool:
        if not self.pending:
            return False
        if not any(w.state == "busy" for w in self.workers):
            return True   # nobody else could join this batch
        if sum(len(reqs) for _, reqs in self.pending) >= self.pool.engine.max_batch_size:
            return True
        return now - self.last_request_t >= BATCH_WINDOW_S or now - self.first_request_t >= MAX_BATCH_WAIT_S

    def flush_batch(self) -> None:
        groups, self.pending = self.pending, []
        flat = [r for _, reqs in groups for r in reqs]
        size = max(1, int(self.pool.engine.max_batch_size))
        outputs = []
        try:
            for start in range(0, len(flat), size):
                outputs += self.pool.engine.generate(flat[start:start + size], self.adapter)
        except ValueError:
            # One bad request (e.g. a prompt longer than the context) must fail only the
            # example that sent it: serve each worker's requests on their own.
            self.flush_one_by_one(groups)
            return
        if len(outputs) != len(flat):
            raise RuntimeError(f"engine returned {len(outputs)} results for {len(flat)} requests")
        now = time.monotonic()
        pos = 0
        for w, reqs in groups:
            mine, pos = outputs[pos:pos + len(reqs)], pos + len(reqs)
            if w.state == "waiting":
                self.reply(w, reqs, mine, now)

    def flush_one_by_one(self, groups: list) -> None:
        for w, reqs in groups:
            try:
                outputs = self.pool.engine.generate(reqs, self.adapter)
            except ValueError as exc:
                if w.state == "waiting":
                    self.reply_error(w, "bad_request", str(exc))
                continue
            if w.state == "waiting":
                self.reply(w, reqs, outputs, time.monotonic())

    def reply(self, w: _Worker, requests: list[GenRequest], outputs: list, now: float) -> None:
        results = []
        for req, out in zip(requests, outputs):
            r = {"text": str(out.text), "prompt_tokens": int(out.prompt_tokens),
                 "completion_tokens": int(out.completion_tokens),
                 "logprobs": [float(x) for x in out.token_logprobs],
                 "finish_reason": str(out.finish_reason), "latency_s": float(out.latency_s)}
            results.append(r)
            w.prompt_tokens += r["prompt_tokens"]
            w.completion_tokens += r["completion_tokens"]
            w.served.append({"type": "llm_call", "messages": req.messages, "completion": r["text"],
                             "prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"],
                             "latency_s": round(now - w.wait_start, 6), "logprobs": r["logprobs"],
                             "finish_reason": r["finish_reason"]})
        w.llm_s += now - w.wait_start
        w.state = "busy"
        self.send(w, protocol.pack({"type": "llm_reply", "results": results}))

    # -- the loop --------------------------------------------------------------------------

    def check_deadlines(self, now: float) -> None:
        timeout = self.pool.example_timeout_s
        startup = max(timeout, MIN_STARTUP_S)
        for w in self.live_workers():
            if w.state == "busy" and w.compute_s(now) >= timeout:
                self.fail_worker(w, "timeout", f"no answer after {timeout:g} s (not counting time waiting for the model)")
            elif w.state == "starting" and now - w.started >= startup:
                self.fail_worker(w, "import", f"the worker did not import the harness within {startup:g} s")
            elif w.proc.poll() is not None:
                self.on_death(w)

    def select_timeout(self, now: float) -> float:
        timeout = POLL_S
        if self.pending:
            due = min(self.last_request_t + BATCH_WINDOW_S, self.first_request_t + MAX_BATCH_WAIT_S)
            timeout = min(timeout, due - now)
        for w in self.workers:
            if w.state == "busy":
                timeout = min(timeout, self.pool.example_timeout_s - w.compute_s(now))
        return max(timeout, 0.0)

    def step(self) -> None:
        """One round: wait for pipe events (bounded), handle them, enforce deadlines, batch."""
        for key, _ in self.sel.select(self.select_timeout(time.monotonic())):
            w, what = key.data
            if w.state == "dead":
                continue
            if what == "in":
                self._flush_outbox(w)
                if not w.outbox:
                    self.sel.unregister(w.proc.stdin)
                continue
            f = w.proc.stdout if what == "out" else w.proc.stderr
            try:
                chunk = os.read(f.fileno(), 1 << 20)
            except (BlockingIOError, InterruptedError):
                continue
            if chunk:
                self._drain_chunk(w, what, chunk)
            elif what == "out":
                self.on_death(w)
            else:
                self.sel.unregister(f)   # stderr closed; stdout EOF decides death
        now = time.monotonic()
        self.check_deadlines(now)
        if self.batch_due(now):
            self.flush_batch()

    def _drain_chunk(self, w: _Worker, what: str, chunk: bytes) -> None:
        if what == "err":
            w.stderr_tail = (w.stderr_tail + chunk)[-STDERR_TAIL_BYTES:]
        else:
            self.feed(w, chunk)

    def run(self, jobs: list[Job], bar: tqdm) -> list[JobResult]:
        self.jobs = jobs
        results: list[JobResult | None] = [None] * len(jobs)
        queue = deque(range(len(jobs)))
        target_workers = min(self.pool.workers, len(jobs))
        first_workers = [self.start_worker() for _ in range(target_workers)]
        remaining = len(jobs)
        warmup_until = time.monotonic() + WARMUP_WAIT_S
        while remaining and self.import_error is None:
            # Starting every worker's first job together lets their first model calls share a
            # batch; otherwise the first worker up could run many short jobs alone.
            warming = time.monotonic() < warmup_until and any(w.state == "starting" for w in first_workers)
            for w in self.live_workers():
                if w.state == "idle" and queue and not warming:
                    index = queue.popleft()
                    job = jobs[index]
                    w.reset_job(index)
                    w.state = "busy"
                    # Targets travel only with sft_pair jobs (train split); a solve job never
                    # carries one, even if the caller filled it in by mistake.
                    target = job.target if job.kind == "sft_pair" else None
                    self.send(w, protocol.pack({"type": "job", "id": job.id, "kind": job.kind,
                                                "inputs": job.inputs, "target": target}))
            in_flight = sum(1 for w in self.workers if w.job is not None)
            while queue and len(self.live_workers()) < min(target_workers, len(queue) + in_flight):
                self.start_worker()
            self.step()
            for index, result in self.finished:
                results[index] = result
                remaining -= 1
                bar.update(1)
            self.finished.clear()
        if self.import_error is not None:
            for i, job in enumerate(jobs):
                if results[i] is None:
                    results[i] = JobResult(id=job.id, error={"kind": "import", "message": self.import_error})
                    bar.update(1)
        return results  # type: ignore[return-value]

    def check(self) -> str | None:
        w = self.start_worker()
        while w.state == "starting" and self.import_error is None:
            self.step()
        return self.import_error


class HarnessPool:
    """Sandboxed harness workers whose model calls are batched on one engine.

    Use as a context manager; ``close()`` kills every worker and removes the scratch dirs.
    Workers live for one ``run()`` call (reused across its jobs), so no harness state leaks
    from one call to the next.
    """

    def __init__(self, engine, *, workers: int = 8, example_timeout_s: float = 60, memory_mb: int = 2048,
                 max_llm_calls: int = 8, max_new_tokens: int = 48, strict: bool = True,
                 scratch_root: str | None = None, deny_paths: list[str] | None = None):
        self.engine = engine
        self.workers = max(1, int(workers))
        self.example_timeout_s = float(example_timeout_s)
        self.memory_mb = int(memory_mb)
        self.max_llm_calls = int(max_llm_calls)
        self.max_new_tokens = int(max_new_tokens)
        self.strict = bool(strict)
        self.scratch_root = scratch_root
        self.deny_paths = [os.path.abspath(p) for p in deny_paths or []]   # never readable by a harness
        self.layers: dict | None = None   # sandbox layers the last worker reported
        self._scratch: str | None = None
        self._session: _Session | None = None

    def __enter__(self) -> "HarnessPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def scratch_dir(self) -> str:
        if self._scratch is None:
            if self.scratch_root:
                os.makedirs(self.scratch_root, exist_ok=True)
            self._scratch = tempfile.mkdtemp(prefix="sia-pool-", dir=self.scratch_root)   # mode 0700
        return self._scratch

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _config(self, harness_path: str, resources: dict, files: dict[str, str]) -> dict:
        return {"type": "config", "harness_path": os.path.abspath(harness_path), "resources": resources,
                "files": {str(k): os.path.abspath(v) for k, v in files.items()},
                "policy": {"memory_mb": self.memory_mb, "strict": self.strict, "deny_paths": self.deny_paths},
                "max_llm_calls": self.max_llm_calls, "max_new_tokens": self.max_new_tokens}

    def _open(self, harness_path, resources, files, adapter) -> _Session:
        self.close()
        self._session = _Session(self, self._config(harness_path, resources or {}, files or {}), adapter)
        return self._session

    def check(self, harness_path: str, resources: dict, files: dict[str, str]) -> str | None:
        """None when the harness imports in a sandboxed worker and defines solve, else the error."""
        try:
            error = self._open(harness_path, resources, files, None).check()
            self.layers = self._session.layers
            return error
        finally:
            self.close()

    def run(self, harness_path: str, jobs: list[Job], resources: dict, files: dict[str, str],
            adapter: str | None = None, progress: bool = True, desc: str = "") -> list[JobResult]:
        """Results in job order. Harness failures are per-job errors; only a sandbox that cannot
        be applied (strict mode) or an engine failure raises."""
        if not jobs:
            return []
        session = self._open(harness_path, resources, files, adapter)
        try:
            with tqdm(total=len(jobs), disable=not progress, desc=desc or "harness", leave=False) as bar:
                results = session.run(jobs, bar)
            self.layers = session.layers
            return results
        finally:
            self.close()

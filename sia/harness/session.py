"""The event loop of one ``HarnessPool.run()`` or ``check()``: workers, jobs, deadlines.

One ``selectors`` loop over the workers' pipes dispatches jobs to idle workers and hands
their model requests to ``sia.harness.batcher``. The per-example timeout counts only the
time a worker computes, not the time it waits for the engine. A worker that times out,
crashes, breaks the protocol, or leaves processes or threads running after its example
returned is killed with everything it started (``sia.harness.supervisor``) and replaced.
"""
from __future__ import annotations

import logging
import os
import selectors
import shutil
import time
from collections import deque
from typing import Any, Callable, get_args

from tqdm import tqdm

from sia.harness import protocol
from sia.harness.batcher import Batcher
from sia.harness.contract import ErrorKind, Job, JobResult
from sia.harness.sandbox import SandboxUnavailable
from sia.harness.supervisor import describe_exit
from sia.harness.workerproc import Worker

POLL_S = 0.5                # upper bound on a select(): notice dead workers promptly
MIN_STARTUP_S = 30.0        # interpreter start + harness import, on a loaded machine
WARMUP_WAIT_S = 5.0         # hold the first jobs until the first workers are all up (or this passes)
LEFTOVER_SETTLE_S = 0.2     # a thread joined just before the reply may still be exiting: look again
CPU_CHECK_S = 0.25          # how often a busy worker's CPU time is read (a /proc scan of its processes)
WALL_BACKSTOP = 3.0         # x the example timeout: a job that waits on something other than the model
ERROR_KINDS = set(get_args(ErrorKind))
log = logging.getLogger(__name__)


def _clean_error(error: Any) -> dict | None:
    if error is None:
        return None
    if isinstance(error, dict) and error.get("kind") in ERROR_KINDS and isinstance(error.get("message"), str):
        return {"kind": error["kind"], "message": error["message"]}
    return {"kind": "crash", "message": f"malformed error report from the worker: {error!r:.300}"}


def _leftovers(w: Worker) -> str:
    """What ``w`` leaves running beside its main thread, '' when nothing does. Looked up in
    /proc by the parent (the worker is not asked); only a finding is checked again, briefly."""
    deadline = time.monotonic() + LEFTOVER_SETTLE_S
    found = w.child.leftovers(w.threads)
    while found and time.monotonic() < deadline:
        time.sleep(0.02)
        found = w.child.leftovers(w.threads)
    return found


def _looks_like_memory(tail: str) -> bool:
    return any(s in tail for s in ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory"))


class Session:
    """The workers and event loop of one run() or check() call."""

    def __init__(self, pool: Any, config: dict, adapter: str | None, sampling: dict | None = None):
        self.pool = pool
        self.config_frame = protocol.pack(config)
        self.sel = selectors.DefaultSelector()
        self.workers: list[Worker] = []
        self.batcher = Batcher(pool.engine, adapter, max_llm_calls=pool.max_llm_calls,
                               max_new_tokens=pool.max_new_tokens,
                               send=lambda w, msg: self.send(w, protocol.pack(msg)), sampling=sampling)
        self.import_error: str | None = None
        self.finished: list[tuple[int, JobResult]] = []   # filled by the event handlers
        self.layers: dict | None = None
        self.jobs: list[Job] = []
        self.held_objects = 0     # decoded size of the results kept so far in this run
        self.cpu_checked = 0.0    # when busy workers' CPU time was last read
        self.held_bytes = 0

    # -- worker processes ------------------------------------------------------------------

    def start_worker(self) -> Worker:
        w = Worker(self.pool.scratch_dir(), strict=self.pool.strict, max_objects=self.pool.max_answer_objects)
        self.sel.register(w.proc.stdout, selectors.EVENT_READ, (w, "out"))
        self.sel.register(w.proc.stderr, selectors.EVENT_READ, (w, "err"))
        self.workers.append(w)
        self.send(w, self.config_frame)
        return w

    def send(self, w: Worker, data: bytes) -> None:
        if w.state == "dead":
            return
        was_empty = not w.outbox
        w.outbox += data
        if was_empty:
            w.flush_outbox()
            if w.outbox:
                self.sel.register(w.proc.stdin, selectors.EVENT_WRITE, (w, "in"))

    def kill(self, w: Worker) -> None:
        if w.state == "dead":
            return
        w.state = "dead"
        w.child.kill()   # the worker and everything it started
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
        self.batcher.drop(w)
        shutil.rmtree(w.scratch, ignore_errors=True)

    def close(self) -> None:
        for w in self.workers:
            self.kill(w)
        self.workers.clear()
        self.sel.close()

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.state != "dead"]

    # -- results ---------------------------------------------------------------------------

    def finish_job(self, w: Worker, answer: Any = None, error: dict | None = None,
                   events: list | None = None) -> None:
        index = w.job
        if index is None:
            return
        now = time.monotonic()
        llm_s = w.llm_s + (now - w.wait_start if w.state == "waiting" else 0.0)
        # A job that died in its worker keeps the trajectory the parent saw: its model calls.
        events = events if events is not None else w.served
        result = JobResult(id=self.jobs[index].id, answer=answer, error=error, events=events, served=list(w.served),
                           wall_s=now - w.job_start, llm_s=llm_s, prompt_tokens=w.prompt_tokens,
                           completion_tokens=w.completion_tokens)
        self.finished.append((index, result))
        w.job = None

    def fail_worker(self, w: Worker, kind: str, message: str) -> None:
        """Kill ``w``; its job (if any) fails with ``kind``; a dying starter is an import failure."""
        if w.state == "starting":
            self.import_error = self.import_error or message
        elif w.job is not None:
            self.finish_job(w, error={"kind": kind, "message": message})
        self.kill(w)

    def on_death(self, w: Worker) -> None:
        self._drain(w, w.proc.stdout, "out")   # a final message may still be in the pipe
        if w.state == "dead":
            return
        code = w.child.wait(timeout=1)   # None: it closed the channel but lives on: killed below
        self._drain(w, w.proc.stderr, "err")
        tail = w.stderr_text()
        how = f"the worker {describe_exit(code)}"
        detail = f"{how}; its stderr ends with:\n{tail[-2000:]}" if tail else how
        self.fail_worker(w, "memory" if _looks_like_memory(tail) else "crash", detail)

    # -- events ----------------------------------------------------------------------------

    def _drain(self, w: Worker, f, what: str) -> None:
        if f.closed:
            return
        try:
            total = 0
            while total < (8 << 20):
                chunk = os.read(f.fileno(), 1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                self._drain_chunk(w, what, chunk)
                if w.state == "dead":
                    return
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass

    def _drain_chunk(self, w: Worker, what: str, chunk: bytes) -> None:
        if what == "err":
            w.add_stderr(chunk)
        else:
            self.feed(w, chunk)

    def feed(self, w: Worker, data: bytes) -> None:
        try:
            messages = w.reader.feed(data)
        except protocol.TooManyObjects as e:
            self.fail_worker(w, "bad_answer", f"answer too large: {e}; return a smaller answer")
            return
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

    def handle(self, w: Worker, msg: dict) -> None:
        kind = msg["type"]
        if kind == "ready" and w.state == "starting":
            # The worker is single-threaded until the harness runs (apply_sandbox insists), so
            # anything beyond one thread now was started by the harness's import: it would run
            # through every job of this worker.
            w.threads = 1
            leftovers = _leftovers(w)
            if leftovers:
                self.fail_worker(w, "import", f"the harness left {leftovers} running after its import; "
                                              "start threads and processes inside solve() and finish "
                                              "them before it returns")
                return
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
            self.batcher.request(w, msg["requests"])
        elif kind == "result" and w.state == "busy" and msg["id"] == self.jobs[w.job].id:
            self.on_result(w, msg)
        else:
            raise ValueError(f"unexpected {kind!r} message while {w.state}")

    def on_result(self, w: Worker, msg: dict) -> None:
        events = msg.get("events")
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            events = [{"type": "events_dropped", "reason": "malformed events from the worker"}]
        answer, error = msg.get("answer"), _clean_error(msg.get("error"))
        too_big = self.pool.limits.check(self, w.reader.last_objects, answer, events)
        if too_big:   # nothing of it is kept, its trajectory neither (uncharged)
            answer, error = None, {"kind": "bad_answer", "message": too_big}
            events = [{"type": "events_dropped", "reason": too_big}]
        # Work the harness left running must not burn CPU through later examples: the
        # parent looks (it does not ask the worker) and replaces such a worker.
        leftovers = _leftovers(w)
        if leftovers:
            events = [*events, {"type": "leftovers_stopped", "what": leftovers}]
        self.finish_job(w, answer=answer, error=error, events=events)
        w.state = "idle"
        if leftovers:
            self.kill(w)

    # -- the loop --------------------------------------------------------------------------

    def check_deadlines(self, now: float) -> None:
        # The example timeout counts the job's CPU time, so a harness's fate does not depend on how
        # loaded the machine is (two runs of one seed score alike); wall time (model waits not
        # counted) is only a backstop for a job that sleeps or blocks.
        timeout = self.pool.example_timeout_s
        startup = max(timeout, MIN_STARTUP_S)
        read_cpu = now - self.cpu_checked >= CPU_CHECK_S
        if read_cpu:
            self.cpu_checked = now
        for w in self.live_workers():
            if w.state == "busy" and read_cpu and w.cpu_s() >= timeout:
                self.fail_worker(w, "timeout", f"no answer after {timeout:g} s of CPU time "
                                               "(time waiting for the model not counted)")
            elif w.state == "busy" and w.compute_s(now) >= WALL_BACKSTOP * timeout:
                self.fail_worker(w, "timeout", f"no answer after {WALL_BACKSTOP * timeout:g} s of wall time "
                                               "(model waits not counted): it waited on something else")
            elif w.state == "starting" and now - w.started >= startup:
                self.fail_worker(w, "import", f"the worker did not import the harness within {startup:g} s")
            elif w.child.poll() is not None:
                self.on_death(w)

    def select_timeout(self, now: float) -> float:
        timeout = POLL_S
        due = self.batcher.next_due()
        if due is not None:
            timeout = min(timeout, due - now)
        for w in self.workers:
            if w.state == "busy":
                timeout = min(timeout, WALL_BACKSTOP * self.pool.example_timeout_s - w.compute_s(now))
        return max(timeout, 0.0)

    def step(self) -> None:
        """One round: wait for pipe events (bounded), handle them, enforce deadlines, batch."""
        for key, _ in self.sel.select(self.select_timeout(time.monotonic())):
            w, what = key.data
            if w.state == "dead":
                continue
            if what == "in":
                w.flush_outbox()
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
        if self.batcher.due(now, any(w.state == "busy" for w in self.workers)):
            self.batcher.flush()

    def dispatch(self, w: Worker, index: int) -> None:
        job = self.jobs[index]
        w.reset_job(index, job.id)
        w.state = "busy"
        # Targets travel only with sft_pair jobs (train split); a solve job never
        # carries one, even if the caller filled it in by mistake.
        target = job.target if job.kind == "sft_pair" else None
        self.send(w, protocol.pack({"type": "job", "id": job.id, "kind": job.kind,
                                    "inputs": job.inputs, "target": target}))

    def run(self, jobs: list[Job], bar: tqdm, on_progress: Callable[[int, int], None] | None = None) -> list[JobResult]:
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
                    self.dispatch(w, queue.popleft())
            in_flight = sum(1 for w in self.workers if w.job is not None)
            while queue and len(self.live_workers()) < min(target_workers, len(queue) + in_flight):
                self.start_worker()
            self.step()
            for index, result in self.finished:
                results[index] = result
                remaining -= 1
                bar.update(1)
            if self.finished and on_progress is not None:
                on_progress(len(jobs) - remaining, len(jobs))   # may raise to stop the run
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

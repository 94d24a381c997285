"""Parent-side handle of one harness worker process: its supervised child, pipes, frames.

The pool's event loop (``sia.harness.session``) owns the selector; this holds what belongs
to one worker: the ``Child``, the outbox (written without blocking), the frame reader
(object count bounded before decoding), the stderr tail and the job's accounting.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from sia.harness import protocol
from sia.harness.sandbox import SIA_DIR, scrubbed_env
from sia.harness.supervisor import Child, tree_cpu_s

STDERR_TAIL_BYTES = 8192


class Worker:
    """Parent-side state of one worker process."""

    def __init__(self, scratch_root: str, *, strict: bool, max_objects: int):
        self.scratch = tempfile.mkdtemp(prefix="w", dir=scratch_root)
        env = scrubbed_env(self.scratch)
        env["PYTHONPATH"] = os.path.dirname(SIA_DIR)   # the folder holding `sia`; readable is only sia/
        self.child = Child([sys.executable, "-m", "sia.harness.worker"], cwd=self.scratch, env=env,
                           stdin=subprocess.PIPE, strict=strict)
        self.proc = self.child.proc
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            os.set_blocking(f.fileno(), False)
        self.reader = protocol.FrameReader(max_objects=max_objects)
        self.outbox = bytearray()
        self.stderr_tail = bytearray()
        self.state = "starting"   # starting | idle | busy | waiting | dead
        self.started = time.monotonic()
        self.threads = 1          # the worker's own threads once ready (leftover baseline)
        self.job: int | None = None
        self.reset_job()

    def reset_job(self, index: int | None = None, job_id: str = "") -> None:
        self.job = index
        self.job_id = job_id
        self.job_start = time.monotonic()
        self.job_cpu_start = tree_cpu_s(self.child.pid) if index is not None else 0.0
        self.llm_s = 0.0
        self.wait_start = 0.0
        self.llm_calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.served: list[dict] = []   # the job's model calls as the parent saw them

    def cpu_s(self) -> float:
        """CPU seconds the worker's processes spent on the current job: what the example timeout
        counts, the same on an idle machine and a loaded one (wall time is not)."""
        return tree_cpu_s(self.child.pid) - self.job_cpu_start

    def compute_s(self, now: float) -> float:
        """Wall time of the current job minus the time spent waiting for the engine."""
        waiting = now - self.wait_start if self.state == "waiting" else 0.0
        return now - self.job_start - self.llm_s - waiting

    def flush_outbox(self) -> None:
        # Non-blocking: a worker that stops reading cannot stall the parent.
        try:
            while self.outbox:
                n = os.write(self.proc.stdin.fileno(), self.outbox[: 1 << 20])
                del self.outbox[:n]
        except BlockingIOError:
            pass
        except OSError:
            self.outbox.clear()   # broken pipe: the death is noticed on its stdout

    def add_stderr(self, chunk: bytes) -> None:
        self.stderr_tail = (self.stderr_tail + chunk)[-STDERR_TAIL_BYTES:]

    def stderr_text(self) -> str:
        return self.stderr_tail.decode("utf-8", "replace").strip()

"""The parent's handle on one sandboxed child (``runner.py``): start, ask, time, kill.

The parent owns the clock: ``request`` measures from the first byte of a command written to
the last byte of the reply read, with ``time.perf_counter`` in this process. Every read and
write has a deadline; a child that misses one is killed with everything it started: the
child is a ``sia.harness.supervisor`` child, pid 1 of its own PID namespace. Its output
goes to a log the parent made outside the child's scratch folder and reads back through
a descriptor opened before the child started, so no file the child can write is ever
opened by name on the trusted side.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sia.harness import protocol
from sia.harness.sandbox import SandboxUnavailable, scrubbed_env
from sia.harness.supervisor import Child

TASKS_DIR = Path(__file__).resolve().parent.parent
SIA_PARENT = Path(protocol.__file__).resolve().parents[2]
LOG_TAIL_BYTES = 1500
# The child's scratch becomes a tmpfs this big (compiler output, Triton/CUDA caches): a
# submission that writes more gets ENOSPC, and the host's disk never fills.
SCRATCH_MB = 1024


class ChildFailure(Exception):
    """The child failed a command: ``kind`` is the verdict (compile, timeout, crash, ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class ChildProcess:
    def __init__(self, source: str, device: str, spec: dict, *, start_timeout_s: float,
                 scratch_root: str | None = None, extra_env: dict | None = None):
        self.scratch = Path(tempfile.mkdtemp(prefix="sia-cuda-kernel-", dir=scratch_root))
        self.submission = self.scratch / "submission.py"
        self.submission.write_text(source, encoding="utf-8")
        self.reader = protocol.FrameReader()
        self.pending: list[Any] = []
        self.proc: Child | None = None
        spec = {"scratch_mb": SCRATCH_MB, **spec,
                  "write_paths": [*spec.get("write_paths", []), str(self.scratch)]}
        self.sandbox: dict = {}
        self._to_child = self._from_child = -1
        try:
            self._start(device, spec, extra_env or {})
            ready = self.receive(start_timeout_s, "importing the submission")
            if ready.get("type") != "ready":
                raise ChildFailure("protocol", f"unexpected first message {str(ready)[:200]}")
        except BaseException:
            self.close()   # no process, pipe or scratch folder outlives a failed start
            raise
        self.sandbox = ready.get("sandbox", {})

    # -- process -------------------------------------------------------------------------
    def _start(self, device: str, spec: dict, extra_env: dict) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        for fd in (self._to_child, self._from_child):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        env = scrubbed_env(str(self.scratch))
        # Compilers' caches go to the scratch folder, the only place the child may write.
        env["TRITON_CACHE_DIR"] = str(self.scratch / "triton-cache")
        env["TORCH_EXTENSIONS_DIR"] = str(self.scratch / "torch-extensions")
        env["PYTHONUNBUFFERED"] = "1"   # a crash must not swallow the submission's last words
        env.update(extra_env)
        env["PYTHONPATH"] = os.pathsep.join([str(TASKS_DIR), str(SIA_PARENT)])
        cmd = [sys.executable, "-m", "cuda_kernel.runner",
               "--in-fd", str(to_child_r), "--out-fd", str(from_child_w),
               "--submission", str(self.submission), "--device", device,
               "--spec", json.dumps(spec), "--hide", str(TASKS_DIR)]
        strict = bool(spec.get("strict", True))
        try:
            self.proc = Child(cmd, cwd=str(self.scratch), env=env, stdin=subprocess.DEVNULL,
                              pass_fds=(to_child_r, from_child_w), log=True, strict=strict)
        except SandboxUnavailable as e:
            raise ChildFailure("sandbox", str(e)) from None
        finally:
            os.close(to_child_r)     # the child's ends: only the child keeps them open
            os.close(from_child_w)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()   # everything it started dies with it; reaps the child
        for fd in (self._to_child, self._from_child):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._to_child = self._from_child = -1
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _kill(self) -> None:
        self.proc.kill()

    def log_tail(self) -> str:
        text = self.proc.log_tail(LOG_TAIL_BYTES) if self.proc is not None else ""
        lines = [line for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-4:])[-400:]

    # -- messages ------------------------------------------------------------------------
    def request(self, msg: dict, timeout_s: float, phase: str) -> tuple[dict, float]:
        """Send one command, wait for its reply; returns (reply, seconds on the parent's clock)."""
        data = protocol.pack(msg)
        deadline = time.perf_counter() + timeout_s
        start = time.perf_counter()
        self._write(data, deadline, phase, timeout_s)
        reply = self.receive_until(deadline, phase, timeout_s)
        return reply, time.perf_counter() - start

    def receive(self, timeout_s: float, phase: str) -> dict:
        return self.receive_until(time.perf_counter() + timeout_s, phase, timeout_s)

    def receive_until(self, deadline: float, phase: str, timeout_s: float) -> dict:
        while not self.pending:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                self._kill()
                raise ChildFailure("timeout", f"no reply within {timeout_s:g} s while {phase}")
            ready, _, _ = select.select([self._from_child], [], [], remaining)
            if not ready:
                continue
            try:
                chunk = os.read(self._from_child, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                raise self._crashed(phase)
            try:
                self.pending.extend(self.reader.feed(chunk))
            except protocol.ProtocolError as e:
                self._kill()
                raise ChildFailure("protocol", f"malformed reply while {phase}: {e}") from None
        reply = self.pending.pop(0)
        if not isinstance(reply, dict) or not isinstance(reply.get("type"), str):
            self._kill()
            raise ChildFailure("protocol", f"malformed reply while {phase}: {str(reply)[:200]}")
        if reply["type"] == "error":
            raise ChildFailure(str(reply.get("kind", "runtime")), str(reply.get("message", ""))[:800])
        return reply

    def _write(self, data: bytes, deadline: float, phase: str, timeout_s: float) -> None:
        view = memoryview(data)
        while view:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                self._kill()
                raise ChildFailure("timeout", f"the child stopped reading for {timeout_s:g} s while {phase}")
            _, writable, _ = select.select([], [self._to_child], [], remaining)
            if not writable:
                continue
            try:
                view = view[os.write(self._to_child, view):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise self._crashed(phase) from None

    def _crashed(self, phase: str) -> ChildFailure:
        if self.proc.wait(timeout=5) is None:
            self._kill()
        tail = self.log_tail()
        return ChildFailure("crash", f"the submission's process {self.proc.exit_reason()} while {phase}"
                                     + (f"; its last output: {tail}" if tail else ""))

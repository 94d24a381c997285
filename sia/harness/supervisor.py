"""The one supervisor of sandboxed children (harness workers, kernel runners, SQL evaluators).

``Child`` starts a program (which confines itself with ``sia.harness.sandbox`` before it
runs anything untrusted), kills it with everything it started, says in words why it
ended, and reads its log safely. Deadlines stay with the callers: each has its own channel.

Containment: the child runs as pid 1 of a fresh PID namespace (``contain.py``), so killing
it kills every descendant, whatever group or session they moved to. Where no namespace can
be made (not root), a strict child, or any child under ``CI=true``, is refused with
``SandboxUnavailable``; a lax one falls back to killing its session.

Files a child can write are read only through descriptors opened before it started, or
with ``read_untrusted`` (no symlinks, no FIFOs or devices, bounded size).
"""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from functools import lru_cache

import psutil

from sia.harness.sandbox import SandboxUnavailable

CONTAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "contain.py")
KILL_WAIT_S = 5.0


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@lru_cache(maxsize=1)
def containment_error() -> str | None:
    """None when this process can give children their own PID namespace, else why not."""
    try:
        proc = subprocess.run([sys.executable, "-I", "-S", CONTAIN], capture_output=True, timeout=30, text=True)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit status {proc.returncode}")


def describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped responding"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def session_members(sid: int) -> list[int]:
    """Pids of the processes in session ``sid`` (the uncontained fallback's kill list)."""
    members = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid:
                members.append(pid)
        except OSError:            # gone since the listing, or not ours to ask
            pass
    return members


def children_of(pid: int) -> list[int]:
    """Pids of ``pid``'s direct children (zombies included: they still hold their pid)."""
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used by ``pid`` and its descendants, the finished ones its
    processes waited for included; 0.0 once it is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:      # ended between the listing and the read
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def thread_count(pid: int) -> int:
    try:
        return psutil.Process(pid).num_threads()
    except psutil.Error:
        return 0


def read_untrusted(path: str, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of a file a child may have replaced: never through a symlink,
    never a FIFO or device (they block or never end), only a regular file. OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return os.read(fd, max_bytes)
    finally:
        os.close(fd)


def read_tail(fd: int, max_bytes: int) -> bytes:
    """The last ``max_bytes`` of the regular file open at ``fd`` (positional reads only)."""
    size = os.fstat(fd).st_size
    start = max(0, size - max_bytes)
    return os.pread(fd, min(max_bytes, size - start), start)


class Child:
    """One supervised child. ``log=True`` sends its stdout and stderr to a file made here,
    outside any folder the child can write, and read back through a descriptor."""

    def __init__(self, cmd: list[str], *, cwd: str, env: dict, stdin=subprocess.DEVNULL,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds: tuple = (),
                 log: bool = False, strict: bool = True, contain: bool = True):
        self._log_r = -1
        self._init: int | None = None
        self.contained = False
        if contain:
            error = containment_error()
            if error is None:
                self.contained = True
            elif strict or in_ci():
                raise SandboxUnavailable(
                    f"cannot contain the child's processes (no PID namespace: {error}); run as root "
                    "or, outside CI, with the sandbox's strict mode off to fall back to a session kill")
        cmd = [shutil.which(cmd[0]) or cmd[0], *cmd[1:]]   # the shim execs a path, not a name
        argv = [sys.executable, "-I", "-S", CONTAIN, *cmd] if self.contained else list(cmd)
        log_w = -1
        if log:
            fd, path = tempfile.mkstemp(prefix="sia-child-log-")
            self._log_r = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            os.unlink(path)   # nothing can reach it by name any more
            stdout = stderr = log_w = fd
        try:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=stdout,
                                         stderr=subprocess.STDOUT if log else stderr, pass_fds=pass_fds,
                                         start_new_session=True, close_fds=True)
        except BaseException:
            self.close_log()
            raise
        finally:
            if log_w >= 0:
                os.close(log_w)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def main_pid(self) -> int | None:
        """Host pid of the program itself (pid 1 of its namespace when contained)."""
        if not self.contained:
            return self.proc.pid
        if self._init is None and self.proc.poll() is None:
            kids = children_of(self.proc.pid)
            self._init = kids[0] if kids else None
        return self._init

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def exit_reason(self) -> str:
        return describe_exit(self.proc.poll())

    def leftovers(self, threads: int) -> str:
        """What still runs beside the program's main thread budget: '' when nothing does."""
        pid = self.main_pid()
        if pid is None:
            return ""
        if self.contained:
            procs = len(children_of(pid))
        else:
            procs = len([p for p in session_members(self.proc.pid) if p != pid])
        extra = thread_count(pid) - threads
        parts = ([f"{procs} child process(es)"] if procs else []) + ([f"{extra} thread(s)"] if extra > 0 else [])
        return " and ".join(parts)

    def kill(self) -> None:
        """SIGKILL the program and everything it started; returns once they are gone."""
        if self.proc.poll() is None:
            if self.contained:
                init = self.main_pid()
                if init is not None:
                    _kill(os.kill, init)   # the kernel empties the namespace before the shim reaps it
                    if self.wait(KILL_WAIT_S) is None:
                        _kill(os.kill, self.proc.pid)
                else:
                    _kill(os.kill, self.proc.pid)   # its death signal takes pid 1 down
            else:
                # Build tools move their jobs to other groups of the same session.
                for pid in [self.proc.pid, *session_members(self.proc.pid)]:
                    _kill(os.killpg, pid)
                    _kill(os.kill, pid)
        self.proc.wait()

    def log_tail(self, max_bytes: int = 1500) -> str:
        if self._log_r < 0:
            return ""
        try:
            return read_tail(self._log_r, max_bytes).decode("utf-8", "replace")
        except OSError:
            return ""

    def close_log(self) -> None:
        if self._log_r >= 0:
            os.close(self._log_r)
            self._log_r = -1

    def close(self) -> None:
        self.kill()
        self.close_log()


def _kill(fn, pid: int) -> None:
    try:
        fn(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

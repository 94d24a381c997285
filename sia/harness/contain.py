"""Containment shim: ``python -I -S contain.py PROGRAM ARGS...`` (stdlib only, run as a script).

It enters a new PID namespace and forks PROGRAM as that namespace's init (pid 1). When pid 1
dies, the kernel kills every process left in the namespace, whatever process group or
session they moved to, and the shim reaps pid 1 only after the namespace is empty. So the
supervisor kills pid 1 and waits for the shim: nothing the child started outlives it.
The shim exits like pid 1 did (same status, or the same signal), so exit reasons stay true.

Exit status 125 with a line on stderr: the namespace could not be created.
"""
import ctypes
import os
import resource
import signal
import sys

CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
PR_SET_PDEATHSIG = 1
UNAVAILABLE = 125


def _enter_user_namespace(libc) -> bool:
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWPID) != 0:
        return False
    try:
        for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    except OSError:
        return False
    return True


def main(argv):
    libc = ctypes.CDLL(None, use_errno=True)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # re-raising SIGSEGV must not dump a core
    if libc.unshare(CLONE_NEWPID) != 0:
        err = ctypes.get_errno()
        # Not root: a user namespace grants the right to make the PID namespace (as the
        # sandbox does for the network one); the ids map to themselves, so nothing changes.
        if os.getuid() == 0 or not _enter_user_namespace(libc):
            os.write(2, f"sia-contain: unshare(CLONE_NEWPID): {os.strerror(err)}\n".encode())
            return UNAVAILABLE
    if not argv:
        return 0   # a probe: the namespace can be made
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(alive_w)
        # If the shim dies (the supervisor's last resort), pid 1 and with it the namespace die too.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os.set_blocking(alive_r, False)
        try:
            if os.read(alive_r, 1) == b"":
                os._exit(137)   # the shim died before the death signal was armed
        except BlockingIOError:
            pass
        os.close(alive_r)
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(alive_r)
    # Hold nothing of the child's channels, so their EOF means the child (not the shim) is gone.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, alive_w)
    os.closerange(alive_w + 1, 65536)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))

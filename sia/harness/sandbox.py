"""Confinement for untrusted code (harness workers, evaluator children).

``apply_sandbox`` is called by the child itself, single-threaded, before it runs anything
untrusted. It stacks these layers, each covering what the others miss:

1. rlimits: address space (memory_mb), no core dumps, bounded file size.
2. A fresh network namespace (unshare CLONE_NEWNET; non-root: CLONE_NEWUSER|CLONE_NEWNET):
   no interface but a downed loopback, so no TCP/UDP anywhere, the host's loopback included.
2b. A private mount namespace in which every writable directory (the scratch) is a tmpfs of
   ``scratch_mb`` (and a bounded inode count): writing past it fails with ENOSPC in the child,
   the host's disk never fills, and it all vanishes with the child's last process.
3. Capabilities dropped (bounding, ambient, effective/permitted/inheritable) and securebits
   locked: a worker that runs as root keeps uid 0 (so it can still read root-owned files it is
   allowed to) but loses the power to reboot, load modules, mount, bypass DAC, ...
4. PR_SET_NO_NEW_PRIVS: exec can never gain privileges (setuid binaries, file caps).
5. seccomp: only AF_INET/AF_INET6/AF_NETLINK sockets (no unix-socket or vsock path out of the
   namespace), no io_uring (it would bypass the socket filter), no setsid/setpgid (every
   descendant stays in the worker's process group, so a timeout kills all of it), no new user
   namespaces (unshare, clone with CLONE_NEWUSER), no kernel keyrings, and no file metadata
   changes at all (chmod, chown, utime, xattrs, inode flags: Landlock does not cover them, and
   a uid-0 child owns the host's files), for build tools too.
6. Landlock: deny-by-default filesystem access except reads beneath the Python installation,
   the ``sia`` package, system library dirs, a few named /etc and /dev files and the spec's
   paths; TCP bind/connect denied (ABI >= 4); signals and abstract unix sockets scoped to the
   sandbox (ABI >= 6), and ptrace of anything outside it is denied by Landlock itself.

Layer 5 lives in ``sia.harness.seccomp``, layer 6 in ``sia.harness.landlock``. Containment of
the child's processes (a PID namespace the child is init of) is the supervisor's
(``sia.harness.supervisor``): it must be set up by the parent, before the child exists.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from sia.harness.landlock import SIA_DIR, apply_landlock, landlock_abi  # noqa: F401  (re-exported)
from sia.harness.seccomp import apply_seccomp, forbid_process_groups  # noqa: F401  (re-exported)
from sia.harness.syscalls import (CLONE_NEWNET, CLONE_NEWUSER, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL,
                                  PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECUREBITS, check, libc, prctl)

FILE_SIZE_LIMIT = 1 << 30   # 1 GiB per written file: scratch output, not a disk filler
SCRATCH_MB = 512            # default size of the tmpfs that replaces each writable directory
SCRATCH_INODES = 65536      # tmpfs inodes cost memory the size limit does not count
CLONE_NEWNS, MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE, MNT_DETACH = 0x00020000, 0x2, 0x4, 0x4000, 0x40000, 2


@dataclass
class SandboxSpec:
    memory_mb: int = 2048   # RLIMIT_AS; <= 0 disables it (e.g. CUDA maps huge address ranges)
    read_paths: list[str] = field(default_factory=list)   # extra readable files/dirs
    write_paths: list[str] = field(default_factory=list)  # readable+writable dirs (scratch)
    exec_paths: list[str] = field(default_factory=list)   # extra dirs whose programs may be executed
    # Never readable, even beneath an allowed dir (e.g. a data file shipped inside site-packages
    # that holds held-out labels). Landlock can only allow, so allowed dirs around them are split.
    deny_paths: list[str] = field(default_factory=list)
    strict: bool = True   # raise SandboxUnavailable if a confinement layer cannot be applied
    # Size in MiB of the tmpfs each directory of write_paths becomes (its files are copied
    # in); <= 0 leaves them on disk, bounded per file only (FILE_SIZE_LIMIT).
    scratch_mb: int = SCRATCH_MB


class SandboxUnavailable(RuntimeError):
    """This machine (or this process) cannot apply a layer the spec requires."""


# -- 1. rlimits ----------------------------------------------------------------------------

def _set_limit(which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))   # hard == soft: the child cannot raise it back


def _apply_rlimits(spec: SandboxSpec) -> None:
    if spec.memory_mb > 0:
        _set_limit(resource.RLIMIT_AS, spec.memory_mb * 1024 * 1024)
    _set_limit(resource.RLIMIT_CORE, 0)
    _set_limit(resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT)


# -- 2. network namespace ------------------------------------------------------------------

def _enter_network_namespace() -> str:
    if libc.unshare(CLONE_NEWNET) == 0:
        return "net"
    err = ctypes.get_errno()
    if err != errno.EPERM or os.getuid() == 0:
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    # Unprivileged: a user namespace grants the capability to create the network one.
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER|CLONE_NEWNET)")
    _map_own_ids(uid, gid)
    return "user+net"


def _map_own_ids(uid: int, gid: int) -> None:
    """Map the ids to themselves in the new user namespace (as ``contain.py`` does): nothing
    changes on the host, and a tmpfs made in it (layer 2b) can then take files."""
    try:
        for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    except OSError:
        pass   # unmapped: layer 2b reports itself missing (EOVERFLOW), the others still hold


# -- 2b. size-bounded scratch --------------------------------------------------------------

def _mount_scratch(spec: SandboxSpec) -> int:
    """Replace each writable directory by a tmpfs of ``scratch_mb`` MiB in a private mount
    namespace; returns how many. Needs CAP_SYS_ADMIN (root, or the user namespace above)."""
    dirs = [os.path.realpath(p) for p in spec.write_paths
            if os.path.isdir(p) and not os.path.realpath(p).startswith("/dev/")]
    if spec.scratch_mb <= 0 or not dirs:
        return 0
    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Private first: a mount under a shared peer would show up in the host's namespace.
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount(/, MS_REC|MS_PRIVATE)")
    cwd = os.path.realpath(os.getcwd())
    opts = f"size={int(spec.scratch_mb)}m,nr_inodes={SCRATCH_INODES},mode=0700".encode()
    for path in dirs:
        below = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)   # what the parent put there
        try:
            check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts), f"mount(tmpfs on {path})")
            try:
                _check_writable(path)
                shutil.copytree(f"/proc/self/fd/{below}", path, symlinks=True, dirs_exist_ok=True)
            except OSError:
                libc.umount2(path.encode(), MNT_DETACH)   # back to the folder on disk, layer reported missing
                raise
        finally:
            os.close(below)
    if cwd in dirs:
        os.chdir(cwd)   # the old cwd is the directory underneath: move onto the tmpfs
    return len(dirs)


def _check_writable(path: str) -> None:
    """A tmpfs made in a user namespace without a uid map takes no new files (EOVERFLOW)."""
    probe_path = os.path.join(path, ".sia-scratch-probe")
    os.close(os.open(probe_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    os.unlink(probe_path)


# -- 3. capabilities -----------------------------------------------------------------------

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last_cap = int(f.read())
    except OSError:
        last_cap = 63
    for cap in range(last_cap + 1):
        prctl(PR_CAPBSET_DROP, cap)   # EPERM without CAP_SETPCAP: then there is nothing to drop
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    # NOROOT | NO_SETUID_FIXUP, each locked, and KEEP_CAPS locked off: uid 0 stays powerless.
    prctl(PR_SET_SECUREBITS, 0x2F)
    header = _CapHeader(0x20080522, 0)   # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    check(libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    with open("/proc/self/status") as f:
        eff = next(line.split()[1] for line in f if line.startswith("CapEff:"))
    if int(eff, 16):
        raise OSError(errno.EPERM, f"capabilities still effective after capset: {eff}")


# -- putting it together -------------------------------------------------------------------

def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def apply_sandbox(spec: SandboxSpec) -> dict:
    """Confine the calling process (irreversibly). Returns the layers applied and, under
    ``errors``, why any layer was not; raises SandboxUnavailable in strict mode instead."""
    layers: dict = {"errors": {}}

    def attempt(name: str, fn, required: bool = True):
        try:
            result = fn()
        except (OSError, ValueError) as e:
            layers[name] = False
            layers["errors"][name] = str(e)
            if spec.strict and required:
                raise SandboxUnavailable(f"sandbox layer {name!r} unavailable: {e}") from e
            return None
        layers[name] = True
        return result

    # Landlock and seccomp restrict only the calling thread: any other thread would escape.
    if _thread_count() != 1:
        raise SandboxUnavailable("apply_sandbox must run before the process starts threads")
    attempt("rlimits", lambda: _apply_rlimits(spec))
    kind = attempt("netns", _enter_network_namespace)
    if kind:
        layers["netns_kind"] = kind
    mounted = attempt("scratch", lambda: _mount_scratch(spec))
    if mounted:
        layers["scratch_mb"] = int(spec.scratch_mb)
    attempt("capabilities", _drop_capabilities)
    attempt("no_new_privs", lambda: check(prctl(PR_SET_NO_NEW_PRIVS, 1), "prctl(PR_SET_NO_NEW_PRIVS)"))
    attempt("seccomp", lambda: apply_seccomp(spec))
    landlock = attempt("landlock", lambda: apply_landlock(spec))
    if landlock:
        layers.update(landlock)
    return layers


def scrubbed_env(scratch_dir: str) -> dict:
    """The whole environment of a sandboxed child: nothing inherited but a few tuning knobs."""
    env = {
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": scratch_dir,
        "TMPDIR": scratch_dir,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "TRITON_INTERPRET"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


_PROBE_CODE = (
    "import json, os, sys\n"
    "from sia.harness.sandbox import SandboxSpec, apply_sandbox\n"
    "layers = apply_sandbox(SandboxSpec(memory_mb=0, write_paths=[os.getcwd()], strict=False))\n"
    "sys.stdout.write(json.dumps(layers))\n"
)


def probe(timeout_s: float = 30.0) -> dict:
    """Which layers this machine supports: applies them in a short-lived child, never here."""
    try:
        with tempfile.TemporaryDirectory(prefix="sia-probe-") as scratch:
            env = scrubbed_env(scratch)
            env["PYTHONPATH"] = os.path.dirname(SIA_DIR)
            proc = subprocess.run([sys.executable, "-c", _PROBE_CODE], env=env, cwd=scratch,
                                  capture_output=True, timeout=timeout_s, text=True)
        if proc.returncode != 0:
            return {"errors": {"probe": proc.stderr.strip()[-2000:]}}
        return json.loads(proc.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        return {"errors": {"probe": f"{type(e).__name__}: {e}"}}

"""Confinement for untrusted code (harness workers, evaluator children).

``apply_sandbox`` is called by the child itself, single-threaded, before it runs anything
untrusted. It stacks these layers, each covering what the others miss:

1. rlimits: address space (memory_mb), no core dumps, bounded file size.
2. A fresh network namespace (unshare CLONE_NEWNET; non-root: CLONE_NEWUSER|CLONE_NEWNET):
   no interface but a downed loopback, so no TCP/UDP anywhere, the host's loopback included.
3. Capabilities dropped (bounding, ambient, effective/permitted/inheritable) and securebits
   locked: a worker that runs as root keeps uid 0 (so it can still read root-owned files it is
   allowed to) but loses the power to reboot, load modules, mount, bypass DAC, ...
4. PR_SET_NO_NEW_PRIVS: exec can never gain privileges (setuid binaries, file caps).
5. seccomp: only AF_INET/AF_INET6/AF_NETLINK sockets (no unix-socket or vsock path out of the
   namespace), no io_uring (it would bypass the socket filter), no setsid/setpgid (every
   descendant stays in the worker's process group, so a timeout kills all of it), no new user
   namespaces (unshare, clone with CLONE_NEWUSER), no kernel keyrings, and no chmod unless the
   policy allows programs to be executed (root-owned files could otherwise be made setuid).
6. Landlock: deny-by-default filesystem access except reads beneath the Python installation,
   the ``sia`` package, system library dirs, a few named /etc and /dev files and the policy's
   paths; TCP bind/connect denied (ABI >= 4); signals and abstract unix sockets scoped to the
   sandbox (ABI >= 6), and ptrace of anything outside it is denied by Landlock itself.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import resource
import site
import stat
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

SIA_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILE_SIZE_LIMIT = 1 << 30   # 1 GiB per written file: scratch output, not a disk filler


@dataclass
class SandboxPolicy:
    memory_mb: int = 2048   # RLIMIT_AS; <= 0 disables it (e.g. CUDA maps huge address ranges)
    read_paths: list[str] = field(default_factory=list)   # extra readable files/dirs
    write_paths: list[str] = field(default_factory=list)  # readable+writable dirs (scratch)
    exec_paths: list[str] = field(default_factory=list)   # extra dirs whose programs may be executed
    # Never readable, even beneath an allowed dir (e.g. a data file shipped inside site-packages
    # that holds held-out labels). Landlock can only allow, so allowed dirs around them are split.
    deny_paths: list[str] = field(default_factory=list)
    strict: bool = True   # raise SandboxUnavailable if a confinement layer cannot be applied


class SandboxUnavailable(RuntimeError):
    """This machine (or this process) cannot apply a layer the policy requires."""


# -- libc ----------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _syscall(nr: int, *args: int) -> int:
    return _libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))


def _prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    return _libc.prctl(option, a2, a3, a4, a5)


PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000

# Syscall numbers that differ between the architectures we support (Landlock's and
# io_uring's are the same everywhere).
_ARCH = {
    "x86_64": dict(audit=0xC000003E, socket=41, setsid=112, setpgid=109, chmod=90, fchmod=91,
                   fchmodat=268, add_key=248, request_key=249, keyctl=250, clone=56, unshare=272,
                   x32_bit=0x40000000),
    "aarch64": dict(audit=0xC00000B7, socket=198, setsid=157, setpgid=154, chmod=None, fchmod=52,
                    fchmodat=53, add_key=217, request_key=218, keyctl=219, clone=220, unshare=97,
                    x32_bit=None),
}
_NR_CLONE3 = 435
_NR_FCHMODAT2 = 452
_NR_IO_URING = (425, 426, 427)
_NR_LANDLOCK_CREATE, _NR_LANDLOCK_ADD, _NR_LANDLOCK_RESTRICT = 444, 445, 446


# -- 1. rlimits ----------------------------------------------------------------------------

def _set_limit(which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))   # hard == soft: the child cannot raise it back


def _apply_rlimits(policy: SandboxPolicy) -> None:
    if policy.memory_mb > 0:
        _set_limit(resource.RLIMIT_AS, policy.memory_mb * 1024 * 1024)
    _set_limit(resource.RLIMIT_CORE, 0)
    _set_limit(resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT)


# -- 2. network namespace ------------------------------------------------------------------

def _enter_network_namespace() -> str:
    if _libc.unshare(CLONE_NEWNET) == 0:
        return "net"
    err = ctypes.get_errno()
    if err != errno.EPERM or os.getuid() == 0:
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    # Unprivileged: a user namespace grants the capability to create the network one.
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER|CLONE_NEWNET)")
    return "user+net"


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
        _prctl(PR_CAPBSET_DROP, cap)   # EPERM without CAP_SETPCAP: then there is nothing to drop
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    # NOROOT | NO_SETUID_FIXUP, each locked, and KEEP_CAPS locked off: uid 0 stays powerless.
    _prctl(PR_SET_SECUREBITS, 0x2F)
    header = _CapHeader(0x20080522, 0)   # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    with open("/proc/self/status") as f:
        eff = next(line.split()[1] for line in f if line.startswith("CapEff:"))
    if int(eff, 16):
        raise OSError(errno.EPERM, f"capabilities still effective after capset: {eff}")


# -- 5. seccomp ----------------------------------------------------------------------------

_ALLOWED_SOCKET_FAMILIES = (2, 10, 16)   # AF_INET, AF_INET6, AF_NETLINK: all namespaced
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _ld(offset: int) -> bytes:
    return _bpf(0x20, 0, 0, offset)          # BPF_LD|BPF_W|BPF_ABS


def _ret(value: int) -> bytes:
    return _bpf(0x06, 0, 0, value)           # BPF_RET|BPF_K


def _deny_if_eq(k: int, err: int = errno.EPERM) -> list[bytes]:
    return [_bpf(0x15, 0, 1, k), _ret(_RET_ERRNO | err)]   # BPF_JMP|BPF_JEQ|BPF_K


def _seccomp_program(arch: dict, allow_build_tools: bool) -> bytes:
    prog = [_ld(4), _bpf(0x15, 1, 0, arch["audit"]), _ret(_RET_ERRNO | errno.EPERM), _ld(0)]
    if arch["x32_bit"]:   # x32 syscalls carry the native audit arch: refuse them all
        prog += [_bpf(0x35, 0, 1, arch["x32_bit"]), _ret(_RET_ERRNO | errno.EPERM)]  # BPF_JGE
    # unshare: new user namespaces would hand back capabilities (and are kernel attack surface).
    denied = [arch["setsid"], arch["add_key"], arch["request_key"], arch["keyctl"],
              arch["unshare"], *_NR_IO_URING]
    if not allow_build_tools:
        # Compilers need these (ninja puts each job in its own process group, the linker
        # marks its output executable); setpgid cannot leave the session the parent kills.
        denied += [arch["setpgid"], arch["chmod"], arch["fchmod"], arch["fchmodat"], _NR_FCHMODAT2]
    for nr in denied:
        if nr is not None:
            prog += _deny_if_eq(nr)
    # clone3 passes its flags in memory BPF cannot read: ENOSYS makes libc fall back to clone.
    prog += _deny_if_eq(_NR_CLONE3, errno.ENOSYS)
    # The blocks below inspect args[0] (low 32 bits; little-endian arches only) and always return.
    clone_check = [_ld(16), _bpf(0x45, 0, 1, CLONE_NEWUSER), _ret(_RET_ERRNO | errno.EPERM), _ret(_RET_ALLOW)]  # BPF_JSET
    prog += [_bpf(0x15, 0, len(clone_check), arch["clone"]), *clone_check]
    family_check = [_ld(16)]
    for family in _ALLOWED_SOCKET_FAMILIES:
        family_check += [_bpf(0x15, 0, 1, family), _ret(_RET_ALLOW)]
    family_check.append(_ret(_RET_ERRNO | errno.EAFNOSUPPORT))
    prog += [_bpf(0x15, 0, len(family_check), arch["socket"]), *family_check, _ret(_RET_ALLOW)]
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _apply_seccomp(policy: SandboxPolicy) -> None:
    arch = _ARCH.get(platform.machine())
    if arch is None:
        raise OSError(errno.ENOSYS, f"no seccomp filter for architecture {platform.machine()}")
    code = _seccomp_program(arch, allow_build_tools=bool(policy.exec_paths))
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(_prctl(PR_SET_SECCOMP, 2, ctypes.addressof(prog)), "prctl(PR_SET_SECCOMP)")  # SECCOMP_MODE_FILTER


# -- 6. Landlock ---------------------------------------------------------------------------

FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_ABI1 = (1 << 13) - 1   # execute .. make_sym
_FILE_ONLY_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

READ = FS_READ_FILE | FS_READ_DIR
READ_EXEC = READ | FS_EXECUTE

SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
# /etc as a whole holds secrets (shadow, ssh keys): only what the loader and libc read.
SYSTEM_FILES = ["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/ld.so.preload",
                "/etc/localtime", "/etc/timezone", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
                "/etc/host.conf", "/etc/gai.conf", "/etc/mime.types",
                "/dev/zero", "/dev/random", "/dev/urandom",
                "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/sys/devices/system/cpu"]
WRITABLE_DEVICES = ["/dev/null", "/dev/full"]


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """Landlock ABI version of the running kernel; 0 when Landlock is unavailable."""
    version = _syscall(_NR_LANDLOCK_CREATE, 0, 0, 1)   # LANDLOCK_CREATE_RULESET_VERSION
    return max(int(version), 0)


def _handled_fs(abi: int) -> int:
    rights = _FS_ABI1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def _python_paths() -> list[str]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        paths.add(site.getusersitepackages())
    # Installed-package dirs on sys.path (not arbitrary entries: the repo root is one).
    paths.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages", ".zip")))
    return sorted(paths)


def _landlock_rules(policy: SandboxPolicy, handled_fs: int) -> list[tuple[str, int]]:
    everything_but_exec = handled_fs & ~FS_EXECUTE
    rules = [(p, READ_EXEC) for p in _python_paths() + SYSTEM_DIRS]
    rules.append((SIA_DIR, READ))
    rules += [(p, READ) for p in SYSTEM_FILES]
    rules += [(p, READ | FS_WRITE_FILE) for p in WRITABLE_DEVICES]
    # Its own /proc/<pid> (resolved now), never another process's.
    rules.append((f"/proc/{os.getpid()}", READ))
    rules += [(p, READ) for p in policy.read_paths]
    rules += [(p, READ_EXEC) for p in policy.exec_paths]
    rules += [(p, everything_but_exec) for p in policy.write_paths]
    # Never the whole filesystem, whatever a policy or an odd Python prefix says.
    rules = [(p, access) for p, access in rules if p and os.path.realpath(p) != "/"]
    return _without_denied(rules, [os.path.realpath(d) for d in policy.deny_paths])


def _without_denied(rules: list[tuple[str, int]], denied: list[str]) -> list[tuple[str, int]]:
    """Replace each rule whose path contains a denied path by rules for everything beside it:
    the siblings along the way down, so the denied path (and only it) stays out of reach."""
    out = []
    for path, access in rules:
        real = os.path.realpath(path)
        inside = [d for d in denied if d == real or d.startswith(real.rstrip("/") + "/")]
        if not inside:
            out.append((path, access))
        elif real not in inside and os.path.isdir(real):
            try:
                children = [os.path.join(real, name) for name in os.listdir(real)]
            except OSError:
                continue
            out += _without_denied([(c, access) for c in children], inside)
    return out


def _add_path_rule(ruleset_fd: int, path: str, access: int, handled_fs: int) -> bool:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False   # paths that do not exist are simply not granted
    try:
        access &= handled_fs
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= _FILE_ONLY_RIGHTS   # directory rights on a file are EINVAL
        attr = _PathBeneathAttr(access, fd)
        _check(_syscall(_NR_LANDLOCK_ADD, ruleset_fd, 1, ctypes.addressof(attr), 0),   # RULE_PATH_BENEATH
               f"landlock_add_rule({path})")
        return True
    finally:
        os.close(fd)


def _apply_landlock(policy: SandboxPolicy) -> dict:
    abi = landlock_abi()
    if abi < 1:
        raise OSError(errno.EOPNOTSUPP, "Landlock is not supported or not enabled on this kernel")
    handled_fs = _handled_fs(abi)
    attr = _RulesetAttr(handled_fs, 0, 0)
    size = 8
    if abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP   # no net rule: all TCP denied
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    ruleset_fd = _check(_syscall(_NR_LANDLOCK_CREATE, ctypes.addressof(attr), size, 0), "landlock_create_ruleset")
    try:
        for path, access in _landlock_rules(policy, handled_fs):
            _add_path_rule(ruleset_fd, path, access, handled_fs)
        _check(_syscall(_NR_LANDLOCK_RESTRICT, ruleset_fd, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset_fd)
    return {"landlock_abi": abi, "landlock_fs": True, "landlock_net": abi >= 4, "landlock_scope": abi >= 6}


# -- putting it together -------------------------------------------------------------------

def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def apply_sandbox(policy: SandboxPolicy) -> dict:
    """Confine the calling process (irreversibly). Returns the layers applied and, under
    ``errors``, why any layer was not; raises SandboxUnavailable in strict mode instead."""
    layers: dict = {"errors": {}}

    def attempt(name: str, fn, required: bool = True):
        try:
            result = fn()
        except (OSError, ValueError) as e:
            layers[name] = False
            layers["errors"][name] = str(e)
            if policy.strict and required:
                raise SandboxUnavailable(f"sandbox layer {name!r} unavailable: {e}") from e
            return None
        layers[name] = True
        return result

    # Landlock and seccomp restrict only the calling thread: any other thread would escape.
    if _thread_count() != 1:
        raise SandboxUnavailable("apply_sandbox must run before the process starts threads")
    attempt("rlimits", lambda: _apply_rlimits(policy))
    kind = attempt("netns", _enter_network_namespace)
    if kind:
        layers["netns_kind"] = kind
    attempt("capabilities", _drop_capabilities)
    attempt("no_new_privs", lambda: _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "prctl(PR_SET_NO_NEW_PRIVS)"))
    attempt("seccomp", lambda: _apply_seccomp(policy))
    landlock = attempt("landlock", lambda: _apply_landlock(policy))
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
    "import json, sys\n"
    "from sia.harness.sandbox import SandboxPolicy, apply_sandbox\n"
    "layers = apply_sandbox(SandboxPolicy(memory_mb=0, strict=False))\n"
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

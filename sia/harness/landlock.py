"""Layer 6 of the sandbox: Landlock (filesystem, TCP and scope rules; see ``sia.harness.sandbox``)."""
from __future__ import annotations

import ctypes
import errno
import os
import site
import stat
import sys

from sia.harness.syscalls import _NR_LANDLOCK_ADD, _NR_LANDLOCK_CREATE, _NR_LANDLOCK_RESTRICT, check, syscall

SIA_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    version = syscall(_NR_LANDLOCK_CREATE, 0, 0, 1)   # LANDLOCK_CREATE_RULESET_VERSION
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


def _landlock_rules(spec, handled_fs: int) -> list[tuple[str, int]]:
    everything_but_exec = handled_fs & ~FS_EXECUTE
    rules = [(p, READ_EXEC) for p in _python_paths() + SYSTEM_DIRS]
    rules.append((SIA_DIR, READ))
    rules += [(p, READ) for p in SYSTEM_FILES]
    rules += [(p, READ | FS_WRITE_FILE) for p in WRITABLE_DEVICES]
    # Its own /proc/<pid> (resolved now), never another process's. /proc/self names the pid
    # as this procfs sees it (the host's), not the one of a PID namespace the child is init of.
    rules.append((f"/proc/{os.readlink('/proc/self')}", READ))
    rules += [(p, READ) for p in spec.read_paths]
    rules += [(p, READ_EXEC) for p in spec.exec_paths]
    rules += [(p, everything_but_exec) for p in spec.write_paths]
    # Never the whole filesystem, whatever a spec or an odd Python prefix says.
    rules = [(p, access) for p, access in rules if p and os.path.realpath(p) != "/"]
    return _without_denied(rules, [os.path.realpath(d) for d in spec.deny_paths])


def _without_denied(rules: list[tuple[str, int]], denied: list[str]) -> list[tuple[str, int]]:
    """Replace each rule whose path contains a denied path by rules for everything beside it:
    the siblings along the way down, so the denied path (and only it) stays out of reach.
    Each directory along the way keeps its listing right (reads of files stay off): import
    machinery lists site-packages and package folders to find modules."""
    out = []
    for path, access in rules:
        real = os.path.realpath(path)
        inside = [d for d in denied if d == real or d.startswith(real.rstrip("/") + "/")]
        if not inside:
            out.append((path, access))
        elif real not in inside and os.path.isdir(real):
            if access & FS_READ_DIR:
                out.append((path, FS_READ_DIR))
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
        check(syscall(_NR_LANDLOCK_ADD, ruleset_fd, 1, ctypes.addressof(attr), 0),   # RULE_PATH_BENEATH
               f"landlock_add_rule({path})")
        return True
    finally:
        os.close(fd)


def apply_landlock(spec) -> dict:
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
    ruleset_fd = check(syscall(_NR_LANDLOCK_CREATE, ctypes.addressof(attr), size, 0), "landlock_create_ruleset")
    try:
        for path, access in _landlock_rules(spec, handled_fs):
            _add_path_rule(ruleset_fd, path, access, handled_fs)
        check(syscall(_NR_LANDLOCK_RESTRICT, ruleset_fd, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset_fd)
    return {"landlock_abi": abi, "landlock_fs": True, "landlock_net": abi >= 4, "landlock_scope": abi >= 6}

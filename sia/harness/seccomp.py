"""Layer 5 of the sandbox: a seccomp filter (see ``sia.harness.sandbox`` for what it denies
and why), and a second filter for after a compile step that forbids new process groups."""
from __future__ import annotations

import ctypes
import errno
import platform
import struct

from sia.harness.syscalls import (_ARCH, _METADATA, _NR_CLONE3, _NR_FCHMODAT2, _NR_FILE_SETATTR, _NR_IO_URING,
                                  _NR_REMOVEXATTRAT, _NR_SECCOMP, _NR_SETXATTRAT, CLONE_NEWUSER,
                                  FS_IOC_SETFLAGS_CMDS, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, check, prctl, syscall)

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


def _metadata_calls(machine: str) -> list[int]:
    """chmod, chown, utime and xattr calls (every variant): none of them is checked by
    Landlock, and a uid-0 child owns most files it can reach (issue 20: a canary outside the
    sandbox went 0600 -> 0666, its mtime changed and it gained an xattr)."""
    arch, meta = _ARCH[machine], _METADATA[machine]
    calls = [arch["chmod"], arch["fchmod"], arch["fchmodat"], _NR_FCHMODAT2,
             *(nr for name, nr in meta.items() if name != "ioctl"),
             _NR_SETXATTRAT, _NR_REMOVEXATTRAT, _NR_FILE_SETATTR]
    return [nr for nr in calls if nr is not None]


def _ioctl_check(machine: str) -> list[bytes]:
    """ioctl: no inode-flag or fsxattr changes (chattr); every other command passes.
    Inspects args[1] (low 32 bits, the command) and always returns."""
    check = [_ld(24)]
    for cmd in FS_IOC_SETFLAGS_CMDS:
        check += [_bpf(0x15, 0, 1, cmd), _ret(_RET_ERRNO | errno.EPERM)]
    check.append(_ret(_RET_ALLOW))
    return [_bpf(0x15, 0, len(check), _METADATA[machine]["ioctl"]), *check]


def _seccomp_program(machine: str, allow_build_tools: bool) -> bytes:
    arch = _ARCH[machine]
    prog = [_ld(4), _bpf(0x15, 1, 0, arch["audit"]), _ret(_RET_ERRNO | errno.EPERM), _ld(0)]
    if arch["x32_bit"]:   # x32 syscalls carry the native audit arch: refuse them all
        prog += [_bpf(0x35, 0, 1, arch["x32_bit"]), _ret(_RET_ERRNO | errno.EPERM)]  # BPF_JGE
    # unshare: new user namespaces would hand back capabilities (and are kernel attack surface).
    # File metadata: denied from the start, build tools included (the linker's chmod of its
    # output fails and is ignored; a shared library loads without the x bit).
    denied = [arch["setsid"], arch["add_key"], arch["request_key"], arch["keyctl"],
              arch["unshare"], *_NR_IO_URING, *_metadata_calls(machine)]
    if not allow_build_tools:
        # ninja puts each compile job in its own process group; setpgid cannot leave the
        # session the parent kills, and ``forbid_process_groups`` denies it after the build.
        denied.append(arch["setpgid"])
    for nr in denied:
        if nr is not None:
            prog += _deny_if_eq(nr)
    # clone3 passes its flags in memory BPF cannot read: ENOSYS makes libc fall back to clone.
    prog += _deny_if_eq(_NR_CLONE3, errno.ENOSYS)
    prog += _ioctl_check(machine)
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


def apply_seccomp(spec) -> None:
    if platform.machine() not in _ARCH:
        raise OSError(errno.ENOSYS, f"no seccomp filter for architecture {platform.machine()}")
    code = _seccomp_program(platform.machine(), allow_build_tools=bool(spec.exec_paths))
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    check(prctl(PR_SET_SECCOMP, 2, ctypes.addressof(prog)), "prctl(PR_SET_SECCOMP)")  # SECCOMP_MODE_FILTER


def forbid_process_groups() -> None:
    """One more seccomp filter, for after a compile step: no setpgid/setsid from now on (build
    tools needed them; nothing the submission runs later does). Filters only ever add up."""
    arch = _ARCH.get(platform.machine())
    if arch is None:
        raise OSError(errno.ENOSYS, f"no seccomp filter for architecture {platform.machine()}")
    prog = [_ld(4), _bpf(0x15, 1, 0, arch["audit"]), _ret(_RET_ERRNO | errno.EPERM), _ld(0)]
    prog += _deny_if_eq(arch["setpgid"]) + _deny_if_eq(arch["setsid"]) + [_ret(_RET_ALLOW)]
    code = b"".join(prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    check(prctl(PR_SET_NO_NEW_PRIVS, 1), "prctl(PR_SET_NO_NEW_PRIVS)")
    # seccomp(SET_MODE_FILTER, TSYNC): threads the submission started get the filter too.
    check(syscall(_NR_SECCOMP[platform.machine()], 1, 1, ctypes.addressof(fprog)), "seccomp(TSYNC)")

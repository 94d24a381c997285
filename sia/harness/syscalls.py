"""libc entry points and syscall numbers shared by the sandbox layers (``sia.harness.sandbox``)."""
from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def syscall(nr: int, *args: int) -> int:
    return libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    return libc.prctl(option, a2, a3, a4, a5)


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
_NR_SECCOMP = {"x86_64": 317, "aarch64": 277}
_NR_CLONE3 = 435
_NR_FCHMODAT2 = 452
_NR_IO_URING = (425, 426, 427)
# File metadata (mode, owner, times, extended attributes, inode flags): Landlock does not
# cover it, and a child that runs as uid 0 owns most of the host's files.
_METADATA = {
    "x86_64": dict(chown=92, fchown=93, lchown=94, fchownat=260, utime=132, utimes=235, futimesat=261,
                   utimensat=280, setxattr=188, lsetxattr=189, fsetxattr=190, removexattr=197,
                   lremovexattr=198, fremovexattr=199, ioctl=16),
    "aarch64": dict(chown=None, fchown=55, lchown=None, fchownat=54, utime=None, utimes=None, futimesat=None,
                    utimensat=88, setxattr=5, lsetxattr=6, fsetxattr=7, removexattr=14,
                    lremovexattr=15, fremovexattr=16, ioctl=29),
}
_NR_SETXATTRAT, _NR_REMOVEXATTRAT, _NR_FILE_SETATTR = 463, 466, 469   # same on every arch (6.13+, 6.17+)
# ioctl commands that set inode flags or fsxattr (chattr): _IOW('f', 2, long|int), _IOW('X', 32, fsxattr).
FS_IOC_SETFLAGS_CMDS = (0x40086602, 0x40046602, 0x401C5820)
_NR_LANDLOCK_CREATE, _NR_LANDLOCK_ADD, _NR_LANDLOCK_RESTRICT = 444, 445, 446

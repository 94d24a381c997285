"""HOSTILE: at import, start a chain of processes where each forks the next into a new
process group (setpgid, allowed for build tools) and exits at once, so a one-pass scan of
the session always misses the newest. Capped so it cannot swamp a small machine: a small
interpreter, at most 20000 hops (about half a minute), one or two processes alive at a time,
a pause per hop. Each hop is named siachainhop for the test to find."""
import subprocess
import sys

import torch

CHAIN = r"""
import ctypes, os, time
libc = ctypes.CDLL(None)
for _ in range(20000):
    if os.fork():
        os._exit(0)
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    libc.prctl(15, b"siachainhop", 0, 0, 0)
    time.sleep(0.001)
"""
subprocess.Popen([sys.executable, "-S", "-c", CHAIN], stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def custom_kernel(data):
    x, mask, weights = data
    return torch.zeros_like(x)

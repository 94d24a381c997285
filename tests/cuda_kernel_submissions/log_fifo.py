"""HOSTILE: replace the judge's log of this child by a FIFO, then crash: a judge that opens
the log by name blocks forever on it."""
import os

for name in os.listdir("."):
    if name.endswith(".log"):
        os.unlink(name)
if os.path.exists("child.log"):
    os.unlink("child.log")
os.mkfifo("child.log")


def custom_kernel(data):   # never reached
    return None


os._exit(3)

"""HOSTILE: replace the judge's log of this child by a symlink to a file the judge can read
(the test writes its path in place of @ TARGET @), then crash, so the judge quotes
"its last output" from that file into the verdict."""
import os

TARGET = "@TARGET@"
for name in os.listdir("."):
    if name.endswith(".log"):
        os.unlink(name)
os.symlink(TARGET, "child.log")


def custom_kernel(data):   # never reached
    return None


os._exit(3)

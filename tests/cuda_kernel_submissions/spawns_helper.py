"""Starts a long-lived helper process at import (a compile server, say) and never stops it;
the evaluator must not leave it running."""
import subprocess
import sys

import torch

HELPER = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "sia-cuda-kernel-helper-marker"])


def custom_kernel(data):
    x, mask, weights = data
    return torch.zeros_like(x)

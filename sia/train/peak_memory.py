"""Measuring the trainer (peak resident memory) and keeping Lightning quiet."""
from __future__ import annotations

import logging
import os
import threading
import warnings
from contextlib import contextmanager

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """This process's resident memory now, in MB (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return 0.0


class PeakRSS:
    """Samples the process RSS in a background thread while the block runs: the peak of this
    block, not of the process's whole life (what ``ru_maxrss`` gives)."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self.peak_mb = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())
        return False


@contextmanager
def quiet_lightning():
    """Hide Lightning's start-up banner and advice that do not apply to this small-data loop."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*`srun` command is available.*")  # not a SLURM job step
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning vs newer torch, harmless
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

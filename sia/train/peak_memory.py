"""Peak resident memory of this process while a block runs (the trainer reports it)."""
from __future__ import annotations

import threading

import psutil


def rss_mb() -> float:
    """This process's resident memory now, in MB (0 where the platform does not say)."""
    try:
        return psutil.Process().memory_info().rss / 2**20
    except psutil.Error:
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

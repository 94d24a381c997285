"""Whether a generation ends within the wall-clock budget, judged from the candidate's own pace.

The last generation of the same kind is a poor guide for a harness edit: an edit can change
a generation's cost many times over (few-shot prompts double the prompt; a harness that votes
over retrieved neighbours asks the model nothing and runs in seconds). So a candidate's val
run watches its own pace. Its first wave of jobs (one per worker: their model calls share the
first batches) also pays for starting the workers and warming the engine (about a minute for a
freshly loaded model on a CPU), so the pace is that of the jobs after it: once a second wave is
back (or every job, or the first wave when it is all there is), every finished job re-forecasts
the generation's end, counting the test and probe jobs a kept candidate runs next at the same
pace, and the run stops as soon as that end falls after the budget. A weight update's rollouts
(the incumbent harness sampled on train) are watched the same way, counting the val, test and
probe jobs after them but not the training: that forecast can let a generation overrun, but
never stops one that fits.
"""
from __future__ import annotations

import time


class OutOfTime(Exception):
    """The generation would end after the wall-clock budget."""


class PaceGuard:
    """``on_progress(done, total)`` for a candidate's val run or a weight update's rollouts
    (see ``HarnessPool.run``); raises ``OutOfTime``.

    ``spent_s``: run time spent when the watched jobs start (earlier generations and this one's
    steps so far); ``jobs_after``: jobs the generation still runs after them at the same pace
    (``after`` says which); ``first_wave``: finished jobs before the first forecast."""

    def __init__(self, *, budget_s: float, spent_s: float, jobs_after: int, first_wave: int,
                 what: str = "val", after: str = "test/probe jobs of a kept one", clock=time.monotonic):
        self.budget_s, self.spent_s, self.jobs_after = float(budget_s), float(spent_s), int(jobs_after)
        self.first_wave, self.what, self.after, self.clock = max(1, int(first_wave)), what, after, clock
        self.started = clock()
        self.wave: tuple[int, float] | None = None    # (done, elapsed) when the first wave was back

    def __call__(self, done: int, total: int) -> None:
        elapsed = self.clock() - self.started
        if self.wave is None:
            if done < min(self.first_wave, total):
                return
            self.wave = (done, elapsed)
        wave_done, wave_s = self.wave
        if done < min(wave_done + self.first_wave, total):
            return                                    # the second wave is not back yet
        # the jobs after the first wave, or the first wave when it was all of them
        per_job = (elapsed - wave_s) / (done - wave_done) if done > wave_done else elapsed / done
        since = f" after the first {wave_done}" if done > wave_done else ""
        forecast_s = self.spent_s + elapsed + per_job * (total - done + self.jobs_after)
        if forecast_s > self.budget_s:
            raise OutOfTime(
                f"wall-clock budget of {self.budget_s / 60:g} min: at this candidate's pace ({done} of {total} "
                f"{self.what} jobs in {elapsed:.0f} s, {per_job:.1f} s each{since}) its generation, with the "
                f"{self.jobs_after} {self.after}, would end at ~{forecast_s / 60:.1f} min")

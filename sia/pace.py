"""Whether a generation ends within the wall-clock budget, judged from the candidate's own pace.

The last generation of the same kind is a poor guide for a harness edit: an edit can change
a generation's cost many times over (few-shot prompts double the prompt; a harness that votes
over retrieved neighbours asks the model nothing and runs in seconds). So a candidate's val
run watches its own pace: once its first wave of jobs is back (one job per worker: their model
calls share the first batches, so fewer would say little), every finished job re-forecasts
the generation's end, counting the test and probe jobs a kept candidate runs next at the same
pace, and the run stops as soon as that end falls after the budget. The pace is the mean since
the start: the pace since the first wave charges the jobs still in flight to those back (on
LawBench's few-shot edit it said 11.0 s a job where the generation took 7.0), and stopped a
generation that fit. The first wave after loading the model also pays for its warm-up (a
resumed run's first rollout wave: 6.4 s a job against 3.8 s warm). Before the first wave is
back only a budget already spent stops the run. A weight update's rollouts (the incumbent
harness sampled on train) are watched the same way, counting the val, test and probe jobs after
them but not the training, which that forecast leaves out.
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

    def __call__(self, done: int, total: int) -> None:
        elapsed = self.clock() - self.started
        if done < min(self.first_wave, total):
            if self.spent_s + elapsed > self.budget_s:     # a slow first wave is late whatever its pace
                raise OutOfTime(f"wall-clock budget of {self.budget_s / 60:g} min spent with {done} of {total} "
                                f"{self.what} jobs back")
            return
        per_job = elapsed / done
        forecast_s = self.spent_s + elapsed + per_job * (total - done + self.jobs_after)
        if forecast_s > self.budget_s:
            raise OutOfTime(
                f"wall-clock budget of {self.budget_s / 60:g} min: at this candidate's pace ({done} of {total} "
                f"{self.what} jobs in {elapsed:.0f} s, {per_job:.1f} s each) its generation, with the "
                f"{self.jobs_after} {self.after}, would end at ~{forecast_s / 60:.1f} min")

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

Before a weight update starts, ``plan_weights`` forecasts all of it (rollouts, training, the
val/test/probe jobs after) from measured rates: the incumbent's val pace per job (its rollouts
run the same harness), seconds per optimizer step of the last update or, for the first one,
``budget.train_step_s`` (a measured constant). An update that does not fit is shrunk (fewer
rollout examples and steps) until it does; one that cannot fit at its smallest is not started.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass


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


# ---- planning a weight update before it starts --------------------------------------------
MIN_STEPS = 2          # a shrunk update trains at least this many optimizer steps
SAFETY = 1.1           # forecasts are stretched by this much (loading, the first wave's warm-up)


@dataclass
class Rates:
    """Measured rates a weight update is forecast from (seconds)."""

    job_s: float                 # one harness job of the incumbent on val (pool wall / jobs)
    rollout_job_s: float         # one rollout job (one sample); the val pace until one was measured
    step_s: float                # one optimizer step: the last update's, else budget.train_step_s
    source: str                  # where each came from, for the rationale


@dataclass
class WeightsPlan:
    fits: bool
    examples: int                # rollout examples (training.examples)
    steps: int
    forecast_s: float            # run time at the generation's end
    why: str
    shrunk: bool = False         # examples/steps are smaller than asked


def plan_weights(*, budget_s: float, spent_s: float, rates: Rates, examples: int, samples_per_prompt: int,
                 steps: int, jobs_after: int, steps_per_example: float | None = None,
                 min_examples: int = 2, rollouts: bool = True) -> WeightsPlan:
    """Whether a weight update (rollouts of ``examples`` x ``samples_per_prompt`` jobs, ``steps``
    optimizer steps, then ``jobs_after`` val/test/probe jobs) ends within ``budget_s``; if not,
    the largest smaller update that does (examples and steps scaled down together, not below
    ``min_examples`` / ``MIN_STEPS``). ``steps_per_example``: the steps a rollout example can
    feed at most (lora.rollout_epochs x K / batch size), so fewer examples train fewer steps."""

    def steps_for(n: int, s: int) -> int:
        return s if not rollouts or not steps_per_example else max(1, min(s, math.ceil(n * steps_per_example)))

    def forecast(n: int, s: int) -> float:
        rollout = n * samples_per_prompt * rates.rollout_job_s if rollouts else 0.0
        return spent_s + SAFETY * (rollout + steps_for(n, s) * rates.step_s + jobs_after * rates.job_s)

    def minutes(x: float) -> str:
        return f"{x / 60:.1f} min"

    full = forecast(examples, steps)
    shape = (f"{examples} rollout examples x {samples_per_prompt}, " if rollouts else "") + \
        f"{steps_for(examples, steps)} steps"
    rated = (f"{rates.rollout_job_s:.1f} s a rollout job, {rates.step_s:.1f} s a step, {rates.job_s:.1f} s a "
             f"val/test job ({rates.source}), x{SAFETY:g}")
    if full <= budget_s:
        return WeightsPlan(True, examples, steps, full, f"the update ({shape}) ends at ~{minutes(full)} of "
                                                        f"{budget_s / 60:g} min ({rated})")
    n, s = examples, steps
    while ((rollouts and n > min_examples) or s > MIN_STEPS) and forecast(n, s) > budget_s:
        n, s = (max(min_examples, int(n * 0.8)) if rollouts else n), max(MIN_STEPS, int(s * 0.8))
    if forecast(n, s) <= budget_s:
        small = (f"{n} rollout examples, " if rollouts else "") + f"{steps_for(n, s)} steps"
        why = (f"shrunk from {shape} (would end at ~{minutes(full)}) to {small}: ends at "
               f"~{minutes(forecast(n, s))} of {budget_s / 60:g} min ({rated})")
        return WeightsPlan(True, n, s, forecast(n, s), why, shrunk=True)
    return WeightsPlan(False, n, s, forecast(n, s),
                       f"wall-clock budget of {budget_s / 60:g} min: even the smallest weight update ({n} rollout "
                       f"examples, {steps_for(n, s)} steps) would end at ~{minutes(forecast(n, s))} "
                       f"(spent {minutes(spent_s)}; {rated})")

"""The pace guard forecasts a generation's end from its own finished val jobs."""
from __future__ import annotations

import pytest

from sia.pace import OutOfTime, PaceGuard


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_it_waits_for_the_first_wave_then_stops_once_the_forecast_passes_the_budget():
    clock = Clock()
    guard = PaceGuard(budget_s=1000, spent_s=500, jobs_after=10, first_wave=4, clock=clock)
    clock.now = 30
    guard(1, 20)          # one job back: too few to judge (30 s a job would forecast 1,400 s)
    clock.now = 40
    guard(4, 20)          # 10 s a job: 500 + 40 + 10 * (16 left + 10 after val) = 800 s, fits
    clock.now = 120
    with pytest.raises(OutOfTime) as stopped:
        guard(6, 20)      # 20 s a job: 500 + 120 + 20 * 24 = 1100 s > 1000 s
    assert "6 of 20 val jobs in 120 s, 20.0 s each" in str(stopped.value)
    assert "would end at ~18.3 min" in str(stopped.value)


def test_a_first_wave_still_out_when_the_budget_is_spent_stops_the_run():
    clock = Clock()
    guard = PaceGuard(budget_s=600, spent_s=500, jobs_after=0, first_wave=16, clock=clock)
    clock.now = 90
    guard(3, 24)          # 590 s: still inside the budget, too few jobs to judge the pace
    clock.now = 110
    with pytest.raises(OutOfTime) as stopped:
        guard(5, 24)
    assert "budget of 10 min spent with 5 of 24 val jobs back" in str(stopped.value)


def test_a_split_smaller_than_the_first_wave_is_judged_once_it_is_all_back():
    clock = Clock()
    guard = PaceGuard(budget_s=100, spent_s=0, jobs_after=0, first_wave=16, clock=clock)
    clock.now = 90
    guard(2, 2)           # 90 s, nothing left to run: fits
    guard = PaceGuard(budget_s=100, spent_s=0, jobs_after=2, first_wave=16, clock=clock)
    clock.now += 60
    with pytest.raises(OutOfTime):
        guard(2, 2)       # 60 s for 2 jobs, 2 more after val at 30 s each: 120 s


# ---- planning a weight update (recorded timings) ------------------------------------------
from sia.pace import Rates, plan_weights  # noqa: E402

# The issue's fp32 run: few-shot kept at 3.3 min; its val/test jobs ran 2.5 s each (pool wall per
# job); an fp32 step of the default shape 11.4 s; 16 rollout examples x 4 samples, 24 steps
# capped by rollout_epochs=2 at ceil(16 * 2 * 4 / 8) = 16; then 40 val + 40 test + 8 probe jobs.
RECORDED = Rates(job_s=2.5, rollout_job_s=2.5, step_s=11.4, source="recorded")
ISSUE = dict(spent_s=198.0, rates=RECORDED, examples=16, samples_per_prompt=4, steps=24, jobs_after=88,
             steps_per_example=1.0)


def test_an_update_that_fits_is_planned_as_decided():
    plan = plan_weights(budget_s=1200, **ISSUE)
    # 198 + 1.1 * (64 * 2.5 + 16 * 11.4 + 88 * 2.5) = 198 + 1.1 * 562.4 = 816.6 s
    assert plan.fits and (plan.examples, plan.steps) == (16, 24) and not plan.shrunk
    assert plan.forecast_s == pytest.approx(198 + 1.1 * (160 + 16 * 11.4 + 220))


def test_an_update_too_large_for_the_time_left_is_shrunk_to_fit():
    plan = plan_weights(budget_s=600, **ISSUE)     # the whole update would end at 13.6 min of 10
    assert plan.fits and plan.shrunk and plan.forecast_s <= 600
    assert plan.examples < 16 and plan.steps < 24
    n = plan.examples     # what is left after 198 s and the 88 jobs after it (242 s with the 1.1 stretch)
    assert 198 + 1.1 * (n * 4 * 2.5 + min(plan.steps, n) * 11.4 + 220) <= 600
    assert "shrunk from 16 rollout examples x 4, 16 steps" in plan.why and "~13.6 min" in plan.why


def test_an_update_that_cannot_fit_at_its_smallest_is_not_started():
    plan = plan_weights(budget_s=480, **ISSUE)     # 198 + 1.1 * 220 = 440 s before any rollout or step
    assert not plan.fits
    assert "even the smallest weight update (2 rollout examples, 2 steps)" in plan.why
    assert "would end at ~" in plan.why and "spent 3.3 min" in plan.why

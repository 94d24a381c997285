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

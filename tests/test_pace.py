"""The pace guard forecasts a generation's end from its own finished jobs after the first wave
(which also pays for starting the workers and warming the engine)."""
from __future__ import annotations

import pytest

from sia.pace import OutOfTime, PaceGuard


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_it_judges_by_the_jobs_after_the_first_wave_and_stops_once_the_forecast_passes_the_budget():
    clock = Clock()
    guard = PaceGuard(budget_s=1000, spent_s=500, jobs_after=10, first_wave=4, clock=clock)
    clock.now = 120
    guard(4, 24)          # the first wave, slowed by warm-up (30 s a job would forecast 1,220 s): not judged
    clock.now = 150
    guard(7, 24)          # the second wave is not all back
    clock.now = 160
    guard(8, 24)          # 10 s a job since the wave: 500 + 160 + 10 * (16 left + 10 after val) = 920 s, fits
    clock.now = 220
    with pytest.raises(OutOfTime) as stopped:
        guard(10, 24)     # 100 s for 6 jobs since the wave: 500 + 220 + 16.7 * 24 = 1,120 s > 1,000 s
    assert "10 of 24 val jobs in 220 s, 16.7 s each after the first 4" in str(stopped.value)
    assert "with the 10 test/probe jobs of a kept one, would end at ~18.7 min" in str(stopped.value)


def test_a_split_no_larger_than_the_first_wave_is_judged_once_it_is_all_back():
    clock = Clock()
    guard = PaceGuard(budget_s=100, spent_s=0, jobs_after=0, first_wave=16, clock=clock)
    clock.now = 90
    guard(2, 2)           # 90 s, nothing left to run: fits
    guard = PaceGuard(budget_s=100, spent_s=0, jobs_after=2, first_wave=16, clock=clock)
    clock.now += 60
    with pytest.raises(OutOfTime) as stopped:
        guard(2, 2)       # 60 s for 2 jobs, 2 more after val at 30 s each: 120 s
    assert "2 of 2 val jobs in 60 s, 30.0 s each)" in str(stopped.value)


def test_a_second_wave_cut_short_by_the_split_is_judged_at_the_end():
    clock = Clock()
    guard = PaceGuard(budget_s=200, spent_s=0, jobs_after=16, first_wave=16, clock=clock)
    clock.now = 100
    guard(16, 24)         # first wave
    clock.now = 140
    with pytest.raises(OutOfTime):
        guard(24, 24)     # 5 s a job since the wave: 140 + 5 * 16 test jobs = 220 s > 200 s

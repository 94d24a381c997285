"""Sweeps of the real loop submitted to a real SLURM through submitit (hydra/launcher=slurm_local).

Needs a cluster: `scripts/slurm-local.sh up` starts one on this machine (CI does). Without one
these tests skip, except under CI=true where that is a failure. The model is the echo stub
(tests/support/echo_engine.py), so each job takes seconds; loop, run dirs, launcher and SLURM
are the real ones.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.slurm import (REPO, history_key, job_folders, queue_empty, read_state, require_slurm,  # noqa: F401
                                 run_sia, sacct_settled, start_sia, wait_for, work_dir)

pytestmark = pytest.mark.slurm
LAUNCHER = ["hydra/launcher=slurm_local"]


@pytest.fixture(autouse=True)
def _cluster():
    require_slurm()


def _array_id(folders) -> str:
    ids = {f.name.split("_")[0] for f in folders}
    assert len(ids) == 1, f"expected one array job, got job folders {[f.name for f in folders]}"
    return ids.pop()


def _run_dirs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_sweep_is_one_array_job_and_every_variant_finishes(work_dir):
    sweep_dir = work_dir / "sweep"
    out = run_sia("+sweep=pair", *LAUNCHER, f"hydra.sweep.dir={sweep_dir}", "quiet=true", timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    runs = _run_dirs(sweep_dir)
    assert [r.name for r in runs] == ["0_legal_charge_rules_r8_s0", "1_legal_charge_rules_r8_s1",
                                      "2_legal_charge_harness_only_r8_s0", "3_legal_charge_harness_only_r8_s1"]
    for run in runs:
        state = read_state(run)
        assert state["status"] == "done", run
        assert (run / "summary.json").is_file(), run
        assert [h["generation"] for h in state["history"]] == list(range(len(state["history"])))
    array = _array_id(job_folders(sweep_dir))
    # sacct lists the four array tasks (accounting may lag the result files by a moment)
    states = sacct_settled(array, expect=4)
    assert sorted(states) == [(f"{array}_{i}", "COMPLETED") for i in range(4)]


def test_requeued_job_resumes_in_its_run_dir_without_losing_or_repeating_a_generation(work_dir):
    slow = ["seed=0", "model.engine.delay_s=0.3"]
    sweep_dir = work_dir / "sweep"
    launcher = start_sia(work_dir / "sweep.log", *slow, *LAUNCHER, f"hydra.sweep.dir={sweep_dir}")
    try:
        run = sweep_dir / "0_legal_charge_rules_r8_s0"
        # mid-run: generation 0 is recorded, generation 1 is under way
        wait_for("generation 0 to be recorded", lambda: (s := read_state(run)) and s["next_generation"] >= 1, 120,
                 every=0.2)
        before = read_state(run)
        assert before["status"] == "running" and before["next_generation"] < 3, "the run ended before the requeue"
        gen0_mtime = (run / "gen_000" / "scores_val.json").stat().st_mtime_ns
        job = job_folders(sweep_dir)[0].name
        subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, text=True, timeout=30)
        assert launcher.wait(timeout=180) == 0, (work_dir / "sweep.log").read_text()[-3000:]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    wait_for("the requeued job to leave the queue", lambda: queue_empty(job), 180, every=1)
    after = read_state(run)
    assert after["status"] == "done"
    # the same seed without a break: the same generations, decisions and scores
    reference = work_dir / "reference"
    out = run_sia(*slow[:1], f"run_dir={reference}", "quiet=true", multirun=False, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert history_key(after) == history_key(read_state(reference)), \
        [h.get("failed") for h in after["history"]]
    assert _run_dirs(work_dir / "sweep") == [run]                 # the same run dir, no second one
    assert (run / "gen_000" / "scores_val.json").stat().st_mtime_ns == gen0_mtime   # not redone
    log = "".join(p.read_text() for p in job_folders(sweep_dir)[0].glob("*_log.*"))
    assert f"resuming {run} at generation {before['next_generation']}" in log
    attempts = [state for _, state in sacct_settled(job, duplicates=True)]
    assert attempts[0] == "REQUEUED" and attempts[-1] == "COMPLETED", attempts


def test_job_hitting_its_time_limit_is_resubmitted_and_finishes(work_dir):
    # ~2 min of work (9 generations, ~150 model requests of 0.7 s) against a 2-minute limit.
    # SLURM sends USR2 once at most signal_delay_s + 30 s (its check interval) remain: 60-90 s
    # into each attempt, never during start-up. submitit's checkpoint hook requeues the job, and
    # the job resumes.
    sweep_dir = work_dir / "sweep"
    out = run_sia("seed=1", "budget.generations=8", "model.engine.delay_s=0.7", *LAUNCHER,
                  "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30",
                  "hydra.launcher.max_num_timeout=4", f"hydra.sweep.dir={sweep_dir}", "quiet=true", timeout=560)
    folder = job_folders(sweep_dir)[0]
    log = "".join(p.read_text() for p in folder.glob("*_log.*"))
    assert out.returncode == 0, out.stderr[-2000:] + log[-3000:]
    # submitit's own "Requeued job" line can be lost: SLURM stops the step as soon as the requeue is
    # asked for, before the handler logs it; sacct below is the record of the requeue
    assert "this job is timed-out" in log, log[-3000:]
    attempts = [state for _, state in sacct_settled(folder.name, duplicates=True)]
    assert "REQUEUED" in attempts and attempts[-1] == "COMPLETED", attempts
    run = _run_dirs(sweep_dir)[0]
    state = read_state(run)
    assert state["status"] == "done" and (run / "summary.json").is_file()
    assert [h["generation"] for h in state["history"]] == list(range(len(state["history"])))


def test_cancelled_and_failing_jobs_are_reported_and_the_others_finish(work_dir):
    # rank 8: cancelled mid-run; rank 0: a bad value, fails at validation; rank 16: finishes
    sweep_dir = work_dir / "sweep"
    launcher = start_sia(work_dir / "sweep.log", "seed=0", "lora.rank=8,0,16", "model.engine.delay_s=0.2",
                         *LAUNCHER, f"hydra.sweep.dir={sweep_dir}", "quiet=true")
    try:
        victim = sweep_dir / "0_legal_charge_rules_r8_s0"
        wait_for("job 0 to start", lambda: read_state(victim), 120, every=0.2)
        array = _array_id(job_folders(sweep_dir))
        subprocess.run(["scancel", f"{array}_0"], check=True, timeout=30)
        code = launcher.wait(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert code != 0                   # the launcher reports that not every job succeeded
    wait_for("the array to leave the queue", lambda: queue_empty(array), 180, every=1)
    states = dict(sacct_settled(array))
    assert states[f"{array}_0"].startswith("CANCELLED") and states[f"{array}_1"] == "FAILED", states
    assert states[f"{array}_2"] == "COMPLETED", states
    assert read_state(sweep_dir / "2_legal_charge_rules_r16_s0")["status"] == "done"

    report = subprocess.run([sys.executable, "-m", "sia.report", str(sweep_dir)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (sweep_dir / "report.md").read_text(encoding="utf-8")
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith(f"| {array}_")}
    assert "cancelled" in lines[f"{array}_0"], text
    assert "failed" in lines[f"{array}_1"] and "lora.rank=0 must be an integer >= 1" in lines[f"{array}_1"], text
    assert "finished" in lines[f"{array}_2"], text
    assert "lora.rank=0 must be an integer >= 1" in report.stdout

"""Helpers for the tests that submit real SLURM jobs (marker ``slurm``): is a cluster there,
run a sweep of the real loop on the echo engine, watch jobs through squeue/sacct."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUPPORT_CONF = REPO / "tests" / "support" / "conf"
# the real loop, launcher and cluster; only the model (and its trainer) is the echo stub
ECHO_RUN = [f"hydra.searchpath=[file://{SUPPORT_CONF}]", "model.engine=echo", "lever=echo", "budget=smoke",
            "logger=none", "agent.workers=2"]


@pytest.fixture
def work_dir():
    """A private temp dir for one test's sweep. Not under pytest's basetemp: concurrent pytest
    sessions on one machine prune each other's old basetemps, and a SLURM job outlives a glance."""
    path = Path(tempfile.mkdtemp(prefix="sia-slurm-"))
    yield path
    if not os.environ.get("SIA_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


def sinfo_answers() -> str | None:
    """None when a SLURM controller answers with a usable node, else why not (one line)."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (no sinfo on PATH); start one with: scripts/slurm-local.sh up"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s; start SLURM with: scripts/slurm-local.sh up"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        reason = (out.stderr.strip().splitlines() or [f"node states {states}"])[-1]
        return f"no usable SLURM node ({reason}); start one with: scripts/slurm-local.sh up"
    return None


def require_slurm() -> None:
    """Skip without a cluster; under CI=true a missing cluster is a failure (CI brings one up)."""
    why = sinfo_answers()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {why}", pytrace=False)
    pytest.skip(why)


def sia_cmd(*overrides: str, multirun: bool = True) -> list[str]:
    return [sys.executable, "-m", "sia", *(["-m"] if multirun else []), *ECHO_RUN, *overrides]


def run_sia(*overrides: str, multirun: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(sia_cmd(*overrides, multirun=multirun), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def start_sia(log: Path, *overrides: str) -> subprocess.Popen:
    f = open(log, "w")
    return subprocess.Popen(sia_cmd(*overrides), cwd=REPO, stdout=f, stderr=subprocess.STDOUT)


def wait_for(what: str, predicate, timeout: float, every: float = 0.5):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def job_folders(sweep_dir: Path) -> list[Path]:
    """submitit's per-job folders (<array>_<index>, or <id> for a one-job sweep)."""
    root = sweep_dir / ".submitit"
    return sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*_submitted.pkl"))) \
        if root.is_dir() else []


def sacct_settled(job: str, duplicates: bool = False, timeout: float = 60, expect: int = 1) -> list[tuple[str, str]]:
    """sacct_states once at least ``expect`` allocations are listed and none shows RUNNING/PENDING
    (accounting lags the job's end, and a freshly started slurmdbd may not list every task yet)."""
    return wait_for(f"sacct to record the end of job {job}",
                    lambda: (s := sacct_states(job, duplicates)) and len(s) >= expect and
                    all(st not in ("RUNNING", "PENDING", "COMPLETING") for _, st in s) and s, timeout)


def sacct_states(job: str, duplicates: bool = False) -> list[tuple[str, str]]:
    """(job id, state) of every allocation of ``job`` (an array id lists its tasks); with
    ``duplicates`` also the earlier attempts of a requeued job (state REQUEUED)."""
    cmd = ["sacct", "-n", "-P", "-X", "-j", job, "-o", "JobID,State"] + (["-D"] if duplicates else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"sacct failed: {out.stderr}"
    return [tuple(line.split("|")[:2]) for line in out.stdout.splitlines() if line.strip()]


def queue_empty(job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True, timeout=30)
    return (out.returncode == 0 and not out.stdout.strip()) or "Invalid job id" in out.stderr


def read_state(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def history_key(state: dict) -> list[tuple]:
    """What must match between a broken and an unbroken run of the same seed."""
    return [(h["generation"], h["action"], h.get("edit"), h.get("kept"), h.get("val"), h.get("test"),
             h.get("incumbent_val"), h.get("incumbent_test")) for h in state["history"]]

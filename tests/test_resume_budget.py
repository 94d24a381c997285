"""A finished run goes on when resumed with more budget, through the real CLI and loop (the
model is the echo stub, so each run takes seconds); a resume never changes the split sizes.
Every command here carries ``budget=smoke`` (tests.support.slurm.ECHO_RUN): a resume compares
values, so a budget group equal to the saved one changes nothing."""
from __future__ import annotations

import json
import subprocess

from omegaconf import OmegaConf

from tests.support.slurm import REPO, sia_cmd


def _sia(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(sia_cmd("quiet=true", *overrides, multirun=False), cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_a_finished_run_resumed_with_more_generations_goes_on_from_where_it_stopped(tmp_path):
    run = tmp_path / "run"
    first = _sia(f"hydra.run.dir={run}", "budget.generations=1")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "done" and [h["generation"] for h in state["history"]] == [0, 1]
    gen1 = (run / "gen_001" / "record.json").stat().st_mtime_ns

    again = _sia(f"resume={run}", "budget.generations=1")   # the same budget: it says how to give it more
    assert again.returncode == 0 and "already finished" in again.stdout
    assert f"resume={run} budget.wall_clock_minutes=" in again.stdout

    more = _sia(f"resume={run}", "budget.generations=2")
    assert more.returncode == 0, more.stdout[-2000:] + more.stderr[-2000:]
    assert "going on with budget.generations=1->2" in more.stdout
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "done" and [h["generation"] for h in state["history"]] == [0, 1, 2]
    assert state["stop_reason"] == "all 2 generations of budget.generations spent"
    assert (run / "gen_001" / "record.json").stat().st_mtime_ns == gen1     # not redone
    assert OmegaConf.load(run / "config.yaml").budget.generations == 2      # a requeue keeps it
    metrics = [json.loads(line)["generation"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [0, 1, 2]

    resized = _sia(f"resume={run}", "budget.generations=3", "budget.val_examples=4")
    assert resized.returncode == 2 and "budget.val_examples: a resumed run keeps it (8, not 4)" in resized.stderr
    assert OmegaConf.load(run / "config.yaml").budget.generations == 2     # nothing applied
    assert OmegaConf.load(run / "config.yaml").budget.val_examples == 8    # untouched

"""The whole loop through the real CLI, the real embedded model, real LoRA training, the
sandboxed pool and W&B offline files; and resume after kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from support.readme import explain, run_readme
from test_parts import wandb_history
from test_readme_commands import RESUME as README_RESUME, RUN_DIR as README_RUN_DIR

pytestmark = pytest.mark.slow


def _sia(run_dir: Path, cache: Path, *overrides: str, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sia", f"hydra.run.dir={run_dir}", f"cache_dir={cache}", "quiet=true", *overrides]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def _finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def test_smoke_run_uses_both_levers(tmp_path, model_cache_dir):
    run_dir = tmp_path / "run"
    out = _finish(_sia(run_dir, model_cache_dir, "budget=smoke", "feedback=alternate", "logger=wandb"))
    state = json.loads((run_dir / "state.json").read_text())
    actions = [h["action"] for h in state["history"]]
    assert state["status"] == "done" and actions[0] == "seed"
    assert "harness" in actions and "weights" in actions
    weights_gen = next(h for h in state["history"] if h["action"] == "weights")
    gen_dir = run_dir / f"gen_{weights_gen['generation']:03d}"
    assert (gen_dir / "adapter" / "COMPLETE").is_file()
    assert (gen_dir / "adapter" / "adapter_model.safetensors").is_file()
    decision = json.loads((gen_dir / "decision.json").read_text())
    assert decision["rationale"] and decision["training"]["algorithm"] == "auto"   # the lever chooses
    assert weights_gen["algorithm"] in ("sft", "rs_sft", "grpo", "eaw", "ppo")
    if weights_gen["algorithm"] != "sft":      # reward-driven: trained on the saved rollouts
        assert (gen_dir / "rollouts.jsonl").is_file() and "weights lever:" in weights_gen["rationale"]
    # every model call is in the trajectory with tokens and log-probs
    rows = [json.loads(line) for line in (run_dir / "gen_000" / "trajectories_val.jsonl").read_text().splitlines()]
    calls = [e for r in rows for e in r["events"] if e["type"] == "llm_call"]
    assert calls and all(c["completion_tokens"] == len(c["logprobs"]) for c in calls)
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = wandb_history(run_dir)   # per-step training loss on its own axis, one row per generation
    steps = [r["train/step"] for r in rows if "train/loss" in r]
    assert steps and steps == list(range(1, len(weights_gen["train_losses"]) + 1))
    assert [r["decision"] for r in rows if "decision" in r] == summary["decisions"]
    assert "synthetic" in summary["data"] and summary["first"]["test"] is not None
    assert (run_dir / "progress.png").stat().st_size > 1000
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert "val" in out and "synthetic" in out    # the final table names the data set


def test_resume_after_kill_9_loses_and_repeats_nothing(tmp_path, model_cache_dir):
    run_dir = tmp_path / "run"
    args = ("budget=smoke", "feedback=alternate", "logger=none")
    proc = _sia(run_dir, model_cache_dir, *args)
    # kill it in the middle of generation 2 (the weight update: pairs rendered, training under way)
    deadline = time.time() + 900
    while not (run_dir / "gen_002" / "decision.json").exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.loads((run_dir / "state.json").read_text())
    assert before["status"] == "running" and before["next_generation"] == 2
    gen1_scores = (run_dir / "gen_001" / "scores_val.json").stat().st_mtime_ns

    # the README's resume line, as a user types it (the saved config names the cache and the run dir)
    resumed = run_readme(README_RESUME, placeholders={README_RUN_DIR: str(run_dir)})
    assert resumed.returncode == 0, explain(resumed)
    assert f"resuming {run_dir} at generation 2" in resumed.stdout + resumed.stderr, explain(resumed)
    state = json.loads((run_dir / "state.json").read_text())
    assert [h["generation"] for h in state["history"]] == [0, 1, 2]
    assert state["status"] == "done"
    assert (run_dir / "gen_001" / "scores_val.json").stat().st_mtime_ns == gen1_scores  # not redone
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["generation"] for m in metrics] == [0, 1, 2]

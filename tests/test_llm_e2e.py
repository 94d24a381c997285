"""`python -m sia agent.meta=llm feedback=llm llm.base_url=...` end to end: the real CLI, the
real anthropic SDK against the scripted server, the real embedded model and sandboxed pool."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from support.scripted_llm_server import scripted_llm_e2e  # noqa: F401  (fixture)
from sia.agents.llm.scrub import held_out_strings
from sia.tasks import load_task

pytestmark = pytest.mark.slow
KEY = "sk-ant-test-key-never-leaves-the-trusted-side"


def test_llm_agents_write_and_rewrite_the_harness(scripted_llm_e2e, tmp_path, model_cache_dir):  # noqa: F811
    server, run_dir = scripted_llm_e2e, tmp_path / "run"
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "PYTHONPATH": str(REPO / "tests" / "support")}
    proc = subprocess.run(
        [sys.executable, "-m", "sia", "agent.meta=llm", "feedback=llm", f"llm.base_url={server.url}",
         "budget=smoke", "budget.generations=3", "logger=none", "quiet=true", f"hydra.run.dir={run_dir}",
         f"cache_dir={model_cache_dir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    meta = json.loads((run_dir / "gen_000" / "meta.json").read_text())
    assert meta["agent"] == "llm" and meta["tries"] == 2 and not meta["fell_back_to_seed"]
    assert "SyntaxError" in meta["errors"][0]                     # the broken first answer went back
    state = json.loads((run_dir / "state.json").read_text())
    history = state["history"]
    assert [h["action"] for h in history] == ["seed", "harness", "stop"]
    rewrite = history[1]
    assert rewrite["kept"] and rewrite["val"] > history[0]["val"]   # a harness written from scratch, kept
    assert "OPTIONS" not in (run_dir / "gen_001" / "harness.py").read_text()
    decision = json.loads((run_dir / "gen_001" / "decision.json").read_text())
    assert "diff does not apply" in decision["stats"]["errors"][0] and not decision["fallback"]

    calls = [json.loads(x) for x in (run_dir / "agents.jsonl").read_text().splitlines()]
    assert sum(1 for c in calls if c.get("event") == "call") == len(server.requests) == 5
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["agent"]["calls"] == 5 and summary["agent"]["dollars"] > 0
    assert rewrite["agent_tokens"] > 0 and rewrite["agent_dollars"] > 0

    # sealed: no val/test target that is not public anyway reached the server, and none had to be
    # scrubbed (the loop itself sends none); the key never appears in a body or a run file
    task = load_task("legal_charge", {})
    splits = task.load()
    sealed, _ = held_out_strings(splits, task.public_resources(splits))
    bodies = server.bodies_text()
    assert not any(s in bodies for s in sealed)
    assert not any(c.get("event") == "scrub" for c in calls)
    assert KEY not in bodies
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".yaml", ".py", ".log"):
            assert KEY not in path.read_text(errors="replace"), path

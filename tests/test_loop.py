"""Loop bookkeeping with the real task, the real sandboxed pool and a scripted stand-in for
the model (the model itself is exercised in test_e2e): a broken candidate harness fails its
generation, not the run; keep-best keeps only improvements; test is scored only for kept ones."""
from __future__ import annotations

import json

import pytest

from sia.agents.decision import Decision
from sia.assemble import assemble
from sia.engine.base import EngineStats, GenResult
from sia.harness.options import with_options
from sia.harness.pool import HarnessPool
from sia.run import RunDir, new_state
from sia.tasks import load_task
from sia.tracking import Tracker


class ScriptedPolicy:
    """A feedback policy injected into the loop: the decision of each generation is scripted."""

    name = "scripted"

    def __init__(self, script):
        self.script = script

    def decide(self, ctx):
        return self.script[ctx.generation]


class ScriptedEngine:
    """Names every charge the prompt lists (partial credit) when it lists them, else
    abstains (what a tiny model does with the plain prompt)."""

    max_batch_size = 16

    def __init__(self):
        self.stats = EngineStats()
        self.adapters = {}

    def add_adapter(self, name, path):
        self.adapters[name] = path

    def generate(self, requests, adapter=None):
        self.stats.batches += 1
        out = []
        for r in requests:
            prompt = "\n".join(m["content"] for m in r.messages)
            listed = prompt.split("可选罪名：")[1].split("\n")[0] if "可选罪名：" in prompt else None
            text = f"[罪名]{listed}<eoa>" if listed else "我不知道"
            out.append(GenResult(text=text, prompt_tokens=10, completion_tokens=3, token_logprobs=[-0.1] * 3,
                                 finish_reason="stop"))
        return out


@pytest.fixture
def loop_parts(compose_cfg, tmp_path):
    cfg = compose_cfg("budget=smoke", "logger=none", "budget.generations=2", "agent.workers=2", "quiet=true")
    task = load_task(cfg.task.name, cfg.task)
    run = RunDir(tmp_path / "run")
    state = new_state()
    engine = ScriptedEngine()
    with HarnessPool(engine, workers=2, example_timeout_s=30, memory_mb=1024, scratch_root=str(tmp_path / "s")) as pool:
        yield cfg, task, run, state, engine, pool


def _run(loop_parts, script):
    cfg, task, run, state, engine, pool = loop_parts
    loop = assemble(cfg, run, task, engine, pool, Tracker(cfg, run.path, None, False), state,
                    policy=ScriptedPolicy(script))
    return loop.run_all()


def test_broken_harness_fails_its_generation_and_the_run_goes_on(loop_parts):
    cfg, task, run, state, engine, pool = loop_parts
    labelled = with_options(task.seed_harness(), label_list=True)
    script = {
        1: Decision(action="harness", rationale="scripted: broken file", harness_code="def solve(inputs, ctx)\n  x"),
        2: Decision(action="harness", rationale="scripted: label list", harness_code=labelled, edit="label_list"),
    }
    final = _run(loop_parts, script)

    history = final.history
    assert [h.generation for h in history] == [0, 1, 2]
    assert final.stop_reason == "all 2 generations of budget.generations spent"
    assert history[1].kept is False and "does not load" in history[1].failed
    assert "SyntaxError" in history[1].failed
    assert history[2].kept is True and history[2].val > history[0].val
    assert final.incumbent.generation == 2
    assert (run.path / "gen_002" / "scores_test.json").is_file()      # kept: test reported
    assert not (run.path / "gen_001" / "scores_val.json").exists()    # never evaluated
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["generation"] for x in lines] == [0, 1, 2]


def test_a_worse_candidate_is_not_kept_and_test_is_not_scored(loop_parts):
    cfg, task, run, state, engine, pool = loop_parts
    labelled = with_options(task.seed_harness(), label_list=True)
    script = {
        1: Decision(action="harness", rationale="scripted: label list", harness_code=labelled, edit="label_list"),
        2: Decision(action="harness", rationale="scripted: back to the seed", harness_code=task.seed_harness()),
    }
    final = _run(loop_parts, script)
    assert [h.kept for h in final.history] == [True, True, False]
    assert final.incumbent.generation == 1
    assert not (run.path / "gen_002" / "scores_test.json").exists()
    # the val trajectories hold every model call and the evaluator's reason per example
    rows = [json.loads(x) for x in (run.path / "gen_002" / "trajectories_val.jsonl").read_text().splitlines()]
    assert all(r["events"][0]["type"] == "llm_call" for r in rows)
    assert all(r["failure"] == "format" and r["reason"] for r in rows)
    assert all("details" not in r for r in rows)     # details may hold the gold: trusted-only
    trusted = run.path / "trusted" / "gen_002_val.jsonl"
    assert len(trusted.read_text().splitlines()) == len(rows)


def test_the_feedback_side_never_sees_a_held_out_gold_answer(loop_parts):
    """Everything a policy is given (digest, trajectories, history) holds no val/test gold
    charge in any reason, and no evaluator details; the trusted file keeps them for reports."""
    cfg, task, run, state, engine, pool = loop_parts
    seen = []

    class Recorder(ScriptedPolicy):
        def decide(self, ctx):
            seen.append(json.dumps({"digest": ctx.digest.to_json(), "trajectories": ctx.trajectories,
                                    "history": [h.to_json() for h in ctx.history]}, ensure_ascii=False))
            return super().decide(ctx)

    # the toy engine names every listed charge: readable, partly right answers with reasons
    labelled = with_options(task.seed_harness(), label_list=True)
    script = {1: Decision(action="harness", rationale="scripted", harness_code=labelled, edit="label_list"),
              2: Decision(action="stop", rationale="scripted stop")}
    loop = assemble(cfg, run, task, engine, pool, Tracker(cfg, run.path, None, False), state, policy=Recorder(script))
    loop.run_all()
    held_out = loop.data.val + loop.data.test
    assert len(seen) == 2
    for blob in seen:
        parsed = json.loads(blob)
        reasons = [r["reason"] for r in parsed["trajectories"]] + parsed["digest"]["examples_of_failures"]
        assert all("details" not in r for r in parsed["trajectories"])
        for example in held_out:
            for charge in example.target:
                assert not any(charge in reason for reason in reasons), (charge, reasons[:3])
    trusted = [json.loads(x) for x in (run.path / "trusted" / "gen_001_val.jsonl").read_text().splitlines()]
    assert all(row["details"] for row in trusted)     # gold-bearing details stay on the trusted side


class StepClock:
    """The loop's clock: every reading is 100 s after the one before (one generation = 100 s)."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        self.now += 100.0
        return self.now


def test_a_generation_that_would_end_after_the_wall_clock_budget_does_not_start(loop_parts, monkeypatch):
    import sia.loop

    cfg, task, run, state, engine, pool = loop_parts
    cfg.budget.wall_clock_minutes = 4.5       # 270 s: after gens 0 and 1 (200 s) another 100 s harness gen overruns
    monkeypatch.setattr(sia.loop, "time", StepClock())
    labelled = with_options(task.seed_harness(), label_list=True)
    script = {
        1: Decision(action="harness", rationale="scripted: label list", harness_code=labelled, edit="label_list"),
        2: Decision(action="harness", rationale="scripted: back to the seed", harness_code=task.seed_harness()),
    }
    final = _run(loop_parts, script)
    assert [h.generation for h in final.history] == [0, 1]
    assert final.elapsed_s == 200.0                 # under the budget: only the forecast stopped it
    assert "would end at ~5.0 min" in final.stop_reason and "generation 1" in final.stop_reason
    assert (run.path / "gen_002" / "decision.json").is_file()   # decided: a resume with more time runs it
    assert not (run.path / "gen_002" / "scores_val.json").exists()

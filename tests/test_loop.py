"""Loop bookkeeping with the real task, the real sandboxed pool and a scripted stand-in for
the model (the model itself is exercised in test_e2e): a broken candidate harness fails its
generation, not the run; keep-best keeps only improvements; test is scored only for kept ones."""
from __future__ import annotations

import json

import pytest

from sia.agents.decision import Decision, TrainingPlan
from sia.assemble import assemble
from sia.engine.base import Engine, EngineStats, GenResult
from sia.harness.options import with_options
from sia.harness.pool import HarnessPool
from sia.parts import Feedback
from sia.run import RunDir, new_state
from sia.tasks import load_task
from sia.tracking import Tracker


class ScriptedFeedback(Feedback):
    """A feedback agent injected into the loop: the decision of each generation is scripted."""

    name = "scripted"
    wants_train_probe = False

    def __init__(self, script):
        self.script = script

    def decide(self, ctx):
        return self.script[ctx.generation]


class ScriptedEngine(Engine):
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
                    feedback=ScriptedFeedback(script))
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
    """Everything a feedback is given (digest, trajectories, history) holds no val/test gold
    charge in any reason, and no evaluator details; the trusted file keeps them for reports."""
    cfg, task, run, state, engine, pool = loop_parts
    seen = []

    class Recorder(ScriptedFeedback):
        def decide(self, ctx):
            seen.append(json.dumps({"digest": ctx.digest.to_json(), "trajectories": ctx.trajectories,
                                    "history": [h.to_json() for h in ctx.history]}, ensure_ascii=False))
            return super().decide(ctx)

    # the toy engine names every listed charge: readable, partly right answers with reasons
    labelled = with_options(task.seed_harness(), label_list=True)
    script = {1: Decision(action="harness", rationale="scripted", harness_code=labelled, edit="label_list"),
              2: Decision(action="stop", rationale="scripted stop")}
    loop = assemble(cfg, run, task, engine, pool, Tracker(cfg, run.path, None, False), state, feedback=Recorder(script))
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


class Clock:
    """The loop's clock, moved only by the model: each request the engine serves takes 100 s."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now


class ClockedEngine(ScriptedEngine):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def generate(self, requests, adapter=None):
        self.clock.now += 100.0 * len(requests)
        return super().generate(requests, adapter)


def test_a_candidate_is_stopped_by_its_own_pace_not_by_the_last_generations(loop_parts, monkeypatch, tmp_path):
    """8 val + 8 test examples, one model call each: the seed (gen 0) takes 1,600 s, the label-list
    edit (gen 1) 1,600 s. A retrieval-vote harness (gen 2) asks the model nothing: it runs in no
    time, though the last harness generation's 1,600 s would end past the budget. Gen 3 asks the
    model again: after its first job (one worker, so the pace is exact) it forecasts 3,200 + 100 +
    15 * 100 s > 60 min, so its val run stops there and leaves its decision on disk."""
    import sia.loop

    cfg, task, run, state, _, _ = loop_parts
    cfg.budget.wall_clock_minutes = 60
    clock = Clock()
    monkeypatch.setattr(sia.loop, "time", clock)
    engine = ClockedEngine(clock)
    seed = task.seed_harness()
    script = {
        1: Decision(action="harness", rationale="scripted: label list", harness_code=with_options(seed, label_list=True)),
        2: Decision(action="harness", rationale="scripted: vote", harness_code=with_options(seed, retrieval_vote="only")),
        3: Decision(action="harness", rationale="scripted: model again",
                    harness_code=with_options(seed, label_list=True, system_prompt=True)),
    }
    cfg.budget.generations = 3
    with HarnessPool(engine, workers=1, example_timeout_s=30, memory_mb=1024, scratch_root=str(tmp_path / "c")) as pool:
        loop = assemble(cfg, run, task, engine, pool, Tracker(cfg, run.path, None, False), state,
                        feedback=ScriptedFeedback(script))
        final = loop.run_all()
    assert [h.generation for h in final.history] == [0, 1, 2]
    assert [h.wall_s for h in final.history] == [1600.0, 1600.0, 0.0]
    assert final.history[2].val is not None and final.history[2].tokens == 0
    assert "at this candidate's pace (1 of 8 val jobs in 100 s, 100.0 s each)" in final.stop_reason
    assert "would end at ~80.0 min" in final.stop_reason
    assert final.elapsed_s == 3300.0                # gen 3's stopped first job counts
    assert (run.path / "gen_003" / "decision.json").is_file()   # decided: a resume with more time runs it
    assert not (run.path / "gen_003" / "scores_val.json").exists()


class PlannedFeedback(Feedback):
    """Decides to train; without the weights lever (``decide_with``), the label-list edit."""

    name = "planned"
    wants_train_probe = False

    def __init__(self, task):
        self.code = with_options(task.seed_harness(), label_list=True)

    def decide(self, ctx):
        return Decision(action="weights", rationale="scripted: train",
                        training=TrainingPlan("auto", steps=ctx.offer.max_steps, examples=160))

    def decide_with(self, ctx, levers):
        assert levers == frozenset({"harness"})
        return Decision(action="harness", rationale="scripted: label list", harness_code=self.code, edit="label_list")


def _generation_zero_with_recorded_pace(loop_parts, minutes):
    """Generation 0 run for real, then its scores files given the recorded pace of a slow CPU:
    30 s a job (8 val + 8 test jobs), and 200 s of the run spent."""
    cfg, task, run, state, engine, pool = loop_parts
    cfg.budget.generations, cfg.budget.wall_clock_minutes, cfg.budget.train_step_s = 0, minutes, 12
    loop = assemble(cfg, run, task, engine, pool, Tracker(cfg, run.path, None, False), state,
                    feedback=PlannedFeedback(task))
    loop.run_all()
    for split in ("val", "test"):
        path = run.path / "gen_000" / f"scores_{split}.json"
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "wall_s": 30.0 * len(data["rows"])}))
    loop.state.elapsed_s, loop.state.status, cfg.budget.generations = 200.0, "running", 1
    return loop


def test_a_weight_update_is_shrunk_to_the_time_left_before_it_starts(loop_parts):
    """16 rollout examples x 4 samples at 30 s a job would end at ~57 min of 40: the decision
    written to disk is the smaller update that fits (what a resume then runs)."""
    import time

    loop = _generation_zero_with_recorded_pace(loop_parts, 40)
    decision = loop._decide(1, loop.state.incumbent, time.monotonic())
    assert decision.action == "weights" and decision.training.examples < 16
    assert "budget: shrunk from 16 rollout examples x 4" in decision.rationale
    assert decision.training.forecast.fits and decision.training.forecast.forecast_s <= 40 * 60
    saved = json.loads((loop.run.gen_dir(1) / "decision.json").read_text())
    assert saved["training"]["examples"] == decision.training.examples
    assert Decision.from_json(saved) == decision            # a resume runs the plan as written


def test_a_weight_update_that_fits_is_written_as_decided(loop_parts):
    """With time to spare the decision keeps its own examples (160: gold SFT pairs, of which a
    rollout uses 16) and steps; only the rationale says what the plan forecast."""
    import time

    loop = _generation_zero_with_recorded_pace(loop_parts, 600)
    decision = loop._decide(1, loop.state.incumbent, time.monotonic())
    assert (decision.training.examples, decision.training.steps) == (160, loop.budget.train_steps)
    assert "| budget: the update (16 rollout examples x 4" in decision.rationale


def test_a_weight_update_that_cannot_fit_becomes_the_feedbacks_harness_edit(loop_parts):
    """At 10 min even 2 rollout examples (8 jobs), 2 steps and the 16 val/test jobs after them
    end late (200 + 1.1 * (240 + 24 + 480) s): the generation takes the harness edit the feedback
    makes without the weights lever, and says why."""
    loop = _generation_zero_with_recorded_pace(loop_parts, 10)
    final = loop.run_all()
    gen1 = final.history[1]
    assert gen1.action == "harness" and gen1.edit == "label_list"
    assert gen1.rationale.startswith("budget: no weight update fits (wall-clock budget of 10 min: even the smallest")
    assert not (loop.run.gen_dir(1) / "train.json").exists()


class WeightsOnlyPlanned(PlannedFeedback):
    """Decides to train and cannot decide without the weights lever (the protocol's default
    ``decide_with``: None), as the LLM feedback."""

    decide_with = Feedback.decide_with


def test_a_weight_update_that_cannot_fit_stops_the_run_when_the_feedback_has_no_other_choice(loop_parts):
    cfg, task, run, state, engine, pool = loop_parts
    loop = _generation_zero_with_recorded_pace(loop_parts, 10)
    loop.parts.feedback = WeightsOnlyPlanned(task)
    final = loop.run_all()
    assert [h.generation for h in final.history] == [0]
    assert final.stop_reason.startswith("wall-clock budget of 10 min: even the smallest weight update")
    assert not (run.path / "gen_001" / "decision.json").exists()   # nothing decided: a resume decides again

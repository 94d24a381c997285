"""A new feedback and a new engine are one class and one YAML file each: added here from a
test-only config group (tests/support/conf), without touching sia/, and run through the real
CLI, sandboxed pool and W&B offline files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

SUPPORT = REPO / "tests" / "support"


def test_a_toy_feedback_and_engine_from_a_test_config_group_run_the_loop(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "sia", f"hydra.searchpath=[file://{SUPPORT / 'conf'}]", "feedback=toy",
         "model.engine=toy", "budget=smoke", "logger=wandb", "quiet=true", "agent.workers=2",
         f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((run_dir / "state.json").read_text())
    assert [h["action"] for h in state["history"]] == ["seed", "harness", "stop"]
    assert state["history"][1]["rationale"].startswith("toy feedback: ")
    assert state["history"][1]["kept"] is True                     # the label list lets the toy engine answer
    assert "the feedback agent stopped" in state["stop_reason"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["feedback"] == "toy" and summary["decisions"][1].startswith("harness:")
    assert _wandb_decisions(run_dir) == ["seed", summary["decisions"][1], "stop"]


def _wandb_records(path):
    """Records of an offline .wandb file: a LevelDB-style log (7-byte header, 32 KiB blocks of
    chunks: crc32 4, length 2, type 1 (1 full, 2 first, 3 middle, 4 last), data)."""
    data, pos, block, parts = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - (pos % block)
        if left < 7:                      # block trailer padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            yield parts


def wandb_history(run_dir) -> list[dict]:
    """Every history row logged to the offline .wandb file of a run, decoded."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows = []
    for raw in _wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def _wandb_decisions(run_dir) -> list[str]:
    """The `decision` of every logged generation row."""
    return [row["decision"] for row in wandb_history(run_dir) if "decision" in row]


# ---- the protocols declare what the loop and the lever read --------------------------------------

def _parts(tmp_path, **override):
    """Parts built from the real classes (nothing runs: building only checks the contracts)."""
    from omegaconf import OmegaConf

    from sia.agents.meta import SeedMetaAgent
    from sia.agents.rules import RulesFeedback
    from sia.evaluation import SplitEvaluator, Workbench
    from sia.levers.lora import LoraLever
    from sia.parts import AgentEnv, Parts
    from sia.run import RunDir
    from sia.tasks import load_task

    task, run = load_task("legal_charge", {}), RunDir(tmp_path / "run")
    bench = Workbench(None, {}, {}, progress=False)
    parts = {"meta": SeedMetaAgent(), "feedback": RulesFeedback(name="rules"),
             "lever": LoraLever(cfg=OmegaConf.create({}), task=task, bench=bench, run=run, engine=None, train=[]),
             "evaluator": SplitEvaluator(task, bench, run),
             "env": AgentEnv(task=task, run_dir=run.path, resources={}, files={}, train=[], checker=None)}
    return Parts(**{**parts, **override})


def test_the_real_parts_satisfy_the_protocols_the_loop_reads(tmp_path):
    from sia.agents.llm.feedback import LLMFeedback
    from sia.parts import Feedback

    parts = _parts(tmp_path)
    assert parts.feedback.wants_train_probe is True
    _parts(tmp_path, feedback=LLMFeedback())        # the LLM feedback declares decide_with too
    assert LLMFeedback().decide_with(None, frozenset({"harness"})) is None
    assert isinstance(LLMFeedback(), Feedback)


def test_a_feedback_lacking_a_declared_member_fails_when_the_parts_are_built(tmp_path):
    """A feedback written against an older contract (no ``wants_train_probe``, no
    ``decide_with``) is refused at assembly, by name, instead of deep in a run."""
    from sia.agents.decision import Decision

    class Old:
        name = "old"

        def decide(self, ctx):
            return Decision(action="stop", rationale="done")

    with pytest.raises(TypeError, match=r"the feedback part .*Old lacks decide_with, keep_settings, wants_train_probe "
                                        r"\(declared by sia\.parts\.Feedback"):
        _parts(tmp_path, feedback=Old())


def test_an_evaluator_without_a_bench_fails_when_the_parts_are_built(tmp_path):
    class Scores:
        def evaluate(self, *a, **k):
            raise AssertionError

        def trajectories(self, generation, split):
            return []

    with pytest.raises(TypeError, match="the evaluator part .*Scores lacks bench"):
        _parts(tmp_path, evaluator=Scores())


def test_every_engine_offers_asleep_and_the_workbench_its_workers():
    """``asleep`` is the Engine protocol's (a no-op unless the engine frees memory); the pace
    guard's first wave is the workbench's ``workers``."""
    from sia.engine.base import Engine
    from sia.engine.hf import HFEngine
    from sia.engine.vllm_engine import VLLMEngine
    from sia.evaluation import Workbench
    from support.echo_engine import EchoEngine
    from support.toy_parts import ToyEngine

    for cls in (HFEngine, VLLMEngine, EchoEngine, ToyEngine):
        assert Engine in cls.__mro__ and callable(cls.asleep), cls
    with EchoEngine().asleep():      # the default: a context that frees nothing
        pass
    assert VLLMEngine.asleep is not Engine.asleep     # vLLM frees the GPU for the trainer

    class Pool:
        workers = 3

    assert Workbench(Pool(), {}, {}, progress=False).workers == 3


def test_an_older_run_dirs_decision_and_train_report_read_back_typed():
    """decision.json and train.json of a run written before the fields were typed (digest,
    fallback and cost inside ``stats``; a training dict with ``data``) resume as typed values."""
    from sia.agents.decision import Decision, TrainingPlan
    from sia.parts import TrainReport

    old = {"action": "weights", "rationale": "r", "harness_code": None, "edit": None,
           "training": {"algorithm": "auto", "data": "auto", "steps": 5, "examples": 16},
           "stats": {"n": 8, "score": 0.25, "error_rate": 0.0, "format_rate": 0.5, "wrong_rate": 0.25,
                     "wellformed_accuracy": 0.5, "error_kinds": {}, "train_score": None, "tokens": 80,
                     "examples_of_failures": [], "fallback": True, "errors": [],
                     "cost": {"tokens_in": 100, "tokens_out": 20, "dollars": 0.01, "calls": 1},
                     "plan": {"fits": True, "examples": 16, "steps": 5, "forecast_s": 60.0}}}
    decision = Decision.from_json(old)
    assert decision.training == TrainingPlan("auto", steps=5, examples=16)
    assert (decision.digest.score, decision.digest.format_rate) == (0.25, 0.5)
    assert decision.fallback is True and decision.cost.tokens_in + decision.cost.tokens_out == 120
    assert Decision.from_json(decision.to_json()) == decision          # and what it writes now reads back
    skipped = TrainReport.from_json({"algorithm": None, "skipped": "no positive sample", "rationale": "none",
                                     "reward_stats": {"n": 32}, "rollout_s": 1.5})
    assert skipped.skipped == "no positive sample" and skipped.losses == [] and skipped.steps == 0
    trained = TrainReport.from_json({"algorithm": "sft", "losses": [2.0, 1.0], "wall_s": 4.0, "steps": 2,
                                     "examples": 8})
    assert (trained.algorithm, trained.losses, trained.steps) == ("sft", [2.0, 1.0], 2)
    assert TrainReport.from_json(trained.to_json()) == trained

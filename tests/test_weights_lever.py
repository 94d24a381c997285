"""The weights lever's rollout bookkeeping and its choice of algorithm from reward statistics,
on recorded rollouts (no model needed): what it trains on, and when it refuses to train."""
from __future__ import annotations

import contextlib
import json

import pytest
from omegaconf import OmegaConf

from sia.agents.decision import Decision, TrainingPlan
from sia.agents.digest import Digest
from sia.engine.base import Engine as TaskEngine
from sia.harness.contract import JobResult
from sia.levers.lora import LoraLever
from sia.levers.rollouts import RolloutPlan, collect, job_id, read_rollouts
from sia.run import RunDir
from sia.tasks import Example, load_task
from tests.support.reward_task import RewardTask


def _call(completion, used=None, **kw):
    return {"type": "llm_call", "messages": [{"role": "user", "content": "q"}], "completion": completion,
            "finish_reason": "stop", "used": used, **kw}


class CountingBench:
    """Answers every job with its own id; counts the jobs it was asked to run."""

    def __init__(self):
        self.jobs = []

    def run(self, harness, jobs, adapter, desc, sampling=None, on_progress=None):
        assert sampling == {"temperature": 0.9, "seed": 7}
        self.jobs += [j.id for j in jobs]
        results = [JobResult(id=j.id, answer=j.id, events=[_call(j.id, temperature=0.9, seed=1)],
                             served=[_call(j.id, temperature=0.9, seed=1)]) for j in jobs]
        if on_progress is not None:      # as the pool does when the jobs are back
            on_progress(len(jobs), len(jobs))
        return results


def reward_by_k(root):
    """Answers are job ids (see the bench above): sample k=1 of each example earns 1, the rest 0."""
    return RewardTask(root, lambda answer: 1.0 if answer.endswith("~1") else 0.0)


def test_rollouts_survive_a_kill_and_are_never_drawn_twice(tmp_path):
    examples = [Example(id=f"e{i}", inputs={}) for i in range(3)]
    plan = RolloutPlan(examples=examples, samples_per_prompt=2, temperature=0.9, seed=7)
    path = tmp_path / "rollouts.jsonl"
    first = CountingBench()
    rows = collect(reward_by_k(tmp_path), first, tmp_path / "h.py", None, plan, path, "r")
    assert len(rows) == 6 and len(first.jobs) == 6
    assert {r["job"]: r["reward"] for r in rows}[job_id(examples[0], 1)] == 1.0
    assert rows[0]["samples"][0]["completion"] == rows[0]["job"]     # the served call is the sample
    # a kill -9 mid-append: the last line is torn, the rest survives
    text = path.read_text()
    path.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 1] + '{"job": "e2~1", "rew')
    assert len(read_rollouts(path)) == 5
    again = CountingBench()
    rows = collect(reward_by_k(tmp_path), again, tmp_path / "h.py", None, plan, path, "r")
    assert again.jobs == [job_id(examples[2], 1)] and len(rows) == 6          # only the torn job redrawn
    assert len(path.read_text().splitlines()) == 6


def test_rollouts_stopped_by_the_budget_keep_the_chunks_already_drawn(tmp_path, monkeypatch):
    """The pace guard sees progress over all the rollout jobs, a chunk's last job only once the
    chunk is appended; what it raises stops the draw, and the chunks appended stay for a resume."""
    import sia.levers.rollouts

    monkeypatch.setattr(sia.levers.rollouts, "CHUNK", 2)
    examples = [Example(id=f"e{i}", inputs={}) for i in range(3)]
    plan = RolloutPlan(examples=examples, samples_per_prompt=2, temperature=0.9, seed=7)
    path, seen = tmp_path / "rollouts.jsonl", []

    def guard(done, total):
        seen.append((done, total))
        if done >= 4:
            raise TimeoutError("out of budget")

    with pytest.raises(TimeoutError):
        collect(reward_by_k(tmp_path), CountingBench(), tmp_path / "h.py", None, plan, path, "r", on_progress=guard)
    assert seen == [(2, 6), (4, 6)]
    assert len(read_rollouts(path)) == 4                 # both finished chunks; the third never started
    again = CountingBench()
    rows = collect(reward_by_k(tmp_path), again, tmp_path / "h.py", None, plan, path, "r")
    assert len(again.jobs) == 2 and len(rows) == 6


def _lever(tmp_path, task, train):
    from conftest import CONF_DIR

    lora = OmegaConf.load(CONF_DIR / "lora" / "default.yaml")   # every algorithm's settings
    lora.pop("defaults")
    cfg = OmegaConf.create({"budget": {"train_steps": 2, "train_examples": 4},
                            "lora": OmegaConf.merge(lora, {
                                "samples_per_prompt": 4, "rollout_examples": 8, "rollout_temperature": 0.9,
                                "positive_threshold": None,
                                "thresholds": {"format_failure_sft": 0.3, "sparse_zero_share": 0.8, "min_groups": 8}}),
                            "seed": 0, "model": {}, "cache_dir": str(tmp_path)})

    class NoBench:
        def run(self, *a, **k):
            raise AssertionError("recorded rollouts: nothing is drawn again")

    class NoModel(TaskEngine):   # asleep(): the protocol's default; nothing here serves an adapter
        pass

    return LoraLever(cfg=cfg, task=task, bench=NoBench(), run=RunDir(tmp_path / "run"), engine=NoModel(), train=train)


def _record(lever, generation, rewards):
    """rollouts.jsonl for 8 train examples x 4 samples with the given rewards (row-major)."""
    path = lever.run.gen_dir(generation) / "rollouts.jsonl"
    rows = []
    for i, e in enumerate(lever.train_examples):
        for k in range(4):
            reward = rewards[i * 4 + k]
            rows.append({"job": job_id(e, k), "example_id": e.id, "k": k, "reward": reward,
                         "failure": None if reward else "wrong",
                         "samples": [{"group": e.id, "example_id": e.id, "seed": k, "temperature": 0.9,
                                      "prompt": [{"role": "user", "content": "x"}], "completion": "y",
                                      "reward": reward, "eos": True}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


WEIGHTS = Decision(action="weights", rationale="r", training=TrainingPlan("auto", steps=2, examples=8))


def _digest(score: float, format_rate: float = 0.0) -> Digest:
    """The incumbent's val digest a decision was made on (what the loop stamps on it)."""
    return Digest(n=8, score=score, error_rate=0.0, format_rate=format_rate,
                  wrong_rate=max(0.0, 1.0 - score - format_rate), wellformed_accuracy=score)


def test_cuda_kernel_without_a_positive_sample_records_no_training_and_why(tmp_path):
    task = load_task("cuda_kernel", {})
    lever = _lever(tmp_path, task, [Example(id=f"t{i}", inputs={}) for i in range(8)])
    assert "sft" not in lever.offer(task, "").algorithms          # no gold targets: reward-driven only
    _record(lever, 1, [0.0] * 32)
    trained = lever.train(1, WEIGHTS, tmp_path / "h.py", None, None)
    assert trained.report.algorithm is None and "no positive sample" in trained.report.skipped
    assert trained.report.reward_stats["n"] == 32
    again = lever.train(1, WEIGHTS, tmp_path / "h.py", None, None)     # resumed: the same verdict, no redraw
    assert again.report == trained.report


def test_a_rare_win_calls_for_entropic_weighting(tmp_path):
    task = load_task("cuda_kernel", {})
    lever = _lever(tmp_path, task, [Example(id=f"t{i}", inputs={}) for i in range(8)])
    rewards = [0.0] * 32
    rewards[5] = 0.6                                             # one correct kernel faster than the incumbent
    _record(lever, 1, rewards)
    name, why, samples, stats = lever._choose(1, WEIGHTS, tmp_path / "h.py", None, 8)
    assert name == "eaw" and "positive" in why and len(samples) == 32 and stats.n_positive == 1


def test_a_correct_kernel_slower_than_the_incumbent_is_not_positive(tmp_path):
    task = load_task("cuda_kernel", {})
    lever = _lever(tmp_path, task, [Example(id=f"t{i}", inputs={}) for i in range(8)])
    rewards = [0.0] * 32
    rewards[5] = 0.45                        # correct, but slower than the incumbent (val reward 0.5)
    _record(lever, 1, rewards)
    at_incumbent = Decision(action="weights", rationale="r", training=WEIGHTS.training, digest=_digest(0.5))
    trained = lever.train(1, at_incumbent, tmp_path / "h.py", None, None)
    assert trained.report.algorithm is None and trained.report.reward_stats["threshold"] == 0.5
    rewards[9] = 0.55                        # one faster than the incumbent: that is worth training on
    _record(lever, 2, rewards)
    name, why, _, stats = lever._choose(2, at_incumbent, tmp_path / "h.py", None, 8)
    assert name == "eaw" and stats.n_positive == 1 and "reward > 0.5" in why


def test_binary_reward_with_spread_groups_calls_for_grpo(tmp_path):
    task = load_task("sql_qa", {})
    lever = _lever(tmp_path, task, [Example(id=f"t{i}", inputs={}) for i in range(8)])
    _record(lever, 1, [1.0, 0.0, 1.0, 0.0] * 8)
    name, why, _, stats = lever._choose(1, WEIGHTS, tmp_path / "h.py", None, 8)
    assert name == "grpo" and stats.spread_share == 1.0
    forced = Decision(action="weights", rationale="r", training=TrainingPlan("rs_sft", steps=2, examples=8))
    assert lever._choose(1, forced, tmp_path / "h.py", None, 8)[0] == "rs_sft"


@pytest.mark.parametrize("format_rate, expected", [(0.9, "sft"), (0.0, "grpo")])
def test_gold_sft_first_when_answers_are_unreadable(tmp_path, format_rate, expected):
    task = load_task("sql_qa", {})
    lever = _lever(tmp_path, task, [Example(id=f"t{i}", inputs={}) for i in range(8)])
    _record(lever, 1, [1.0, 0.0, 1.0, 0.0] * 8)
    decision = Decision(action="weights", rationale="r", training=TrainingPlan("auto", steps=2, examples=8),
                        digest=_digest(0.5 * (1 - format_rate), format_rate))
    assert lever._choose(1, decision, tmp_path / "h.py", None, 8)[0] == expected


@pytest.mark.slow
def test_cuda_kernel_with_one_faster_kernel_trains_on_the_recorded_rollout(tmp_path, model_cache_dir):
    """The whole lever on a recorded rollout holding one positive sample: no redraw, eaw
    chosen, real LoRA steps, the adapter served under the generation's name."""
    from conftest import CONF_DIR

    task = load_task("cuda_kernel", {})
    lever = _lever(tmp_path, task, [Example(id=f"t{i}", inputs={}) for i in range(8)])
    lever.cfg = OmegaConf.merge(lever.cfg, {"model": OmegaConf.load(CONF_DIR / "model" / "smollm2_135m.yaml"),
                                            "lora": OmegaConf.merge(OmegaConf.load(CONF_DIR / "lora" / "default.yaml"),
                                                                    lever.cfg.lora, {"max_seq_len": 64}),
                                            "cache_dir": str(model_cache_dir)})

    class Engine(TaskEngine):   # the protocol's defaults: asleep() frees nothing
        served = {}

        def add_adapter(self, name, path):
            self.served[name] = path

    lever.engine = Engine()
    rewards = [0.0] * 32
    rewards[5] = 0.6                                       # one correct kernel faster than the incumbent
    _record(lever, 1, rewards)
    path = lever.run.gen_dir(1) / "rollouts.jsonl"         # one sample longer than lora.max_seq_len=64
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["samples"][0]["prompt"] = [{"role": "user", "content": "blah " * 100}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trained = lever.train(1, WEIGHTS, tmp_path / "h.py", None, None)
    assert trained.report.algorithm == "eaw" and len(trained.report.losses) == trained.report.steps == 1
    too_long = trained.report.too_long                     # refused whole and counted, never cut
    assert (too_long["refused"], too_long["of"], too_long["max_seq_len"]) == (1, 32, 64) and too_long["longest"] > 100
    assert "1 of 2 steps: lora.rollout_epochs=2" in trained.report.note   # a few samples: 2 passes, 1 step
    assert (trained.path / "COMPLETE").is_file() and lever.engine.served == {trained.name: str(trained.path)}


def test_a_forced_algorithm_the_rollout_cannot_train_fails_the_generation_not_the_run(tmp_path):
    from sia.parts import LeverFailed

    task = load_task("sql_qa", {})
    lever = _lever(tmp_path, task, [Example(id=f"t{i}", inputs={}) for i in range(8)])
    _record(lever, 1, [1.0, 1.0, 1.0, 1.0] * 4 + [0.0] * 16)       # no group holds different rewards
    forced = Decision(action="weights", rationale="r", training=TrainingPlan("grpo", steps=2, examples=8))

    class Sleeper(TaskEngine):   # the trainer runs inside the engine's asleep() (the protocol's member)
        naps: list[str] = []

        @contextlib.contextmanager
        def asleep(self):
            self.naps.append("asleep")
            try:
                yield
            finally:
                self.naps.append("awake")

    lever.engine = Sleeper()
    with pytest.raises(LeverFailed, match="grpo cannot train on this rollout: .*every advantage is 0"):
        lever.train(1, forced, tmp_path / "h.py", None, None)
    assert lever.engine.naps == ["asleep", "awake"]

"""Issues 20 and 22 on the data path from a served completion to training token ids, through
the real worker pool where a harness is involved:

- training trains the ids the engine sampled (no decode/encode), appends nothing it did not
  sample, and reads temperature/top_p/seed/finish from the trusted served record;
- a served call credits at most one sample, however often the harness logs it as used;
- a sample longer than ``lora.max_seq_len`` is refused and counted, never cut;
- a request the engine chokes on (temperature 1e-300, anything that raises) fails only its
  example; a huge prompt is refused before the engine tokenises it;
- rollouts force top_p=1, rotate their examples across generations, and run each chunk with
  ``ctx.resources`` that leave the chunk's own examples out.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from security_layers import needs
from sia.engine.base import GenResult
from sia.evaluation import Workbench
from sia.harness.batcher import CHARS_PER_TOKEN, call_seed, gen_request
from sia.harness.contract import Job
from sia.harness.pool import HarnessPool
from sia.harness.sandbox import probe
from sia.levers.rollouts import (RolloutPlan, collect, record_sample, rotating_examples, sample_record,
                                samples_from_events)
from sia.tasks import EvalReport, Example, ExampleScore, Splits, Task, Scoring
from tests.support.reward_task import RewardTask
from sia.train.batching import encode_sample, too_long
from sia.train.samples import Sample

pool_tests = needs(probe())

# Token ids of the embedded SmolLM2 tokenizer: " hel" + "lo" decodes to " hello", which encodes
# as one other token (33662): re-tokenising the text would train a sequence never sampled.
HEL, LO, HELLO, EOS = 704, 5365, 33662, 2


class IdsEngine:
    """A fake engine that reports sampled ids like the real ones: " hel" "lo" then EOS
    (finish "eos"), or, with a stop string, the ids up to and including the stop's tokens
    (finish "stop"). A prompt containing "boom" makes it raise, like a sampler fed a bad value;
    a temperature the HF sampler cannot divide by raises as it does."""

    max_batch_size = 8
    max_context = 2048

    def __init__(self):
        self.requests = []

    def generate(self, requests, adapter=None):
        self.requests += requests
        out = []
        for r in requests:
            if any("boom" in m["content"] for m in r.messages):
                raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
            if 0 < r.temperature < 1e-30:
                raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
            if r.stop:
                ids, finish, text = [HEL, LO, 10, 11], "stop", " hello"
            else:
                ids, finish, text = [HEL, LO, EOS], "eos", " hello"
            out.append(GenResult(text=text, prompt_tokens=3, completion_tokens=2, token_logprobs=[-0.1, -0.2],
                                 finish_reason="stop", latency_s=0.0, token_ids=ids, finish=finish,
                                 prompt_ids=[1, 2, 3]))
        return out


def _write(tmp_path, source: str):
    path = tmp_path / "harness.py"
    path.write_text(textwrap.dedent(source))
    return path


# ---- trained ids are the sampled ids ----------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(model_cache_dir):
    """The embedded model's real tokenizer (SIA_CACHE_DIR: a converted model to reuse)."""
    from conftest import CONF_DIR
    from sia.engine.common import load_tokenizer
    from sia.engine.model_cache import resolve_model_dir

    model_cfg = OmegaConf.load(CONF_DIR / "model" / "smollm2_135m.yaml")
    cache = Path(os.environ["SIA_CACHE_DIR"]) if os.environ.get("SIA_CACHE_DIR") else model_cache_dir
    return load_tokenizer(resolve_model_dir(model_cfg, cache))


@pytest.mark.slow
def test_the_premise_hel_lo_re_encodes_as_one_other_token(tokenizer):
    from sia.engine.common import encode_text

    assert tokenizer.decode([HEL, LO]) == " hello" and encode_text(tokenizer, " hello") == [HELLO]
    assert tokenizer.eos_token_id == EOS


USED_HARNESS = """
def solve(inputs, ctx):
    msgs = [{"role": "user", "content": inputs["q"]}]
    c = ctx.llm.chat(msgs, stop=["<eoa>"] if inputs.get("stop") else None, top_p=0.5, used=True)
    for _ in range(int(inputs.get("forge", 0))):   # the same call logged again and again, with other settings
        ctx.log("llm_call", messages=msgs, completion=c.text, used=True, temperature=0.0, seed=123,
                top_p=0.5, finish_reason="stop")
    return c.text
"""


def _rollout(tmp_path, examples, engine=None, resources_for=None, task=None):
    engine = engine or IdsEngine()
    plan = RolloutPlan(examples=examples, samples_per_prompt=1, temperature=0.7, seed=3)
    with HarnessPool(engine, workers=2, example_timeout_s=30) as pool:
        bench = Workbench(pool, {}, {}, progress=False)
        extra = {"resources_for": resources_for} if resources_for else {}
        rows = collect(task or RewardTask(tmp_path, lambda answer: 1.0), bench, tmp_path / "harness.py", None, plan,
                       tmp_path / "rollouts.jsonl", "r", **extra)
    return engine, rows


@pool_tests
@pytest.mark.slow
def test_trained_ids_equal_the_sampled_ids_and_settings_come_from_the_served_record(tmp_path, tokenizer):
    _write(tmp_path, USED_HARNESS)
    engine, rows = _rollout(tmp_path, [Example(id="e0", inputs={"q": "hi", "forge": 49})])
    [row] = rows
    assert len(row["samples"]) == 1        # one served call, logged as used 50 times: one sample
    sample = record_sample(row["samples"][0])
    request = engine.requests[0]
    assert request.top_p == 1.0            # the rollout forces top_p=1 over the harness's 0.5
    assert (sample.sampling_temperature, sample.top_p, sample.seed, sample.finish) == (
        0.7, 1.0, call_seed(3, "e0~0", 0), "eos")
    encoded = encode_sample(tokenizer, sample, max_seq_len=64)
    assert encoded["input_ids"] == [1, 2, 3, HEL, LO, EOS] and encoded["n_prompt"] == 3   # nothing re-encoded


@pool_tests
@pytest.mark.slow
def test_a_stop_string_ending_appends_no_eos(tmp_path, tokenizer):
    _write(tmp_path, USED_HARNESS)
    _, rows = _rollout(tmp_path, [Example(id="e0", inputs={"q": "hi", "stop": True})])
    sample = record_sample(rows[0]["samples"][0])
    assert sample.finish == "stop" and not sample.eos
    completion = encode_sample(tokenizer, sample, max_seq_len=64)["input_ids"][3:]
    assert completion == [HEL, LO, 10, 11] and EOS not in completion   # the stop's tokens, no EOS
    # An engine that reports how it ended but no ids: the text path appends no EOS either.
    text_only = Sample(prompt=[{"role": "user", "content": "hi"}], completion=" hello", eos=sample.eos)
    assert encode_sample(tokenizer, text_only, max_seq_len=64)["input_ids"][-1] != EOS


def test_served_records_credit_each_call_once_and_ignore_the_harness_account():
    msgs = [{"role": "user", "content": "q"}]
    served = [{"type": "llm_call", "messages": msgs, "completion": "a", "temperature": 0.7, "top_p": 1.0,
               "seed": 11, "finish": "length", "finish_reason": "length", "prompt_ids": [5],
               "completion_ids": [6, 7]}]
    forged = {"type": "llm_call", "messages": msgs, "completion": "a", "used": True, "temperature": 0.0,
              "seed": 99, "finish_reason": "stop"}
    [s] = samples_from_events([forged] * 50, 1.0, group="g", served=served)
    assert (s.sampling_temperature, s.seed, s.finish, s.eos, s.completion_ids) == (0.7, 11, "length", False, [6, 7])
    twice = served * 2                     # really served twice: two samples
    assert len(samples_from_events([forged] * 50, 1.0, group="g", served=twice)) == 2
    # rollouts.jsonl keeps the ids; an old record without them still loads (text path)
    assert record_sample(sample_record(s)).completion_ids == [6, 7]
    old = {"prompt": msgs, "completion": "a", "reward": 1.0, "eos": True}
    assert record_sample(old).completion_ids is None


# ---- too long: refused, not cut, and counted ---------------------------------------------

@pytest.mark.slow
def test_a_too_long_sample_is_refused_not_cut_and_counted(tokenizer):
    long_prompt = Sample(prompt=[{"role": "user", "content": "blah " * 200 + "END"}], completion="ok")
    assert encode_sample(tokenizer, long_prompt, max_seq_len=10_000) is not None
    assert encode_sample(tokenizer, long_prompt, max_seq_len=64) is None      # never cut from the left
    served = Sample(prompt="p", completion="x", prompt_ids=list(range(10)), completion_ids=[3, 4, 5])
    assert encode_sample(tokenizer, served, max_seq_len=13)["input_ids"] == list(range(10)) + [3, 4, 5]
    assert encode_sample(tokenizer, served, max_seq_len=12) is None
    fit = too_long(tokenizer, [long_prompt, served], 64)
    assert (fit["refused"], fit["of"], fit["max_seq_len"]) == (1, 2, 64) and fit["longest"] > 64


# ---- requests that would kill the run ------------------------------------------------------

FAILING_HARNESS = """
def solve(inputs, ctx):
    try:
        return ctx.llm.chat([{"role": "user", "content": inputs["q"]}], temperature=inputs["t"]).text
    except ValueError as exc:
        return "refused: " + str(exc)
"""


@pool_tests
def test_an_engine_exception_fails_only_the_example_that_caused_it(tmp_path):
    path = _write(tmp_path, FAILING_HARNESS)
    engine = IdsEngine()
    jobs = [Job(id="tiny", inputs={"q": "hi", "t": 1e-300}), Job(id="boom", inputs={"q": "boom", "t": 0.0}),
            Job(id="fine", inputs={"q": "hi", "t": 0.5})]
    with HarnessPool(engine, workers=3, example_timeout_s=30) as pool:
        results = pool.run(str(path), jobs, {}, {}, progress=False)   # never raises
    by_id = {r.id: r for r in results}
    assert by_id["tiny"].answer == " hello"                           # 1e-300 is served greedy
    assert [s["temperature"] for s in by_id["tiny"].served] == [0.0]
    assert by_id["boom"].answer.startswith("refused: model request refused: the engine failed: RuntimeError")
    assert by_id["fine"].answer == " hello"


def test_sampling_parameters_are_bounded_at_validation():
    ask = {"messages": [{"role": "user", "content": "x"}]}
    assert gen_request({**ask, "temperature": 1e-300}, 8).temperature == 0.0
    for bad in ({"temperature": float("nan")}, {"temperature": 11.0}, {"temperature": True},
                {"top_p": float("inf")}, {"top_p": 0.0}, {"max_tokens": True}):
        with pytest.raises(ValueError):
            gen_request({**ask, **bad}, 8)


HUGE_HARNESS = """
def solve(inputs, ctx):
    try:
        ctx.llm.chat([{"role": "user", "content": "x" * inputs["n"]}])
    except ValueError as exc:
        return str(exc)
    return "served"
"""


@pool_tests
def test_a_huge_prompt_is_refused_before_the_engine_sees_it(tmp_path):
    path = _write(tmp_path, HUGE_HARNESS)
    engine = IdsEngine()
    limit = engine.max_context * CHARS_PER_TOKEN
    jobs = [Job(id="huge", inputs={"n": 25_000_000}), Job(id="ok", inputs={"n": limit})]
    with HarnessPool(engine, workers=2, example_timeout_s=60) as pool:
        results = pool.run(str(path), jobs, {}, {}, progress=False)
    assert f"at most {limit}" in results[0].answer and "25000000 characters" in results[0].answer
    assert results[1].answer == "served" and len(engine.requests) == 1


# ---- rollouts: rotation and leave-one-out -------------------------------------------------

def test_rollout_examples_rotate_across_generations():
    train = [Example(id=f"t{i}", inputs={}) for i in range(10)]
    picks = [[e.id for e in rotating_examples(train, 4, seed=0, generation=g)] for g in range(5)]
    assert picks[0] != picks[1] and len(set(picks[0])) == 4
    assert {i for p in picks[:3] for i in p} == {e.id for e in train}          # all of them, in time
    assert picks == [[e.id for e in rotating_examples(train, 4, seed=0, generation=g)] for g in range(5)]
    assert picks[1] != [e.id for e in rotating_examples(train, 4, seed=1, generation=1)]


LOOKUP_HARNESS = """
def solve(inputs, ctx):
    train = ctx.resources.get("train", [])
    ctx.llm.chat([{"role": "user", "content": f"{inputs['q']} sees {len(train)}"}], used=True)
    for row in train:                       # the rolled-out example's own target, if it is there
        if row["q"] == inputs["q"]:
            return row["a"]
    return "not found"
"""


class LookupTask(Task):
    """Train targets are public (few-shot), as in legal_charge and sql_qa."""

    name = "lookup"
    scoring = Scoring(primary_metric="score")

    def __init__(self, cfg, root):
        super().__init__(cfg, root)
        self.splits = Splits(train=[Example(id=f"t{i}", inputs={"q": f"q{i}"}, target=f"a{i}") for i in range(6)],
                             val=[], test=[])

    def load(self):
        return self.splits

    def public_resources(self, splits):
        return {"train": [{"q": e.inputs["q"], "a": e.target} for e in splits.train]}

    def evaluate(self, examples, answers, split):
        return EvalReport(metrics={"score": 0.0}, per_example=[
            ExampleScore(id=e.id, score=float(a == e.target)) for e, a in zip(examples, answers)])


@pool_tests
def test_rollouts_leave_the_rolled_out_examples_out_of_the_resources(tmp_path):
    from sia.levers.lora import LoraLever
    from sia.run import RunDir

    _write(tmp_path, LOOKUP_HARNESS)
    task = LookupTask({}, tmp_path)
    cfg = OmegaConf.create({"seed": 0, "lora": {"rollout_examples": 2, "samples_per_prompt": 2,
                                                "rollout_temperature": 0.7}})
    with HarnessPool(IdsEngine(), workers=2, example_timeout_s=30) as pool:
        bench = Workbench(pool, task.public_resources(task.splits), {}, progress=False)
        lever = LoraLever(cfg=cfg, task=task, bench=bench, run=RunDir(tmp_path / "run"), engine=None,
                          train=task.splits.train)
        rows = lever._rollouts(1, tmp_path / "harness.py", None, examples=2)
    assert len(rows) == 4 and all(r["reward"] == 0.0 for r in rows)       # no target to copy
    # the other train examples stay visible: only the chunk's own 2 examples are left out
    assert {r["samples"][0]["prompt"][0]["content"].split(" sees ")[1] for r in rows} == {"4"}


# ---- lora.max_seq_len per task ------------------------------------------------------------

@pytest.mark.parametrize("task, expected", [("legal_charge", 1536), ("sql_qa", 1024), ("scrna_denoise", 512),
                                            ("cuda_kernel", 2048)])
def test_max_seq_len_defaults_fit_each_task_and_can_be_set(compose_cfg, task, expected):
    assert compose_cfg(f"task={task}").lora.max_seq_len == expected
    assert compose_cfg(f"task={task}", "lora.max_seq_len=700").lora.max_seq_len == 700
    assert compose_cfg(f"task={task}", f"lora.max_seq_len_by_task.{task}=900").lora.max_seq_len == 900


def test_samples_per_prompt_grows_until_most_binary_groups_carry_signal():
    from sia.levers.lora import samples_for_signal

    def spread(p, k):
        return 1 - p ** k - (1 - p) ** k

    assert spread(0.1, 4) < 0.5                                  # the issue's case: two thirds of groups flat
    k = samples_for_signal(0.1, 4, 16)
    assert spread(0.1, k) >= 0.5 and spread(0.1, k - 1) < 0.5
    assert samples_for_signal(0.5, 4, 16) == 4 and samples_for_signal(0.0, 4, 16) == 4
    assert samples_for_signal(0.01, 4, 16) == 16                 # capped


@pytest.mark.parametrize("task_name, key", [("legal_charge", "fact"), ("sql_qa", "question")])
def test_the_real_tasks_rollout_resources_leave_the_held_examples_out(tmp_path, task_name, key):
    from conftest import CONF_DIR
    from sia.levers.lora import LoraLever
    from sia.run import RunDir
    from sia.tasks import load_task

    cfg = OmegaConf.load(CONF_DIR / "task" / f"{task_name}.yaml")
    cfg.pop("defaults")
    task = load_task(task_name, OmegaConf.to_container(cfg))
    train = task.load().train
    lever = LoraLever(cfg=OmegaConf.create({}), task=task, bench=None, run=RunDir(tmp_path / "run"), engine=None,
                      train=train)
    full = task.public_resources(task.load())["train"]
    held = train[:3]
    kept = lever._resources_without(held)["train"]
    assert len(kept) == len(full) - 3
    assert not {e.inputs[key] for e in held} & {row[key] for row in kept}

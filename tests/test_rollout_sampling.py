"""Issue 9's rollout sampling override in the pool: HarnessPool.run(sampling=...) makes every
model call of the run sample at the given temperature with its own seed, whatever the
harness asked for, and each llm event records what was used (and ``used=True`` calls)."""
from __future__ import annotations

import pytest

from security_layers import needs
from sia.engine.base import GenResult
from sia.harness.contract import Job
from sia.harness.pool import HarnessPool
from sia.harness.sandbox import probe

pytestmark = needs(probe())

HARNESS = """
def solve(inputs, ctx):
    msgs = [{"role": "user", "content": inputs["q"]}]
    a = ctx.llm.chat(msgs)                      # greedy, as a harness would ask
    b = ctx.llm.sample(msgs, 2, temperature=0.3, seed=5)
    c = ctx.llm.chat(msgs, used=True)
    return c.text
"""


class Engine:
    max_batch_size = 8

    def __init__(self):
        self.requests = []

    def generate(self, requests, adapter=None):
        self.requests += requests
        return [GenResult(text=f"t{r.temperature}-s{r.seed}", prompt_tokens=1, completion_tokens=1,
                          token_logprobs=[0.0], finish_reason="stop", latency_s=0.0) for r in requests]


def run(tmp_path, sampling):
    harness = tmp_path / "h.py"
    harness.write_text(HARNESS)
    engine = Engine()
    jobs = [Job(id="a", inputs={"q": "x"}), Job(id="b", inputs={"q": "y"})]
    with HarnessPool(engine, workers=2, example_timeout_s=30) as pool:
        results = pool.run(str(harness), jobs, {}, {}, progress=False, sampling=sampling)
    return engine, results


def test_sampling_overrides_temperature_and_gives_each_call_its_own_seed(tmp_path):
    engine, results = run(tmp_path, {"temperature": 0.7, "seed": 3})
    assert all(r.error is None for r in results), [r.error for r in results]
    assert {r.temperature for r in engine.requests} == {0.7}
    seeds = [r.seed for r in engine.requests]
    assert len(seeds) == 8 and len(set(seeds)) == 8            # 4 calls per job, 2 jobs
    for result in results:
        calls = [e for e in result.events if e["type"] == "llm_call"]
        assert [e["temperature"] for e in calls] == [0.7] * 4
        assert [e["used"] for e in calls] == [None, None, None, True]   # None: not marked
        assert result.answer == f"t0.7-s{calls[-1]['seed']}"
    again, _ = run(tmp_path, {"temperature": 0.7, "seed": 3})
    assert sorted(r.seed for r in again.requests) == sorted(seeds)   # reproducible from the run seed
    other, _ = run(tmp_path, {"temperature": 0.7, "seed": 4})
    assert not set(r.seed for r in other.requests) & set(seeds)


def test_without_sampling_the_harness_settings_stand(tmp_path):
    engine, results = run(tmp_path, None)
    assert sorted((r.temperature, r.seed) for r in engine.requests) == sorted(
        [(0.0, None)] * 4 + [(0.3, 5), (0.3, 6)] * 2)
    calls = [e for e in results[0].events if e["type"] == "llm_call"]
    assert [(e["temperature"], e["seed"]) for e in calls] == [(0.0, None), (0.3, 5), (0.3, 6), (0.0, None)]


@pytest.mark.parametrize("bad", [{"temperature": "hot"}, {"temperature": 0.5, "seed": 1.5}, {"temp": 1}, [0.5]])
def test_bad_sampling_is_refused_with_the_fix(tmp_path, bad):
    with HarnessPool(Engine(), workers=1) as pool, pytest.raises(ValueError, match="e.g."):
        pool.run(str(tmp_path / "h.py"), [Job(id="a", inputs={})], {}, {}, sampling=bad)


VOTING_HARNESS = """
def solve(inputs, ctx):
    msgs = [{"role": "user", "content": inputs["q"]}]
    first = ctx.llm.chat(msgs)
    picked = ctx.llm.sample(msgs, 3, temperature=0.5, seed=1)[1]   # chosen after the fact (a vote)
    ctx.llm.mark_used(picked)
    try:
        ctx.llm.mark_used(object())
    except ValueError as exc:
        ctx.log("refused", message=str(exc))
    return picked.text
"""


def test_mark_used_credits_an_earlier_call_and_refuses_anything_else(tmp_path):
    harness = tmp_path / "h.py"
    harness.write_text(VOTING_HARNESS)
    with HarnessPool(Engine(), workers=1, example_timeout_s=30) as pool:
        [result] = pool.run(str(harness), [Job(id="a", inputs={"q": "x"})], {}, {}, progress=False)
    assert result.error is None, result.error
    calls = [e for e in result.events if e["type"] == "llm_call"]
    assert [e["used"] for e in calls] == [None, None, True, None]
    assert result.answer == calls[2]["completion"] == "t0.5-s2"
    refused = [e for e in result.events if e["type"] == "refused"]
    assert refused and "mark_used takes a Completion" in refused[0]["message"]

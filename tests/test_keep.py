"""The paired keep rule (sia/keep.py): its statistics against hand computations, and its use in
the loop with the real task, the real sandboxed pool and an engine that answers right exactly
on the val examples a test chooses (so each candidate's per-example scores are known)."""
from __future__ import annotations

import itertools
import json

import pytest

from sia.agents.decision import Decision
from sia.assemble import assemble
from sia.engine.base import EngineStats, GenResult
from sia.harness.options import with_options
from sia.harness.pool import HarnessPool
from sia.keep import KeepSettings, PairedRule, p_greater, p_less, paired_gains, read_settings
from sia.parts import Feedback
from sia.records import GenerationRecord, Incumbent
from sia.run import RunDir, new_state
from sia.tasks import load_task
from sia.tracking import Tracker


# ---- statistics against hand computations --------------------------------------------------
def test_sign_flip_p_values_match_a_hand_enumeration():
    # zeros flip to themselves; the non-zero differences 1, 1, 0.5, -0.5 sum to 2.0. Of their 16
    # sign patterns, s1 + s2 + 0.5 s3 - 0.5 s4 >= 2.0 needs s1 = s2 = +1, and then 3 of the 4
    # (s3, s4) reach it: (+, +) 2.0, (+, -) 3.0, (-, -) 2.0; only (-, +) gives 1.0.
    diffs = [1, 0, 1, 0.5, 0, -0.5]
    sums = [sum(s * d for s, d in zip(signs, [1, 1, 0.5, -0.5])) for signs in itertools.product([1, -1], repeat=4)]
    assert sum(x >= 2.0 for x in sums) == 3
    assert p_greater(diffs) == 3 / 16
    assert p_less(diffs) == 15 / 16                     # every pattern but the 3.0 one is <= 2.0
    assert p_greater([1] * 8) == 1 / 256 and p_less([-1] * 8) == 1 / 256
    assert p_greater([0] * 10) == 1.0


def test_recorded_score_vectors_are_decided_as_by_hand():
    settings = KeepSettings(chunk=8, alpha=0.05, margin=2)
    inc = [1.0] * 12 + [0.0] * 12                       # the incumbent: right on the first 12 of 24
    rule = PairedRule(inc, "max", settings)
    assert rule.looks == 3

    one_more = [1.0] * 13 + [0.0] * 11                   # one example better, nothing worse
    gains = paired_gains([{"id": str(i), "score": s} for i, s in enumerate(one_more)],
                         [{"id": str(i), "score": s} for i, s in enumerate(inc)], "max")
    verdict = rule.replay(gains)
    # p = 1/2 (one non-zero difference), total 1 < margin 2: rejected at the pool's end, by 24 examples
    assert (verdict.decision, verdict.n, verdict.p_better) == ("reject", 24, 0.5)
    assert verdict.gain == pytest.approx(1 / 24) and "below the margin" in verdict.why

    two_more = [1.0] * 14 + [0.0] * 10                   # two better: p = 1/4, total 2 >= margin
    verdict = rule.replay([c - i for c, i in zip(two_more, inc)])
    assert (verdict.decision, verdict.n) == ("keep", 24) and verdict.p_better == 0.25

    worse = [0.0] * 24                                    # first chunk: 8 of 8 worse, p = 1/256 <= 0.05
    verdict = rule.replay([c - i for c, i in zip(worse, inc)][:8])
    assert (verdict.decision, verdict.n) == ("reject", 8) and verdict.p_worse == 1 / 256

    better = [1.0] * 24                                   # looks at 8 (no gain yet: the incumbent is right
    verdict = rule.replay([c - i for c, i in zip(better, inc)])   # there), 16: 4 of 4 better, p=1/16 > 0.05/3
    assert (verdict.decision, verdict.n) == ("keep", 24) and verdict.p_better == 1 / 4096
    assert verdict.low > 0 and verdict.high <= 1.0

    # cannot win: after 16 examples 4 worse and 0 better; the 8 left can add at most 8 (incumbent 0 there)
    # so the total could reach +4 >= margin: still open. With margin 5 it cannot, and 12 non-zero
    # +/-1 differences summing to +4 are not significant (p = 794/4096 by enumeration) -> rejected.
    partial = [1.0] * 8 + [0.0] * 4 + [0.0] * 4
    gains = [c - i for c, i in zip(partial, inc[:16])]
    assert rule.look(gains).decision == "continue"
    strict_margin = PairedRule(inc, "max", KeepSettings(chunk=8, alpha=0.05, margin=5))
    best = gains + [1.0] * 8
    hand = sum(sum(s * d for s, d in zip(signs, [x for x in best if x])) >= sum(best)
               for signs in itertools.product([1, -1], repeat=12)) / 4096
    assert p_greater(best) == hand == 794 / 4096
    verdict = strict_margin.look(gains)
    assert verdict.decision == "reject" and "cannot win" in verdict.why


def test_bad_keep_settings_are_named():
    problems = KeepSettings(rule="loose", alpha=2, chunk=0).problems()
    assert any("feedback.keep='loose'" in p and "paired" in p for p in problems)
    assert any("feedback.keep_alpha" in p for p in problems) and any("feedback.keep_chunk" in p for p in problems)


# ---- in the loop ---------------------------------------------------------------------------
class OracleEngine:
    """Answers the gold charges of the val examples the harness's mode is right on, abstains on
    the rest. The mode is read from the prompt: the label-list edit is the candidate, the plain
    seed prompt the incumbent."""

    max_batch_size = 16

    def __init__(self, val, seed_right: set[int], candidate_right: set[int]):
        self.gold = [(e.inputs["fact"].removeprefix("事实:")[:60], list(e.target)) for e in val]
        self.right = {False: seed_right, True: candidate_right}
        self.stats = EngineStats()
        self.requests: list[str] = []

    def add_adapter(self, name, path):
        pass

    def generate(self, requests, adapter=None):
        out = []
        for r in requests:
            prompt = "\n".join(m["content"] for m in r.messages)
            candidate = "可选罪名：" in prompt
            self.requests.append(prompt)
            hit = next((i for i, (fact, _) in enumerate(self.gold) if fact and fact in prompt), None)
            text = "我不知道"
            if hit is not None and hit in self.right[candidate]:
                text = f"[罪名]{';'.join(self.gold[hit][1])}<eoa>"
            out.append(GenResult(text=text, prompt_tokens=10, completion_tokens=3, token_logprobs=[-0.1] * 3,
                                 finish_reason="stop"))
        return out


CFG = ("budget=smoke", "logger=none", "budget.generations=1", "budget.val_examples=24", "budget.test_examples=4",
       "budget.probe_train_examples=0", "feedback.keep_chunk=8", "agent.workers=4", "quiet=true")


class Scripted(Feedback):
    """Generation 1: the label-list edit; carries the keep settings as an offline feedback does."""

    name = "scripted"
    wants_train_probe = False

    def __init__(self, cfg, task):
        self.keep_settings = read_settings(cfg.feedback)
        self.code = with_options(task.seed_harness(), label_list=True)

    def decide(self, ctx):
        return Decision(action="harness", rationale="scripted: label list", edit="label_list", harness_code=self.code)


def _run_one_candidate(compose_cfg, tmp_path, seed_right, candidate_right, *extra):
    """(final state, run dir, model calls the candidate made)."""
    cfg = compose_cfg(*CFG, *extra)
    task = load_task(cfg.task.name, cfg.task)
    run = RunDir(tmp_path / "run")
    engine = OracleEngine(task.load().val[:24], set(seed_right), set(candidate_right))
    with HarnessPool(engine, workers=4, example_timeout_s=30, memory_mb=1024, scratch_root=str(tmp_path / "s")) as pool:
        loop = assemble(cfg, run, task, engine, pool, Tracker(cfg, run.path, None, False), new_state(),
                        feedback=Scripted(cfg, task))
        state = loop.run_all()
    return state, run, sum("可选罪名：" in p for p in engine.requests)


def test_a_one_example_gain_on_24_examples_is_not_kept_under_paired(compose_cfg, tmp_path):
    state, run, _ = _run_one_candidate(compose_cfg, tmp_path, range(12), range(13))
    gen1 = state.history[1]
    assert gen1.val > state.history[0].val          # the old rule would have kept it
    assert gen1.kept is False and gen1.keep_rule == "paired"
    assert gen1.keep_n == 24 and gen1.keep_gain == pytest.approx(1 / 24)
    assert "below the margin" in gen1.keep_why
    assert state.incumbent.generation == 0


def test_the_same_one_example_gain_is_kept_under_strict(compose_cfg, tmp_path):
    state, _, _ = _run_one_candidate(compose_cfg, tmp_path, range(12), range(13), "feedback.keep=strict")
    assert state.history[1].kept is True and state.history[1].keep_rule == "strict"


def test_a_clearly_worse_candidate_is_rejected_after_its_first_chunk(compose_cfg, tmp_path):
    state, run, candidate_calls = _run_one_candidate(compose_cfg, tmp_path, range(24), [])
    gen1 = state.history[1]
    assert gen1.kept is False and gen1.keep_n == 8 and gen1.val_n == 8
    assert candidate_calls == 8                      # 8 val jobs of 24 ran, and no test
    scores = json.loads((run.path / "gen_001" / "scores_val.json").read_text())
    assert (scores["n"], scores["pool"]) == (8, 24) and "significantly worse" in scores["stopped"]
    assert len((run.path / "gen_001" / "trajectories_val.jsonl").read_text().splitlines()) == 8
    assert not (run.path / "gen_001" / "scores_test.json").exists()


def test_a_clearly_better_candidate_is_kept_and_scored_on_the_whole_pool(compose_cfg, tmp_path):
    state, run, candidate_calls = _run_one_candidate(compose_cfg, tmp_path, [], range(24))
    gen1 = state.history[1]
    assert gen1.kept is True and gen1.keep_n == 8 and "significant" in gen1.keep_why
    assert gen1.val_n == 24 and candidate_calls == 24 + 4     # the rest of val, then test
    assert gen1.keep_low > 0 and state.incumbent.generation == 1


def test_a_resumed_generation_replays_the_same_decision(compose_cfg, tmp_path):
    """The stopped candidate's scores file is all a resume reads: the verdict is rebuilt from it,
    with no val job run again."""
    state, run, _ = _run_one_candidate(compose_cfg, tmp_path, range(24), [])
    first = state.history[1]
    cfg = compose_cfg(*CFG)
    task = load_task(cfg.task.name, cfg.task)
    engine = OracleEngine(task.load().val[:24], set(), set())
    with HarnessPool(engine, workers=4, example_timeout_s=30, memory_mb=1024, scratch_root=str(tmp_path / "t")) as pool:
        loop = assemble(cfg, run, task, engine, pool, Tracker(cfg, run.path, None, False), new_state(),
                        feedback=Scripted(cfg, task))
        again = GenerationRecord(generation=1, action="harness")
        inc = state.history[0]
        loop._judge(1, run.path / "gen_001" / "harness.py", None, Incumbent(0, inc.harness, None, inc.val, inc.test),
                    again, lambda done, total: None)
    assert engine.requests == []
    assert (again.kept, again.keep_n, again.keep_gain, again.keep_why) == \
        (first.kept, first.keep_n, first.keep_gain, first.keep_why)


def test_a_pool_too_small_for_the_rule_is_judged_by_the_sign_of_the_gain():
    """2 val kernels: no candidate could be significant (p >= 1/4 > 0.05), so any positive gain
    keeps, as the strict rule would; from 5 examples (1/32 <= 0.05) the rule applies."""
    rule = PairedRule([0.5, 0.4], "max", KeepSettings())
    assert rule.powerless
    assert rule.replay([0.1, 0.0]).decision == "keep" and "too small" in rule.replay([0.1, 0.0]).why
    assert rule.replay([0.1, -0.2]).decision == "reject"
    assert not PairedRule([1.0] * 24, "max", KeepSettings(chunk=8)).powerless     # 1/2^24 <= 0.05/3
    assert PairedRule([0.0] * 4, "max", KeepSettings()).powerless and not PairedRule([0.0] * 5, "max",
                                                                                        KeepSettings()).powerless

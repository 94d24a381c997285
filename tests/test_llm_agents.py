"""The LLM Meta-Agent and Feedback-Agent against a local scripted server, through the real
anthropic and openai SDK code paths (base_url), with a fake checker (a function of the code)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sia.agents.decision import Decision
from sia.agents.digest import Digest
from sia.agents.rules import RulesFeedback
from sia.agents.llm.backends import LLMCallError
from sia.agents.llm.client import LLMClient
from sia.agents.llm.config import key_problems, load_settings, settings_problems
from sia.agents.llm.diff import DiffError, apply_diff
from sia.agents.llm.feedback import LLMFeedback
from sia.agents.llm.meta import LLMMetaAgent
from sia.agents.llm.trajectories import order, select
from sia.parts import AgentEnv, LeverOffer
from sia.tasks import load_task
from tests.support.scripted_llm_server import LEGAL_REWRITE_HARNESS, ScriptedLLMServer

KEY = "sk-test-DO-NOT-LEAK-7f3a9c"
INCUMBENT = "OPTIONS = {'retry': False}\n\n\ndef solve(inputs, ctx):\n    return 'a'\n\n\ndef sft_pair(inputs, target, ctx):\n    return {'messages': [], 'completion': 'a'}\n"


class FakeChecker:
    """Rejects what does not compile or has no solve(); remembers every code it saw."""

    def __init__(self):
        self.seen: list[str] = []

    def check(self, code: str) -> str | None:
        self.seen.append(code)
        try:
            compile(code, "harness.py", "exec")
        except SyntaxError as e:
            return f"the harness does not import: SyntaxError: {e.msg} (line {e.lineno})"
        return None if "def solve(" in code else "the harness defines no solve(inputs, ctx)"


RULES = RulesFeedback(name="rules")


class Rules:
    """The offline rules feedback as a Feedback, the LLM feedback agent's fallback."""

    name = "rules"

    def decide(self, ctx):
        return RULES.decide(ctx).validate()


@dataclass
class Ctx:
    generation: int = 1
    harness_code: str = INCUMBENT
    digest: Digest = field(default_factory=lambda: Digest(n=4, score=0.25, error_rate=0.0, format_rate=0.5, wrong_rate=0.25,
                                                          wellformed_accuracy=0.5))
    history: list = field(default_factory=list)
    offer: LeverOffer = field(default_factory=lambda: LeverOffer(True, "", ("sft",), max_steps=24, max_examples=160))
    budget_left: dict = field(default_factory=lambda: {"generations": 5, "agent_dollars": 1.0})
    trajectories: list = field(default_factory=list)
    train_trajectories: list = field(default_factory=list)
    train_examples: list = field(default_factory=list)
    baselines: dict = field(default_factory=lambda: {"majority": 0.2})
    checker: FakeChecker = field(default_factory=FakeChecker)
    train_probe: Any = None
    task_text: str = "# toy task\nAnswer 'a'."
    edits: list = field(default_factory=list)   # what the rules fallback reads besides the above
    trier: Any = None                            # try_harness: None turns it off


def _traj(i, score, failure, reason="wrong charge", answer="b", completion="[x]b"):
    return {"id": f"val-{i}", "score": score, "failure": failure, "reason": reason, "answer": answer,
            "error": None, "details": {"gold": "GOLD-IN-DETAILS"},
            "events": [{"type": "llm_call", "messages": [{"role": "user", "content": f"case {i}"}],
                        "completion": completion, "prompt_tokens": 10, "completion_tokens": 3,
                        "logprobs": [-0.1, -2.0], "finish_reason": "stop"}]}


def _llm(server, backend="anthropic", **kw):
    cfg = {"backend": backend, "model": "claude-sonnet-4-6" if backend == "anthropic" else "local",
           "base_url": server.url if backend == "anthropic" else server.openai_url,
           "max_retries": 2, "timeout_s": 5.0, "max_tokens": 4096}
    if backend == "openai":
        cfg["prices"] = {"input": 0, "output": 0}
    return {**cfg, **kw}


def _tool(**inp):
    return {"tool": {"input": inp}}


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture(scope="module")
def legal():
    task = load_task("legal_charge", {})
    return task, task.load()


def _env(legal, run_dir, checker):
    task, splits = legal
    return AgentEnv(task=task, run_dir=run_dir, resources=task.public_resources(splits), files={},
                    train=splits.train, checker=checker)


def _ledger(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "agents.jsonl").read_text().splitlines()]


# ---- Meta-Agent -------------------------------------------------------------------------------

def test_meta_harness_that_fails_the_check_is_repaired_on_the_second_answer(legal, tmp_path):
    seed = legal[0].seed_harness()
    broken = seed.replace("def solve(inputs, ctx):", "def solve(inputs, ctx)")
    with ScriptedLLMServer([_tool(code=broken), _tool(code=seed + "\n# repaired\n")]) as server:
        checker = FakeChecker()
        out = LLMMetaAgent(llm=_llm(server), repairs=2).first_harness(_env(legal, tmp_path, checker))
    assert out.code.endswith("# repaired\n") and out.details["tries"] == 2
    assert out.fell_back_to_seed is False and "SyntaxError" in out.details["errors"][0]
    first, second = (r["body"] for r in server.requests)
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}          # the static prefix is cached
    assert "task.md" in first["system"][0]["text"] and "def solve(inputs: dict, ctx)" in first["system"][0]["text"]
    assert "ctx.resources['labels']" in first["messages"][0]["content"][0]["text"]
    result = second["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["is_error"] and "SyntaxError" in result["content"]
    calls = [r for r in _ledger(tmp_path) if r["event"] == "call"]
    assert len(calls) == 2 and all(c["role"] == "meta" and c["dollars"] > 0 for c in calls)
    assert calls[1]["tokens_cached"] > 0                    # the second request read the cached prefix
    assert out.cost.calls == 2 and out.cost.dollars > 0


def test_meta_falls_back_to_the_seed_after_the_repairs(legal, tmp_path):
    bad = _tool(code="def nothing():\n    pass\n")
    with ScriptedLLMServer([bad, bad, bad]) as server:
        out = LLMMetaAgent(llm=_llm(server), repairs=2, show_seed=False).first_harness(
            _env(legal, tmp_path, FakeChecker()))
    assert out.code == legal[0].seed_harness() and out.fell_back_to_seed is True
    assert out.details["tries"] == 3 and len(server.requests) == 3 and "no solve" in out.details["reason"]
    assert "seed harness" not in server.requests[0]["body"]["messages"][0]["content"][0]["text"]


# ---- Feedback-Agent -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["anthropic", "openai"])
def test_feedback_rewrite_from_scratch_is_a_valid_decision(backend, tmp_path):
    ctx = Ctx(trajectories=[_traj(0, 0.0, "format", reason="no valid charge name"), _traj(1, 1.0, None)])
    with ScriptedLLMServer([_tool(action="harness", rationale="labels are unreadable: rewrite",
                                  code=LEGAL_REWRITE_HARNESS)]) as server:
        feedback = LLMFeedback(llm=_llm(server, backend), fallback=Rules(), run_dir=tmp_path)
        d = feedback.decide(ctx)
    assert d.action == "harness" and d.harness_code == LEGAL_REWRITE_HARNESS and d.edit is None
    assert d.fallback is False and d.stats["errors"] == [] and d.digest.score == 0.25
    assert ctx.checker.seen == [LEGAL_REWRITE_HARNESS]        # checked before it is returned
    body = server.bodies_text()
    assert "val-0" in body and "no valid charge name" in body and "GOLD-IN-DETAILS" not in body
    if backend == "openai":
        assert server.requests[0]["body"]["tool_choice"] == "auto"      # room to reason before the call
    else:
        assert server.requests[0]["body"]["tool_choice"] == {"type": "auto"}


def test_feedback_diff_that_does_not_apply_is_sent_back(tmp_path):
    bad = "@@ -4,2 +4,2 @@\n def solve(inputs, ctx):\n-    return 'zzz'\n+    return 'b'\n"
    good = "@@ -4,2 +4,2 @@\n def solve(inputs, ctx):\n-    return 'a'\n+    return 'b'\n"
    with ScriptedLLMServer([_tool(action="harness", rationale="fix", diff=bad),
                            _tool(action="harness", rationale="fix", diff=good)]) as server:
        d = LLMFeedback(llm=_llm(server, "openai"), fallback=Rules(), run_dir=tmp_path).decide(Ctx())
    assert d.action == "harness" and "return 'b'" in d.harness_code and "return 'a'" not in d.harness_code
    assert len(d.stats["errors"]) == 1 and "does not apply" in d.stats["errors"][0]
    retry = server.requests[1]["body"]["messages"]
    assert retry[-1]["role"] == "tool" and "does not apply" in retry[-1]["content"]
    assert retry[-2]["tool_calls"][0]["function"]["name"] == "decide"


def test_feedback_schema_violation_repaired_then_one_that_falls_back_to_rules(tmp_path):
    too_many = _tool(action="weights", rationale="train", training={"algorithm": "sft", "data": "gold",
                                                                    "steps": 500, "examples": 10})
    ok = _tool(action="weights", rationale="train", training={"algorithm": "sft", "data": "gold",
                                                              "steps": 20, "examples": 100})
    script = [too_many, ok, _tool(action="explode", rationale="?"), {"tool": {"input": {"action": "stop"}}}]
    with ScriptedLLMServer(script) as server:
        feedback = LLMFeedback(llm=_llm(server), fallback=Rules(), run_dir=tmp_path)
        first = feedback.decide(Ctx())
        second = feedback.decide(Ctx(generation=2))
    assert first.action == "weights" and first.training.steps == 20 and first.fallback is False
    assert "exceeds what the weights lever offers" in first.stats["errors"][0]
    assert second.fallback is True and second.stats["fallback_feedback"] == "rules"
    assert len(second.stats["errors"]) == 2 and "action must be one of" in second.stats["errors"][0]
    assert "rationale" in second.stats["errors"][1]
    assert second.rationale.endswith(RULES.decide(Ctx(generation=2)).rationale)   # the rules decision itself
    assert second.rationale.startswith("[fallback to rules: no valid answer")
    outcomes = [r["outcome"] for r in _ledger(tmp_path) if r["event"] == "outcome"]
    assert outcomes == ["invalid", "valid", "invalid", "invalid", "fallback"]


def test_weights_refused_when_the_lever_is_unavailable(tmp_path):
    plan = {"algorithm": "sft", "data": "gold", "steps": 5, "examples": 5}
    ctx = Ctx(offer=LeverOffer(False, "the harness has no sft_pair"))
    with ScriptedLLMServer([_tool(action="weights", rationale="t", training=plan),
                            _tool(action="stop", rationale="nothing left")]) as server:
        d = LLMFeedback(llm=_llm(server), fallback=Rules(), run_dir=tmp_path).decide(ctx)
    assert d.action == "stop" and "no sft_pair" in d.stats["errors"][0]


# ---- faults, budget, cache ----------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["anthropic", "openai"])
def test_429_then_success_honours_retry_after(backend, tmp_path):
    with ScriptedLLMServer([{"status": 429, "retry_after": 0.6}, _tool(action="stop", rationale="done")]) as server:
        started = time.monotonic()
        d = LLMFeedback(llm=_llm(server, backend), fallback=Rules(), run_dir=tmp_path).decide(Ctx())
        waited = time.monotonic() - started
    assert d.action == "stop" and len(server.requests) == 2 and waited >= 0.6


def test_500_and_a_slow_answer_are_retried_by_the_sdk(tmp_path):
    script = [{"status": 500}, {"delay": 1.5, **_tool(action="stop", rationale="late")},
              _tool(action="stop", rationale="on time")]
    with ScriptedLLMServer(script) as server:
        d = LLMFeedback(llm=_llm(server, timeout_s=0.5), fallback=Rules(), run_dir=tmp_path).decide(Ctx())
    assert d.rationale == "on time" and len(server.requests) == 3


def test_a_4xx_other_than_429_falls_back_to_rules_with_the_api_message(tmp_path):
    with ScriptedLLMServer([{"status": 400, "message": "model: unknown model 'claude-x'"}]) as server:
        d = LLMFeedback(llm=_llm(server), fallback=Rules(), run_dir=tmp_path).decide(Ctx())
    assert len(server.requests) == 1
    assert d.fallback is True and d.stats["api_error"] is True
    assert "unknown model 'claude-x'" in d.stats["fallback_reason"] and d.rationale.startswith("[fallback to rules")
    assert [r["outcome"] for r in _ledger(tmp_path) if r["event"] == "call"] == ["error"]


def test_on_failure_stop_ends_the_run_cleanly_with_how_to_resume(tmp_path):
    from sia.pace import OutOfTime

    with ScriptedLLMServer([{"status": 400, "message": "model: unknown model 'claude-x'"}]) as server:
        with pytest.raises(OutOfTime, match="unknown model 'claude-x'.*resume"):   # the loop's clean stop
            LLMFeedback(llm=_llm(server, on_failure="stop"), fallback=Rules(), run_dir=tmp_path).decide(Ctx())


def test_dollar_budget(tmp_path):
    answer = _tool(action="stop", rationale="x")
    with ScriptedLLMServer([answer, answer], default=answer) as server:
        feedback = LLMFeedback(llm=_llm(server), fallback=Rules(), run_dir=tmp_path, agent_dollars=1.0)
        assert feedback.decide(Ctx()).cost.dollars > 0
        ledger = feedback.client.ledger
        spent = ledger.totals.dollars
        assert ledger.would_exceed(None, 2 * spent + 1e-6) is None
        assert "budget.agent_dollars" in ledger.would_exceed(None, 1.5 * spent)
        assert "budget.agent_tokens" in ledger.would_exceed(ledger.totals.tokens + 1, None)
        feedback.client.agent_dollars = spent                  # spent: no further request goes out
        d = feedback.decide(Ctx(generation=2, harness_code=INCUMBENT + "# changed\n"))
    # the generation is handed to the rules feedback, and the record says so
    assert d.stats["budget_exhausted"] is True and d.fallback is True and len(server.requests) == 1
    assert d.rationale.startswith("[fallback to rules: agent budget")


def test_response_cache_a_resumed_run_does_not_send_the_request_again(tmp_path):
    answer = _tool(action="harness", rationale="rewrite", code=LEGAL_REWRITE_HARNESS)
    with ScriptedLLMServer([answer]) as server:
        first = LLMFeedback(llm=_llm(server), fallback=Rules(), run_dir=tmp_path).decide(Ctx())
        # a fresh process on the same run dir (resume after kill -9): new client, same cache and ledger
        client = LLMClient(_llm(server), tmp_path)
        again = LLMFeedback(llm=_llm(server), fallback=Rules(), client=client).decide(Ctx())
    assert len(server.requests) == 1 and again.harness_code == first.harness_code
    calls = [r for r in _ledger(tmp_path) if r["event"] == "call"]
    assert [c["outcome"] for c in calls] == ["ok", "cached"] and calls[1]["dollars"] == 0
    assert client.ledger.totals.calls == 2 and client.ledger.totals.dollars == calls[0]["dollars"]


# ---- held-out data and keys ---------------------------------------------------------------------

def test_a_planted_val_gold_string_never_reaches_the_server(tmp_path):
    gold = "SELECT name FROM singer WHERE age > 41"
    trajs = [_traj(0, 0.0, "wrong", reason=f"expected {gold}", answer=gold.lower(), completion=f"maybe {gold}?"),
             _traj(1, 0.0, "format")]
    ctx = Ctx(trajectories=trajs, history=[{"generation": 1, "action": "harness", "rationale": f"saw {gold}"}])
    with ScriptedLLMServer([{"tool": {"input": {"action": "bogus"}}}, _tool(action="stop", rationale="ok")]) as server:
        feedback = LLMFeedback(llm=_llm(server), fallback=Rules(), run_dir=tmp_path,
                                   sealed=[gold, "ab"], public=["SELECT name FROM singer"])
        feedback.decide(ctx)
    text = server.bodies_text()
    assert gold not in text and "[held-out]" in text and "val-0" in text
    assert "SELECT name FROM singer" not in text or gold not in text
    scrubs = [r for r in _ledger(tmp_path) if r.get("event") == "scrub"]
    assert scrubs and scrubs[0]["replacements"] >= 2 and gold not in (tmp_path / "agents.jsonl").read_text()
    cached = "".join(p.read_text() for p in (tmp_path / "agent_cache").rglob("*.json"))
    assert gold not in cached


def test_the_key_never_appears_in_bodies_ledger_or_cache(legal, tmp_path):
    with ScriptedLLMServer([_tool(code=legal[0].seed_harness())]) as server:
        LLMMetaAgent(llm=_llm(server)).first_harness(_env(legal, tmp_path, FakeChecker()))
    headers = server.requests[0]["headers"]
    assert KEY in headers.get("x-api-key", "") + headers.get("authorization", "")   # used, as a header only
    assert KEY not in server.bodies_text()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path


def test_key_problems(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    assert "ANTHROPIC_API_KEY" in key_problems({"backend": "anthropic"})[0]
    assert key_problems({"backend": "openai", "base_url": "http://127.0.0.1:8080/v1"}) == []
    assert "OPENAI_API_KEY" in key_problems({"backend": "openai", "base_url": None})[0]     # OpenAI's own API
    assert "MY_KEY" in key_problems({"backend": "openai", "api_key_env": "MY_KEY"})[0]
    monkeypatch.setenv("MY_KEY", "secret-value-123")
    assert key_problems({"backend": "openai", "api_key_env": "MY_KEY"}) == []
    monkeypatch.setenv("ANTHROPIC_API_KEY", "secret-value-123")
    problem = key_problems({"backend": "anthropic", "api_key_env": "NOPE"})[0]
    assert "NOPE" in problem and "secret-value-123" not in problem


def test_a_users_openai_key_is_not_sent_to_a_local_server(tmp_path):
    with ScriptedLLMServer([_tool(action="stop", rationale="ok")]) as server:
        LLMFeedback(llm=_llm(server, "openai"), fallback=Rules(), run_dir=tmp_path).decide(Ctx())
    assert KEY not in json.dumps(server.requests[0]["headers"])
    with ScriptedLLMServer([_tool(action="stop", rationale="ok")]) as server:
        LLMFeedback(llm=_llm(server, "openai", api_key_env="OPENAI_API_KEY"), fallback=Rules(),
                          run_dir=tmp_path / "b").decide(Ctx())
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"


def test_settings_prices_and_problems():
    s = load_settings({"backend": "anthropic"})
    assert (s.prices.input, s.prices.output, s.prices.cache_write, s.prices.cache_read) == (3.0, 15.0, 3.75, 0.30)
    assert load_settings({"backend": "openai", "model": "qwen"}).prices.input == 0
    problems = settings_problems({"backend": "gpt", "timeout_s": 0, "prices": {"inptu": 1}})
    assert len(problems) == 3 and "llm.backend" in problems[0]


# ---- pieces ---------------------------------------------------------------------------------------

def test_diff_applier_places_each_block_exactly_once():
    src = "a\nb\nc\nb\nd\n"
    assert apply_diff(src, "@@ -2,2 +2,2 @@\n b\n-c\n+C\n") == "a\nb\nC\nb\nd\n"
    assert apply_diff(src, "--- a/h.py\n+++ b/h.py\n@@ -9,2 +9,2 @@\n-c\n b\n") == "a\nb\nb\nd\n"  # offset
    for bad, why in (("@@ -1,1 +1,1 @@\n-q\n+x\n", "not in the incumbent"), ("@@ -7,1 +7,1 @@\n-b\n+x\n", "2 places"),
                     ("just text\n", "before any"), ("@@ -1,1 +1,1 @@\n*a\n", "starts with")):
        with pytest.raises(DiffError, match=why):
            apply_diff(src, bad)


def test_trajectories_failure_first_stratified_and_cut_whole():
    trajs = [_traj(i, s, f) for i, (s, f) in enumerate([(1.0, None), (0.5, "wrong"), (0.0, "wrong"),
                                                         (0.0, "format"), (0.0, "error"), (0.0, "format")])]
    assert [t["id"] for t in order(trajs)] == ["val-4", "val-3", "val-2", "val-5", "val-1", "val-0"]
    full, stats = select(trajs, 100_000)
    assert stats["shown"] == 6 and "GOLD-IN-DETAILS" not in full and "n=2 mean=-1.05" in full
    one = stats["tokens"] // 6 + 5
    cut, cut_stats = select(trajs, one)
    assert cut_stats["shown"] == 1 and cut.count('"id": ') == 1 and '"id": "val-4"' in cut
    assert cut.count('"completion": "[x]b"') == 1            # the kept example has its whole model call


def test_feedback_llm_config_composes_and_instantiates(compose_cfg, tmp_path):
    from omegaconf import OmegaConf

    from sia.build import build

    cfg = compose_cfg("feedback=llm")
    feedback = build(cfg.feedback)
    assert isinstance(feedback, LLMFeedback) and feedback.trajectory_tokens == 12000
    assert isinstance(feedback.fallback, RulesFeedback) and feedback.fallback.abstain_threshold == 0.15
    assert feedback.run_dir == tmp_path / "run"
    s = load_settings(feedback.llm)
    assert s.model == "claude-sonnet-4-6" and s.prices.cache_read == 0.30 and s.base_url is None
    local = load_settings(OmegaConf.load(Path(__file__).parent.parent / "conf" / "llm" / "openai.yaml"))
    assert local.backend == "openai" and local.prices.output == 0 and local.base_url.endswith("/v1")


def test_feedback_seals_a_tasks_held_out_targets(tmp_path):
    task = load_task("sql_qa", {})
    splits = task.load()
    gold = splits.val[0].target["sql"]
    ctx = Ctx(trajectories=[_traj(0, 0.0, "wrong", reason=f"got {gold}", answer=gold, completion=gold)])
    with ScriptedLLMServer([_tool(action="stop", rationale="ok")]) as server:
        LLMFeedback(llm=_llm(server), fallback=Rules(), run_dir=tmp_path, task=task).decide(ctx)
    text = server.bodies_text()
    assert gold not in text and "[held-out]" in text
    train_sql = splits.train[0].target["sql"]                        # public: never masked
    from sia.agents.llm.scrub import held_out_strings
    sealed, public = held_out_strings(splits, task.public_resources(splits))
    assert gold in sealed and train_sql in public and train_sql not in sealed


def test_openai_json_mode_and_a_harness_in_a_code_block(legal, tmp_path):
    seed = legal[0].seed_harness()
    with ScriptedLLMServer([{"text": f"Here it is:\n```python\n{seed}```"}]) as server:
        out = LLMMetaAgent(llm=_llm(server, "openai", tool_mode="json")).first_harness(
            _env(legal, tmp_path, FakeChecker()))
    assert out.code.strip() == seed.strip() and out.details["tries"] == 1
    body = server.requests[0]["body"]
    assert "tools" not in body and body["response_format"]["type"] == "json_schema"   # guided by the schema
    with ScriptedLLMServer([{"text": 'ok ```json\n{"action": "stop", "rationale": "json mode"}\n```'}]) as server:
        d = LLMFeedback(llm=_llm(server, "openai", tool_mode="json"), fallback=Rules(),
                              run_dir=tmp_path / "fb").decide(Ctx())
    assert d.action == "stop" and d.rationale == "json mode"


def test_api_keys_never_reach_a_harness_environment(monkeypatch, tmp_path):
    from sia.harness.sandbox import scrubbed_env

    monkeypatch.setenv("MY_LLM_KEY", "custom-secret-42")
    env = scrubbed_env(str(tmp_path))
    assert not {KEY, "custom-secret-42"} & set(env.values())
    assert not {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "MY_LLM_KEY"} & set(env)

"""The OpenAI-compatible backend as a local server without function calling needs it (a plain
``vllm serve``, llama.cpp): JSON mode held to the tool's schema, a server's refusal of tool
calls explained with the fix, and a small ``llm.max_tokens`` sent rather than refused. Against the
scripted server, through the real openai SDK; tests/test_vllm_served_agents.py runs the same
path against a real vLLM server."""
from __future__ import annotations

import json

import pytest

from sia.agents.llm.client import MIN_ANSWER_TOKENS, AgentBudgetExhausted, LLMClient
from sia.agents.llm.meta import LLMMetaAgent
from sia.agents.llm.prompts import WRITE_HARNESS
from sia.parts import AgentEnv
from sia.tasks import load_task
from tests.support.scripted_llm_server import ScriptedLLMServer

# vLLM 0.32's answer to tool_choice=auto when started without a tool parser
NO_TOOL_PARSER = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'


def _llm(server, **kw) -> dict:
    return {"backend": "openai", "model": "local", "base_url": server.openai_url, "max_retries": 0,
            "timeout_s": 5.0, "max_tokens": 4096, **kw}


class Accept:
    def check(self, code: str) -> None:
        return None


def _env(tmp_path) -> AgentEnv:
    task = load_task("legal_charge", {})
    splits = task.load()
    return AgentEnv(task=task, run_dir=tmp_path, resources=task.public_resources(splits), files={},
                    train=splits.train, checker=Accept())


def test_json_mode_asks_for_the_tools_schema_and_reads_a_bare_json_answer(tmp_path):
    seed = load_task("legal_charge", {}).seed_harness()
    answer = json.dumps({"notes": "guided", "code": seed})      # what a guided server returns: bare JSON
    with ScriptedLLMServer([{"text": answer}]) as server:
        out = LLMMetaAgent(llm=_llm(server, tool_mode="json"), repairs=0).first_harness(_env(tmp_path))
    body = server.requests[0]["body"]
    fmt = body["response_format"]
    assert "tools" not in body and "tool_choice" not in body
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == WRITE_HARNESS.name
    assert fmt["json_schema"]["schema"] == WRITE_HARNESS.schema and fmt["json_schema"]["strict"] is False
    assert out.code == seed and not out.fell_back_to_seed and out.details["tries"] == 1


def test_a_server_without_tool_calls_is_explained_and_the_run_falls_back(tmp_path):
    with ScriptedLLMServer([{"status": 400, "message": NO_TOOL_PARSER}]) as server:
        out = LLMMetaAgent(llm=_llm(server), repairs=2).first_harness(_env(tmp_path))
    assert len(server.requests) == 1 and "tools" in server.requests[0]["body"]
    assert out.fell_back_to_seed and out.details["tries"] == 0
    error = out.details["errors"][0]
    assert "400" in error and "--tool-call-parser" in error and "llm.tool_mode=json" in error   # the fix
    calls = [json.loads(x) for x in (tmp_path / "agents.jsonl").read_text().splitlines()]
    assert [c["outcome"] for c in calls if c.get("event") == "call"] == ["error"]


def test_a_context_overflow_names_max_tokens(tmp_path):
    message = "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens."
    with ScriptedLLMServer([{"status": 400, "message": message}]) as server:
        out = LLMMetaAgent(llm=_llm(server, tool_mode="json", max_tokens=512), repairs=0).first_harness(
            _env(tmp_path))
    assert "llm.max_tokens (now 512)" in out.details["errors"][0] and out.fell_back_to_seed


def test_a_small_max_tokens_is_sent_and_only_a_budget_cut_is_refused(tmp_path):
    small = MIN_ANSWER_TOKENS // 8
    with ScriptedLLMServer([], default={"text": '{"action": "stop", "rationale": "ok"}'}) as server:
        client = LLMClient(_llm(server, tool_mode="json", max_tokens=small), tmp_path)
        conv = client.conversation("meta", "system", "user", WRITE_HARNESS)
        reply = conv.ask()                                   # not refused as "would overspend"
        assert reply.tool_input == {"action": "stop", "rationale": "ok"}
        assert server.requests[0]["body"]["max_tokens"] == small
        # a token budget that leaves less than the asked max_tokens still refuses, nothing sent
        spent = client.ledger.totals.tokens
        tight = LLMClient(_llm(server, tool_mode="json", max_tokens=small), tmp_path,
                          agent_tokens=spent + small // 2 + 200)
        with pytest.raises(AgentBudgetExhausted, match="would overspend"):
            tight.conversation("meta", "system", "other user text", WRITE_HARNESS).ask()
        assert len(server.requests) == 1

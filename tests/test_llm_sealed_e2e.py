"""Issue 23's done-when: every request of an end-to-end ``agent.meta=llm feedback=llm`` run (the
real CLI, loop, sandboxed pool and SDK against the scripted server; the echo engine stands in for
the model) on a legal_charge data file whose val and test targets are unique canary strings holds
no val target, no test target and no test score; the Feedback-Agent saw train trajectories with
their gold, and its try_harness call ran the candidate in the real sandbox on train examples."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO
from support.scripted_llm_server import LEGAL_REWRITE_HARNESS, ScriptedLLMServer
from sia.tasks import load_task

SUPPORT = REPO / "tests" / "support"
KEY = "sk-ant-test-key-sealed-e2e"
CHARGES = ["盗窃", "故意伤害", "诈骗", "危险驾驶"]
VAL_CANARY, TEST_CANARY = "金丝雀验证", "金丝雀测试"


def _data(tmp_path):
    """A LawBench file whose val and test examples carry canary charges (train keeps real ones),
    and a label list of the train charges only."""
    items = [{"question": f"被告人张某{i}于2019年在某地犯{CHARGES[i % 4]}，案值{100 + i}元。",
              "answer": f"罪名:{CHARGES[i % 4]}"} for i in range(40)]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "charges.json").write_text(json.dumps(CHARGES, ensure_ascii=False), encoding="utf-8")
    splits = load_task("legal_charge", {"data": {"path": str(path)}}).load()   # the split is by position
    for canary, split in ((VAL_CANARY, splits.val), (TEST_CANARY, splits.test)):
        for e in split:
            i = int(e.id.split("-")[-1])
            items[i]["answer"] = f"罪名:{canary}{i:02d}号"
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    check = load_task("legal_charge", {"data": {"path": str(path)}}).load()
    assert all(VAL_CANARY in str(e.target) for e in check.val) and all(TEST_CANARY in str(e.target) for e in check.test)
    assert not any("金丝雀" in str(e.target) for e in check.train)
    return path


def test_no_val_target_test_target_or_test_score_reaches_any_request(tmp_path):
    data = _data(tmp_path)
    seed = load_task("legal_charge", {}).seed_harness()
    script = [{"tool": {"input": {"notes": "the seed", "code": seed}}},
              {"tool": {"name": "try_harness", "input": {"code": LEGAL_REWRITE_HARNESS, "examples": 3}}},
              {"tool": {"input": {"action": "harness", "rationale": "rewrite", "code": LEGAL_REWRITE_HARNESS}}}]
    default = {"tool": {"input": {"action": "stop", "rationale": "done"}}}
    run_dir = tmp_path / "run"
    with ScriptedLLMServer(script, default=default) as server:
        env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "PYTHONPATH": str(SUPPORT)}
        proc = subprocess.run(
            [sys.executable, "-m", "sia", f"hydra.searchpath=[file://{SUPPORT / 'conf'}]", "model.engine=echo",
             "lever=echo", "budget=smoke", "budget.generations=3", "logger=none", "quiet=true", "agent.workers=2",
             "task=legal_charge", f"task.data.path={data}", "agent.meta=llm", "feedback=llm",
             f"llm.base_url={server.url}", f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        bodies = [json.dumps(r["body"], ensure_ascii=False) for r in server.requests]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((run_dir / "state.json").read_text())
    history = state["history"]
    assert [h["action"] for h in history][:2] == ["seed", "harness"] and len(bodies) >= 3
    assert any(h.get("test") is not None for h in history)            # test was scored (and reported)

    text = "\n".join(bodies)
    assert VAL_CANARY not in text and TEST_CANARY not in text          # no val or test target, anywhere
    for key in ("incumbent_test", "test_metrics", '\\"test\\"'):       # no test field in any request
        assert key not in text, key
    # no test score: a test value that is not also a val/probe value or a round number
    others = {v for h in history for k in ("val", "incumbent_val", "train_probe") if (v := h.get(k)) is not None}
    for h in history:
        for v in [h.get("test"), h.get("incumbent_test"), *(h.get("test_metrics") or {}).values()]:
            if isinstance(v, float) and v not in others and v not in (0.0, 1.0):
                assert json.dumps(v) not in text, v
    # reflect on train: the feedback requests carry the incumbent's train-probe trajectories with gold
    feedback = [b for b in bodies if "choose the next lever" in b]
    assert feedback and all('\\"gold\\"' in b for b in feedback)
    ledger = [json.loads(x) for x in (run_dir / "agents.jsonl").read_text().splitlines()]
    assert not any(r.get("event") == "scrub" for r in ledger)          # nothing had to be masked
    # try before submitting: the candidate ran in the sandbox on 3 train examples, and the result
    # (scores, trajectories with train gold) was the next request's tool result
    [tried] = [r for r in ledger if r.get("event") == "try"]
    assert tried["examples"] == 3 and tried["problem"] is None and isinstance(tried["score"], float)
    after = next(b for b in bodies if "Result of the candidate on 3 train examples" in b)
    assert '\\"gold\\"' in after and "try_harness" in after
    assert sum(1 for r in ledger if r.get("event") == "call") == len(bodies)       # every call billed

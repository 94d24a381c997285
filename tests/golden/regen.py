"""Build the Meta-Agent's and the Feedback-Agent's requests for every bundled task through the
agents' own code path (LLMClient -> Anthropic body, answered by the scripted server) from a fixed,
deterministic context, and write them as readable text to ``tests/golden/<task>_<role>.txt``.

    python -m tests.golden.regen            # rewrite the golden files
    python -m tests.golden.regen --check    # exit 1 and name the files that differ

The feedback context is generation 2 after a kept seed (val 0.25, test 0.7777: a canary that must
not appear) and one rejected harness edit; train-probe trajectories carry train gold, val
failures are summaries. ``tests/test_golden_requests.py`` compares these files with the code."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from sia.agents.digest import Digest  # noqa: E402
from sia.agents.llm.client import LLMClient  # noqa: E402
from sia.agents.llm.feedback import LLMFeedback  # noqa: E402
from sia.agents.llm.meta import LLMMetaAgent  # noqa: E402
from sia.agents.llm.tokens import approx_tokens  # noqa: E402
from sia.parts import AgentEnv, LeverOffer  # noqa: E402
from sia.records import GenerationRecord  # noqa: E402
from sia.tasks import available_tasks, load_task  # noqa: E402
from tests.support.scripted_llm_server import ScriptedLLMServer  # noqa: E402

LLM = {"backend": "anthropic", "model": "claude-sonnet-4-6", "max_retries": 0, "timeout_s": 30}
TEST_CANARY = 0.7777          # the incumbent's test score in the history: must never be rendered
KINDS = [("format", 0.0, "no answer could be read"), ("wrong", 0.0, "readable but wrong"),
         ("wrong", 0.5, "partly right"), ("error", 0.0, "harness exception: KeyError"), (None, 1.0, "")]


class AcceptAll:
    def check(self, code: str) -> None:
        return None


def run_facts(task: str = "legal_charge") -> dict:
    """The facts of the default config for ``task`` (composed as ``python -m sia task=<task>`` does)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import sia.__main__  # noqa: F401  (registers the config's resolvers)

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
            cfg = compose(config_name="config", overrides=[f"task={task}", "run_dir=/nonexistent"])
    finally:
        GlobalHydra.instance().clear()
    m, a, lo = cfg.model, cfg.agent, cfg.lora
    return {"model": m.name, "context": m.max_context, "max_llm_calls": a.max_llm_calls,
            "max_new_tokens": a.max_new_tokens, "example_timeout_s": a.example_timeout_s, "memory_mb": a.memory_mb,
            "rollout_examples": lo.rollout_examples, "samples_per_prompt": lo.samples_per_prompt,
            "train_max_seq_len": lo.max_seq_len}


def _answer_text(target: Any) -> str:
    return target if isinstance(target, str) else json.dumps(target, ensure_ascii=False, default=str)[:400]


def _trajectory(e: Any, i: int, split: str) -> dict:
    failure, score, reason = KINDS[i % len(KINDS)]
    answer = _answer_text(e.target) if split == "train" else "(an answer)"
    return {"id": e.id, "score": score, "failure": failure, "reason": reason, "answer": answer[:300],
            "error": {"kind": "exception", "message": "KeyError: 'x'"} if failure == "error" else None,
            "events": [{"type": "llm_call", "messages": [
                {"role": "user", "content": json.dumps(e.inputs, ensure_ascii=False, default=str)[:600]}],
                "completion": answer[:300], "prompt_tokens": 400, "completion_tokens": 40,
                "logprobs": [-0.25] * 4, "finish_reason": "stop"}]}


class GoldenCtx:
    """A fixed feedback context for generation 2 of ``task``."""

    def __init__(self, task: Any, splits: Any, folder: Path, offer: LeverOffer):
        seed = task.seed_harness()
        (folder / "gen0.py").write_text(seed, encoding="utf-8")
        rejected = seed.replace("def solve(", "# a rejected edit: one more comment\ndef solve(", 1)
        (folder / "gen1.py").write_text(rejected, encoding="utf-8")
        self.generation, self.harness_code, self.task_text = 2, seed, task.description()
        self.digest = Digest(n=24, score=0.25, error_rate=0.04, format_rate=0.25, wrong_rate=0.46,
                             wellformed_accuracy=0.41, error_kinds={"exception": 1}, train_score=0.5, tokens=9000)
        self.train_probe = Digest(n=4, score=0.5, error_rate=0.0, format_rate=0.25, wrong_rate=0.25,
                                  wellformed_accuracy=0.6, tokens=1500)
        self.history = [
            GenerationRecord(generation=0, action="seed", kept=True, harness=str(folder / "gen0.py"), val=0.25,
                             test=TEST_CANARY, incumbent_val=0.25, incumbent_test=TEST_CANARY,
                             test_metrics={"score": TEST_CANARY}, rationale="first harness (Meta-Agent llm)"),
            GenerationRecord(generation=1, action="harness", kept=False, harness=str(folder / "gen1.py"), val=0.21,
                             incumbent_val=0.25, incumbent_test=TEST_CANARY, rationale="a rejected edit")]
        self.offer, self.budget_left = offer, {"generations": 4, "minutes": 42.5}
        self.baselines, self.checker = {"baseline": 0.2}, AcceptAll()
        self.trajectories = [_trajectory(e, i, "val") for i, e in enumerate(splits.val[:24])]
        probe = splits.train[:4]
        self.train_trajectories = [_trajectory(e, i, "train") for i, e in enumerate(probe)]
        self.train_examples = probe
        self.edits = []
        self.trier = NoTrier()         # as in a run: try_harness is offered (never called here)


class NoTrier:
    def try_on_train(self, code: str, n: int) -> dict:
        return {"problem": "the golden context runs nothing"}


def render(body: dict) -> str:
    """A request body as text: the fields, the system prompt, the tools, then each message."""
    head = {k: v for k, v in body.items() if k not in ("system", "messages", "tools")}
    system = "\n".join(b.get("text", "") for b in body.get("system") or [])
    parts = [f"=== request fields\n{json.dumps(head, ensure_ascii=False, sort_keys=True)}",
             f"=== system (~{approx_tokens(system)} tokens)\n{system}",
             f"=== tools\n{json.dumps(body.get('tools'), ensure_ascii=False, indent=1)}"]
    for m in body.get("messages") or []:
        content = m["content"]
        text = content if isinstance(content, str) else "\n".join(b.get("text", "") for b in content)
        parts.append(f"=== {m['role']} (~{approx_tokens(text)} tokens)\n{text}")
    total = approx_tokens([body.get("system"), body.get("tools"), body.get("messages")])
    parts.append(f"=== total ~{total} input tokens (sia.agents.llm.tokens.approx_tokens, an approximation)")
    return "\n\n".join(parts) + "\n"


def requests_for(name: str) -> dict[str, dict]:
    """{"meta": body, "feedback": body} for task ``name``."""
    task = load_task(name, OmegaConf.load(REPO / "conf" / "task" / f"{name}.yaml"))
    splits = task.load()
    stop = {"tool": {"input": {"action": "stop", "rationale": "golden", "code": task.seed_harness()}}}
    with tempfile.TemporaryDirectory() as run, ScriptedLLMServer([], default=stop) as server:
        cfg = {**LLM, "base_url": server.url}
        client = LLMClient(cfg, None)
        env = AgentEnv(task=task, run_dir=Path(run), resources=task.public_resources(splits), files={},
                       train=splits.train, checker=AcceptAll())
        facts = run_facts(name)
        LLMMetaAgent(llm=cfg, client=client, facts=facts).first_harness(env)
        offer = LeverOffer(True, "", ("sft", "rs_sft", "grpo", "eaw", "ppo"), max_steps=24, max_examples=160)
        feedback = LLMFeedback(llm=cfg, client=client, facts=facts)
        feedback.decide(GoldenCtx(task, splits, Path(run), offer))
        bodies = [r["body"] for r in server.requests]
    return {"meta": bodies[0], "feedback": bodies[1]}


def golden_files() -> dict[Path, str]:
    out = {}
    for name in available_tasks():
        for role, body in requests_for(name).items():
            out[GOLDEN / f"{name}_{role}.txt"] = render(body)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args()
    files = golden_files()
    if args.check:
        stale = [p.name for p, text in files.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
        if stale:
            raise SystemExit(f"golden request files differ: {', '.join(stale)}; "
                             f"review the change, then run: python -m tests.golden.regen")
        print(f"{len(files)} golden request files match")
        return
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()

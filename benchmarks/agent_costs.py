"""What the LLM agents cost: tokens and dollars per generation, and the share of wall time
spent waiting on them.

    python benchmarks/agent_costs.py estimate        # per bundled task: what a Claude run would cost
    python benchmarks/agent_costs.py scripted        # agents alone vs the scripted server, 6 generations
    python benchmarks/agent_costs.py loop            # python -m sia agent.meta=llm feedback=llm (wired loop)

``estimate`` builds the real requests of both agents for each task (task.md, contract, public
resources, seed harness, train examples; a plausible digest and one trajectory per val example
made from the task's own val inputs) through the agents' code path against the scripted server,
and counts their input tokens with ``sia.agents.llm.tokens.approx_tokens`` (an APPROXIMATION:
Claude's tokenizer is not available offline). Output is bounded by ``llm.max_tokens``; the
"expected" column uses the size of a whole-file rewrite (the seed harness) instead.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from omegaconf import OmegaConf  # noqa: E402

from sia.agents.llm.client import LLMClient  # noqa: E402
from sia.agents.llm.config import load_settings  # noqa: E402
from sia.agents.llm.feedback import LLMFeedback  # noqa: E402
from sia.agents.llm.meta import LLMMetaAgent  # noqa: E402
from sia.agents.llm.tokens import LABEL, approx_tokens  # noqa: E402
from sia.parts import AgentEnv, LeverOffer  # noqa: E402
from sia.tasks import available_tasks, load_task  # noqa: E402
from tests.golden.regen import GoldenCtx, run_facts  # noqa: E402
from tests.support.scripted_llm_server import ScriptedLLMServer, legal_charge_e2e_script  # noqa: E402

SONNET = {"backend": "anthropic", "model": "claude-sonnet-4-6", "max_tokens": 16000, "max_retries": 2, "timeout_s": 30}


class AcceptAll:
    def check(self, code):
        return None


class Ctx(GoldenCtx):
    """A plausible feedback context for generation ``g`` of ``task`` (the golden files' context:
    tests/golden/regen.py), with ``g - 1`` earlier decisions in its history."""

    def __init__(self, task, splits, g, offer):
        folder = Path(tempfile.mkdtemp(prefix="sia_agent_costs_"))
        super().__init__(task, splits, folder, offer)
        self.generation = g
        self.history = (self.history * g)[:max(1, g - 1)]
        self.budget_left = {"generations": max(0, 6 - g), "minutes": 60.0 - 8 * g}


def _body_tokens(body: dict) -> tuple[int, int]:
    """(static prefix tokens: tools + system, the rest)."""
    static = approx_tokens([body.get("tools"), body.get("system")])
    return static, approx_tokens(body.get("messages")) + 1


def estimate(args) -> None:
    s = load_settings({**SONNET, "max_tokens": args.max_tokens})
    p = s.prices
    print(f"Claude {s.model} at ${p.input}/${p.output}/${p.cache_write}/${p.cache_read} per M tokens "
          f"(in/out/cache write/cache read); output bound llm.max_tokens={s.max_tokens}\n{LABEL}\n")
    head = (f"{'task':14} {'call':12} {'in tok':>7} {'static':>7} {'$ in cold':>9} {'$ in warm':>9} "
            f"{'$ out max':>9} {'$/gen max':>9} {'out exp':>7} {'$/gen exp':>9} {'+tries exp':>10}")
    print(head)
    for name in available_tasks():
        task = load_task(name, OmegaConf.load(REPO / "conf" / "task" / f"{name}.yaml"))
        splits = task.load()
        seed_tokens = approx_tokens(task.seed_harness())
        answer = {"tool": {"input": {"action": "stop", "rationale": "x", "code": task.seed_harness()}}}
        with tempfile.TemporaryDirectory() as run, ScriptedLLMServer([], default=answer) as server:
            cfg = {**SONNET, "max_tokens": s.max_tokens, "base_url": server.url}
            client = LLMClient(cfg, Path(run))
            env = AgentEnv(task=task, run_dir=Path(run), resources=task.public_resources(splits), files={},
                           train=splits.train, checker=AcceptAll())
            LLMMetaAgent(llm=cfg, client=client, facts=run_facts(name)).first_harness(env)
            offer = LeverOffer(True, "", ("sft",), max_steps=24, max_examples=160)
            feedback = LLMFeedback(llm=cfg, client=client, trajectory_tokens=args.trajectory_tokens,
                                       facts=run_facts(name), tries=args.tries)
            for g in (1, 6):
                feedback.decide(Ctx(task, splits, g, offer))
            bodies = [r["body"] for r in server.requests]
        for label, body in zip(("meta", "feedback g1", "feedback g6"), bodies):
            static, rest = _body_tokens(body)
            cold = (static * p.cache_write + rest * p.input) / 1e6
            warm = (static * p.cache_read + rest * p.input) / 1e6
            out_max = s.max_tokens * p.output / 1e6
            out_exp = seed_tokens if label == "meta" else seed_tokens // 2   # a file, or a diff/plan
            exp = warm + out_exp * p.output / 1e6
            tries = 0.0 if label == "meta" else _tries_dollars(static, rest, out_exp, args, p)
            print(f"{name:14} {label:12} {static + rest:7d} {static:7d} {cold:9.4f} {warm:9.4f} {out_max:9.4f} "
                  f"{cold + out_max:9.4f} {out_exp:7d} {exp:9.4f} {exp + tries:10.4f}")
    print("\n$/gen max: cold prefix + llm.max_tokens of output (one call; an invalid answer adds a second)."
          "\n$/gen exp: warm prefix (cached within 5 minutes) + the expected output: an ASSUMPTION, the seed "
          "harness's size for the Meta-Agent's file, half of it for a feedback answer (a diff or a plan)."
          f"\n+tries exp: $/gen exp plus agent.tries={args.tries} try_harness calls, each one more call whose input "
          f"grows by the answer before it and the try's result (up to trajectory_tokens/2 = "
          f"{args.trajectory_tokens // 2} tokens), with the expected output (the sandbox time of a try is not in $).")


def _tries_dollars(static: int, rest: int, out_exp: int, args, p) -> float:
    """Dollars of ``args.tries`` try_harness rounds after a feedback request (warm prefix)."""
    total, context = 0.0, rest
    for _ in range(args.tries):
        context += out_exp + args.trajectory_tokens // 2
        total += (static * p.cache_read + context * p.input + out_exp * p.output) / 1e6
    return total


def scripted(args) -> None:
    """The agents alone against the scripted server (with ``--latency`` seconds per answer)."""
    task = load_task("legal_charge", {})
    splits = task.load()
    script, default = legal_charge_e2e_script(task.seed_harness())
    delayed = [{**e, "delay": args.latency} for e in script]
    with tempfile.TemporaryDirectory() as run, ScriptedLLMServer(delayed, {**default, "delay": args.latency}) as srv:
        cfg = {**SONNET, "base_url": srv.url}
        client = LLMClient(cfg, Path(run))
        env = AgentEnv(task=task, run_dir=Path(run), resources=task.public_resources(splits), files={},
                       train=splits.train, checker=_CompileChecker())
        started = time.monotonic()
        rows = []
        before = client.ledger.totals.to_json()
        out = LLMMetaAgent(llm=cfg, client=client).first_harness(env)
        rows.append(("0 (meta)", out.info["cost"]))
        feedback = LLMFeedback(llm=cfg, client=client)
        offer = LeverOffer(True, "", ("sft",), max_steps=24, max_examples=160)
        for g in range(1, args.generations + 1):
            d = feedback.decide(Ctx(task, splits, g, offer))
            rows.append((f"{g} ({d.action}{', fallback' if d.fallback else ''})", d.to_json()["cost"]))
        wall = time.monotonic() - started
    print(f"scripted agents on legal_charge, {args.latency}s per answer, Sonnet prices (usage from the server, "
          f"{LABEL})")
    print(f"{'generation':22} {'calls':>5} {'tok in':>7} {'cached':>7} {'tok out':>7} {'$':>8} {'wait s':>7}")
    for label, c in rows:
        print(f"{label:22} {c['calls']:5.0f} {c['tokens_in']:7.0f} {c['tokens_cached']:7.0f} {c['tokens_out']:7.0f} "
              f"{c['dollars']:8.4f} {c['latency_s']:7.2f}")
    t = client.ledger.totals
    print(f"total: {t.calls} calls, {t.tokens} tokens, ${t.dollars - before['dollars']:.4f}; waiting on the API "
          f"{client.waiting_s:.2f}s of {wall:.2f}s ({100 * client.waiting_s / wall:.0f}% of the agents' wall time)")


class _CompileChecker:
    def check(self, code):
        try:
            compile(code, "harness.py", "exec")
        except SyntaxError as e:
            return f"SyntaxError: {e.msg} (line {e.lineno})"
        return None


def loop(args) -> None:
    """The wired loop against the scripted server: per-generation agent cost from agents.jsonl and
    the share of the run's wall time spent waiting on the agents."""
    task = load_task("legal_charge", {})
    script, default = legal_charge_e2e_script(task.seed_harness())
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="sia_agent_costs_"))
    with ScriptedLLMServer([{**e, "delay": args.latency} for e in script], {**default, "delay": args.latency}) as srv:
        env = {**os.environ, "ANTHROPIC_API_KEY": os.environ.get("ANTHROPIC_API_KEY", "scripted-key")}
        cmd = [sys.executable, "-m", "sia", "quiet=true", "logger=none", f"hydra.run.dir={run_dir}", "agent.meta=llm",
               "feedback=llm", f"llm.base_url={srv.url}", *args.overrides]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
        wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    calls = [json.loads(x) for x in (run_dir / "agents.jsonl").read_text().splitlines()]
    calls = [c for c in calls if c.get("event") == "call"]
    waited = sum(c["latency_s"] for c in calls)
    print(f"{len(calls)} agent calls, {sum(c['tokens_in'] + c['tokens_out'] for c in calls)} tokens, "
          f"${sum(c['dollars'] for c in calls):.4f}; waiting on agents {waited:.1f}s of {wall:.1f}s "
          f"({100 * waited / wall:.1f}%)")
    for c in calls:
        print(f"  {c['role']:9} in {c['tokens_in']:6d} cached {c['tokens_cached']:6d} out {c['tokens_out']:5d} "
              f"${c['dollars']:.4f} {c['latency_s']:.2f}s {c['outcome']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["estimate", "scripted", "loop"])
    ap.add_argument("--max-tokens", type=int, default=16000)
    ap.add_argument("--trajectory-tokens", type=int, default=12000)
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--tries", type=int, default=2, help="try_harness calls per feedback generation (agent.tries)")
    ap.add_argument("--latency", type=float, default=0.5, help="seconds the scripted server takes per answer")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("overrides", nargs="*", help="loop mode: extra Hydra overrides, e.g. budget=smoke")
    args = ap.parse_args()
    {"estimate": estimate, "scripted": scripted, "loop": loop}[args.mode](args)


if __name__ == "__main__":
    main()

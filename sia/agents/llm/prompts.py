"""What the agents say: the static prefix (instructions, task text, harness contract; cached on
Anthropic), the per-call parts, and the tools they must answer through."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sia.harness.contract as contract_module
from sia.agents.llm.backends import Tool

CONTRACT = (contract_module.__doc__ or "").strip()

META_INSTRUCTIONS = """You are the Meta-Agent of SIA, a framework for self-improving AI agents.
Write the FIRST harness for the task below: one Python file, stdlib only, defining
solve(inputs, ctx) (and sft_pair(inputs, target, ctx) when the task's answers can be rendered
from train targets, so fine-tuning prompts match inference). The harness drives a small policy
model through ctx.llm and is scored by the task's trusted evaluator on held-out examples.
Before it is used it must import, load in a sandbox (no network, no files beyond ctx.files) and
solve a few train examples without raising. Prefer robust parsing of the model's output and
prompts that fit the policy model's context. Answer by calling the tool `write_harness` with
the whole file in `code`."""

FEEDBACK_INSTRUCTIONS = """You are the Feedback-Agent of SIA, a framework for self-improving AI agents.
After every generation you choose the next lever for the task below:
- action "harness": rewrite the incumbent harness. Give EITHER `code` (a whole new file) OR
  `diff` (a unified diff against the incumbent, applied strictly: every context and removed
  line must match the incumbent exactly, or the answer is rejected). The new harness must still
  define solve(inputs, ctx); it is checked in the sandbox on train examples before evaluation.
- action "weights": fine-tune the policy model (LoRA) with a `training` plan {algorithm, data,
  steps, examples} within the limits listed under "Levers" (only when weights are available).
- action "stop": nothing left worth its cost.
The candidate is kept only if it raises the val score of the incumbent. Read the trajectories
(failure-first, by failure kind) to find what the harness or the model gets wrong, and give a
short `rationale` naming the evidence. Held-out (val/test) targets are never shown to you; do
not try to recover them. Answer by calling the tool `decide`."""

WRITE_HARNESS = Tool(
    name="write_harness",
    description="Submit the whole harness file.",
    schema={"type": "object", "properties": {
        "code": {"type": "string", "description": "the whole harness file (Python source)"},
        "notes": {"type": "string", "description": "one or two sentences on the approach"}},
        "required": ["code"]},
)


def decide_tool(algorithms: tuple[str, ...], data_sources: tuple[str, ...]) -> Tool:
    return Tool(
        name="decide",
        description="Choose the next lever and give its content.",
        schema={"type": "object", "properties": {
            "action": {"type": "string", "enum": ["harness", "weights", "stop"]},
            "rationale": {"type": "string", "description": "why, citing the digest or trajectories"},
            "code": {"type": "string", "description": "action=harness: the whole new harness file"},
            "diff": {"type": "string", "description": "action=harness: a unified diff against the incumbent"},
            "training": {"type": "object", "description": "action=weights: the training plan", "properties": {
                "algorithm": {"type": "string", "enum": list(algorithms) or ["sft"]},
                "data": {"type": "string", "enum": list(data_sources)},
                "steps": {"type": "integer", "minimum": 1},
                "examples": {"type": "integer", "minimum": 1}},
                "required": ["algorithm", "data", "steps", "examples"]}},
            "required": ["action", "rationale"]},
    )


def static_prefix(instructions: str, task_text: str) -> str:
    return f"{instructions}\n\n# The task (task.md)\n\n{task_text.strip()}\n\n# The harness contract\n\n{CONTRACT}\n"


def _short(value: Any, chars: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= chars else text[:chars] + f"... ({len(text)} chars)"


def describe_resources(resources: dict, preview: int = 3, chars: int = 300) -> str:
    lines = []
    for name, value in resources.items():
        kind = type(value).__name__
        if isinstance(value, (list, tuple)):
            head = ", ".join(_short(v, chars) for v in value[:preview])
            lines.append(f"- ctx.resources[{name!r}]: {kind} of {len(value)}; first: {head}")
        elif isinstance(value, dict):
            lines.append(f"- ctx.resources[{name!r}]: dict with keys {list(value)[:20]}; {_short(value, chars)}")
        else:
            lines.append(f"- ctx.resources[{name!r}]: {kind}: {_short(value, chars)}")
    return "\n".join(lines) or "(none)"


def describe_files(files: dict) -> str:
    lines = []
    for name, path in files.items():
        p = Path(str(path))
        size = p.stat().st_size if p.exists() else None
        lines.append(f"- ctx.files[{name!r}]: a {p.suffix or 'file'} file"
                     + (f", {size} bytes" if size is not None else ""))
    return "\n".join(lines) or "(none)"


def describe_examples(examples: list, chars: int = 400) -> str:
    return "\n".join(f"- inputs={_short(e.inputs, chars)}\n  target={_short(e.target, chars)}"
                     for e in examples) or "(none)"


def meta_request(resources: dict, files: dict, examples: list, seed: str | None) -> str:
    parts = ["# What the harness can read", "## ctx.resources", describe_resources(resources),
             "## ctx.files", describe_files(files), "## A few train examples (with their targets)",
             describe_examples(examples)]
    if seed:
        parts += ["# The task's seed harness (an example that works; improve on it if you can)",
                  f"```python\n{seed}\n```"]
    parts.append("Write the harness now: call write_harness with the whole file.")
    return "\n\n".join(parts)


def _j(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def levers_text(offer: Any, data_sources: tuple[str, ...]) -> str:
    if offer is None or not getattr(offer, "available", False):
        why = getattr(offer, "reason", "") or "no weights lever in this run"
        return f"- harness: always\n- weights: NOT available ({why})"
    return (f"- harness: always\n- weights: available; algorithms {list(offer.algorithms)}, data {list(data_sources)}, "
            f"steps 1..{offer.max_steps}, examples 1..{offer.max_examples}")


def history_text(history: list) -> str:
    rows = []
    for h in history:
        d = h.to_json() if hasattr(h, "to_json") else dict(h)
        keep = {k: v for k, v in d.items() if k not in ("harness_code", "stats", "details", "code", "diff")}
        if isinstance(keep.get("rationale"), str):
            keep["rationale"] = keep["rationale"][:300]
        rows.append(f"- {_j(keep)}")
    return "\n".join(rows) or "(no decisions yet)"


def feedback_request(ctx: Any, trajectories_text: str, trajectory_stats: dict, data_sources: tuple[str, ...]) -> str:
    digest = ctx.digest.to_json() if hasattr(ctx.digest, "to_json") else ctx.digest
    digest = {k: v for k, v in (digest or {}).items()}
    probe = getattr(ctx, "train_probe", None)
    probe = probe.to_json() if hasattr(probe, "to_json") else probe
    parts = [f"# Generation {ctx.generation}: choose the next lever",
             f"## Budget left\n{_j(getattr(ctx, 'budget_left', {}) or {})}",
             f"## Levers\n{levers_text(getattr(ctx, 'offer', None), data_sources)}",
             f"## Baselines (val score of the task's non-LLM references)\n{_j(getattr(ctx, 'baselines', {}) or {})}",
             f"## The incumbent on val (digest)\n{_j(digest)}",
             f"## Train probe (same harness and weights on train examples)\n{_j(probe)}",
             f"## Decision history (oldest first)\n{history_text(list(getattr(ctx, 'history', []) or []))}",
             f"## The incumbent harness\n```python\n{ctx.harness_code}\n```",
             f"## Val trajectories of the incumbent ({trajectory_stats['shown']} of {trajectory_stats['total']} "
             f"shown, failure-first; kinds {_j(trajectory_stats['failure_kinds'])})\n{trajectories_text or '(none)'}",
             "Decide now: call `decide`."]
    return "\n\n".join(parts)

"""Trajectories for the Feedback-Agent: failure-first, stratified by failure kind, rendered
whole, and cut to a token budget by dropping whole examples (never part of a model call).
Only named fields are read: ``details`` (which may hold the gold) is never rendered."""
from __future__ import annotations

import json
from statistics import mean
from typing import Any

from sia.agents.llm.tokens import approx_tokens

KIND_ORDER = ("error", "format", "wrong")


def failure_kind(t: dict) -> str | None:
    if t.get("failure"):
        return str(t["failure"])
    if t.get("error"):
        return "error"
    score = t.get("score")
    return None if score is not None and score >= 1 else "wrong"


def order(trajectories: list[dict]) -> list[dict]:
    """Round-robin over failure kinds (errors, unreadable, wrong, then any other kind), the
    lowest score first within a kind; full-credit examples last."""
    groups: dict[str, list[dict]] = {}
    for t in trajectories:
        groups.setdefault(failure_kind(t) or "ok", []).append(t)
    for g in groups.values():
        g.sort(key=lambda t: (t.get("score") if t.get("score") is not None else -1.0, str(t.get("id"))))
    kinds = [k for k in KIND_ORDER if k in groups] + sorted(k for k in groups if k not in KIND_ORDER + ("ok",))
    out: list[dict] = []
    while any(groups.get(k) for k in kinds):
        for k in kinds:
            if groups.get(k):
                out.append(groups[k].pop(0))
    return out + groups.get("ok", [])


def _logprob_summary(values: list) -> str:
    nums = [v for v in values or [] if isinstance(v, (int, float))]
    if not nums:
        return "no log-probs"
    return f"log-probs: n={len(nums)} mean={mean(nums):.2f} min={min(nums):.2f}"


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def render_event(i: int, e: dict) -> str:
    kind = e.get("type", "?")
    if kind == "llm_call":
        msgs = "\n".join(f"      [{m.get('role')}] {_show(m.get('content'))}" for m in e.get("messages") or [])
        return (f"  [{i}] model call ({e.get('prompt_tokens', '?')} prompt + {e.get('completion_tokens', '?')} "
                f"completion tokens, finish {e.get('finish_reason', '?')}, {_logprob_summary(e.get('logprobs'))})\n"
                f"    messages:\n{msgs}\n    completion: {_show(e.get('completion'))}")
    data = {k: v for k, v in e.items() if k != "type"}
    label = "tool call" if kind == "tool_call" else kind
    return f"  [{i}] {label}: {_show(data)}"


def render_example(t: dict) -> str:
    score = t.get("score")
    head = (f"### example {t.get('id')}: failure={failure_kind(t) or 'none'} "
            f"score={'n/a' if score is None else f'{score:.3f}'}")
    lines = [head, f"  reason: {t.get('reason') or ''}", f"  answer: {_show(t.get('answer'))}"]
    if t.get("error"):
        lines.append(f"  harness error: {_show(t['error'])}")
    events = t.get("events") or []
    retries = sum(1 for e in events if e.get("type") == "retry")
    tools = sum(1 for e in events if e.get("type") == "tool_call")
    calls = sum(1 for e in events if e.get("type") == "llm_call")
    lines.append(f"  steps: {calls} model calls, {tools} tool calls, {retries} retries")
    lines += [render_event(i, e) for i, e in enumerate(events, 1)]
    return "\n".join(lines)


def select(trajectories: list[dict], token_budget: int) -> tuple[str, dict]:
    """(rendered text, stats): as many whole examples as fit, in ``order``."""
    shown, used, skipped = [], 0, 0
    for t in order(trajectories):
        text = render_example(t)
        cost = approx_tokens(text)
        if used + cost > token_budget:
            skipped += 1        # a smaller one further down may still fit
            continue
        shown.append(text)
        used += cost
    kinds: dict[str, int] = {}
    for t in trajectories:
        k = failure_kind(t) or "ok"
        kinds[k] = kinds.get(k, 0) + 1
    stats = {"shown": len(shown), "total": len(trajectories), "dropped": skipped, "tokens": used,
             "failure_kinds": kinds}
    return "\n\n".join(shown), stats

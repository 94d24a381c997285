"""Trajectories for the Feedback-Agent: failure-first, stratified by failure kind, rendered
whole as quoted JSON (harness-controlled text is data, never request structure), and cut to a
token budget by dropping whole examples (never part of a model call). Only named fields are
read: ``details`` (which may hold the gold) is never rendered. Train trajectories carry their
gold (train is not held out); val ones are summarised gold-free by ``prompts.val_summary``."""
from __future__ import annotations

from statistics import mean
from typing import Any

from sia.agents.llm.quoting import quoted_json
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
    return f"n={len(nums)} mean={mean(nums):.2f} min={min(nums):.2f}"


def event_record(e: dict) -> dict:
    """One logged event as data (model calls whole, other events' fields as logged)."""
    kind = e.get("type", "?")
    if kind == "llm_call":
        return {"model_call": {"messages": [{"role": m.get("role"), "content": m.get("content")}
                                            for m in e.get("messages") or [] if isinstance(m, dict)],
                               "completion": e.get("completion"),
                               "tokens": f"{e.get('prompt_tokens', '?')} prompt + {e.get('completion_tokens', '?')} "
                                         f"completion", "finish": e.get("finish_reason"),
                               "logprobs": _logprob_summary(e.get("logprobs"))}}
    return {"tool_call" if kind == "tool_call" else str(kind): {k: v for k, v in e.items() if k != "type"}}


def example_record(t: dict, gold: Any = None, with_gold: bool = False) -> dict:
    """What the agent sees of one trajectory (``details``, which may hold gold, is never read)."""
    events = [e for e in t.get("events") or [] if isinstance(e, dict)]
    out: dict[str, Any] = {"id": t.get("id"), "failure": failure_kind(t) or "none",
                           "score": t.get("score")}
    if with_gold:
        out["gold"] = gold
    out.update({"answer": t.get("answer"), "reason": t.get("reason") or ""})
    if t.get("error"):
        out["harness_error"] = t["error"]
    out["steps"] = {"model_calls": sum(1 for e in events if e.get("type") == "llm_call"),
                    "tool_calls": sum(1 for e in events if e.get("type") == "tool_call"),
                    "retries": sum(1 for e in events if e.get("type") == "retry")}
    out["events"] = [event_record(e) for e in events]
    return out


def render_example(t: dict, gold: Any = None, with_gold: bool = False) -> str:
    """One trajectory as quoted JSON: every string escaped, so nothing in it starts a line."""
    return quoted_json(example_record(t, gold, with_gold))


def select(trajectories: list[dict], token_budget: int, gold: dict | None = None) -> tuple[str, dict]:
    """(rendered text, stats): as many whole examples as fit, in ``order``. ``gold``: id -> target
    for TRAIN trajectories (train is not held out); None renders no gold."""
    shown, used, skipped = [], 0, 0
    for t in order(trajectories):
        text = render_example(t, (gold or {}).get(t.get("id")), with_gold=gold is not None)
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

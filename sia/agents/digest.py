"""Trajectory statistics the feedback agents read: what went wrong, and how often.

It counts the failure kind every score row carries (``error`` set by the loop from the
worker's result, ``format`` / ``wrong`` set by the task's evaluator, None for full credit)
and nothing else: no guessing from the words of a reason.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

EXAMPLES_OF_FAILURES = 8


@dataclass
class Digest:
    n: int
    score: float                         # mean per-example score
    error_rate: float                    # harness errors (exception, timeout, memory, ...)
    format_rate: float                   # answers the evaluator could not read or run
    wrong_rate: float                    # readable answers below full credit
    wellformed_accuracy: float           # mean score over readable answers (not error, not format)
    error_kinds: dict[str, int] = field(default_factory=dict)
    train_score: float | None = None     # same harness+weights on a train probe
    tokens: int = 0
    examples_of_failures: list[str] = field(default_factory=list)   # "id [kind]: reason" (gold-free)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def digest(rows: list[dict], train_rows: list[dict] | None = None) -> Digest:
    """``rows``: one per val example with keys score, failure, reason, error, tokens."""
    n = len(rows) or 1
    kinds = Counter(r.get("failure") for r in rows)
    readable = [r for r in rows if r.get("failure") not in ("error", "format")]
    failures = [f"{r['id']} [{r['failure']}]: {r.get('reason') or ''}"[:200]
                for r in rows if r.get("failure")][:EXAMPLES_OF_FAILURES]
    return Digest(
        n=len(rows),
        score=sum(r.get("score") or 0.0 for r in rows) / n,
        error_rate=kinds["error"] / n,
        format_rate=kinds["format"] / n,
        wrong_rate=kinds["wrong"] / n,
        wellformed_accuracy=(sum(r.get("score") or 0.0 for r in readable) / len(readable)) if readable else 0.0,
        error_kinds=dict(Counter(r["error"]["kind"] for r in rows if r.get("error"))),
        train_score=(sum(r.get("score") or 0.0 for r in train_rows) / len(train_rows)) if train_rows else None,
        tokens=sum(r.get("tokens", 0) for r in rows),
        examples_of_failures=failures,
    )

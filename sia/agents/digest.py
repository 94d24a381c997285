"""Trajectory statistics the feedback policies read: what went wrong, and how often."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# Words in an evaluator's reason that mark an answer the evaluator could not even read
# (as opposed to a readable but wrong one).
FORMAT_MARKERS = ("abstention", "no valid", "no sql", "invalid sql", "no code", "compile", "parse",
                  "unparseable", "missing", "shape", "not a", "empty")


@dataclass
class Digest:
    n: int
    score: float                         # mean per-example score
    error_rate: float                    # harness errors (exception, timeout, memory, ...)
    format_rate: float                   # answers the evaluator could not read (abstentions included)
    wellformed_accuracy: float           # mean score over readable answers
    error_kinds: dict[str, int] = field(default_factory=dict)
    train_score: float | None = None     # same harness+weights on a train probe
    tokens: int = 0
    examples_of_failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _is_format_failure(row: dict) -> bool:
    if row.get("error"):
        return False
    reason = (row.get("reason") or "").lower()
    return row.get("answer_missing", False) or any(m in reason for m in FORMAT_MARKERS)


def digest(rows: list[dict], metrics: dict[str, float], train_rows: list[dict] | None = None) -> Digest:
    """``rows``: one per val example with keys score, reason, error, answer_missing, tokens."""
    n = len(rows) or 1
    errors = [r for r in rows if r.get("error")]
    formats = [r for r in rows if _is_format_failure(r)]
    if "abstention" in metrics:          # the task measures it directly: trust that over keywords
        format_rate = float(metrics["abstention"])
    else:
        format_rate = len(formats) / n
    readable = [r for r in rows if not r.get("error") and not _is_format_failure(r)]
    failures = [f"{r['id']}: {r.get('reason') or (r.get('error') or {}).get('message', '')}"[:200]
                for r in rows if (r.get("score") or 0) < 1][:8]
    return Digest(
        n=len(rows),
        score=sum(r.get("score") or 0.0 for r in rows) / n,
        error_rate=len(errors) / n,
        format_rate=format_rate,
        wellformed_accuracy=(sum(r.get("score") or 0.0 for r in readable) / len(readable)) if readable else 0.0,
        error_kinds=dict(Counter(r["error"]["kind"] for r in errors)),
        train_score=(sum(r.get("score") or 0.0 for r in train_rows) / len(train_rows)) if train_rows else None,
        tokens=sum(r.get("tokens", 0) for r in rows),
        examples_of_failures=failures,
    )

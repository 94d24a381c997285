"""Every agent call as one line of ``<run>/agents.jsonl`` (role, model, tokens in/out/cached,
dollars, latency, outcome), the running totals, and the budget check the loop asks before a
generation. Totals are re-read from the file, so a resumed run keeps counting where it was."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sia.agents.llm.config import Usage


@dataclass
class Totals:
    calls: int = 0
    cached_calls: int = 0           # answered from the response cache: no tokens, no dollars
    tokens_in: int = 0              # all input tokens, cached ones included
    tokens_out: int = 0
    tokens_cached: int = 0          # input tokens read from the prompt cache
    tokens_cache_write: int = 0
    dollars: float = 0.0
    latency_s: float = 0.0
    max_call_tokens: int = 0        # the largest single call, the estimate of the next one
    max_call_dollars: float = 0.0

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tokens": self.tokens}


class Ledger:
    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        self.totals = Totals()
        self.by_role: dict[str, Totals] = {}
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue        # a torn last line after kill -9
                if row.get("event") == "call":
                    self._add(row)

    def _add(self, row: dict) -> None:
        for t in (self.totals, self.by_role.setdefault(row.get("role", ""), Totals())):
            t.calls += 1
            t.cached_calls += row.get("outcome") == "cached"
            t.tokens_in += row.get("tokens_in", 0)
            t.tokens_out += row.get("tokens_out", 0)
            t.tokens_cached += row.get("tokens_cached", 0)
            t.tokens_cache_write += row.get("tokens_cache_write", 0)
            t.dollars += row.get("dollars", 0.0)
            t.latency_s += row.get("latency_s", 0.0)
            t.max_call_tokens = max(t.max_call_tokens, row.get("tokens_in", 0) + row.get("tokens_out", 0))
            t.max_call_dollars = max(t.max_call_dollars, row.get("dollars", 0.0))

    def _write(self, row: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    def record(self, role: str, model: str, usage: Usage, dollars: float, latency_s: float,
               outcome: str, **extra: Any) -> dict:
        """``outcome``: ok | cached | invalid | error (``extra`` holds e.g. the error's type)."""
        row = {"event": "call", "time": time.time(), "role": role, "model": model,
               "tokens_in": usage.tokens_in, "tokens_out": usage.output, "tokens_cached": usage.cache_read,
               "tokens_cache_write": usage.cache_write, "dollars": round(dollars, 6),
               "latency_s": round(latency_s, 3), "outcome": outcome, **extra}
        with self._lock:
            self._add(row)
            self._write(row)
        return row

    def event(self, row: dict) -> None:
        """A non-call line (scrub events, answer validation outcomes)."""
        with self._lock:
            self._write({"time": time.time(), **row})

    def note_outcome(self, role: str, outcome: str, **extra: Any) -> None:
        self.event({"event": "outcome", "role": role, "outcome": outcome, **extra})

    def would_exceed(self, agent_tokens: int | None, agent_dollars: float | None,
                     next_tokens: int | None = None, next_dollars: float | None = None) -> str | None:
        """Why the next call could pass ``budget.agent_tokens`` / ``budget.agent_dollars``
        (None or 0: no limit), or None. The next call is estimated as the largest one so far
        unless given."""
        t = self.totals
        nt = t.max_call_tokens if next_tokens is None else next_tokens
        nd = t.max_call_dollars if next_dollars is None else next_dollars
        if agent_tokens and t.tokens + nt > agent_tokens:
            return (f"agent token budget: {t.tokens} used of budget.agent_tokens={agent_tokens}, "
                    f"and the next call may take {nt} more")
        if agent_dollars and t.dollars + nd > agent_dollars:
            return (f"agent dollar budget: ${t.dollars:.4f} spent of budget.agent_dollars={agent_dollars}, "
                    f"and the next call may cost ${nd:.4f} more")
        return None

    def summary(self) -> dict[str, Any]:
        """For summary.json, the final table and W&B."""
        return {**self.totals.to_json(), "by_role": {r: t.to_json() for r, t in sorted(self.by_role.items())}}

"""The last line of defence for held-out data: before a request leaves the process, every
val/test target string found anywhere in it is replaced and the event is logged (without the
string: the log only says how many and a short hash, so logs cannot leak what they guard)."""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable

MASK = "[held-out]"
MIN_CHARS = 3   # shorter targets ("1", "是") would match everywhere and carry no example's answer


def _flatten(target: Any) -> list[str]:
    if isinstance(target, str):
        return [target.strip()]
    if isinstance(target, (list, tuple)):
        items = [s for t in target for s in _flatten(t)]
        joined = [";".join(t for t in target if isinstance(t, str))] if len(target) > 1 else []
        return items + joined
    if isinstance(target, dict):
        return [s for v in target.values() for s in _flatten(v)]
    return []   # numbers and arrays: no string to find


def _strings(value: Any, out: set[str]) -> None:
    if isinstance(value, str):
        out.add(value.strip())
    elif isinstance(value, (list, tuple)):
        for v in value:
            _strings(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _strings(v, out)


def held_out_strings(splits: Any, resources: dict | None = None) -> tuple[list[str], list[str]]:
    """(sealed, public) strings of a task: val/test targets, and what is public anyway (train
    targets, every string in the public resources, e.g. a label list): a val target equal to a
    public string cannot be told apart from public data, and masking it would blank the labels."""
    public = {s for e in splits.train for s in _flatten(e.target)}
    _strings(resources or {}, public)
    # Example ids are identifiers the agents are shown, not answers, even when a target repeats
    # its own id (sql_qa's ``instance``): a string inside an id is public through the id.
    ids = {str(e.id) for split in (splits.train, splits.val, splits.test) for e in split}
    public |= ids
    sealed = {s for split in (splits.val, splits.test) for e in split for s in _flatten(e.target)}
    sealed = {s for s in sealed - public if not any(s in i for i in ids)}
    return sorted(sealed), sorted(public)


def fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


class Scrubber:
    def __init__(self, sealed: Iterable[str] = (), public: Iterable[str] = (), min_chars: int = MIN_CHARS,
                 on_event: Callable[[dict], None] | None = None):
        exempt = set(public)
        # Longest first, so a multi-label target is replaced whole before its parts.
        self.sealed = sorted({s for s in sealed if len(s) >= min_chars and s not in exempt}, key=len, reverse=True)
        self.on_event = on_event

    def _text(self, text: str, hits: dict[str, int]) -> str:
        for s in self.sealed:
            if s in text:
                hits[s] = hits.get(s, 0) + text.count(s)
                text = text.replace(s, MASK)
        return text

    def _walk(self, value: Any, hits: dict[str, int]) -> Any:
        if isinstance(value, str):
            return self._text(value, hits)
        if isinstance(value, list):
            return [self._walk(v, hits) for v in value]
        if isinstance(value, dict):
            return {k: self._walk(v, hits) for k, v in value.items()}
        return value

    def scrub(self, body: Any, role: str = "") -> Any:
        """``body`` with every sealed string masked (a new object; the input is not changed)."""
        if not self.sealed:
            return body
        hits: dict[str, int] = {}
        out = self._walk(body, hits)
        if hits and self.on_event:
            self.on_event({"event": "scrub", "role": role, "replacements": sum(hits.values()),
                           "targets": sorted(fingerprint(s) for s in hits)})
        return out

"""Evaluation cases: one shape, input distribution and mask kind each."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MASKS = ("none", "random")
DISTRIBUTIONS = ("normal", "cauchy")
DIMENSIONS = ("n", "b", "c", "h")


@dataclass(frozen=True)
class Case:
    n: int              # sequence length: x is [b, n, n, c]
    b: int              # batch
    c: int              # channels of x and of the output
    h: int              # hidden channels of the projections
    mask: str = "none"  # none: all ones; random: 0/1 drawn per (b, i, j)
    dist: str = "normal"  # normal: N(0, 1); cauchy: Cauchy(0, 2), heavy tails

    @property
    def label(self) -> str:
        return f"N={self.n} B={self.b} C={self.c} H={self.h} mask={self.mask} dist={self.dist}"

    @property
    def positions(self) -> int:
        """Output rows (b, i, j); each holds ``c`` values."""
        return self.b * self.n * self.n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def case_problems(raw: Any, where: str) -> list[str]:
    """Problems with one configured case (each naming the key, the bad value and the fix)."""
    if not isinstance(raw, dict) and not hasattr(raw, "keys"):
        return [f"{where}: {raw!r} is not a mapping; write it as "
                "{n: 64, b: 1, c: 32, h: 32, mask: none, dist: normal}"]
    problems = []
    unknown = sorted(set(raw.keys()) - set(DIMENSIONS) - {"mask", "dist"})
    if unknown:
        problems.append(f"{where}: unknown keys {unknown}; allowed: n, b, c, h, mask, dist")
    for key in DIMENSIONS:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{where}.{key}={value!r}: must be a positive integer")
    if raw.get("mask", "none") not in MASKS:
        problems.append(f"{where}.mask={raw.get('mask')!r}: must be one of {', '.join(MASKS)}")
    if raw.get("dist", "normal") not in DISTRIBUTIONS:
        problems.append(f"{where}.dist={raw.get('dist')!r}: must be one of {', '.join(DISTRIBUTIONS)}")
    return problems


def parse_case(raw: Any) -> Case:
    return Case(**{key: raw[key] for key in DIMENSIONS},
                mask=str(raw.get("mask", "none")), dist=str(raw.get("dist", "normal")))

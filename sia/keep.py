"""The keep rule: is a candidate better than the incumbent on val?

``strict`` (the old rule): kept when its val score beats the incumbent's, however small the gap
(on 24 examples one example is ~4 points of F1, so noise decided).

``paired`` (the default): the candidate is scored on val in chunks of ``chunk`` examples, and
after each chunk (a *look*) its per-example scores are paired with the incumbent's on the same
examples: ``d_i = candidate_i - incumbent_i`` (sign flipped for a lower-is-better metric), so
the gain is in "examples' worth" of score. At each look, in this order:

1. **keep** when the gain is significant: the one-sided sign-flip p-value of "mean gain > 0" is
   at most ``alpha / K``, K the number of looks the pool allows (Bonferroni over the looks, so
   the chance that this path keeps a candidate no better than the incumbent stays at most
   ``alpha`` however many looks are taken);
2. **reject** when it is significantly worse (one-sided p of "mean gain < 0" at most ``alpha``;
   stopping a loser early only costs power, never a false keep), or when it **cannot win**:
   even gaining the most it still could on every example left (the score's upper bound minus
   the incumbent's score there), it would end below the margin and not be significant;
3. at the **end of the pool** (``budget.val_examples`` examples run, none of the above): kept
   when the summed gain is at least ``margin`` examples' worth (default 2: a one-example
   gain, the smallest flip noise makes, is never enough), else rejected. This path is a
   deliberate hill-climbing allowance and its false-keep chance is *not* bounded by ``alpha``:
   a candidate that differs from the incumbent on m examples, each a coin flip, ends 2 or more
   ahead with probability 25% (m=2), 31% (m=4), 34% (m=6). The record keeps the gain, its
   interval and which path decided; ``feedback.keep_margin=1e9`` leaves significance alone;
4. otherwise score the next chunk.

A pool too small for the test (a candidate better on every example would still not be
significant: fewer than log2(K / alpha) examples, e.g. cuda_kernel's 2 val kernels) is judged
whole, by the sign of the summed gain, as ``strict`` would, and the verdict says so.

A kept candidate is then scored on the rest of the pool (its val is a whole-pool number, and the
next candidates are paired with it on every example); a rejected one stops where it was.

Why a sign-flip (permutation) test: under "no difference" the sign of each paired difference
is a coin flip (the two are exchangeable on each example), which is all the test assumes: it
is exact for any n, the binary or bounded scores the tasks give (where t intervals are poor
at n=8..48: differences are -1/0/+1 with many ties), and needs no variance estimate. Exact
enumeration of the 2^m sign patterns when there are at most ``EXACT_MAX`` non-zero
differences (zeros flip to themselves); beyond that ``DRAWS`` fixed-seed random patterns,
with the (1 + hits) / (1 + draws) correction that keeps the p-value valid. Same input, same
answer: a resumed run replays its decisions exactly.

The interval reported with a decision is the paired t 95% interval of the mean gain, clipped
to the score's range: a description for the record and the report, not what decides (with
-1/0/+1 differences and few discordant examples its coverage is only approximate; inverting
the sign-flip test is no better there, since shifting binary differences breaks the symmetry
it assumes).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

RULES = ("paired", "strict")
EXACT_MAX = 16          # non-zero differences enumerated exactly (2^16 patterns)
DRAWS = 20000           # random sign patterns beyond that
SEED = 20240521         # fixed: a decision replays identically
INTERVAL_LEVEL = 0.95
_EPS = 1e-12


@dataclass(frozen=True)
class KeepSettings:
    rule: str = "paired"      # paired | strict
    alpha: float = 0.05       # false-keep chance of the significance path, over all looks
    margin: float = 2.0       # end of the pool: summed gain needed, in examples of full credit
    chunk: int = 16           # val examples per look (one wave of the default 16 workers)

    def problems(self) -> list[str]:
        out = []
        if self.rule not in RULES:
            out.append(f"feedback.keep={self.rule!r} is not one of {', '.join(RULES)}; set feedback.keep=paired "
                       f"(significant paired gain) or feedback.keep=strict (val mean above the incumbent's)")
        if not 0 < self.alpha < 1:
            out.append(f"feedback.keep_alpha={self.alpha!r} must be in (0, 1); e.g. feedback.keep_alpha=0.05")
        if self.margin < 0:
            out.append(f"feedback.keep_margin={self.margin!r} must be >= 0 (examples); e.g. feedback.keep_margin=2")
        if self.chunk < 1:
            out.append(f"feedback.keep_chunk={self.chunk!r} must be >= 1; e.g. feedback.keep_chunk=16")
        return out


def read_settings(source) -> KeepSettings:
    """The keep settings of a config node (``feedback.keep*``); defaults for what it lacks. TypeError/ValueError when a value is not a number."""
    default = KeepSettings()
    return KeepSettings(rule=str(getattr(source, "keep", default.rule)),
                        alpha=float(getattr(source, "keep_alpha", default.alpha)),
                        margin=float(getattr(source, "keep_margin", default.margin)),
                        chunk=int(getattr(source, "keep_chunk", default.chunk)))


def checked(settings: KeepSettings) -> KeepSettings:
    """``settings``, or a ValueError naming each problem."""
    problems = settings.problems()
    if problems:
        raise ValueError("; ".join(problems))
    return settings


@dataclass
class Verdict:
    decision: str              # keep | reject | continue
    why: str
    gain: float                # mean paired gain per example (positive: the candidate is better)
    low: float                 # 95% interval of the mean gain
    high: float
    n: int                     # paired examples that decided it
    p_better: float            # one-sided sign-flip p-values
    p_worse: float

    def to_json(self) -> dict:
        return asdict(self)


# ---- the sign-flip test ----------------------------------------------------------------------
@lru_cache(maxsize=16)
def _patterns(m: int) -> np.ndarray:
    """Sign patterns (rows, int8: at most 1 MB at m=16) for m non-zero differences: all 2^m, or
    DRAWS fixed-seed ones."""
    if m <= EXACT_MAX:
        bits = (np.arange(1 << m)[:, None] >> np.arange(m)[None, :]) & 1
        return (1 - 2 * bits).astype(np.int8)
    return np.random.default_rng(SEED + m).choice(np.array([-1, 1], dtype=np.int8), size=(DRAWS, m))


def p_greater(diffs, theta: float = 0.0) -> float:
    """One-sided sign-flip p-value of "mean difference > theta" (small: evidence it is)."""
    x = np.asarray(diffs, dtype=float) - theta
    x = x[np.abs(x) > _EPS]
    if x.size == 0:
        return 1.0
    signs = _patterns(x.size)
    hits = int(np.count_nonzero(signs @ x >= x.sum() - 1e-9))
    if x.size <= EXACT_MAX:
        return hits / signs.shape[0]
    return (1 + hits) / (1 + signs.shape[0])


def p_less(diffs, theta: float = 0.0) -> float:
    """One-sided sign-flip p-value of "mean difference < theta"."""
    return p_greater(-np.asarray(diffs, dtype=float), -theta)


def t_half_width(values, level: float = INTERVAL_LEVEL) -> float:
    """Half-width of the two-sided ``level`` Student t interval of the mean of ``values`` (at
    least two); the report's intervals over seeds use it too."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    return float(stats.t.ppf(1 - (1 - level) / 2, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)


def interval(diffs, span: float, level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """Two-sided ``level`` paired t interval of the mean difference, clipped to [-span, span]
    (the largest difference the scores allow). Descriptive: decisions rest on the exact
    sign-flip test, not on this interval (see the module docstring)."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return -span, span
    mean, half = float(d.mean()), t_half_width(d, level)
    return max(-span, mean - half), min(span, mean + half)


# ---- the rule ------------------------------------------------------------------------------
def paired_gains(cand_rows: list[dict], inc_rows: list[dict], direction: str) -> list[float]:
    """Candidate minus incumbent per example, in the candidate's row order (positive = better)."""
    inc = {r["id"]: float(r["score"]) for r in inc_rows}
    missing = [r["id"] for r in cand_rows if r["id"] not in inc]
    if missing:
        raise ValueError(f"the incumbent has no val score for {len(missing)} example(s) (first {missing[0]!r}); "
                         f"paired keep decisions need both scored on the same examples")
    sign = 1.0 if direction == "max" else -1.0
    return [sign * (float(r["score"]) - inc[r["id"]]) for r in cand_rows]


class PairedRule:
    """The paired rule for one candidate against one incumbent on a val pool.

    ``inc_scores``: the incumbent's score per example of the pool, in pool order; ``bounds``:
    the per-example score's (low, high) when the task has them (max-direction tasks: [0, 1]),
    else None (no "cannot win" check; the interval is clamped to the data's range)."""

    def __init__(self, inc_scores: list[float], direction: str, settings: KeepSettings,
                 bounds: tuple[float, float] | None = (0.0, 1.0)):
        self.inc, self.direction, self.s, self.bounds = [float(v) for v in inc_scores], direction, settings, bounds
        self.pool = len(self.inc)
        self.looks = max(1, math.ceil(self.pool / settings.chunk))
        self.powerless = self._powerless()

    def _powerless(self) -> bool:
        """A pool too small for the test: even a candidate better on every example would not be
        significant (1/2^pool > alpha/K), whatever the scores (cuda_kernel's 2 val kernels)."""
        return self.pool == 0 or 0.5 ** self.pool > self.s.alpha / self.looks

    def _span(self, gains: list[float]) -> float:
        if self.bounds is not None:
            return self.bounds[1] - self.bounds[0]
        return max([abs(g) for g in gains] + [1.0]) * 2

    def _best_left(self, n: int) -> list[float]:
        """The most the candidate could still gain on each example not yet scored."""
        low, high = self.bounds
        left = self.inc[n:]
        return [high - v for v in left] if self.direction == "max" else [v - low for v in left]

    def look(self, gains: list[float]) -> Verdict:
        """The verdict after ``len(gains)`` paired examples (a chunk boundary or the pool's end)."""
        n = len(gains)
        span = self._span(gains)
        p_up, p_down = p_greater(gains), p_less(gains)
        low, high = interval(gains, span)
        mean = sum(gains) / n if n else 0.0
        total, end = sum(gains), n >= self.pool

        def verdict(decision: str, why: str) -> Verdict:
            return Verdict(decision, why, mean, low, high, n, p_up, p_down)

        level = self.s.alpha / self.looks
        stats = (f"paired gain {mean:+.3f} per example ({total:+.2f} examples' worth) on {n} of {self.pool} val "
                 f"examples, 95% interval [{low:+.3f}, {high:+.3f}]")
        if self.powerless:   # nothing could pass the rule: judge the whole pool by the sign of the gain
            if not end:
                return verdict("continue", stats)
            small = (f"the val pool of {self.pool} is too small for a significant gain, so any positive gain "
                     f"keeps (as feedback.keep=strict)")
            return verdict("keep" if total > 1e-12 else "reject", f"{stats}: {small}")
        if p_up <= level:
            return verdict("keep", f"{stats}: significant (sign-flip p={p_up:.4f} <= {self.s.alpha:g}/{self.looks} "
                                   f"looks)")
        if p_down <= self.s.alpha:
            return verdict("reject", f"{stats}: significantly worse (sign-flip p={p_down:.4f} <= {self.s.alpha:g})")
        if end:
            if total >= self.s.margin - 1e-9 and total > 0:
                return verdict("keep", f"{stats}: val pool spent, gain >= the margin of {self.s.margin:g} examples")
            return verdict("reject", f"{stats}: val pool spent, gain below the margin of {self.s.margin:g} examples "
                                     f"and not significant")
        if self.bounds is not None:
            best = list(gains) + self._best_left(n)
            if sum(best) < self.s.margin - 1e-9 and p_greater(best) > level:
                return verdict("reject", f"{stats}: cannot win (gaining the most possible on the "
                                         f"{self.pool - n} examples left would end below the margin of "
                                         f"{self.s.margin:g} examples and not be significant)")
        return verdict("continue", stats)

    def replay(self, gains: list[float]) -> Verdict:
        """The verdict the looks gave on these gains, in pool order: the first look that decided
        (a kept candidate's later chunks change nothing), else the look at the last one."""
        verdict = None
        for n in self.boundaries(len(gains)):
            verdict = self.look(gains[:n])
            if verdict.decision != "continue":
                return verdict
        return verdict if verdict is not None else self.look([])

    def boundaries(self, n: int) -> list[int]:
        """Example counts at which the looks fall, up to ``n``."""
        marks = list(range(self.s.chunk, self.pool, self.s.chunk)) + [self.pool]
        return [m for m in marks if m <= n] or ([n] if n else [])

"""LawBench's charge-prediction scorer (task 3-3), reimplemented.

Read from open-compass/LawBench, ``evaluation/evaluation_functions/ljp_accusation.py`` and
``evaluation/utils/function_utils.py`` (``compute_f1_two_sets``); OpenCompass ships the same
code. Details kept on purpose, because they decide scores:

- The WHOLE output is searched. The scorer does not cut out the ``[罪名]...<eoa>`` span the
  prompt asks for, so text outside it counts too (an echoed "例如[罪名]盗窃;诈骗<eoa>" predicts
  盗窃 and 诈骗). Harnesses that want a clean answer must extract the span themselves.
- A label is predicted when it occurs as a plain substring of the output (``in``), once no
  matter how often. No 罪 handling is needed: "盗窃罪" contains "盗窃", and no label ends in 罪.
- Overlapping names all count: "合同诈骗" in the output predicts both 合同诈骗 and 诈骗, so a
  correct "合同诈骗" against gold {合同诈骗} scores F1 2/3. There is no longest-match rule.
- Gold is the answer with "罪名:" removed, split on ";". Gold names missing from the label list
  stay in the gold set, so they can never be matched (a perfect score is not reachable).
- Per item F1 of the two sets (0 when nothing is predicted); the score is the mean over items.
  An item counts as an abstention when no label matched.

LawBench prints scores x100; here every metric is a fraction in [0, 1].
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

ANSWER_PREFIX = "罪名:"


def answer_text(answer: Any) -> str:
    """What the scorer searches: the model output, or a list of names joined with ';'."""
    if answer is None:
        return ""
    if isinstance(answer, str):
        return answer
    if isinstance(answer, (list, tuple)):
        return ";".join(str(a) for a in answer)
    return json.dumps(answer, ensure_ascii=False)


def predicted_charges(answer: Any, labels: Iterable[str]) -> list[str]:
    """Every label that occurs as a substring of the answer (LawBench's matching rule)."""
    text = answer_text(answer)
    return [label for label in labels if label and label in text]


def set_f1(predicted: set[str], gold: set[str]) -> float:
    hits = len(predicted & gold)
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(gold) if gold else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


@dataclass(frozen=True)
class ChargeScore:
    f1: float
    exact: bool
    abstained: bool
    predicted: tuple[str, ...]
    gold: tuple[str, ...]


def score_answer(answer: Any, gold: Sequence[str], labels: Iterable[str]) -> ChargeScore:
    predicted = predicted_charges(answer, labels)
    pred_set, gold_set = set(predicted), set(gold)
    return ChargeScore(
        f1=set_f1(pred_set, gold_set),
        exact=bool(gold_set) and pred_set == gold_set,
        abstained=not predicted,
        predicted=tuple(predicted),
        gold=tuple(gold),
    )


def aggregate(scores: Sequence[ChargeScore]) -> dict[str, float]:
    """Mean F1, exact-set accuracy and abstention rate over items (zeros when empty)."""
    n = len(scores)
    if n == 0:
        return {"f1": 0.0, "exact": 0.0, "abstention": 0.0}
    return {
        "f1": sum(s.f1 for s in scores) / n,
        "exact": sum(s.exact for s in scores) / n,
        "abstention": sum(s.abstained for s in scores) / n,
    }


def failure_kind(answer: Any, score: ChargeScore) -> str | None:
    """``ExampleScore.failure``: None for the exact set, "format" when no valid charge name
    could be read (no answer, abstention), "wrong" for a readable but not exact set."""
    if score.exact:
        return None
    return "format" if answer is None or score.abstained else "wrong"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def failure_reason(answer: Any, score: ChargeScore, public_gold: bool = False) -> str:
    """One sentence on what kind of mistake it was; empty when the set is exact. It never
    names a charge: held-out gold must not reach the feedback side, and a predicted name
    next to "right"/"extra" would tell which gold names it hit. On val/test it does not count
    hits either: "1 right, 1 extra" over a few answers recovers each gold set, so only the
    answer's own size is told. ``public_gold`` (a train example: its charges are in
    ctx.resources['train']): the reason counts how close."""
    if score.exact:
        return ""
    if answer is None:
        return "the harness produced no answer"
    if score.abstained:
        snippet = answer_text(answer).strip().replace("\n", " ")[:60]
        return f"no valid charge name in the output (abstention): {snippet!r}"
    if not public_gold:
        return f"not the gold charge set: named {_count(len(score.predicted), 'valid charge')}"
    hits = len(set(score.predicted) & set(score.gold))
    extra, missing = len(score.predicted) - hits, len(set(score.gold)) - hits
    named = f"named {_count(len(score.predicted), 'valid charge')}"
    if hits == 0:
        return f"wrong charges: {named}, none of them a gold charge"
    parts = ([f"{extra} extra"] if extra else []) + ([f"{missing} gold charge(s) missed"] if missing else [])
    return f"partly right: {named}, {hits} right, {', '.join(parts)}"

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


def failure_reason(answer: Any, score: ChargeScore) -> str:
    """One sentence on why an item is not fully right; empty when it is."""
    if score.exact:
        return ""
    gold = ";".join(score.gold) or "(none)"
    if answer is None:
        return f"the harness produced no answer; gold is {gold}"
    if score.abstained:
        snippet = answer_text(answer).strip().replace("\n", " ")[:60]
        return f"no valid charge name in the output (abstention): {snippet!r}"
    predicted = ";".join(score.predicted)
    extra = [p for p in score.predicted if p not in score.gold]
    missing = [g for g in score.gold if g not in score.predicted]
    if len(extra) == len(score.predicted):  # nothing right: the plain contrast says it all
        return f"predicted {predicted} but gold is {gold}"
    parts = (["missing " + ";".join(missing)] if missing else []) + (
        ["extra " + ";".join(extra)] if extra else []
    )
    return f"predicted {predicted} but gold is {gold} ({', '.join(parts)})"

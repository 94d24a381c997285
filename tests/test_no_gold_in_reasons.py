"""No held-out gold in anything the feedback side receives (issue 8 item 9).

Each task's evaluator scores several kinds of wrong answers on val examples; what the
feedback side reads of the report (per-example reason and failure kind, metric names and
values, notes) must hold no gold value: no target charge name, no value or row count of a
gold SQL result, no held-out count total. Gold stays in the trusted ``details``.
"""
from __future__ import annotations

import re
import sqlite3

import numpy as np
import pytest

from sia.tasks import FAILURE_KINDS, EvalReport, load_task

pytestmark = pytest.mark.filterwarnings("ignore")


def feedback_texts(report: EvalReport) -> list[str]:
    """Every string the feedback side receives from a report (details excluded: trusted-only)."""
    texts = [s.reason for s in report.per_example] + [str(s.failure) for s in report.per_example]
    texts += [f"{k}={v}" for k, v in report.metrics.items()]
    texts += [f"{k}={v}" for k, v in report.notes.items()]
    return texts


def assert_kinds(report: EvalReport) -> None:
    for s in report.per_example:
        assert s.failure in FAILURE_KINDS[1:] + (None,), s   # "error" is the loop's, never an evaluator's
        assert (s.failure is None) == (s.reason == ""), s


# ---- legal_charge ------------------------------------------------------------------------

def test_legal_charge_reasons_name_no_gold_charge():
    task = load_task("legal_charge", {"primary_metric": "f1", "data": {}})
    val = task.load().val
    labels = task.labels
    examples, answers = [], []
    for example in val[:12]:
        gold = list(example.target)
        others = [name for name in labels if not any(name in g or g in name for g in gold)]
        kinds = [
            "[罪名]" + others[0] + "<eoa>",                        # wrong charge
            "[罪名]" + ";".join(gold + others[:1]) + "<eoa>",     # right plus an extra one
            "[罪名]" + ";".join(others[:2]) + "<eoa>",            # two wrong charges
            "本院认为被告人的行为构成犯罪",                          # abstention
            None,                                                 # no answer
        ]
        if len(gold) > 1:
            kinds.append("[罪名]" + gold[0] + "<eoa>")              # part of a multi-charge gold
        examples += [example] * len(kinds)
        answers += kinds
    report = task.evaluate(examples, answers, "val")
    assert_kinds(report)
    assert {s.failure for s in report.per_example} == {"wrong", "format"}
    texts = feedback_texts(report)
    for example in examples:
        for name in example.target:
            leaks = [t for t in texts if name in t]
            assert not leaks, (name, leaks)
    # nor how many of an answer's charges were right (issue 20: that recovers every val gold set)
    assert not [t for t in texts if re.search(r"\bright\b|none of them|missed|extra", t)]
    assert any(s.details["gold"] for s in report.per_example)   # the gold is still kept, trusted-only


# ---- sql_qa -------------------------------------------------------------------------------

def _gold_rows(task, example):
    conn = sqlite3.connect(task._databases[example.inputs["db_id"]])
    try:
        return conn.execute(example.target["sql"]).fetchall()
    finally:
        conn.close()


def _distinctive(value) -> str | None:
    """A gold value whose appearance in a reason would be a leak, not a coincidence: text of
    3+ characters, or a number other than the small integers that counts are made of."""
    if isinstance(value, str):
        return value if len(value.strip()) >= 3 else None
    if isinstance(value, float) and not value.is_integer():
        return repr(value)
    if isinstance(value, (int, float)) and abs(value) >= 100:
        return str(int(value))
    return None


def test_sql_qa_reasons_quote_no_gold_result():
    task = load_task("sql_qa", {})
    val = task.load().val
    examples, answers, gold_values, gold_counts = [], [], [], []
    for example in val[:20]:
        rows = _gold_rows(task, example)
        gold = example.target["sql"]
        n = max(len(rows), 1)
        kinds = [
            f"SELECT name FROM customers ORDER BY customer_id DESC LIMIT {n}",   # same count, other values
            "SELECT name FROM products",                                       # other rows
            f"SELECT * FROM ({gold}) AS g LIMIT {max(len(rows) - 1, 0)}",      # too few rows
            f"SELECT *, 1 FROM ({gold}) AS g",                                 # an extra column
            f"SELECT * FROM ({gold}) AS g UNION ALL SELECT * FROM ({gold}) AS h",  # every row twice
            "SELECT nope FROM customers",                                      # invalid SQL
            None,                                                              # no SQL
        ]
        examples += [example] * len(kinds)
        answers += kinds
        gold_values += [[v for row in rows for v in map(_distinctive, row) if v] for _ in kinds]
        gold_counts += [len(rows)] * len(kinds)
    report = task.evaluate(examples, answers, "val")
    assert_kinds(report)
    assert {s.failure for s in report.per_example} == {"wrong", "format"}
    for scored, answer, values, count in zip(report.per_example, answers, gold_values, gold_counts):
        for value in values:
            assert value not in scored.reason, (value, scored.reason)
        if scored.details["outcome"] == "wrong_result" and scored.details["rows"] != count:
            # the gold result's size is not told either
            assert not re.search(rf"\b{count}\b", scored.reason.replace(f"{scored.details['rows']} row", "")), \
                (count, scored.reason)
        assert not re.search(r"expected\b(?! result)|fewer|more than|as expected", scored.reason), scored.reason
    assert all(example.target["sql"] not in t for example in examples for t in feedback_texts(report))
    # the evaluator's own wording (which may quote gold rows) is kept for the trusted-only file
    assert any("expected" in s.details["evaluator_reason"] for s in report.per_example)


@pytest.mark.parametrize("split", ["val", "test"])
def test_sql_qa_reasons_for_one_wrong_answer_do_not_depend_on_the_gold_row_count(split):
    """The same wrong answer gets the same reason whatever the gold's size: "fewer/more than
    expected" and "as expected" let a harness binary-search each gold row count (issue 20)."""
    task = load_task("sql_qa", {})
    examples = task.load()[split]
    by_count: dict[int, object] = {}
    for example in examples:
        by_count.setdefault(len(_gold_rows(task, example)), example)
    assert len(by_count) >= 3, sorted(by_count)          # golds of several sizes, above and below 3 rows
    answer = "SELECT name FROM products ORDER BY id LIMIT 3"
    picked = list(by_count.values())
    report = task.evaluate(picked, [answer] * len(picked), split)
    wrong = [s for s in report.per_example if s.failure == "wrong"]
    assert len({s.details["expected_rows"] for s in wrong}) >= 3
    assert len({s.reason for s in wrong}) == 1, {s.details["expected_rows"]: s.reason for s in wrong}
    assert wrong[0].reason == "wrong result (3 rows): not the expected result"


def test_sql_qa_train_reasons_may_compare_with_the_public_train_gold():
    task = load_task("sql_qa", {})
    example = next(e for e in task.load().train if len(_gold_rows(task, e)) > 1)
    answer = f"SELECT * FROM ({example.target['sql']}) AS g LIMIT 1"
    [scored] = task.evaluate([example], [answer], "train").per_example
    assert scored.reason == "wrong result: 1 row, fewer than expected"


# ---- scrna_denoise ------------------------------------------------------------------------

def test_scrna_denoise_reasons_hold_no_held_out_counts():
    task = load_task("scrna_denoise", {"name": "scrna_denoise", "primary_metric": "score", "data": {}})
    val = task.load().val[:2]
    train = [task._mcv.train[e.inputs["cells"]].toarray().astype(np.float64) for e in val]
    answers = []
    for t in train:
        answers += [np.zeros_like(t), t + 0.5, t[:, :-1], -t, np.where(t <= 1, 0.0, t), None]
    examples = [e for e in val for _ in range(6)]
    report = task.evaluate(examples, answers, "val")
    assert_kinds(report)
    assert {s.failure for s in report.per_example} == {"wrong", "format"}
    held_out = set()
    for e in val:
        target = e.target.toarray()
        held_out |= {str(int(target.sum()))} | {str(int(v)) for v in target.sum(axis=1) if v >= 100}
    # whole integers only (the digits of a score such as 0.106 are no count)
    numbers = {m for t in feedback_texts(report) for m in re.findall(r"(?<![\d.])\d+(?![\d.])", t)}
    assert not held_out & numbers, held_out & numbers

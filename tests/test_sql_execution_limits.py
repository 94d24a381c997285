"""SQL evaluator limits (issue 8 item 6) and reasons that never quote gold values."""
from __future__ import annotations

import importlib
import sqlite3
import time

import pytest

from sia.tasks import load_task

load_task("sql_qa", {})
supervised = importlib.import_module("sia_tasks.sql_qa.supervised")   # the evaluator's parent side

A = "replace(hex(zeroblob(49000)), '0', 'a')"          # 98 000 characters, under the 100 kB limit
B = "replace(hex(zeroblob(4000)), '0', 'b') || 'a'"     # the one trimmed character comes last
# Three ltrim calls of about 3 s each inside one expression: SQLite's progress handler
# only runs between VM instructions, never inside a function call, so it cannot stop this.
SLOW = f"SELECT length(ltrim({A}, {B})) + length(ltrim({A}, {B})) + length(ltrim({A}, {B}))"


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "shop.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE products (name TEXT, price REAL)")
    conn.executemany("INSERT INTO products VALUES (?, ?)",
                     [("Deluxe Desk Lamp", 89.5), ("Plain Chair", 20.0), ("Oak Table", 150.0)])
    conn.commit()
    conn.close()
    return str(path)


def test_a_query_stuck_in_one_function_call_is_killed_at_its_limit_and_timed_out(db):
    items = [{"db_path": db, "gold": "SELECT 1", "pred": SLOW},
             {"db_path": db, "gold": "SELECT 1", "pred": "SELECT 1"}]
    started = time.monotonic()
    slow, after = supervised.evaluate_in_child(items, 0.5, 100)
    elapsed = time.monotonic() - started
    assert (slow.outcome, slow.reason) == ("timeout", "query timed out after 0.5s")
    assert elapsed < 6, f"the evaluator ran {elapsed:.1f} s for a 0.5 s limit"
    assert after.outcome == "correct"   # a new evaluator process took the rest


def test_values_longer_than_100_kb_are_refused(db):
    [v] = supervised.evaluate_in_child([{"db_path": db, "gold": "SELECT 1",
                                         "pred": "SELECT length(hex(zeroblob(60000)))"}], 2.0, 100)
    assert v.outcome == "invalid_sql" and "string or blob too big" in v.reason


@pytest.mark.parametrize("pred, kind", [
    ("SELECT name FROM products WHERE price > 50", "row count differs"),
    ("SELECT name, price FROM products", "columns differ"),
    ("SELECT 'Other Lamp' FROM products", "values differ"),
])
def test_reasons_name_the_kind_of_mismatch_without_gold_values(db, pred, kind):
    gold = "SELECT name FROM products"
    [v] = supervised.evaluate_in_child([{"db_path": db, "gold": gold, "pred": pred}], 2.0, 100)
    assert v.outcome == "wrong_result" and kind in v.reason, v.reason
    for value in ("Deluxe", "Chair", "Oak", "3 rows", "expected 3"):
        assert value not in v.reason, v.reason


def test_order_mismatch_says_so_without_quoting_rows(db):
    gold = "SELECT name FROM products ORDER BY price"
    [v] = supervised.evaluate_in_child([{"db_path": db, "gold": gold,
                                         "pred": "SELECT name FROM products ORDER BY name"}], 2.0, 100)
    assert v.outcome == "wrong_result" and "wrong order" in v.reason
    assert "Lamp" not in v.reason and "Chair" not in v.reason


def test_too_many_rows_does_not_state_the_gold_row_count(db):
    [v] = supervised.evaluate_in_child([{"db_path": db, "gold": "SELECT name FROM products",
                                         "pred": "SELECT a.name FROM products a, products b"}], 2.0, 4)
    assert v.outcome == "too_many_rows" and v.reason == "wrong result: more than 4 rows"

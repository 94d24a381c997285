"""sql_qa: database generator, questions and splits, execution accuracy, evaluator safety,
Spider loader, public data, seed harness (in-process with a scripted fake ctx), edits."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sqlite3
import stat
from pathlib import Path

import pytest

from sia.harness.contract import Completion
from sia.harness.options import read_options
from sia.tasks import load_task

TASK_DIR = Path(__file__).resolve().parent.parent / "tasks" / "sql_qa"


def make_task(**cfg):
    return load_task("sql_qa", cfg)


@pytest.fixture(scope="module")
def task():
    return make_task()


@pytest.fixture(scope="module")
def splits(task):
    return task.load()


def module(name):
    """A task module (tasks are imported as the package ``sia_tasks``)."""
    make_task()
    return importlib.import_module(f"sia_tasks.sql_qa.{name}")


def fresh_harness(source: str | None = None):
    """The seed harness (or ``source``) as a new module, so OPTIONS changes do not leak."""
    path = TASK_DIR / "seed_harness.py"
    spec = importlib.util.spec_from_file_location(f"harness_{id(source)}_{fresh_harness.n}", path)
    fresh_harness.n += 1
    mod = importlib.util.module_from_spec(spec)
    if source is None:
        spec.loader.exec_module(mod)
    else:
        exec(compile(source, str(path), "exec"), mod.__dict__)
    return mod


fresh_harness.n = 0


class FakeLLM:
    """Replies with canned texts, cut at the first stop string like the engine does."""

    def __init__(self, replies):
        self.replies, self.calls, self.used = list(replies), [], []

    def chat(self, messages, max_tokens=None, temperature=0.0, top_p=1.0, stop=None, seed=None):
        self.calls.append({"messages": messages, "max_tokens": max_tokens, "stop": stop,
                           "temperature": temperature})
        text = self.replies.pop(0)
        for s in stop or []:
            text = text.split(s)[0]
        return Completion(text=text, prompt_tokens=10, completion_tokens=5, call=len(self.calls) - 1)

    def sample(self, messages, n, temperature=0.8, top_p=1.0, max_tokens=None, stop=None, seed=None):
        return [self.chat(messages, max_tokens, temperature, top_p, stop, seed) for _ in range(n)]

    def mark_used(self, completion):
        self.used.append(completion.call)


class FakeCtx:
    def __init__(self, replies, resources, files):
        self.llm = FakeLLM(replies)
        self.resources, self.files, self.events = resources, files, []
        self.example_id = "x"

    def log(self, kind, **data):
        self.events.append({"kind": kind, **data})


@pytest.fixture(scope="module")
def public(task, splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("public")
    resources = json.loads(json.dumps(task.public_resources(splits)))   # as the worker receives them
    files = {k: str(v) for k, v in task.public_files(splits, out).items()}
    return out, resources, files


# ---- database ----------------------------------------------------------------------------

def test_database_is_deterministic_consistent_and_has_nulls(tmp_path):
    database = module("database")
    a = database.build_database(tmp_path / "a.sqlite", seed=3)
    b = database.build_database(tmp_path / "b.sqlite", seed=3)
    c = database.build_database(tmp_path / "c.sqlite", seed=4)
    dump = lambda p: list(sqlite3.connect(p).iterdump())  # noqa: E731
    assert dump(a) == dump(b)
    assert dump(a) != dump(c)
    assert not stat.S_IMODE(a.stat().st_mode) & 0o222          # read-only file
    conn = sqlite3.connect(a)
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    # every reference resolves, including the nullable ones
    assert conn.execute("SELECT COUNT(*) FROM orders o LEFT JOIN customers c ON c.id = o.customer_id "
                        "WHERE c.id IS NULL").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM customers c LEFT JOIN employees e ON e.id = c.support_rep_id "
                        "WHERE c.support_rep_id IS NOT NULL AND e.id IS NULL").fetchone()[0] == 0
    for table, column in [("customers", "email"), ("customers", "phone"), ("customers", "support_rep_id"),
                          ("employees", "manager_id"), ("orders", "shipped_date"), ("orders", "employee_id"),
                          ("products", "supplier"), ("departments", "budget")]:
        nulls = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} IS NULL").fetchone()[0]
        assert nulls > 0, f"{table}.{column} has no NULLs"
    # pending/cancelled orders are the unshipped ones
    assert conn.execute("SELECT COUNT(*) FROM orders WHERE (shipped_date IS NULL) != "
                        "(status IN ('pending', 'cancelled'))").fetchone()[0] == 0
    # heavy tail: the busiest customer ordered far more than the median one
    counts = sorted(r[0] for r in conn.execute("SELECT COUNT(*) FROM orders GROUP BY customer_id"))
    assert counts[-1] >= 4 * counts[len(counts) // 2]


# ---- questions and splits ------------------------------------------------------------------

def test_every_gold_query_runs_and_answers(splits):
    execution = module("execution")
    examples = splits.train + splits.val + splits.test
    assert 150 <= len(examples) <= 300
    task = make_task()
    task.load()
    db_path = str(task._databases["shop"])
    conn = sqlite3.connect(db_path)
    empty = [e.id for e in examples if not conn.execute(e.target["sql"]).fetchall()]
    assert len(empty) <= len(examples) // 20
    verdicts = execution.evaluate_batch(
        [{"db_path": db_path, "gold": e.target["sql"], "pred": e.target["sql"]} for e in examples], 2.0, 10000)
    assert all(v.outcome == "correct" for v in verdicts)
    for part in (splits.train, splits.val, splits.test):
        assert {e.target["level"] for e in part} == {1, 2, 3, 4, 5}
    # the loop evaluates a prefix of val: the first 15 already span every level
    assert {e.target["level"] for e in splits.val[:15]} == {1, 2, 3, 4, 5}


def test_splits_are_disjoint_by_template_instance_and_deterministic():
    a = make_task(data={"paraphrases": 2}).load()
    b = make_task(data={"paraphrases": 2}).load()
    assert [e.id for e in a.val] == [e.id for e in b.val]
    instances = {name: {e.target["instance"] for e in a[name]} for name in ("train", "val", "test")}
    assert not instances["train"] & instances["val"]
    assert not instances["train"] & instances["test"]
    assert not instances["val"] & instances["test"]
    for name in ("train", "val", "test"):   # both paraphrases of an instance sit in the same split
        per_instance = {}
        for e in a[name]:
            per_instance.setdefault(e.target["instance"], []).append(e.inputs["question"])
        assert all(len(qs) == 2 for qs in per_instance.values())
    other_seed = make_task(data={"seed": 1}).load()
    assert [e.target["sql"] for e in other_seed.val] != [e.target["sql"] for e in make_task().load().val]


def test_split_by_template_holds_out_whole_templates():
    task = make_task(data={"split_by": "template"})
    assert task.config_problems() == [] and "held-out templates" in task.data_label
    splits = task.load()
    templates = {name: {e.target["template"] for e in splits[name]} for name in ("train", "val", "test")}
    assert not templates["train"] & templates["val"] and not templates["train"] & templates["test"]
    assert not templates["val"] & templates["test"]
    for name in ("train", "val", "test"):
        assert {e.target["level"] for e in splits[name]} == {1, 2, 3, 4, 5}
    assert "task.data.split_by='db'" in "\n".join(make_task(data={"split_by": "db"}).config_problems())


# ---- metric ----------------------------------------------------------------------------------

@pytest.mark.parametrize("gold, pred, ordered, equal", [
    ([(1,), (2,)], [(2,), (1,)], False, True),          # a set: order free
    ([(1,), (2,)], [(2,), (1,)], True, False),          # gold orders: order matters
    ([(1,), (2,)], [(1,), (2,)], True, True),
    ([(1,), (1,), (2,)], [(1,), (2,), (2,)], False, False),   # duplicates count
    ([(1,), (1,)], [(1,)], False, False),
    ([(0.1 + 0.2,)], [(0.3,)], False, True),            # floats rounded to 6 decimals
    ([(3.0,)], [(3,)], False, True),                    # AVG's 3.0 equals COUNT's 3
    ([(1 / 3,)], [(0.33,)], False, False),
    ([(None, "a")], [(None, "a")], False, True),        # NULL equals NULL
    ([(None,)], [(0,)], False, False),
    ([(None,)], [("",)], False, False),
    ([("Berlin",)], [("berlin",)], False, False),       # text is case-sensitive
    ([(1, "a"), (2, "b")], [("a", 1), ("b", 2)], False, True),    # columns in another order
    ([(1, "a"), (2, "b")], [("b", 1), ("a", 2)], False, False),   # ... but rows must pair up
    ([(1, "a")], [(1,)], False, False),                 # a column short
    ([], [], True, True),
    ([(1,)], [], False, False),
])
def test_compare_results_hand_computed(gold, pred, ordered, equal):
    execution = module("execution")
    assert execution.compare_results(gold, pred, ordered)[0] is equal


def test_compare_reasons_say_what_differs():
    compare = module("execution").compare_results
    assert compare([(1,), (2,)], [(1,)], False)[1] == \
        "wrong result: the row count differs from the expected result (1 row returned)"   # no gold value or count
    assert "wrong order" in compare([(1,), (2,)], [(2,), (1,)], True)[1]
    assert "columns" in compare([(1, 2)], [(1,)], False)[1]


@pytest.mark.parametrize("sql, ordered", [
    ("SELECT a FROM t ORDER BY a", True),
    ("select a from t order   by a desc limit 3", True),
    ("SELECT a FROM (SELECT a FROM t ORDER BY a)", False),
    ("SELECT a FROM t WHERE a IN (SELECT b FROM u ORDER BY b LIMIT 2)", False),
    ("SELECT 'order by' FROM t", False),
    ("SELECT rank() OVER (ORDER BY x) FROM t", False),
    ("SELECT a FROM t -- order by a", False),
    ("SELECT \"order by\" FROM t ORDER BY 1", True),
])
def test_top_level_order_by(sql, ordered):
    assert module("execution").has_top_level_order_by(sql) is ordered


def test_metrics_against_hand_computed_values(task, splits):
    by_level = {}
    for e in splits.val:
        by_level.setdefault(e.target["level"], e)
    l1, l2, l3, l4 = (by_level[k] for k in (1, 2, 3, 4))
    answers = [l1.target["sql"], "```sql\n" + l2.target["sql"] + ";\n```", "SELECT nope FROM customers", None]
    report = task.evaluate([l1, l2, l3, l4], answers, "val")
    assert report.metrics["execution_accuracy"] == 0.5
    assert report.metrics["invalid_sql_rate"] == 0.25
    assert report.metrics["no_sql_rate"] == 0.25
    assert report.metrics["wrong_result_rate"] == 0.0
    assert report.metrics["level_1_accuracy"] == 1.0 and report.metrics["level_3_accuracy"] == 0.0
    assert [p.score for p in report.per_example] == [1.0, 1.0, 0.0, 0.0]
    assert report.per_example[2].reason == "invalid SQL: no such column: nope"
    assert report.per_example[3].reason == "no SQL in the answer"
    assert report.primary(task.scoring) == 0.5


def test_order_sensitive_only_when_gold_orders(task, splits):
    conn = sqlite3.connect(task._databases["shop"])
    rows = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
    # an ordered question whose rows, sorted by name instead of price, come in another order
    ordered = next(e for e in splits.val + splits.test if e.target["template"] == "most_expensive_in_category"
                   and rows(e.target["sql"]) != sorted(rows(e.target["sql"])))
    by_name = f"SELECT name FROM ({ordered.target['sql']}) AS t ORDER BY name"
    unordered = next(e for e in splits.val if e.target["template"] == "customers_in_city")
    report = task.evaluate([ordered, unordered, ordered],
                           [by_name, unordered.target["sql"] + " ORDER BY name DESC", ordered.target["sql"]], "val")
    assert report.per_example[0].score == 0.0 and report.per_example[0].details["ordered"]
    # val reasons do not say "the right rows" (that tells the gold result); train reasons may
    assert "wrong order" not in report.per_example[0].reason
    assert "wrong order" not in task.evaluate([ordered], [by_name], "train").per_example[0].reason   # not train
    public = next(e for e in splits.train if e.target["template"] == "most_expensive_in_category"
                  and rows(e.target["sql"]) != sorted(rows(e.target["sql"])))
    by_name = f"SELECT name FROM ({public.target['sql']}) AS t ORDER BY name"
    assert "wrong order" in task.evaluate([public], [by_name], "train").per_example[0].reason
    assert report.per_example[1].score == 1.0               # gold has no ORDER BY: any order
    assert report.per_example[2].score == 1.0
    assert report.per_example[0].details["ordered"] and not report.per_example[1].details["ordered"]


# ---- evaluator safety ------------------------------------------------------------------------

def test_unsafe_or_broken_queries_are_rejected_with_reasons(tmp_path):
    task = make_task(query_timeout_s=0.5)
    splits = task.load()
    db = task._databases["shop"]
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    victim = tmp_path / "victim.sqlite"
    attacks = {
        "SELEC name FROM customers": ("invalid_sql", 'invalid SQL: near "SELEC": syntax error'),
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c":
            ("timeout", "query timed out after 0.5s"),
        f"ATTACH DATABASE '{victim}' AS v": ("invalid_sql", "not allowed: ATTACH"),
        "DELETE FROM orders": ("invalid_sql", "not allowed: DELETE"),
        "UPDATE products SET price = 0": ("invalid_sql", "not allowed: UPDATE"),
        "PRAGMA query_only = 0": ("invalid_sql", "not allowed: PRAGMA"),
        "SELECT load_extension('/tmp/evil')": ("invalid_sql", "not allowed: function load_extension()"),
        "SELECT 1; DROP TABLE orders": ("invalid_sql", "invalid SQL: You can only execute one statement"),
        "SELECT * FROM order_items a, order_items b": ("too_many_rows", "wrong result: more than 10000 rows"),
        "SELECT zeroblob(100000000)": ("invalid_sql", "invalid SQL: string or blob too big"),
        "": ("no_sql", "no SQL in the answer"),
    }
    examples = splits.val[: len(attacks)]
    report = task.evaluate(examples, list(attacks), "val")
    for (sql, (outcome, reason)), scored in zip(attacks.items(), report.per_example):
        assert scored.score == 0.0
        assert scored.details["outcome"] == outcome, sql
        assert reason in scored.reason, (sql, scored.reason)
    assert not victim.exists()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_a_crashing_evaluator_child_fails_only_that_item(tmp_path):
    supervised = module("supervised")
    # A stand-in interpreter that judges one item and then dies, as a child killed by a
    # query would: the item it died on gets the reason, a new child takes the rest.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\ncat > /dev/null\n"
                    "echo '{\"score\": 1.0, \"outcome\": \"correct\", \"reason\": \"\", \"details\": {}}'\n"
                    "echo 'Segmentation fault' >&2\nexit 139\n")
    fake.chmod(0o755)
    items = [{"db_path": "x.sqlite", "gold": "SELECT 1", "pred": "SELECT 1"}] * 3
    verdicts = supervised.evaluate_in_child(items, 1.0, 100, python=str(fake))
    assert [v.outcome for v in verdicts] == ["correct", "crashed", "correct"]
    assert verdicts[1].reason == "the query crashed the evaluator process: Segmentation fault"


# ---- public data ----------------------------------------------------------------------------

def test_public_resources_and_files_hold_no_held_out_gold(task, splits, public):
    out, resources, files = public
    assert resources["dialect"] == "sqlite"
    assert set(files) == {"shop"} and set(resources["schemas"]) == {"shop"}
    assert len(resources["train"]) == len(splits.train)
    text = json.dumps(resources)
    blobs = [p.read_bytes() for p in Path(out).rglob("*") if p.is_file()]
    held_out = [e.target["sql"] for e in splits.val + splits.test]
    train_sql = {e.target["sql"] for e in splits.train}
    for sql in held_out:
        if sql in train_sql:      # the same query may also be a train question's: that is public
            continue
        assert json.dumps(sql) not in text     # quoted: a whole query, not a prefix of a train one
        assert all(sql.encode() not in blob for blob in blobs)
    # the public database holds only the data tables, no questions or answers
    conn = sqlite3.connect(files["shop"])
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"departments", "employees", "customers", "products", "orders", "order_items"}
    assert not stat.S_IMODE(Path(files["shop"]).stat().st_mode) & 0o222
    held_questions = {e.inputs["question"] for e in splits.val + splits.test}
    assert not held_questions & {t["question"] for t in resources["train"]}


# ---- Spider ----------------------------------------------------------------------------------

def _spider_db(path: Path, rows: list[tuple]):
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INT);"
                       "CREATE TABLE concert (concert_id INTEGER PRIMARY KEY, singer_id INT "
                       "REFERENCES singer(singer_id), year TEXT);")
    conn.executemany("INSERT INTO singer VALUES (?, ?, ?, ?)", rows)
    conn.execute("INSERT INTO concert VALUES (1, 1, '2014')")
    conn.commit()
    conn.close()


@pytest.fixture
def spider_dir(tmp_path):
    root = tmp_path / "spider"
    singers = [(1, "Joe", "France", 52), (2, "Timbaland", "United States", 32), (3, "Ann", "France", 41)]
    for db_id in ("concert_a", "concert_b", "concert_c", "school"):
        _spider_db(root / "database" / db_id / f"{db_id}.sqlite", singers)
    questions = lambda db, n: [  # noqa: E731
        {"db_id": db, "question": f"How many singers are there? ({db} {i})",
         "query": "SELECT count(*) FROM singer"} for i in range(n)]
    dev = questions("concert_a", 4) + questions("concert_b", 3) + questions("concert_c", 3)
    dev.append({"db_id": "concert_b", "question": "Broken gold?", "query": "SELECT nothing FROM nowhere"})
    dev.append({"db_id": "gone", "question": "No database file?", "query": "SELECT 1"})
    (root / "dev.json").write_text(json.dumps(dev))
    (root / "train_spider.json").write_text(json.dumps(
        questions("school", 5) + [{"db_id": "school", "question": "Names of French singers, by age.",
                                   "query": "SELECT name FROM singer WHERE country = 'France' ORDER BY age"}]))
    return root


def test_spider_loader_splits_by_database_and_exposes_each_db(spider_dir, tmp_path):
    task = make_task(data={"source": "spider", "path": str(spider_dir)})
    assert task.config_problems() == []
    splits = task.load()
    assert len(splits.train) == 6 and {e.inputs["db_id"] for e in splits.train} == {"school"}
    val_dbs = {e.inputs["db_id"] for e in splits.val}
    test_dbs = {e.inputs["db_id"] for e in splits.test}
    assert val_dbs and test_dbs and not val_dbs & test_dbs
    assert val_dbs | test_dbs <= {"concert_a", "concert_b", "concert_c"}
    assert task.dropped == {"database file not found": 1, "gold query fails in SQLite": 1}
    assert all(e.inputs["question"] != "Broken gold?" for e in splits.val + splits.test)
    files = task.public_files(splits, tmp_path / "public")
    assert set(files) == val_dbs | test_dbs | {"school"}
    assert all(Path(p).name == f"{db}.sqlite" for db, p in files.items())
    resources = task.public_resources(splits)
    assert set(resources["schemas"]) == set(files)
    assert resources["schemas"]["school"]["tables"][1]["foreign_keys"] == [
        {"column": "singer_id", "ref_table": "singer", "ref_column": "singer_id"}]
    held = splits.val + splits.test
    report = task.evaluate(held, [e.target["sql"] for e in held], "test")
    assert report.metrics["execution_accuracy"] == 1.0
    assert "level_1_accuracy" not in report.metrics


def test_spider_without_train_file_shares_dev_databases(spider_dir):
    (spider_dir / "train_spider.json").unlink()
    splits = make_task(data={"source": "spider", "path": str(spider_dir), "val_fraction": 0.3,
                             "test_fraction": 0.3}).load()
    dbs = [{e.inputs["db_id"] for e in part} for part in (splits.train, splits.val, splits.test)]
    assert all(dbs) and not (dbs[0] & dbs[1] or dbs[0] & dbs[2] or dbs[1] & dbs[2])


def test_config_problems_name_key_value_and_fix(tmp_path):
    assert make_task().config_problems() == []
    missing = make_task(data={"source": "spider", "path": None}).config_problems()
    assert len(missing) == 1 and missing[0].startswith("task.data.path=None") and "set task.data.path" in missing[0]
    (tmp_path / "dev.json").write_text("[]")
    no_db = make_task(data={"source": "spider", "path": str(tmp_path)}).config_problems()
    assert len(no_db) == 1 and "no database/ folder" in no_db[0]
    bad = make_task(data={"source": "csv", "val_fraction": 0.6, "test_fraction": 0.5},
                    query_timeout_s=0, primary_metric="f1").config_problems()
    joined = "\n".join(bad)
    for key in ("task.data.source='csv'", "task.data.val_fraction + task.data.test_fraction",
                "task.query_timeout_s=0", "task.primary_metric='f1'"):
        assert key in joined


# ---- seed harness -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, sql", [
    ("```sql\nSELECT name FROM customers WHERE city = 'Lyon';\n```", "SELECT name FROM customers WHERE city = 'Lyon'"),
    ("```sql\nSELECT name FROM customers", "SELECT name FROM customers"),           # cut at the stop string
    ("```sqlite\nSELECT 1\n```", "SELECT 1"),
    ("Here you go:\nSELECT name FROM t WHERE a = 'x;y';\nThis selects...", "SELECT name FROM t WHERE a = 'x;y'"),
    ("SELECT a FROM t\n\nThe query above lists a.", "SELECT a FROM t"),
    ("I do not know.", ""),
    ("with more than 11 employees are the ones in Sales.", ""),     # English "with" is no query
    ("WITH t AS (SELECT 1 AS a) SELECT a FROM t", "WITH t AS (SELECT 1 AS a) SELECT a FROM t"),
])
def test_extract_sql(text, sql):
    assert fresh_harness().extract_sql(text) == sql


def test_seed_harness_prompts_with_compact_schema_and_answers(task, splits, public):
    _, resources, files = public
    harness = fresh_harness()
    example = next(e for e in splits.val if e.target["level"] == 1)
    ctx = FakeCtx(["```sql\n" + example.target["sql"] + ";\n```"], resources, files)
    answer = harness.solve(example.inputs, ctx)
    assert answer == example.target["sql"]
    call = ctx.llm.calls[0]
    assert call["max_tokens"] == 96 and call["stop"] == [";"]
    system = call["messages"][0]["content"]
    assert "customers(id, name, email, phone, city, country, signup_date, support_rep_id -> employees.id)" in system
    assert "CREATE TABLE" not in system and "e.g." not in system
    assert call["messages"][-1]["content"] == "Question: " + example.inputs["question"]
    assert len(call["messages"]) == 2 and ctx.events == []      # no tool use in the plain seed
    assert task.evaluate([example], [answer], "val").metrics["execution_accuracy"] == 1.0


def test_retry_path_feeds_the_sqlite_error_back(task, splits, public):
    _, resources, files = public
    harness = fresh_harness()
    harness.OPTIONS.update(retry_on_error=True, max_retries=2)
    example = next(e for e in splits.val if e.target["template"] == "customers_in_city")
    ctx = FakeCtx(["```sql\nSELECT nme FROM customers", "```sql\n" + example.target["sql"] + "\n```"],
                  resources, files)
    answer = harness.solve(example.inputs, ctx)
    assert answer == example.target["sql"]
    kinds = [e["kind"] for e in ctx.events]
    assert kinds == ["tool_call", "retry", "tool_call"]      # failed run, retry, check of the new query
    assert ctx.events[0]["name"] == "run_sql" and ctx.events[0]["args"] == {"sql": "SELECT nme FROM customers"}
    assert "no such column: nme" in ctx.events[0]["result"]["error"]
    second = ctx.llm.calls[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": "```sql\nSELECT nme FROM customers;\n```"}
    assert second[-1]["content"].startswith("SQLite error: no such column: nme")
    assert ctx.events[2]["result"]["rows"]                     # the fixed query returned rows


def test_retry_is_off_in_the_seed_and_gives_up_after_max_retries(splits, public):
    _, resources, files = public
    example = splits.val[0]
    seed = fresh_harness()
    ctx = FakeCtx(["SELECT nme FROM customers"], resources, files)
    assert seed.solve(example.inputs, ctx) == "SELECT nme FROM customers" and len(ctx.llm.calls) == 1
    stubborn = fresh_harness()
    stubborn.OPTIONS.update(retry_on_error=True, max_retries=2)
    ctx = FakeCtx(["SELECT nme FROM customers"] * 3, resources, files)
    assert stubborn.solve(example.inputs, ctx) == "SELECT nme FROM customers"
    assert len(ctx.llm.calls) == 3 and [e["kind"] for e in ctx.events].count("retry") == 2


def test_execute_check_asks_again_on_an_empty_result(splits, public):
    _, resources, files = public
    harness = fresh_harness()
    harness.OPTIONS.update(execute_check=True)
    example = next(e for e in splits.val if e.target["template"] == "customers_in_city")
    ctx = FakeCtx(["SELECT name FROM customers WHERE city = 'lyon'", example.target["sql"]], resources, files)
    assert harness.solve(example.inputs, ctx) == example.target["sql"]
    assert ctx.llm.calls[1]["messages"][-1]["content"].startswith("The query returned no rows")


def test_few_shot_retrieves_train_questions_by_word_overlap(splits, public):
    _, resources, files = public
    harness = fresh_harness()
    harness.OPTIONS.update(few_shot=2, sample_values=True)
    example = next(e for e in splits.val if e.target["template"] == "customers_in_city")
    messages = harness.build_messages(example.inputs, FakeCtx([], resources, files))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    shot_sql = messages[2]["content"]
    assert shot_sql.startswith("```sql\nSELECT name FROM customers WHERE city = ")  # the same template
    assert "e.g. 'delivered'" in messages[0]["content"]                             # sample values shown
    shots = harness.few_shot_examples(splits.train[0].inputs["question"], "shop", resources["train"], 3)
    assert splits.train[0].inputs["question"] not in [s["question"] for s in shots]  # never its own answer


def test_value_hints_name_the_column_of_each_value_the_question_names(splits, public):
    _, resources, files = public
    harness = fresh_harness()
    schema = resources["schemas"]["shop"]
    example = next(e for e in splits.val if e.target["template"] == "customers_in_city")
    city = example.target["sql"].split("'")[1]
    assert harness.mentioned_values(example.inputs["question"], schema, files["shop"]) == [(city, "customers", "city")]
    asked = "Which orders did Zoe Petrov place, and how many are 'pending'?"
    assert harness.mentioned_values(asked, schema, files["shop"]) == [
        ("Zoe Petrov", "customers", "name"), ("pending", "orders", "status")]
    assert harness.mentioned_values("How many departments are there?", schema, files["shop"]) == []
    harness.OPTIONS.update(value_hints=True, few_shot=1)
    messages = harness.build_messages(example.inputs, FakeCtx([], resources, files))
    assert messages[-1]["content"] == (f"Question: {example.inputs['question']}\n"
                                       f"Values: {city!r} is a value of customers.city")
    assert messages[1]["content"].startswith("Question: ") and "\nValues: " in messages[1]["content"]  # the shot too


def test_vote_answers_the_result_most_candidates_share_and_credits_its_call(splits, public):
    _, resources, files = public
    harness = fresh_harness()
    harness.OPTIONS.update(vote_samples=4)
    example = next(e for e in splits.val if e.target["template"] == "customers_in_city")
    gold, city = example.target["sql"], example.target["sql"].split("'")[1]
    reordered = f"SELECT c.name FROM customers AS c WHERE c.city = '{city}' ORDER BY c.name DESC"
    ctx = FakeCtx(["SELECT nme FROM customers",                        # greedy: rejected, no vote
                   "SELECT name FROM customers",                       # runs, alone
                   reordered, "", gold], resources, files)             # the same rows twice; no SQL
    assert harness.solve(example.inputs, ctx) == reordered
    assert ctx.llm.used == [2]                                         # the call that gave the answer
    assert [c["temperature"] for c in ctx.llm.calls] == [0.0] + [0.7] * 4
    vote = next(e for e in ctx.events if e["kind"] == "vote")
    assert vote["groups"] == [[2, 4], [1]]
    # no candidate runs: the greedy query stands, nothing is credited
    ctx = FakeCtx(["SELECT nme FROM customers"] + ["SELEC 1"] * 4, resources, files)
    assert harness.solve(example.inputs, ctx) == "SELECT nme FROM customers" and ctx.llm.used == []


def test_retry_names_the_columns_of_the_tables_a_rejected_query_uses(splits, public):
    _, resources, files = public
    harness = fresh_harness()
    harness.OPTIONS.update(retry_on_error=True, max_retries=1)
    example = next(e for e in splits.val if e.target["template"] == "customers_in_city")
    ctx = FakeCtx(["SELECT email_address FROM customers", example.target["sql"]], resources, files)
    assert harness.solve(example.inputs, ctx) == example.target["sql"]
    feedback = ctx.llm.calls[1]["messages"][-1]["content"]
    assert feedback.startswith("SQLite error: no such column: email_address. customers has columns id, name, "
                               "email, phone, city, country, signup_date, support_rep_id.")
    assert "orders has columns" not in feedback


def test_sft_pair_renders_the_inference_prompt_and_gold(splits, public):
    _, resources, files = public
    harness = fresh_harness()
    example = splits.train[0]
    ctx = FakeCtx([], resources, files)
    pair = harness.sft_pair(example.inputs, example.target, ctx)
    assert pair["messages"] == harness.build_messages(example.inputs, ctx)
    assert pair["completion"] == "```sql\n" + example.target["sql"] + ";\n```"
    assert harness.extract_sql(pair["completion"].split(";")[0]) == example.target["sql"]


def test_run_sql_is_read_only_and_time_limited(public):
    _, _, files = public
    harness = fresh_harness()
    assert "readonly" in harness.run_sql("DELETE FROM orders", files["shop"])["error"]
    slow = harness.run_sql("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                           "SELECT COUNT(*) FROM c", files["shop"], timeout_s=0.2)
    assert slow == {"error": "timed out after 0.2s"}
    ok = harness.run_sql("SELECT COUNT(*) FROM departments", files["shop"])
    assert ok == {"columns": ["COUNT(*)"], "rows": [[6]], "truncated": False}


# ---- harness edits ------------------------------------------------------------------------------

def test_harness_edits_compile_and_change_options(task):
    seed = task.seed_harness()
    before = read_options(seed)
    edits = task.harness_edits()
    assert {e.addresses for e in edits} <= {"format", "errors", "accuracy", "variance"}
    assert len({e.name for e in edits}) == len(edits)
    for edit in edits:
        new = edit.apply(seed)
        assert new is not None, edit.name
        compile(new, "harness.py", "exec")
        after = read_options(new)
        assert after != before and set(after) == set(before)
        assert edit.apply(new) is None                       # applying twice changes nothing
        assert "def solve" in new and new.count("OPTIONS = {") == 1
        fresh_harness(new)                                   # the edited file imports
    stacked = seed
    for edit in edits:
        stacked = edit.apply(stacked) or stacked
    assert read_options(stacked) == {**before, "few_shot": 3, "retry_on_error": True, "max_retries": 2,
                                     "sample_values": True, "execute_check": True, "copy_adapt": "prefer",
                                     "value_hints": True, "vote_samples": 4}
    assert task.scoring.primary_metric == "execution_accuracy" and task.scoring.reward_shape == "binary"


# ---- in the real sandbox --------------------------------------------------------------------

def _sandbox_ok() -> bool:
    from sia.harness.sandbox import probe

    layers = probe()
    return bool(layers.get("landlock") and layers.get("netns"))


class ScriptedEngine:
    """Answers a misspelt column first and the right query once it sees the SQLite error."""

    max_batch_size = 8

    def generate(self, requests, adapter=None):
        from sia.engine.base import GenResult

        out = []
        for r in requests:
            fixed = r.messages[-1]["content"].startswith("SQLite error")
            text = "```sql\nSELECT COUNT(*) FROM departments" if fixed else "```sql\nSELECT cnt FROM departments"
            out.append(GenResult(text=text, prompt_tokens=50, completion_tokens=9, token_logprobs=[-0.1] * 9,
                                 finish_reason="stop"))
        return out


PRYING_HARNESS = '''
import os, sqlite3, sys

def _try(fn):
    try:
        return "read: " + repr(fn())[:40]
    except Exception as e:
        return "denied: " + type(e).__name__

def solve(inputs, ctx):
    db = ctx.files["shop"]
    return {
        "generator": _try(lambda: open(inputs["generator"]).read()),
        "evaluator_db": _try(lambda: open(inputs["evaluator_db"], "rb").read(16)),
        "evaluator_dir": _try(lambda: os.listdir(inputs["evaluator_dir"])),
        "public_db_write": _try(lambda: open(db, "ab").write(b"x")),
        "public_db_sql_write": _try(lambda: sqlite3.connect(db).execute("DELETE FROM orders")),
        "loop_memory": _try(lambda: open("/proc/%d/mem" % os.getppid(), "rb").read(1)),
    }
'''


@pytest.mark.skipif(not _sandbox_ok(), reason="this machine cannot apply the harness sandbox")
def test_sandboxed_harness_uses_run_sql_but_cannot_reach_gold(task, splits, public, tmp_path):
    from sia.harness.contract import Job
    from sia.harness.options import with_options
    from sia.harness.pool import HarnessPool

    _, resources, files = public
    retrying = tmp_path / "harness.py"
    retrying.write_text(with_options(task.seed_harness(), retry_on_error=True, max_retries=2))
    prying = tmp_path / "prying.py"
    prying.write_text(PRYING_HARNESS)
    evaluator_db = task._databases["shop"]
    inputs = {**splits.val[0].inputs, "generator": str(TASK_DIR / "questions.py"),
              "evaluator_db": str(evaluator_db), "evaluator_dir": str(evaluator_db.parent)}
    with HarnessPool(ScriptedEngine(), workers=1, example_timeout_s=30) as pool:
        solved = pool.run(str(retrying), [Job(id="a", inputs=splits.val[0].inputs)], resources, files,
                          progress=False)[0]
        pried = pool.run(str(prying), [Job(id="b", inputs=inputs)], resources, files, progress=False)[0]
    assert solved.error is None and solved.answer == "SELECT COUNT(*) FROM departments"
    tool_calls = [e for e in solved.events if e["type"] == "tool_call"]
    assert "no such column: cnt" in tool_calls[0]["result"]["error"]
    assert tool_calls[1]["result"]["rows"] == [[6]]          # sqlite works inside the sandbox
    assert pried.error is None, pried.error
    assert all(v.startswith("denied") for v in pried.answer.values()), pried.answer
    assert Path(files["shop"]).stat().st_size == evaluator_db.stat().st_size


def test_retry_re_asks_when_no_sql_came_back(splits, public):
    _, resources, files = public
    harness = fresh_harness()
    harness.OPTIONS.update(retry_on_error=True)
    ctx = FakeCtx(["I think you should look at the customers.", "SELECT COUNT(*) FROM customers"], resources, files)
    assert harness.solve(splits.val[0].inputs, ctx) == "SELECT COUNT(*) FROM customers"
    assert ctx.llm.calls[1]["messages"][-2:] == [
        {"role": "assistant", "content": "(no query)"},
        {"role": "user", "content": "No SQL query found. Answer with one SQL query in a ```sql block."}]

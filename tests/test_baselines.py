"""Every task's baselines on tiny fixtures against hand-computed values, and the harness
options that let the loop use the same mechanisms (retrieval vote, copy-and-adapt)."""
from __future__ import annotations

import importlib
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from sia.harness.contract import Completion
from sia.tasks import TASKS_DIR, Example, Splits, load_task
from tests.support.harnesses import seed_harness

REPO = Path(__file__).resolve().parent.parent


def module(task: str, name: str):
    load_task(task, {"name": task})   # imports the task package as sia_tasks.<task>
    return importlib.import_module(f"sia_tasks.{task}.{name}")


def harness(task: str, tmp_path: Path, **options):
    return seed_harness(task, tmp_path, **options)


class FakeLLM:
    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    def chat(self, messages, **kwargs):
        self.calls.append(messages)
        text = self.replies.pop(0)   # IndexError: the harness asked the model when it should not
        for stop in kwargs.get("stop") or []:
            text = text.split(stop)[0]
        return Completion(text=text, prompt_tokens=1, completion_tokens=1)


class FakeCtx:
    def __init__(self, replies, resources, files=None):
        self.llm, self.resources, self.files, self.events = FakeLLM(replies), resources, files or {}, []
        self.example_id = "x"

    def log(self, kind, **data):
        self.events.append((kind, data))


# ---- legal_charge -----------------------------------------------------------------------------
def ex(i, fact, charges=None):
    return Example(id=f"e{i}", inputs={"fact": "事实:" + fact, "instruction": ""}, target=charges)


LC_TRAIN = [
    ex(0, "被告人甲某秘密窃取他人手机一部", ["盗窃"]),
    ex(1, "被告人乙某秘密窃取他人电脑一台", ["盗窃"]),
    ex(2, "被告人丙某持刀抢劫路人现金", ["抢劫"]),
    ex(3, "被告人丁某虚构事实骗取钱财", ["诈骗"]),
    ex(4, "被告人戊某持刀抢劫出租车司机", ["抢劫", "故意伤害"]),
]
LC_SPLITS = Splits(train=LC_TRAIN, val=[], test=[])


def test_legal_charge_majority_and_nearest_neighbours():
    b = module("legal_charge", "baselines")
    queries = [ex(10, "被告人某某秘密窃取他人手机"), ex(11, "被告人某某持刀抢劫出租车司机")]
    # 盗窃 and 抢劫 are gold twice each; the first counted wins the tie
    assert b.majority(LC_SPLITS, queries) == [["盗窃"], ["盗窃"]]
    assert b.tfidf_1nn(LC_SPLITS, queries) == [["盗窃"], ["抢劫", "故意伤害"]]
    # k=3: the two theft cases outvote the third; the two robbery cases carry 抢劫
    knn = b.tfidf_knn(LC_SPLITS, queries, k=3)
    assert knn[0] == ["盗窃"] and knn[1][0] == "抢劫"


def test_legal_charge_vote_by_hand():
    vote = module("legal_charge", "baselines").vote
    assert vote([(0.6, ["a"]), (0.3, ["b"]), (0.1, ["b", "c"])]) == ["a"]       # a 0.6, b 0.4
    assert vote([(0.4, ["a"]), (0.35, ["b"]), (0.25, ["b"])]) == ["b"]         # b 0.6
    assert vote([(0.3, ["a"]), (0.3, ["b"]), (0.4, ["c"])]) == ["c"]           # none half: the top
    assert vote([(0.5, ["a", "b"]), (0.5, ["b"])]) == ["b", "a"]               # b 1.0, a 0.5


def test_legal_charge_linear_and_the_tasks_own_f1():
    b = module("legal_charge", "baselines")
    metrics = module("legal_charge", "metrics")
    answer = b.tfidf_linear(LC_SPLITS, [ex(10, "窃取手机窃取电脑")])[0]
    assert answer[0] == "盗窃" and "诈骗" not in answer
    labels = ["盗窃", "抢劫", "诈骗", "故意伤害"]
    # the 1-NN answer for the robbery query against gold {抢劫}: P 1/2, R 1 -> F1 2/3
    score = metrics.score_answer(["抢劫", "故意伤害"], ["抢劫"], labels)
    assert score.f1 == pytest.approx(2 / 3) and not score.exact


def test_legal_charge_baselines_need_train():
    b = module("legal_charge", "baselines")
    with pytest.raises(ValueError, match="train split is empty"):
        b.majority(Splits([], [], []), [ex(1, "x")])


def test_legal_charge_harness_retrieval_vote(tmp_path):
    resources = {"labels": ["盗窃", "抢劫", "诈骗", "故意伤害"], "instruction": "",
                 "train": [{"fact": e.inputs["fact"], "charges": e.target} for e in LC_TRAIN]}
    query = {"fact": "事实:被告人某某秘密窃取他人手机", "instruction": ""}
    only = harness("legal_charge", tmp_path, retrieval_vote="only", vote_k=3)
    ctx = FakeCtx([], resources)
    assert only.solve(dict(query), ctx) == ["盗窃"] and not ctx.llm.calls
    assert ctx.events[0][0] == "tool_call" and ctx.events[0][1]["name"] == "retrieval_vote"
    fallback = harness("legal_charge", tmp_path, retrieval_vote="fallback", vote_k=3)
    assert fallback.solve(dict(query), FakeCtx(["我不知道"], resources)) == ["盗窃"]
    assert fallback.solve(dict(query), FakeCtx(["[罪名]诈骗<eoa>"], resources)) == "诈骗"  # model kept
    # ensemble by hand: neighbours a 0.6, b 0.4; the model names b with 0.5 of 1.0 -> total 1.5;
    # b 0.9 holds half, a 0.6 does not
    assert fallback.vote([(0.6, ["a"]), (0.4, ["b"])], ["b"], 0.5) == ["b"]
    assert fallback.vote([(0.6, ["a"]), (0.4, ["b"])], ["c"], 0.5) == ["a"]   # unsupported name dropped
    ensemble = harness("legal_charge", tmp_path, retrieval_vote="ensemble", vote_k=3)
    assert ensemble.solve(dict(query), FakeCtx(["[罪名]盗窃<eoa>"], resources)) == ["盗窃"]
    # the nearest case is skipped when it is the case itself (SFT renders train)
    own = resources["train"][0]["fact"]
    assert all(s < 0.999 for s, _ in only.neighbours(own, resources["train"], 5))


# ---- sql_qa ---------------------------------------------------------------------------------
ADAPT_CASES = [
    ("List the names of the customers who live in Paris.", "SELECT name FROM customers WHERE city = 'Paris'",
     "List the names of the customers who live in O'Hara Town.",
     "SELECT name FROM customers WHERE city = 'O''Hara Town'"),
    ("What are the names of the Books products that cost less than 20 dollars?",
     "SELECT name FROM products WHERE category = 'Books' AND price < 20",
     "What are the names of the Toys products that cost less than 150 dollars?",
     "SELECT name FROM products WHERE category = 'Toys' AND price < 150"),
    ("Give the first and last names of the employees hired after 2019-01-01.",
     "SELECT first_name, last_name FROM employees WHERE hire_date > '2019-01-01'",
     "Give the first and last names of the employees hired after 2021-01-01.",
     "SELECT first_name, last_name FROM employees WHERE hire_date > '2021-01-01'"),
    ("How many orders did customers from Lyon place in 2022?",
     "SELECT COUNT(*) FROM orders o JOIN customers c ON o.customer_id = c.id "
     "WHERE c.city = 'Lyon' AND o.order_date LIKE '2022-%'",
     "How many orders did customers from Rome place in 2023?",
     "SELECT COUNT(*) FROM orders o JOIN customers c ON o.customer_id = c.id "
     "WHERE c.city = 'Rome' AND o.order_date LIKE '2023-%'"),
    ("Which customers are based in Paris? Give their names.", "SELECT name FROM customers WHERE city = 'Paris'",
     "List the names of the customers who live in Rome.", None),   # another phrasing: no adaptation
]


def test_sql_adapt_by_hand_and_the_harness_copy_agrees(tmp_path):
    b = module("sql_qa", "baselines")
    h = harness("sql_qa", tmp_path)
    for train_q, train_sql, question, expected in ADAPT_CASES:
        assert b.adapt_sql(train_q, train_sql, question) == expected, question
        assert h.adapt_sql(train_q, train_sql, question) == expected, question
    train = [{"question": q, "sql": s, "db_id": "shop"} for q, s, _, _ in ADAPT_CASES]
    for _, _, question, _ in ADAPT_CASES:
        assert b.copy_adapt(question, "shop", train) == h.copy_adapt(question, "shop", train)
        assert b.ranked_train(question, "shop", train) == h.ranked_train(question, "shop", train)


@pytest.fixture(scope="module")
def sql_task():
    task = load_task("sql_qa", {})
    task.load()
    return task


def _sql_example(i, question, sql):
    return Example(f"s{i}", {"question": question, "db_id": "shop"},
                   {"sql": sql, "level": 1, "template": "customers_in_city", "instance": f"s{i}"})


def test_sql_copy_baselines_scored_by_the_evaluator(sql_task):
    b = module("sql_qa", "baselines")
    conn = sqlite3.connect(sql_task._databases["shop"])
    first, second = [r[0] for r in conn.execute("SELECT DISTINCT city FROM customers ORDER BY city LIMIT 2")]
    conn.close()
    phrase = "List the names of the customers who live in {}."
    sql = "SELECT name FROM customers WHERE city = '{}'"
    splits = Splits(train=[_sql_example(0, phrase.format(first), sql.format(first))],
                    val=[_sql_example(1, phrase.format(second), sql.format(second))], test=[])
    copy = b.copy(splits, splits.val)
    adapted = b.copy_adapted(splits, splits.val)
    assert copy == [sql.format(first)] and adapted == [sql.format(second)]
    assert sql_task.evaluate(splits.val, copy, "val").metrics["execution_accuracy"] == 0.0
    assert sql_task.evaluate(splits.val, adapted, "val").metrics["execution_accuracy"] == 1.0
    # the oracle copies only from the gold template: none in train -> no answer
    other = Example("s2", splits.val[0].inputs, {**splits.val[0].target, "template": "elsewhere"})
    assert b.oracle_gold_template(splits, [splits.val[0], other]) == [sql.format(second), None]


def test_sql_harness_copy_adapt_options(sql_task, tmp_path):
    splits = sql_task.load()
    resources = json.loads(json.dumps(sql_task.public_resources(splits)))
    files = {k: str(v) for k, v in sql_task.public_files(splits, tmp_path / "pub").items()}
    b = module("sql_qa", "baselines")
    example = next(e for e in splits.val if b.copy_adapt(e.inputs["question"], "shop", resources["train"])[1])
    expected = b.copy_adapt(example.inputs["question"], "shop", resources["train"])[0]
    prefer = harness("sql_qa", tmp_path, copy_adapt="prefer")
    ctx = FakeCtx([], resources, files)
    assert prefer.solve(example.inputs, ctx) == expected and not ctx.llm.calls
    fallback = harness("sql_qa", tmp_path, copy_adapt="fallback")
    ctx = FakeCtx(["```sql\nSELECT nme FROM customers"], resources, files)
    assert fallback.solve(example.inputs, ctx) == expected
    assert any(kind == "fallback" for kind, _ in ctx.events)
    ctx = FakeCtx(["```sql\nSELECT COUNT(*) FROM departments"], resources, files)
    assert fallback.solve(example.inputs, ctx) == "SELECT COUNT(*) FROM departments"   # valid: kept
    seed = harness("sql_qa", tmp_path)
    assert seed.solve(example.inputs, FakeCtx(["no query"], resources, files)) is None


def test_sql_edits_switch_the_option(sql_task):
    edits = {e.name: e for e in sql_task.harness_edits()}
    seed = sql_task.seed_harness()
    assert "'copy_adapt': 'fallback'" in edits["copy_adapt_on_failure"].apply(seed)
    assert "'copy_adapt': 'prefer'" in edits["prefer_adapted_train_query"].apply(seed)


# ---- scrna_denoise ----------------------------------------------------------------------------
def test_alpha_decay_kernel_by_hand():
    d = module("scrna_denoise", "denoise")
    kernel = d.alpha_decay_kernel(np.array([[0.0], [1.0], [3.0]]), k=1, decay=1.0, k_max=2).toarray()
    e = math.exp
    # bandwidths (distance to the nearest other cell): 1, 1, 2
    expected = np.array([[1, e(-1), (e(-3) + e(-1.5)) / 2],
                         [e(-1), 1, (e(-2) + e(-1)) / 2],
                         [(e(-3) + e(-1.5)) / 2, (e(-2) + e(-1)) / 2, 1]])
    assert np.allclose(kernel, expected)
    assert np.allclose(d.markov(sp.csr_matrix(kernel)).toarray().sum(axis=1), 1.0)


def test_magic_keeps_identical_profiles():
    d = module("scrna_denoise", "denoise")
    counts = np.array([[2, 4, 2], [1, 2, 1], [4, 8, 4], [3, 6, 3]], dtype=float)
    assert np.allclose(d.magic(counts, t=3, k=2), counts)


def test_alra_rank_rule_and_rescaling_by_hand():
    d = module("scrna_denoise", "denoise")
    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.standard_normal((120, 110)))[0]
    v = np.linalg.qr(rng.standard_normal((110, 110)))[0]
    # noise gaps 1.5/106 +- 0.002 (about one sd either way); signal gaps 10, 10 and 28
    noise = np.linspace(2.0, 0.5, 107) + 0.001 * (-1.0) ** np.arange(107)
    s = np.concatenate([[50.0, 40.0, 30.0], noise])
    assert d.spectral_gap_rank((u * s) @ v.T) == 3
    approx, original = np.array([[0.0], [1.0], [3.0]]), np.array([[2.0], [0.0], [4.0]])
    # nonzero completed values (1, 3) moved to the observed nonzero mean 3 and sd sqrt(2)
    assert np.allclose(d._match_nonzero_moments(approx, original), [[0.0], [2.0], [4.0]])


def test_scrna_baselines_answer_each_examples_rows():
    b = module("scrna_denoise", "baselines")
    train = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 1], [2, 2, 0], [1, 1, 1]], dtype=float))
    examples = [Example("a", {"cells": [2, 0], "n_genes": 3}), Example("b", {"cells": [3], "n_genes": 3})]
    baselines = {x.name: x for x in b.baselines(lambda: train)}
    assert {"no_denoising", "knn_smoothing", "magic", "alra"} <= set(baselines) <= {
        "no_denoising", "knn_smoothing", "magic", "alra", "scvi"}
    none = baselines["no_denoising"].predict(Splits([], [], []), examples)
    assert np.array_equal(none[0], [[2, 2, 0], [1, 0, 2]]) and np.array_equal(none[1], [[1, 1, 1]])
    smooth = baselines["knn_smoothing"].predict(Splits([], [], []), examples)
    assert np.allclose(smooth[0].sum(axis=1), [4, 3]) and (smooth[0] >= 0).all()  # library sizes kept


# ---- cuda_kernel ------------------------------------------------------------------------------
def test_cuda_kernel_baselines_answer_the_shipped_sources():
    task = load_task("cuda_kernel", yaml.safe_load((REPO / "conf" / "task" / "cuda_kernel.yaml").read_text()))
    examples = task.load().val
    by_name = {b.name: b for b in task.baselines()}
    reference = (TASKS_DIR / "cuda_kernel" / "reference.py").read_text("utf-8")
    fast = (TASKS_DIR / "cuda_kernel" / "fast_baseline.py").read_text("utf-8")
    assert by_name["eager_reference"].predict(task.load(), examples) == [reference] * len(examples)
    assert by_name["fused_channel_first"].predict(task.load(), examples) == [fast] * len(examples)

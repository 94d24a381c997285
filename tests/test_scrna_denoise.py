"""scrna_denoise: metrics against hand-computed values, the MCV split, what the harness can
read, the evaluator's verdicts, the seed harness's tool dispatch and the edit library."""
from __future__ import annotations

import ast
import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from sia.harness.options import read_options
from sia.tasks import TASKS_DIR, load_task

pytestmark = pytest.mark.filterwarnings("ignore")

TASK_DIR = TASKS_DIR / "scrna_denoise"
CFG = {"name": "scrna_denoise", "primary_metric": "score", "data": {}}


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """The primitives are small dense products: on a shared CPU, BLAS threads only contend."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def task(one_blas_thread):
    task = load_task("scrna_denoise", CFG)
    task.load()
    return task


@pytest.fixture(scope="module")
def modules(task):
    import sys

    pkg = "sia_tasks.scrna_denoise"
    return types.SimpleNamespace(metrics=sys.modules[f"{pkg}.metrics"], data=sys.modules[f"{pkg}.data"],
                                 denoise=sys.modules[f"{pkg}.denoise"])


def load_harness(source: str | None = None):
    source = source if source is not None else (TASK_DIR / "seed_harness.py").read_text()
    module = types.ModuleType("scrna_seed_harness")
    exec(compile(source, "seed_harness.py", "exec"), module.__dict__)
    return module


class FakeLLM:
    def __init__(self, *replies):
        self.replies, self.calls = list(replies), []

    def chat(self, messages, max_tokens=None, **_):
        self.calls.append(messages)
        text = self.replies.pop(0) if self.replies else ""
        return types.SimpleNamespace(text=text)


def make_ctx(files, resources, *replies):
    events = []
    return types.SimpleNamespace(
        llm=FakeLLM(*replies), files=files, resources=resources, example_id="x",
        log=lambda kind, **data: events.append({**data, "type": kind}), events=events)


@pytest.fixture(scope="module")
def public(task, tmp_path_factory):
    splits = task.load()
    out = tmp_path_factory.mktemp("public")
    return out, task.public_files(splits, out), task.public_resources(splits)


# ---- metrics ------------------------------------------------------------------------------

def test_mse_matches_hand_computation(modules):
    pred = np.array([[1.0, 1.0], [0.0, 2.0]])
    test = np.array([[2.0, 0.0], [1.0, 1.0]])
    # each row scaled to 1e4, then log1p
    p = [[math.log1p(5e3), math.log1p(5e3)], [0.0, math.log1p(1e4)]]
    t = [[math.log1p(1e4), 0.0], [math.log1p(5e3), math.log1p(5e3)]]
    expected = np.mean([(p[i][j] - t[i][j]) ** 2 for i in range(2) for j in range(2)])
    assert modules.metrics.mse(pred, test) == pytest.approx(expected, rel=1e-12)


def test_poisson_matches_hand_computation_in_likelihood_order(modules):
    pred = np.array([[2.0, 0.0], [1.0, 1.0]])
    test = np.array([[1.0, 0.0], [0.0, 1.0]])
    train = np.array([[3.0, 1.0], [2.0, 2.0]])
    # scale = test total / train total = 2 / 8; loss = pred - test * log(pred + 1e-6)
    s = [[0.5, 0.0], [0.25, 0.25]]
    expected = (s[0][0] - math.log(0.5 + 1e-6) + 0.0 + s[1][0] + s[1][1] - math.log(0.25 + 1e-6)) / 4
    assert modules.metrics.poisson(pred, test, train) == pytest.approx(expected, rel=1e-12)
    # v1's swapped order would make an all-zero prediction nearly free; here it costs ~13.8 per count
    zeros = modules.metrics.poisson(np.zeros_like(pred), test, train)
    assert zeros == pytest.approx(-2 * math.log(1e-6) / 4, rel=1e-9)


def test_normalisation_anchors_no_denoising_at_0_and_perfect_at_1(modules):
    rng = np.random.default_rng(0)
    full = rng.poisson(3.0, size=(30, 12))
    train = rng.binomial(full, 0.9)
    test = full - train
    ref = modules.metrics.References(train, test)
    none = ref.score(train)
    perfect = ref.score(modules.metrics.perfect_prediction(train, test))
    assert (none.mse_norm, none.poisson_norm, none.score) == (0.0, 0.0, 0.0)
    assert perfect.mse_norm == pytest.approx(1.0) and perfect.poisson_norm == pytest.approx(1.0)
    # halfway between the losses is 0.5
    half_mse = (ref.mse_none + ref.mse_perfect) / 2
    assert modules.metrics._normalise(half_mse, ref.mse_none, ref.mse_perfect) == pytest.approx(0.5)


def test_zero_and_constant_predictions_score_badly(task):
    val = task.load().val
    shapes = [(len(e.inputs["cells"]), e.inputs["n_genes"]) for e in val]
    for value in (0.0, 1.0, 50.0):
        report = task.evaluate(val, [np.full(s, value, dtype=np.float32) for s in shapes], "val")
        assert report.metrics["score"] < -0.3, (value, report.metrics)
        assert all(s.score == 0.0 and s.reason for s in report.per_example)


# ---- data ---------------------------------------------------------------------------------

def test_bundled_pbmc_gives_integer_counts(modules):
    counts = modules.data.load_bundled_pbmc()
    assert counts.matrix.shape == (700, 765) and len(counts.genes) == 765
    assert modules.data.integer_count_problem(counts.matrix) is None
    assert counts.matrix.sum(axis=1).min() > 100   # real cells, not a broken reconstruction


def test_mcv_split_thins_every_count(modules):
    rng = np.random.default_rng(1)
    full = sp.csr_matrix(rng.poisson(2.0, size=(50, 20)))
    counts = modules.data.Counts(full, [f"g{i}" for i in range(20)], "toy")
    a = modules.data.mcv_split(counts, 0.9, seed=3, max_cells=4000)
    b = modules.data.mcv_split(counts, 0.9, seed=3, max_cells=4000)
    c = modules.data.mcv_split(counts, 0.9, seed=4, max_cells=4000)
    assert np.array_equal((a.train + a.test).toarray(), full.toarray()[a.cell_ids])
    assert np.array_equal(a.test.toarray(), b.test.toarray())
    assert not np.array_equal(a.test.toarray(), c.test.toarray())
    assert 0.06 < a.test.sum() / full.sum() < 0.14
    sub = modules.data.mcv_split(counts, 0.9, seed=3, max_cells=10)
    assert sub.train.shape[0] == 10


def test_splits_partition_the_cells(task):
    splits = task.load()
    cells = [c for name in ("train", "val", "test") for e in splits[name] for c in e.inputs["cells"]]
    assert sorted(cells) == list(range(700))
    assert len(splits.val) == 4 and len(splits.test) == 4 and len(splits.train) == 10


# ---- what a harness can read ------------------------------------------------------------

def test_public_files_and_resources_hold_no_held_out_counts(task, public):
    out, files, resources = public
    assert set(files) == {"train_counts"}
    assert sorted(p.name for p in out.iterdir()) == ["train_counts.npz"]
    with np.load(files["train_counts"], allow_pickle=False) as npz:
        stored = sp.csr_matrix((npz["data"], npz["indices"], npz["indptr"]), shape=tuple(npz["shape"]))
    train, test = task._mcv.train, task._mcv.test
    assert (stored != train).nnz == 0
    # the file is the thinned half, not the full counts the held-out half could be derived from
    assert stored.sum() < 0.95 * (train + test).sum()
    text = json.dumps(resources)
    assert len(text) < 50_000 and "target" not in text
    for split in ("val", "test"):
        for example in task.load()[split]:
            assert set(example.inputs) == {"cells", "n_genes"}


# ---- the evaluator ------------------------------------------------------------------------

def test_invalid_answers_are_scored_as_no_denoising_with_a_reason(task):
    val = task.load().val
    good = [task._mcv.train[e.inputs["cells"]].toarray().astype(np.float32) for e in val]
    bad_shape = good[0][:, :700]
    negative = good[1] - 1.0
    nan = good[2].copy()
    nan[0, 0] = np.nan
    report = task.evaluate(val, [bad_shape, negative, nan, None], "val")
    reasons = [s.reason for s in report.per_example]
    assert all(r.startswith("not a valid prediction") for r in reasons)
    assert all(s.failure == "format" for s in report.per_example)
    assert "shape (" in reasons[0] and "700)" in reasons[0] and "765)" in reasons[0]
    assert "negative" in reasons[1] and "NaN" in reasons[2] and "no answer" in reasons[3]
    assert report.metrics["unreadable"] == 1.0
    assert report.metrics["score"] == pytest.approx(0.0, abs=1e-12)


def test_baselines_scored_by_the_evaluator(task):
    reports = task.baseline_reports("val")
    score = {name: r.metrics["score"] for name, r in reports.items()}
    assert score["no_denoising"] == pytest.approx(0.0, abs=1e-12)
    assert score["perfect"] == pytest.approx(1.0)
    for name in ("knn_smoothing", "magic"):
        assert 0.05 < score[name] < 1.0, score
        assert reports[name].metrics["poisson_norm"] > 0.3
    assert all(r.metrics["unreadable"] == 0.0 for r in reports.values())


# ---- the seed harness ---------------------------------------------------------------------

def test_seed_harness_imports_nothing_from_tasks():
    tree = ast.parse((TASK_DIR / "seed_harness.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    assert imported <= {"__future__", "contextlib", "re", "numpy", "scipy", "threadpoolctl"}


def test_harness_primitives_match_the_trusted_copies(modules):
    harness = load_harness()
    counts = np.random.default_rng(2).poisson(1.5, size=(60, 25)).astype(float)
    counts[:, 0] += 1  # no empty cells
    for name, kwargs in [("knn_smooth", {"k": 5}), ("magic", {"t": 2, "k": 5}), ("alra", {"rank": 4}),
                         ("lowrank", {"rank": 4})]:
        ours, theirs = getattr(modules.denoise, name)(counts, **kwargs), getattr(harness, name)(counts, **kwargs)
        assert np.allclose(ours, theirs), name


def test_parse_call_is_tolerant_and_clamps():
    parse = load_harness().parse_call
    assert parse("I would use ALRA(rank=30) here") == ("alra", {"rank": 30})
    assert parse("magic(2, 8)") == ("magic", {"t": 2, "k": 8})
    assert parse("knn") == ("knn", {"k": 10})
    assert parse("magic(500, 0)") == ("magic", {"t": 12, "k": 2})
    assert parse("no idea") is None and parse("") is None


def test_seed_harness_runs_the_models_tool_call(task, public):
    _, files, resources = public
    harness = load_harness()
    val = task.load().val
    ctx = make_ctx(files, resources, "magic(2, 8)")
    answers = [harness.solve(val[0].inputs, ctx)]
    calls = [e for e in ctx.events if e["type"] == "tool_call"]
    assert calls[0]["name"] == "magic" and calls[0]["args"] == {"t": 2, "k": 8}
    assert answers[0].dtype == np.float32 and answers[0].shape == (len(val[0].inputs["cells"]), 765)
    assert "knn(k)" in ctx.llm.calls[0][-1]["content"] and len(ctx.llm.calls) == 1
    report = task.evaluate(val[:1], answers, "val")
    assert report.metrics["unreadable"] == 0.0 and report.metrics["score"] > 0.1


def test_seed_harness_falls_back_and_logs_it(task, public):
    _, files, resources = public
    harness = load_harness()
    ctx = make_ctx(files, resources, "Denoising is important for biology.")
    harness.solve(task.load().val[0].inputs, ctx)
    kinds = [e["type"] for e in ctx.events]
    assert kinds[:2] == ["fallback", "tool_call"] and ctx.events[1]["name"] == "knn"


def test_clip_edit_turns_an_invalid_lowrank_answer_valid(task, public):
    _, files, resources = public
    val = task.load().val[:1]
    edits = {e.name: e for e in task.harness_edits()}
    seed = (TASK_DIR / "seed_harness.py").read_text()
    raw = load_harness(seed).solve(val[0].inputs, make_ctx(files, resources, "lowrank(20)"))
    assert task.evaluate(val, [raw], "val").per_example[0].reason.startswith("not a valid")
    clipped_source = edits["clip_negative_output"].apply(seed)
    clipped = load_harness(clipped_source).solve(val[0].inputs, make_ctx(files, resources, "lowrank(20)"))
    assert task.evaluate(val, [clipped], "val").metrics["unreadable"] == 0.0


def test_edit_library_rewrites_options(task):
    seed = (TASK_DIR / "seed_harness.py").read_text()
    edits = task.harness_edits()
    assert {e.addresses for e in edits} == {"format", "errors", "accuracy", "variance"}
    for edit in edits:
        new = edit.apply(seed)
        assert new is not None and new != seed, edit.name
        ast.parse(new)
        assert edit.apply(new) is None, edit.name  # applying twice changes nothing
    options = read_options(next(e for e in edits if e.name == "round_output_to_counts").apply(seed))
    assert options["round_output"] is True
    rounded = load_harness(next(e for e in edits if e.name == "round_output_to_counts").apply(seed))
    counts = np.array([[0.4, 2.6], [1.5, 3.0]])
    ctx = make_ctx({}, {})
    assert np.array_equal(rounded.denoise(counts, ("lowrank", {"rank": 1}), ctx),
                          np.round(rounded.denoise(counts, ("lowrank", {"rank": 1}), ctx)))


def test_retry_edit_asks_again_with_feedback(task, public):
    _, files, resources = public
    edit = next(e for e in task.harness_edits() if e.name == "retry_unparsed_reply")
    harness = load_harness(edit.apply((TASK_DIR / "seed_harness.py").read_text()))
    ctx = make_ctx(files, resources, "hmm", "alra(15)")
    harness.solve(task.load().val[0].inputs, ctx)
    assert len(ctx.llm.calls) == 2 and "no tool call" in ctx.llm.calls[1][-1]["content"]
    assert [e["type"] for e in ctx.events][:2] == ["retry", "tool_call"]
    assert ctx.events[1]["args"] == {"rank": 15}


# ---- configuration ------------------------------------------------------------------------

def test_config_problems_name_key_value_and_fix(tmp_path):
    missing = load_task("scrna_denoise", {**CFG, "data": {"path": str(tmp_path / "nope.h5ad")}})
    [problem] = missing.config_problems()
    assert "task.data.path" in problem and "nope.h5ad" in problem and "null" in problem
    bad = load_task("scrna_denoise", {**CFG, "primary_metric": "f1",
                                      "data": {"train_fraction": 1.5, "val_cells": 0.9, "max_cell": 5}})
    problems = "\n".join(bad.config_problems())
    assert "task.primary_metric: 'f1'" in problems and "task.data.train_fraction: 1.5" in problems
    assert "val_cells=0.9" in problems and "task.data.max_cell: unknown" in problems


def test_user_h5ad_counts_are_found_or_the_checked_places_named(tmp_path):
    import anndata

    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(40, 15)).astype(np.float32)
    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    adata = anndata.AnnData(X=lognorm)
    adata.layers["counts"] = sp.csr_matrix(counts)
    good = tmp_path / "good.h5ad"
    adata.write_h5ad(good)
    task = load_task("scrna_denoise", {**CFG, "data": {"path": str(good)}})
    assert task.config_problems() == []
    assert task.load().val and task._mcv.train.shape[1] == 15

    del adata.layers["counts"]
    bad = tmp_path / "lognorm.h5ad"
    adata.write_h5ad(bad)
    [problem] = load_task("scrna_denoise", {**CFG, "data": {"path": str(bad)}}).config_problems()
    assert "layers['counts'] (absent)" in problem and "X (non-integer" in problem
    assert "raw.X (absent)" in problem and "task.data.layer" in problem


def test_hydra_config_composes_and_validates(compose_cfg):
    from sia.config import validate

    cfg = compose_cfg("task=scrna_denoise", "task.data.max_cells=500")
    task = load_task(cfg.task.name, cfg.task)
    validate(cfg, task.config_problems())
    assert task.scoring.primary_metric == "score" and task.load().val
    assert task._mcv.train.shape[0] == 500 and "pbmc68k_reduced" in task.data_label


def test_failure_kinds_separate_unreadable_from_below_the_right_level(task, modules):
    val = task.load().val
    train = [task._mcv.train[e.inputs["cells"]].toarray() for e in val]
    knn = modules.denoise.knn_smooth(task._mcv.train.toarray().astype(np.float64), k=10)
    answers = [train[0] + 0.5, train[1], -train[2], None, knn[val[0].inputs["cells"]]]
    report = task.evaluate(val + val[:1], answers, "val")
    kinds = [s.failure for s in report.per_example]
    assert kinds == ["wrong", "wrong", "format", "format", None], [(s.score, s.reason) for s in report.per_example]
    assert report.per_example[4].score >= task_module(task).RIGHT_SCORE and report.per_example[4].reason == ""
    assert all(s.reason for s in report.per_example[:4])
    assert report.metrics["unreadable"] == pytest.approx(0.4) and "abstention" not in report.metrics


def task_module(task):
    import sys

    return sys.modules[type(task).__module__]


def test_train_split_has_enough_examples_for_training_groups(task):
    splits = task.load()
    assert len(splits.train) >= 8
    assert all(len(e.inputs["cells"]) <= 14 for e in splits.train)
    assert all(len(e.inputs["cells"]) == 70 for e in splits.val + splits.test)   # unchanged
    assert len(splits.val) == 4 and len(splits.test) == 4


def test_primary_metrics_a_trivial_answer_wins_are_refused():
    for metric in ("mse_norm", "poisson_norm"):
        [problem] = load_task("scrna_denoise", {**CFG, "primary_metric": metric}).config_problems()
        assert problem.startswith(f"task.primary_metric: {metric!r} cannot be the primary metric")
        assert "task.primary_metric=score" in problem and "still reported" in problem


def test_all_zero_and_zeroed_small_counts_lose_on_the_primary_metric(task):
    """The constant that won mse_norm (issue 8 item 7), and its cousin, lose on score: below
    no denoising and below every real baseline, and marked wrong."""
    val = task.load().val
    train = [task._mcv.train[e.inputs["cells"]].toarray().astype(np.float64) for e in val]
    baselines = task.baseline_reports("val")
    best_real = max(r.primary(task.scoring) for n, r in baselines.items() if n not in ("perfect", "no_denoising"))
    for name, answers in (("all-zero", [np.zeros_like(t) for t in train]),
                          ("zero counts <= 1", [np.where(t <= 1, 0.0, t) for t in train]),
                          ("zero counts <= 2", [np.where(t <= 2, 0.0, t) for t in train])):
        report = task.evaluate(val, answers, "val")
        assert report.primary(task.scoring) < 0 < best_real, (name, report.metrics)
        assert report.metrics["mse_norm"] > 0 or name != "all-zero"   # the hole it would have used
        assert all(s.failure == "wrong" and s.score == 0.0 for s in report.per_example), name


def test_private_paths_name_the_file_holding_both_halves(task, tmp_path):
    [bundled] = task.private_paths()
    assert bundled.name == "10x_pbmc68k_reduced.h5ad" and bundled.is_file()
    user = load_task("scrna_denoise", {**CFG, "data": {"path": str(tmp_path / "mine.h5ad")}})
    assert user.private_paths() == [(tmp_path / "mine.h5ad").resolve()]


def test_sandboxed_harness_cannot_read_the_bundled_file_with_both_halves(task, public, tmp_path):
    """scanpy's bundled h5ad (inside site-packages, which harnesses may read) holds the
    held-out counts too: the pool's deny_paths keep it unreadable, the public file readable."""
    from sia.engine.base import EngineStats
    from sia.harness.contract import Job
    from sia.harness.pool import HarnessPool

    class NoModel:
        max_batch_size = 1
        stats = EngineStats()

    [private] = task.private_paths()
    assert private.is_file()
    harness = tmp_path / "peek.py"
    harness.write_text(
        "def solve(inputs, ctx):\n"
        "    out = {}\n"
        "    for name, path in (('public', ctx.files['train_counts']), ('private', inputs['path'])):\n"
        "        try:\n"
        "            open(path, 'rb').read(16)\n"
        "            out[name] = 'read'\n"
        "        except OSError as e:\n"
        "            out[name] = type(e).__name__\n"
        "    return out\n")
    files = {k: str(v) for k, v in public[1].items()}
    with HarnessPool(NoModel(), workers=1, example_timeout_s=30,
                     deny_paths=[str(p) for p in task.private_paths()]) as pool:
        [result] = pool.run(str(harness), [Job(id="x", inputs={"path": str(private)})], {}, files, progress=False)
    assert result.error is None, result.error
    assert result.answer == {"public": "read", "private": "PermissionError"}


# ---- self-tuning by molecular cross-validation (the mcv_self_tuning edit) -----------------

def mcv_harness(task):
    edit = next(e for e in task.harness_edits() if e.name == "mcv_self_tuning")
    source = edit.apply((TASK_DIR / "seed_harness.py").read_text())
    assert read_options(source)["mcv_tune"] is True and read_options(source)["ask_model"] is False
    return load_harness(source)


class Recording(dict):
    """A ctx.files / ctx.resources mapping that records which keys the harness reads."""

    def __init__(self, data, seen):
        super().__init__(data)
        self.seen = seen

    def __getitem__(self, key):
        self.seen.append(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.seen.append(key)
        return super().get(key, default)


def test_mcv_edit_is_the_first_accuracy_edit_the_offline_feedback_agents_reach(task):
    from sia.agents.rules import OfflineFeedback

    seed = (TASK_DIR / "seed_harness.py").read_text()
    ctx = types.SimpleNamespace(history=[], edits=task.harness_edits(), harness_code=seed)
    edit, code = OfflineFeedback.applicable_edit(ctx, ("accuracy", "variance", "format", "errors"))
    assert edit.name == "mcv_self_tuning" and read_options(code)["mcv_tune"] is True
    # still applicable after the other accuracy edits were kept (it tunes on top of them)
    stacked = seed
    for name in ("sharpen_output", "fixed_magic"):
        stacked = next(e for e in task.harness_edits() if e.name == name).apply(stacked)
    assert next(e for e in task.harness_edits() if e.name == "mcv_self_tuning").apply(stacked) is not None


def test_mcv_tuned_harness_beats_magic_reading_only_the_train_counts(task, public):
    """On the bundled data the tuned harness scores well above MAGIC (val 0.31) on val and
    test; it reads ctx.files['train_counts'] and ctx.resources['train_fraction'] and nothing
    else (no model call: the ctx has no llm)."""
    _, files, resources = public
    harness = mcv_harness(task)
    seen, events = [], []
    ctx = types.SimpleNamespace(files=Recording(files, seen),
                                resources=Recording({"train_fraction": resources["train_fraction"]}, seen),
                                example_id="x", log=lambda kind, **data: events.append({**data, "type": kind}))
    magic = task.baseline_reports("val")["magic"].metrics["score"]
    for split in ("val", "test"):
        examples = task.load()[split]
        report = task.evaluate(examples, [harness.solve(e.inputs, ctx) for e in examples], split)
        assert report.metrics["unreadable"] == 0.0
        assert report.metrics["score"] > magic + 0.05, (split, report.metrics, magic)
    assert set(seen) == {"train_counts", "train_fraction"}
    [tuned] = [e for e in events if e["type"] == "mcv_tune"]   # tuned once, reused for every example
    assert tuned["inner_score"] > tuned["incumbent_inner_score"]
    assert tuned["chosen"]["sharpen"] > 1.0 or tuned["chosen"]["loss_weight"] > 0
    assert tuned["tuned_cells"] == 700


def test_mcv_choice_is_the_argmax_of_the_trusted_metric_on_the_inner_split(task, modules):
    """The harness's choice and its logged inner score, recomputed in the trusted process with
    the task's own References on the same inner split of the train counts."""
    harness = mcv_harness(task)
    counts = task._mcv.train.toarray().astype(np.float64)
    grid = {"methods": [("magic", {"t": 1, "k": 5}), ("magic", {"t": 4, "k": 5}), ("knn", {"k": 5})],
            "sharpen": (1.0, 2.0), "mix": (0.0, 0.3), "cells": 300, "seed": 7}
    events = []
    ctx = types.SimpleNamespace(log=lambda kind, **data: events.append(data))
    call, settings = harness.mcv_tune(counts, ("knn", {"k": 10}), 0.9, ctx, grid)

    # above grid["cells"] the harness tunes on a seeded subsample of the cells
    counts = counts[np.sort(np.random.default_rng(7).choice(len(counts), 300, replace=False))]
    inner = np.random.default_rng(7).binomial(counts.astype(np.int64), 0.9).astype(np.float64)
    ref = modules.metrics.References(inner, counts - inner)
    d = modules.denoise
    preds = {("magic", 1): d.magic(inner, t=1, k=5), ("magic", 4): d.magic(inner, t=4, k=5),
             ("knn", 5): d.knn_smooth(inner, k=5), ("knn", 10): d.knn_smooth(inner, k=10)}
    scores = {}
    for key, pred in preds.items():
        for p in (1.0, 2.0):
            for m in (0.0,) if p == 1.0 else (0.0, 0.3):   # mixing an unsharpened profile changes nothing
                out = harness.sharpen_mix(pred, inner, p, m) if (p, m) != (1.0, 0.0) else pred
                scores[key + (p, m)] = ref.score(out).score
    best = max(scores, key=scores.get)
    assert settings["loss_weight"] == 0.0   # this grid offers no expected_loss output
    power, mix = settings["sharpen"], settings["mix"]
    assert (call[0], call[1].get("t", call[1]["k"]) if call[0] == "magic" else call[1]["k"], power, mix) == best
    assert events[0]["inner_score"] == pytest.approx(scores[best], abs=1e-4)
    # the incumbent with its own settings, then every method (the incumbent's too) x output setting
    assert events[0]["candidates"] == 1 + len(scores)


def test_mcv_scorer_matches_the_task_metrics_and_the_inner_split_thins_every_count(modules):
    harness = load_harness()
    rng = np.random.default_rng(3)
    full = rng.poisson(2.0, size=(40, 15)).astype(np.float64)
    train, test = harness.inner_split(full, 0.9, seed=1)
    assert np.array_equal(train + test, full) and (test >= 0).all() and (train >= 0).all()
    assert 0.05 < test.sum() / full.sum() < 0.15
    assert np.array_equal(harness.inner_split(full, 0.9, seed=1)[0], train)   # seeded: every worker agrees
    (score, balance), ref = harness.mcv_scorer(train, test), modules.metrics.References(train, test)
    assert balance == pytest.approx((ref.poisson_none - ref.poisson_perfect) / (ref.mse_none - ref.mse_perfect))
    for pred in (train, modules.metrics.perfect_prediction(train, test), train + 0.5, full[::-1] + 0.1):
        assert score(pred) == pytest.approx(ref.score(pred).score, abs=1e-12)
    assert score(train) == 0.0 and score(modules.metrics.perfect_prediction(train, test)) == pytest.approx(1.0)


def test_mcv_tuning_keeps_the_incumbent_on_a_tie_and_picks_smoothing_on_clusters():
    """Hand-checkable: two cell types, each with its own 5 expressed genes, 30 cells each and
    ~6 molecules per cell. Smoothing within the type predicts held-out molecules on the type's
    genes, so MAGIC beats the incumbent "no smoothing" stand-in (kNN with k=1 is a cell and its
    nearest neighbour); with a grid holding only the incumbent's settings, it stays."""
    harness = load_harness()
    rng = np.random.default_rng(0)
    profile = np.zeros((2, 10))
    profile[0, :5] = profile[1, 5:] = 1.0
    counts = rng.poisson(np.repeat(profile, 30, axis=0) * 1.2).astype(np.float64)
    counts[counts.sum(axis=1) == 0, 0] = 1
    log = lambda kind, **data: None
    ctx = types.SimpleNamespace(log=log)
    only_incumbent = {"methods": [], "sharpen": (1.0,), "mix": (0.0,), "cells": 1000, "seed": 0}
    plain = {"sharpen": 1.0, "mix": 0.0, "loss_weight": 0.0}
    assert harness.mcv_tune(counts, ("knn", {"k": 1}), 0.9, ctx, only_incumbent) == (("knn", {"k": 1}), plain)
    grid = {**only_incumbent, "methods": [("magic", {"t": 3, "k": 5})]}
    assert harness.mcv_tune(counts, ("knn", {"k": 1}), 0.9, ctx, grid) == (("magic", {"t": 3, "k": 5}), plain)


def test_magic_steps_match_magic_at_every_t(modules):
    harness = load_harness()
    counts = np.random.default_rng(4).poisson(1.5, size=(50, 20)).astype(float)
    counts[:, 0] += 1
    steps = harness.magic_steps(counts, (1, 2, 5), k=4)
    assert sorted(steps) == [1, 2, 5]
    for t, pred in steps.items():
        assert np.allclose(pred, modules.denoise.magic(counts, t=t, k=4))


def test_expected_loss_output_is_the_profile_at_zero_mse_weight_and_sharper_with_more(modules):
    """Hand-checkable ends: with no weight on the MSE the least expected Poisson loss under a
    sum-to-1 profile is the prediction's own profile; weighting the MSE pulls rarely seen genes
    towards 0 (where log1p of a mostly-zero held-out count lies) and keeps each library size."""
    from scipy.stats import poisson

    harness = load_harness()
    mu = np.array([[0.05, 0.5, 3.0, 20.0]])
    direct = sum(poisson.pmf(y, mu) * np.log1p(7.0 * y) for y in range(1, 80))
    assert np.allclose(harness.expected_log1p(mu, 7.0), direct, rtol=1e-9)
    counts = np.array([[1.0, 4.0, 30.0, 200.0], [0.0, 2.0, 2.0, 10.0]])
    pred = np.array([[0.5, 3.0, 30.0, 201.5], [0.3, 1.7, 2.5, 9.5]])
    none = harness.expected_loss(pred, counts, 0.9, 1e-12)
    assert np.allclose(none, modules.denoise.rescale_to_library(pred, counts), rtol=2e-3)
    heavy = harness.expected_loss(pred, counts, 0.9, 1.0)
    assert np.allclose(heavy.sum(axis=1), counts.sum(axis=1))
    share = lambda m: m / m.sum(axis=1, keepdims=True)
    assert (share(heavy)[:, 0] < 0.5 * share(none)[:, 0]).all()   # the rarest gene loses most
    assert (share(heavy)[:, -1] > share(none)[:, -1]).all()       # the commonest gains the mass


def test_mcv_tuning_scores_an_answer_the_evaluator_would_reject_as_no_denoising():
    """An incumbent whose answer has negative values (lowrank without clipping) scores 0 on the
    inner split, as the evaluator scores it, and does not block the search."""
    harness = load_harness()
    rng = np.random.default_rng(5)
    counts = rng.poisson(np.repeat(rng.gamma(0.5, 2.0, size=(3, 40)), 20, axis=0)).astype(np.float64)
    counts[:, 0] += 1
    assert harness.lowrank(counts, rank=2).min() < 0
    events = []
    ctx = types.SimpleNamespace(log=lambda kind, **data: events.append(data))
    grid = {"methods": [("magic", {"t": 2, "k": 5})], "sharpen": (1.0,), "mix": (0.0,), "cells": 1000, "seed": 0}
    call, _ = harness.mcv_tune(counts, ("lowrank", {"rank": 2}), 0.9, ctx, grid)
    assert call == ("magic", {"t": 2, "k": 5}) and events[0]["incumbent_inner_score"] == 0.0
    assert events[0]["inner_score"] > 0


def realistic_counts(cells=600, genes=10_000, types_=6, seed=0) -> np.ndarray:
    """A count matrix of real size and shape: heavy-tailed gene means, cell-type programs,
    lognormal library sizes (median ~2,500 UMIs), gamma overdispersion; ~13% nonzero."""
    rng = np.random.default_rng(seed)
    base = rng.lognormal(-1.0, 1.6, genes)
    programs = base * rng.lognormal(0, 0.8, (types_, genes))
    kind = rng.integers(types_, size=cells)
    library = rng.lognormal(np.log(2500), 0.5, cells)
    rate = programs[kind] / programs[kind].sum(axis=1, keepdims=True) * library[:, None]
    counts = rng.poisson(rate * rng.gamma(2.0, 0.5, (cells, genes))).astype(np.float64)
    return counts[:, counts.sum(axis=0) > 0]


def test_mcv_tuning_work_is_bounded_in_genes_as_in_cells(task):
    """Issue 20: on 559 cells x 9,810 genes the edit timed out (60 s) on every example. Every
    candidate the default grid scores now runs on at most MCV_GRID["genes"] genes (and
    ["cells"] cells), whatever the data's size; the chosen method then runs on all of them.
    (Wall time, measured in notes/h4-data.md, is not asserted: the machine's load decides it.)"""
    harness = mcv_harness(task)
    counts = realistic_counts()
    assert counts.shape[0] == 600 and counts.shape[1] > 9_000
    shapes, events = [], []
    real = harness.method_outputs

    def spy(name, args_list, matrix):
        shapes.append(matrix.shape)
        return real(name, args_list[:1], matrix)     # one argument set per method: the shapes are the point

    harness.method_outputs = spy
    ctx = types.SimpleNamespace(log=lambda kind, **data: events.append({**data, "type": kind}),
                                resources={"train_fraction": 0.9})
    grid = harness.MCV_GRID
    assert grid["genes"] <= 1000
    call, settings = harness.mcv_tune(counts, ("knn", {"k": 10}), 0.9, ctx)
    assert shapes and all(g <= grid["genes"] and c <= grid["cells"] for c, g in shapes), shapes
    [tuned] = events
    assert tuned["tuned_genes"] == grid["genes"] and tuned["tuned_cells"] <= 600
    assert call[0] in harness.TOOLS and harness.TOOLS[call[0]][0](counts[:40], **call[1]).shape == (40, counts.shape[1])


def test_mcv_tuning_sample_is_seeded_and_keeps_small_data_whole():
    harness = load_harness()
    counts = realistic_counts(cells=50, genes=3000, seed=1)
    grid = {"cells": 20, "genes": 500, "seed": 3}
    a, b = harness.tuning_sample(counts, grid), harness.tuning_sample(counts, grid)
    assert np.array_equal(a, b) and a.shape[1] == 500 and a.shape[0] <= 20 and (a.sum(axis=1) > 0).all()
    assert harness.tuning_sample(counts[:10, :400], grid).shape == (10, 400)


def test_output_stage_runs_on_each_examples_cells_only(tmp_path):
    """The method runs once on all cells; the output options (the expected-loss profile costs
    ~40 CPU s on 600 x 9,861) run on the cells an example asks for, with the answer the whole
    pipeline gives for those rows."""
    from sia.harness.options import with_options

    source = with_options((TASK_DIR / "seed_harness.py").read_text(), ask_model=False, loss_weight=1.0,
                          default_pipeline="knn(5)")
    harness = load_harness(source)
    counts = realistic_counts(cells=60, genes=400, seed=2)
    path = tmp_path / "train_counts.npz"
    sp.save_npz(path, sp.csr_matrix(counts.astype(np.int32)))
    shapes = []
    real = harness.output_stage
    harness.output_stage = lambda pred, c, settings, fraction: (shapes.append(pred.shape),
                                                                real(pred, c, settings, fraction))[1]
    ctx = make_ctx({"train_counts": str(path)}, {"train_fraction": 0.9})
    rows = [3, 7, 30, 59]
    got = harness.solve({"cells": rows, "n_genes": counts.shape[1]}, ctx)
    assert shapes == [(4, counts.shape[1])]
    whole = harness.denoise(counts, ("knn", {"k": 5}), ctx)
    np.testing.assert_allclose(got, whole[rows], rtol=1e-3, atol=1e-4)

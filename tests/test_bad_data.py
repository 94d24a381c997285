"""Data files from users that used to end in a traceback, or in "empty val split" after the
model had loaded (issue 8 items 11-14): each is reported by the task's config_problems(),
which the app runs before any work, with the key, the bad value and the fix; or, for a
Spider folder with a single database, split within it."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:.*:anndata._warnings.OldFormatWarning")

from sia.tasks import load_task

REPO = Path(__file__).resolve().parent.parent
CASES = [{"question": f"被告人张某{i}于2019年在某超市窃取财物，价值人民币{100 + i}元。", "answer": "罪名:盗窃"}
         for i in range(10)]


def legal(path: Path, **data):
    return load_task("legal_charge", {"primary_metric": "f1", "data": {"path": str(path), **data}})


def write_json(path: Path, items) -> Path:
    path.write_text(json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


# ---- legal_charge (LawBench / CAIL files) ----------------------------------------------------

def test_lawbench_items_without_answer_are_named_before_loading(tmp_path):
    items = [dict(c) for c in CASES]
    for item in items[3:5]:
        del item["answer"]
    path = write_json(tmp_path / "no_answer.json", items)
    task = legal(path)
    [problem] = task.config_problems()
    assert problem.startswith(f"task.data.path={str(path)!r}")
    assert "2 of 10 items without a text 'answer' (first: item 3)" in problem
    assert "'question'" in problem and "add it" in problem      # what an item needs: the fix
    with pytest.raises(ValueError, match="without a text 'answer'"):   # load() says the same, no KeyError
        task.load()


@pytest.mark.parametrize("items, got", [([], "holds 0 examples: the splits got train 0, val 0, test 0"),
                                        (CASES[:1], "holds 1 example: the splits got train 0, val 0, test 1")])
def test_empty_or_single_example_file_reports_split_sizes_and_fixes(tmp_path, items, got):
    path = write_json(tmp_path / "few.json", items)
    [problem] = legal(path).config_problems()
    assert problem.startswith(f"task.data.path={str(path)!r}") and got in problem, problem
    for fix in ("add examples", "task.data.val_fraction", "task.data.test_fraction", "task.data.test_path"):
        assert fix in problem


def test_three_examples_are_enough_and_load_reads_the_file_once(tmp_path, monkeypatch):
    path = write_json(tmp_path / "three.json", CASES[:3])
    task = legal(path)
    assert task.config_problems() == []
    path.unlink()                       # load() must reuse what config_problems() read
    splits = task.load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1, 1, 1)


def test_empty_test_path_file_is_named(tmp_path):
    path = write_json(tmp_path / "data.json", CASES)
    test = write_json(tmp_path / "test.json", [])
    [problem] = legal(path, test_path=str(test)).config_problems()
    assert problem.startswith(f"task.data.test_path={str(test)!r} holds no examples")
    assert "task.data.test_path=null" in problem


@pytest.mark.parametrize("layout", ["lawbench_first_line", "lawbench_later_line", "cail"])
def test_non_utf8_file_is_named_with_the_fix(tmp_path, layout):
    path = tmp_path / "gbk.json"
    if layout == "cail":
        lines = [json.dumps({"fact": c["question"], "meta": {"accusation": ["盗窃"]}}, ensure_ascii=False)
                 for c in CASES]
        path.write_bytes("\n".join(lines).encode("gbk"))
    else:
        text = json.dumps(CASES, ensure_ascii=False, indent=None if layout == "lawbench_first_line" else 1)
        path.write_bytes(text.encode("gbk"))
    [problem] = legal(path).config_problems()
    assert problem.startswith(f"task.data.path={str(path)!r} is not UTF-8 text"), problem
    assert "re-save it as UTF-8" in problem and "iconv" in problem


def test_cli_stops_on_a_bad_data_file_with_exit_code_2_and_no_traceback(tmp_path):
    path = write_json(tmp_path / "no_answer.json", [{"question": "事实:某甲盗窃"}] * 5)
    proc = subprocess.run([sys.executable, "-m", "sia", "task=legal_charge", f"task.data.path={path}",
                           "logger=none", f"hydra.run.dir={tmp_path}/run"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"task.data.path={str(path)!r}" in proc.stderr and "without a text 'answer'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "state.json").exists()    # stopped before any work


# ---- sql_qa (Spider-format folders) -----------------------------------------------------------

def spider_folder(root: Path, dev, db_ids=("my_shop",)) -> Path:
    for db_id in db_ids:
        db = root / "database" / db_id / f"{db_id}.sqlite"
        db.parent.mkdir(parents=True)
        conn = sqlite3.connect(db)
        conn.executescript("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL);"
                           "INSERT INTO item VALUES (1, 'lamp', 9.5), (2, 'desk', 120.0), (3, 'chair', 45.0);")
        conn.commit()
        conn.close()
    if isinstance(dev, bytes):
        (root / "dev.json").write_bytes(dev)
    else:
        (root / "dev.json").write_text(json.dumps(dev), encoding="utf-8")
    return root


def sql(root: Path, **data):
    return load_task("sql_qa", {"data": {"source": "spider", "path": str(root), **data}})


def questions(n: int, db_id: str = "my_shop") -> list[dict]:
    return [{"db_id": db_id, "question": f"Items under {10 * (i + 1)} dollars?",
             "query": f"SELECT name FROM item WHERE price < {10 * (i + 1)}"} for i in range(n)]


def test_spider_single_database_without_train_file_splits_its_questions(tmp_path):
    root = spider_folder(tmp_path / "mine", questions(20))
    task = sql(root)
    assert task.config_problems() == []
    splits = task.load()
    parts = [splits.train, splits.val, splits.test]
    assert [len(p) for p in parts] == [11, 4, 5]                 # 0.2 / 0.25 of 20 questions
    ids = [e.id for p in parts for e in p]
    assert len(set(ids)) == 20 and {e.inputs["db_id"] for p in parts for e in p} == {"my_shop"}
    assert "questions split within them" in task.data_label
    assert sql(root).load().val[0].id == splits.val[0].id        # seeded: the same split again


def test_spider_single_dev_database_beside_a_train_file_splits_it_into_val_and_test(tmp_path):
    root = spider_folder(tmp_path / "mine", questions(10), db_ids=("my_shop", "other"))
    (root / "train_spider.json").write_text(json.dumps(questions(6, "other")), encoding="utf-8")
    task = sql(root)
    assert task.config_problems() == []
    splits = task.load()
    assert {e.inputs["db_id"] for e in splits.train} == {"other"} and len(splits.train) == 6
    assert len(splits.val) + len(splits.test) == 10 and splits.val and splits.test
    assert not {e.id for e in splits.val} & {e.id for e in splits.test}
    assert "questions split within them" in task.data_label


def test_spider_with_enough_databases_still_keeps_them_apart(tmp_path):
    dev = questions(4, "a") + questions(3, "b") + questions(3, "c")
    task = sql(spider_folder(tmp_path / "three", dev, db_ids=("a", "b", "c")), val_fraction=0.3, test_fraction=0.3)
    assert task.config_problems() == []
    dbs = [{e.inputs["db_id"] for e in task.load()[name]} for name in ("train", "val", "test")]
    assert all(dbs) and not (dbs[0] & dbs[1] or dbs[0] & dbs[2] or dbs[1] & dbs[2])
    assert "within" not in task.data_label


@pytest.mark.parametrize("dev, expected", [
    ([], "the splits got train 0, val 0, test 0 questions"),
    (questions(1), "the splits got train 0, val 0, test 1 questions"),
    ([{"db_id": "my_shop", "question": "How many?"}], "1 of 1 items without a text 'query' (first: item 0)"),
    (json.dumps(questions(3)).replace("Items", "Artículos").encode("latin-1"), "dev.json is not UTF-8 text"),
    (b"[{", "dev.json is not valid JSON"),
])
def test_spider_bad_question_files_are_named_with_the_fix(tmp_path, dev, expected):
    root = spider_folder(tmp_path / "bad", dev)
    [problem] = sql(root).config_problems()
    assert problem.startswith(f"task.data.path={str(root)!r}") and expected in problem, problem
    if "splits got" in problem:
        assert "add questions" in problem and "task.data.val_fraction" in problem


@pytest.mark.parametrize("content, what", [({"items": CASES}, "holds a JSON dict, not a list"),
                                           ('[{"a": 1}', "is not valid JSON (")])
def test_both_tasks_name_a_file_that_is_not_a_json_list_in_the_same_words(tmp_path, content, what):
    """legal_charge and sql_qa read their JSON lists through one helper (sia.data.read_json_list):
    the same fault reads the same, with each task's own item shape as the fix."""
    text = content if isinstance(content, str) else json.dumps(content)
    lawbench = tmp_path / "lawbench.json"
    lawbench.write_text(text, encoding="utf-8")
    root = spider_folder(tmp_path / "spider", text.encode("utf-8"))
    [legal_problem] = legal(lawbench, format="lawbench").config_problems()
    [sql_problem] = sql(root).config_problems()
    assert legal_problem.startswith(f"task.data.path={str(lawbench)!r} {what}"), legal_problem
    assert f"dev.json {what}" in sql_problem, sql_problem
    assert "it must be one JSON list of LawBench 3-3 {'question', 'answer'} items" in legal_problem
    assert "it must be one JSON list of {db_id, question, query} items" in sql_problem


def test_spider_questions_whose_database_is_missing_are_counted(tmp_path):
    root = spider_folder(tmp_path / "gone", questions(5, "elsewhere"))
    [problem] = sql(root).config_problems()
    assert "train 0, val 0, test 0" in problem and "5 left out: database file not found" in problem


def test_synthetic_sql_with_too_few_instances_names_the_key(tmp_path):
    [problem] = load_task("sql_qa", {"data": {"instances_per_template": 1}}).config_problems()
    assert problem.startswith("task.data.instances_per_template=1: the splits got train 27, val 0, test 0")
    assert "raise task.data.instances_per_template" in problem


# ---- scrna_denoise ----------------------------------------------------------------------------

def test_scrna_shares_that_leave_no_test_cells_are_named():
    task = load_task("scrna_denoise", {"name": "scrna_denoise", "primary_metric": "score",
                                       "data": {"max_cells": 10, "train_cells": 0.55, "val_cells": 0.4}})
    [problem] = task.config_problems()
    assert problem.startswith("task.data.train_cells=0.55, val_cells=0.4:") and "test 0 examples" in problem
    assert "task.data.max_cells" in problem


# ---- issue 20: files that are not what they claim, folders, one file for two splits ---------

def scrna(path) -> object:
    return load_task("scrna_denoise", {"name": "scrna_denoise", "primary_metric": "score",
                                       "data": {"path": str(path)}})


def test_scrna_non_hdf5_h5ad_is_named_not_an_oserror(tmp_path):
    fake = tmp_path / "fake.h5ad"
    fake.write_text("cell,gene\n1,2\n")
    [problem] = scrna(fake).config_problems()
    assert problem.startswith(f"task.data.path={str(fake)!r}") and "not a readable HDF5 file" in problem
    assert "adata.write_h5ad" in problem and "task.data.path=null" in problem     # the fix


def test_scrna_hdf5_that_is_not_anndata_is_named(tmp_path):
    import h5py

    other = tmp_path / "other.h5ad"
    with h5py.File(other, "w") as f:
        f["x"] = [1, 2, 3]
    [problem] = scrna(other).config_problems()
    assert "is HDF5 but anndata cannot read it as AnnData" in problem, problem


def test_cli_stops_on_a_fake_h5ad_with_exit_code_2_and_no_traceback(tmp_path):
    fake = tmp_path / "fake.h5ad"
    fake.write_bytes(b"not hdf5 at all")
    proc = subprocess.run([sys.executable, "-m", "sia", "task=scrna_denoise", f"task.data.path={fake}",
                           "logger=none", f"hydra.run.dir={tmp_path}/run"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "not a readable HDF5 file" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("task_name", ["legal_charge", "scrna_denoise"])
def test_a_directory_as_data_path_is_called_a_directory(tmp_path, task_name):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / ("cases.json" if task_name == "legal_charge" else "counts.h5ad")).write_text("x")
    task = legal(folder) if task_name == "legal_charge" else scrna(folder)
    problems = task.config_problems()
    [problem] = [p for p in problems if p.startswith(f"task.data.path={str(folder)!r}")]
    assert "is a directory, not a file" in problem and "does not exist" not in problem
    assert ("cases.json" if task_name == "legal_charge" else "counts.h5ad") in problem   # what it holds


def test_legal_labels_path_directory_is_called_a_directory(tmp_path):
    data = write_json(tmp_path / "data.json", CASES)
    [problem] = legal(data, labels_path=str(tmp_path)).config_problems()
    assert problem.startswith(f"task.data.labels_path={str(tmp_path)!r} is a directory"), problem


def test_legal_same_file_as_data_and_test_path_is_refused(tmp_path):
    path = write_json(tmp_path / "data.json", CASES)
    link = tmp_path / "link.json"
    link.symlink_to(path)
    for test_path in (path, link, tmp_path / "." / "data.json"):
        [problem] = legal(path, test_path=str(test_path)).config_problems()
        assert problem.startswith(f"task.data.test_path={str(test_path)!r} is the file of task.data.path")
        assert "ctx.resources['train']" in problem and "task.data.test_path=null" in problem


def test_test_file_repeating_data_file_examples_is_refused_by_content(tmp_path):
    """A copy of the data file (another path, the same items) as test_path: caught by content."""
    from sia.data import data_problems

    path = write_json(tmp_path / "data.json", CASES)
    copy = write_json(tmp_path / "copy.json", CASES[:4])
    task = legal(path, test_path=str(copy))
    assert task.config_problems() == []
    [problem] = data_problems(task)
    assert "test example(s) have the same inputs as train examples" in problem, problem
    assert "train targets are public" in problem and "give each split its own examples" in problem


def test_spider_train_file_repeating_dev_questions_is_refused(tmp_path):
    from sia.data import data_problems

    root = spider_folder(tmp_path / "dup", questions(10), db_ids=("my_shop", "other"))
    (root / "train_spider.json").write_text(json.dumps(questions(10)), encoding="utf-8")
    task = sql(root)
    assert task.config_problems() == []
    problems = data_problems(task)
    assert problems and all("have the same inputs as train examples" in p for p in problems), problems


@pytest.mark.parametrize("name", ["legal_charge", "sql_qa", "scrna_denoise", "cuda_kernel"])
def test_default_data_of_every_task_passes_the_shared_data_checks(compose_cfg, name):
    from sia.data import data_problems

    cfg = compose_cfg(f"task={name}")
    task = load_task(cfg.task.name, cfg.task)
    assert task.config_problems() == []
    assert data_problems(task) == []


def test_resources_too_large_for_a_worker_config_message_are_named(tmp_path, monkeypatch):
    """100k examples or one huge fact: named before any work, not a ProtocolError mid-run."""
    import sia.harness.protocol as protocol
    from sia.data import data_problems

    monkeypatch.setattr(protocol, "MAX_MESSAGE_BYTES", 2 ** 20 + 100_000)   # a 100 kB stand-in limit
    cases = [{**c, "question": c["question"] + "被告人" * 3_000} for c in CASES]   # ~27 kB each, 8 in train
    path = write_json(tmp_path / "big.json", cases)
    task = legal(path)
    assert task.config_problems() == []
    [problem] = data_problems(task)
    assert "ctx.resources" in problem and "MAX_MESSAGE_BYTES" in problem, problem
    assert "largest: 'train'" in problem and "Use a smaller data file" in problem


def test_one_example_too_large_for_a_job_message_is_named(tmp_path, monkeypatch):
    import sia.harness.protocol as protocol
    from sia.data import data_problems

    monkeypatch.setattr(protocol, "MAX_MESSAGE_BYTES", 2 ** 20 + 50_000)
    task = legal(write_json(tmp_path / "data.json", CASES), test_path=str(write_json(
        tmp_path / "test.json", [{**CASES[0], "question": "被告人" * 30_000}])))
    assert task.config_problems() == []
    [problem] = data_problems(task)
    assert "the inputs of test example lb33-000 come to" in problem and "shorten or drop that item" in problem


def test_cli_stops_on_test_examples_repeated_in_train_with_exit_code_2(tmp_path):
    path = write_json(tmp_path / "data.json", CASES)
    copy = write_json(tmp_path / "copy.json", CASES)
    proc = subprocess.run([sys.executable, "-m", "sia", "task=legal_charge", f"task.data.path={path}",
                           f"task.data.test_path={copy}", "logger=none", f"hydra.run.dir={tmp_path}/run"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "have the same inputs as train examples" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "state.json").exists()


@pytest.mark.parametrize("db_id", ["../../outside/evil", "/abs/evil", "a/b", "..", ".hidden/../x"])
def test_spider_db_id_that_is_a_path_is_refused(tmp_path, db_id):
    """A db_id must name a folder under database/: a path would load a database from outside the
    Spider folder, and the public copy's target (<run>/public/databases/<db_id>.sqlite) would escape."""
    outside = tmp_path / "a" / "outside" / "evil"    # where b/database/../../outside/evil leads
    outside.mkdir(parents=True)
    sqlite3.connect(outside / "evil.sqlite").executescript("CREATE TABLE item (id INTEGER, name TEXT, price REAL);")
    root = spider_folder(tmp_path / "a" / "b", questions(12) + questions(3, db_id))
    [problem] = sql(root).config_problems()
    assert f"dev.json item 12 has db_id {db_id!r}, which is not a plain database name" in problem, problem
    assert "fix or drop that item" in problem


def test_spider_database_linked_out_of_the_folder_is_refused(tmp_path):
    root = spider_folder(tmp_path / "spider", questions(12))
    elsewhere = spider_folder(tmp_path / "elsewhere", questions(1), db_ids=("linked",))
    (root / "database" / "linked").symlink_to(elsewhere / "database" / "linked")
    (root / "dev.json").write_text(json.dumps(questions(12) + questions(2, "linked")), encoding="utf-8")
    [problem] = sql(root).config_problems()
    assert "dev.json item 12: database/linked/linked.sqlite resolves to" in problem and "outside" in problem

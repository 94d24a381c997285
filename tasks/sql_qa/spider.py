"""Loader for data in the Spider format, from a local folder:

    <path>/dev.json                         [{"db_id", "question", "query", ...}, ...]
    <path>/train_spider.json                (optional) more questions in the same format
    <path>/database/<db_id>/<db_id>.sqlite  one SQLite file per database

Spider's own splits keep databases apart (a dev database never appears in train), and so
does this loader: train is ``train_spider.json`` when present; val and test are made of
whole dev databases. Without a train file, dev databases are shared out over all three;
when there are too few of them for that (a user's own single database and questions), the
questions are split within the databases instead, and ``SpiderData.within_databases`` says so.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from sia.data import DataFileError, read_json_list
from sia.tasks import Example, Splits

from .execution import evaluate_batch

DEV_FILE = "dev.json"
TRAIN_FILE = "train_spider.json"


# A db_id names a folder under database/: a plain name, never a path (Spider's are words and digits).
DB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def database_file(root: Path, db_id: str) -> Path:
    if not DB_ID.fullmatch(db_id) or ".." in db_id:   # a path here would read (and copy) outside root
        raise DataError(f"db_id {db_id!r} is not a plain database name")
    return root / "database" / db_id / f"{db_id}.sqlite"


def db_id_problem(file: Path, items: list[dict]) -> str | None:
    """Items whose db_id is not a plain folder name, or whose database file resolves outside
    the folder's database/ (a link out of it): such a question would read a database from
    elsewhere, and its public copy would be written outside the run's folder."""
    inside = (file.parent / "database").resolve()
    for index, item in enumerate(items):
        db_id = item["db_id"]
        if not DB_ID.fullmatch(db_id) or ".." in db_id:
            return (f"{file.name} item {index} has db_id {db_id!r}, which is not a plain database name "
                    f"(letters, digits, '_', '.', '-'; no '/' or '..'): each db_id names a folder "
                    f"database/<db_id>/ of this Spider folder; fix or drop that item")
        resolved = database_file(file.parent, db_id).resolve()
        if resolved.exists() and not resolved.is_relative_to(inside):
            return (f"{file.name} item {index}: database/{db_id}/{db_id}.sqlite resolves to {resolved}, "
                    f"outside {inside}: put the database file itself under database/{db_id}/ "
                    f"(not a link out of the folder)")
    return None


def spider_problems(key: str, path) -> list[str]:
    """Why ``path`` is not a usable Spider folder (empty when it is)."""
    if not path:
        return [f"{key}={path!r}: data.source=spider needs the folder holding {DEV_FILE} and database/; "
                f"set {key}=/path/to/spider"]
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        return [f"{key}={str(path)!r} is not a directory; set {key} to the Spider folder "
                f"(with {DEV_FILE} and database/<db_id>/<db_id>.sqlite)"]
    problems = []
    if not (root / DEV_FILE).is_file():
        problems.append(f"{key}={str(path)!r} has no {DEV_FILE}; point {key} at the folder that holds it")
    if not (root / "database").is_dir():
        problems.append(f"{key}={str(path)!r} has no database/ folder; Spider keeps each database at "
                        f"database/<db_id>/<db_id>.sqlite under that folder")
    return problems


@dataclass
class SpiderData:
    splits: Splits
    databases: dict[str, Path]      # db_id -> sqlite file
    dropped: dict[str, int]         # why questions were left out -> how many
    within_databases: bool = False  # too few databases to keep them apart: questions were split


class DataError(ValueError):
    """A question file that cannot be used; the message names the file, what is wrong and the fix."""


QUESTION_KEYS = ("db_id", "question", "query")
UTF8_FIX = "re-save it as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)"


def _read_questions(file: Path, prefix: str) -> list[Example]:
    try:
        items = read_json_list(file, "{db_id, question, query} items", UTF8_FIX)
    except DataFileError as err:
        raise DataError(f"{file.name} {err}") from None
    for key in QUESTION_KEYS:
        bad = [i for i, item in enumerate(items) if not isinstance(item, dict) or not isinstance(item.get(key), str)]
        if bad:
            raise DataError(f"{file.name} has {len(bad)} of {len(items)} items without a text {key!r} "
                            f"(first: item {bad[0]}); every item needs db_id, question and query (the gold SQL)")
    if problem := db_id_problem(file, items):
        raise DataError(problem)
    return [Example(id=f"{prefix}-{i}", inputs={"question": item["question"].strip(), "db_id": item["db_id"]},
                    target={"sql": item["query"].strip(), "level": None})
            for i, item in enumerate(items)]


def _share_databases(examples: list[Example], fractions: list[float], rng: random.Random) -> list[list[Example]]:
    """Whole databases to each part, greedily towards each part's share of the questions."""
    by_db: dict[str, list[Example]] = {}
    for e in examples:
        by_db.setdefault(e.inputs["db_id"], []).append(e)
    db_ids = sorted(by_db)
    rng.shuffle(db_ids)
    parts: list[list[Example]] = [[] for _ in fractions]
    for db_id in db_ids:
        # the part furthest below its share takes the next database
        k = min(range(len(parts)), key=lambda p: len(parts[p]) / (fractions[p] * len(examples) or 1))
        parts[k].extend(by_db[db_id])
    return parts


def _interleave_by_db(examples: list[Example], rng: random.Random, cap: int) -> list[Example]:
    """A seeded sample of at most ``cap``, ordered round-robin over databases so that a prefix
    (the loop evaluates the first budget.val_examples) spans many databases."""
    queues: dict[str, list[Example]] = {}
    for e in rng.sample(examples, len(examples)):
        queues.setdefault(e.inputs["db_id"], []).append(e)
    out: list[Example] = []
    while len(out) < cap and any(queues.values()):
        for db_id in sorted(queues):
            if queues[db_id] and len(out) < cap:
                out.append(queues[db_id].pop(0))
    return out


def load_spider(path, seed: int, val_fraction: float, test_fraction: float, max_per_split: int,
                timeout_s: float = 10.0) -> SpiderData:
    root = Path(str(path)).expanduser()
    rng = random.Random(seed)
    dev = _read_questions(root / DEV_FILE, "dev")
    train_file = root / TRAIN_FILE
    dropped: dict[str, int] = {}

    def with_database(examples: list[Example]) -> list[Example]:
        kept = [e for e in examples if database_file(root, e.inputs["db_id"]).is_file()]
        if len(kept) < len(examples):
            dropped["database file not found"] = dropped.get("database file not found", 0) + len(examples) - len(kept)
        return kept

    dev = with_database(dev)
    within = False
    if train_file.is_file():
        train = with_database(_read_questions(train_file, "train"))
        held = val_fraction + test_fraction
        val, test = _share_databases(dev, [val_fraction / held, test_fraction / held], rng)
        if dev and not (val and test):
            within, (val, test) = True, _split_questions(dev, [val_fraction / held, test_fraction / held], rng)
    else:
        fractions = [1 - val_fraction - test_fraction, val_fraction, test_fraction]
        train, val, test = _share_databases(dev, fractions, rng)
        if dev and not (train and val and test):
            within, (train, val, test) = True, _split_questions(dev, fractions, rng)
    train, val, test = (_interleave_by_db(part, rng, max_per_split) for part in (train, val, test))
    val, test = _drop_unrunnable(root, val, timeout_s, dropped), _drop_unrunnable(root, test, timeout_s, dropped)
    used = {e.inputs["db_id"] for e in train + val + test}
    return SpiderData(Splits(train, val, test), {db: database_file(root, db) for db in sorted(used)}, dropped,
                      within)


def _split_questions(examples: list[Example], fractions: list[float], rng: random.Random) -> list[list[Example]]:
    """A seeded shuffle of the questions cut by ``fractions`` (the first part takes the rest);
    every later part with a share above 0 gets at least one question."""
    order = rng.sample(examples, len(examples))
    sizes = [max(round(f * len(order)), 1 if f > 0 else 0) for f in fractions[1:]]
    parts, end = [], len(order)
    for size in reversed(sizes):
        parts.insert(0, order[max(end - size, 0):end])
        end = max(end - size, 0)
    return [order[:end]] + parts


def _drop_unrunnable(root: Path, examples: list[Example], timeout_s: float, dropped: dict[str, int]) -> list[Example]:
    """Held-out questions whose gold query fails in SQLite cannot be scored: leave them out."""
    items = [{"db_path": str(database_file(root, e.inputs["db_id"])), "gold": e.target["sql"],
              "pred": e.target["sql"]} for e in examples]
    verdicts = evaluate_batch(items, timeout_s, max_rows=10 ** 7)
    kept = [e for e, v in zip(examples, verdicts) if v.outcome != "gold_failed"]
    if len(kept) < len(examples):
        dropped["gold query fails in SQLite"] = dropped.get("gold query fails in SQLite", 0) + len(examples) - len(kept)
    return kept

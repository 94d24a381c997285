"""Loading LawBench 3-3 and CAIL2018 files from a local path, splitting, and the label list.

Records are plain dicts ``{"id", "fact", "charges", "instruction"}``; ``fact`` keeps the
LawBench shape "事实:..." for both formats so prompts look the same whatever the source.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

from sia.data import DataFileError, read_json_list, undecodable

from .metrics import ANSWER_PREFIX

FORMATS = ("auto", "lawbench", "cail")
FACT_PREFIX = "事实:"
# LawBench's own zero-shot instruction for 3-3 (also used for CAIL and synthetic data).
LAWBENCH_INSTRUCTION = (
    "请你模拟法官依据下面事实给出罪名，只需要给出罪名的名称，将答案写在[罪名]和<eoa>之间。"
    "例如[罪名]盗窃;诈骗<eoa>。请你严格按照这个格式回答。"
)
LAWBENCH_URL = "https://raw.githubusercontent.com/open-compass/LawBench/main/data/zero_shot/3-3.json"
UTF8_FIX = "re-save it as UTF-8 (e.g. iconv -f GBK -t UTF-8 old.json > new.json)"


# A data file that cannot be used. The message continues "<key>=<path>" with what is wrong
# and the fix, so the task can prefix the config key it came from (sia.data's convention).
DataError = DataFileError


def normalise_charge(name: str) -> str:
    """One spelling for a charge name across sources.

    LawBench's names (and the official CAIL2018 ``accusation`` names) have no 罪 suffix;
    some CAIL derivatives write "盗窃罪" or "[盗窃]". Strip brackets, spaces and a final 罪
    so both formats share LawBench's label list.
    """
    name = name.strip().strip("[]【】").strip()
    if name.endswith("罪") and len(name) > 1:
        name = name[:-1]
    return name


def parse_gold_answer(answer: str) -> list[str]:
    """``"罪名:a;b"`` -> ``["a", "b"]`` (LawBench removes the prefix and splits on ';')."""
    body = answer.replace(ANSWER_PREFIX, "").replace("罪名：", "")
    names = (normalise_charge(part) for part in re.split(r"[;；]", body))
    return unique([n for n in names if n])


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def as_fact(text: str) -> str:
    text = text.strip()
    return text if text.startswith(FACT_PREFIX) else FACT_PREFIX + text


# ---- formats ----------------------------------------------------------------------------
def detect_format(path: Path) -> str | None:
    """'lawbench' for a JSON list, 'cail' for JSON lines with a ``fact``; None otherwise."""
    with open(path, "rb") as handle:
        first = handle.readline()
        while first and not first.strip():
            first = handle.readline()
    try:
        first = first.decode("utf-8").lstrip("\ufeff").strip()
    except UnicodeDecodeError as err:
        raise undecodable(err, UTF8_FIX, " of its first line") from None
    if first.startswith("["):
        return "lawbench"
    if first.startswith("{"):
        try:
            item = json.loads(first)
        except ValueError:  # one pretty-printed object is not JSON lines
            return None
        return "cail" if isinstance(item, dict) and "fact" in item else None
    return None


def load_lawbench(path: Path) -> list[dict]:
    items = read_json_list(path, "LawBench 3-3 {'question', 'answer'} items", UTF8_FIX)
    _check_items(items)
    records = []
    for index, item in enumerate(items):
        records.append({
            "id": str(item.get("id", f"lb33-{index:03d}")),
            "fact": as_fact(item["question"]),
            "charges": parse_gold_answer(item["answer"]),
            "instruction": item.get("instruction") or LAWBENCH_INSTRUCTION,
        })
    return records


def _check_items(items: list) -> None:
    """Every LawBench item must be an object with string 'question' (the facts) and
    'answer' ("罪名:a;b"); name how many are not, and the first."""
    for key in ("question", "answer"):
        bad = [i for i, item in enumerate(items)
               if not isinstance(item, dict) or not isinstance(item.get(key), str)]
        if bad:
            raise DataError(
                f"has {len(bad)} of {len(items)} items without a text {key!r} (first: item {bad[0]}); "
                f"every LawBench 3-3 item needs 'question' (the facts) and 'answer' (e.g. "
                f"\"罪名:盗窃\"): add it, or drop those items")


def load_cail(path: Path) -> list[dict]:
    records = []
    with open(path, "rb") as handle:  # bytes, so a bad byte is reported with its line
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise undecodable(err, UTF8_FIX, f" of line {number}") from None
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"line {number} is not valid JSON ({err.msg}): CAIL2018 files hold "
                                f"one JSON object per line") from None
            if not isinstance(item, dict) or not isinstance(item.get("fact"), str):
                raise DataError(f"line {number} has no text 'fact': every CAIL2018 line needs 'fact' "
                                f"and meta.accusation; fix that line or drop it")
            meta = item.get("meta")
            names = meta.get("accusation", []) if isinstance(meta, dict) else []
            records.append({
                "id": str(item.get("id", f"cail-{number - 1:06d}")),
                "fact": as_fact(item["fact"]),
                "charges": unique(n for n in map(normalise_charge, map(str, names)) if n),
                "instruction": LAWBENCH_INSTRUCTION,
            })
    return records


def load_records(path: Path, fmt: str = "auto") -> list[dict]:
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path) or ""
    if fmt == "lawbench":
        return load_lawbench(path)
    if fmt == "cail":
        return load_cail(path)
    raise DataError("cannot tell the format (neither a JSON list nor JSON lines with 'fact'): "
                    "set task.data.format=lawbench or cail")


# ---- splits -----------------------------------------------------------------------------
def split_records(
    records: list[dict], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[dict], list[dict], list[dict]]:
    """Seeded shuffle, then test, val and train slices (sizes rounded, train gets the rest;
    a part with a fraction above 0 gets at least one record, so a small file still has
    held-out data when it can)."""
    order = list(records)
    random.Random(seed).shuffle(order)
    n_test = max(round(len(order) * test_fraction), 1 if test_fraction > 0 else 0)
    n_val = max(round(len(order) * val_fraction), 1 if val_fraction > 0 else 0)
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return train, val, test


# ---- labels -----------------------------------------------------------------------------
def load_labels(labels_path: Path | None, data_path: Path | None, train: list[dict]) -> list[str]:
    """``labels_path``, else ``charges.json`` beside the data file, else the gold names of the
    ``train`` records: never of val/test records, whose charges the list (public to every
    harness) would otherwise give away."""
    candidates = [labels_path] if labels_path else []
    if data_path is not None:
        candidates.append(Path(data_path).parent / "charges.json")
    for candidate in candidates:
        if candidate is not None and Path(candidate).is_file():
            try:
                names = read_json_list(candidate, "charge names (the label list)", UTF8_FIX)
            except DataError as err:
                raise DataError(f"{candidate} {err}") from None
            if not all(isinstance(n, str) for n in names):
                raise DataError(f"{candidate} is not a JSON list of charge names: every item must be a "
                                f"text (e.g. \"盗窃\")")
            return unique(n for n in map(normalise_charge, names) if n)
    return unique(name for record in train for name in record["charges"])


def by_train_frequency(labels: list[str], train: list[dict]) -> list[str]:
    """Labels ordered by how often they are gold in train (ties keep the list order), so a
    harness that can show only part of a long list shows the most useful part."""
    counts = Counter(name for record in train for name in record["charges"])
    rank = {name: i for i, name in enumerate(labels)}
    return sorted(labels, key=lambda name: (-counts[name], rank[name]))


def download(dest: Path) -> Path:
    """For online users only (never called by tests or the default config): fetch LawBench
    3-3 into ``dest`` and return the file path."""
    import urllib.request

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "3-3.json"
    with urllib.request.urlopen(LAWBENCH_URL, timeout=60) as response:  # noqa: S310
        target.write_bytes(response.read())
    return target

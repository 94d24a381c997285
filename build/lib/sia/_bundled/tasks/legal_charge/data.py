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

from .metrics import ANSWER_PREFIX

FORMATS = ("auto", "lawbench", "cail")
FACT_PREFIX = "事实:"
# LawBench's own zero-shot instruction for 3-3 (also used for CAIL and synthetic data).
LAWBENCH_INSTRUCTION = (
    "请你模拟法官依据下面事实给出罪名，只需要给出罪名的名称，将答案写在[罪名]和<eoa>之间。"
    "例如[罪名]盗窃;诈骗<eoa>。请你严格按照这个格式回答。"
)
LAWBENCH_URL = "https://raw.githubusercontent.com/open-compass/LawBench/main/data/zero_shot/3-3.json"


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
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
        while first and not first.strip():
            first = handle.readline()
    first = first.lstrip("\ufeff").strip()
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
    items = json.loads(Path(path).read_text(encoding="utf-8"))
    records = []
    for index, item in enumerate(items):
        records.append({
            "id": str(item.get("id", f"lb33-{index:03d}")),
            "fact": as_fact(item["question"]),
            "charges": parse_gold_answer(item["answer"]),
            "instruction": item.get("instruction") or LAWBENCH_INSTRUCTION,
        })
    return records


def load_cail(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            item = json.loads(line)
            names = item.get("meta", {}).get("accusation", [])
            records.append({
                "id": str(item.get("id", f"cail-{index:06d}")),
                "fact": as_fact(item["fact"]),
                "charges": unique(n for n in map(normalise_charge, names) if n),
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
    raise ValueError(f"{path}: cannot tell the format; set task.data.format=lawbench or cail")


# ---- splits -----------------------------------------------------------------------------
def split_records(
    records: list[dict], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[dict], list[dict], list[dict]]:
    """Seeded shuffle, then test, val and train slices (sizes rounded, train gets the rest)."""
    order = list(records)
    random.Random(seed).shuffle(order)
    n_test = round(len(order) * test_fraction)
    n_val = round(len(order) * val_fraction)
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return train, val, test


# ---- labels -----------------------------------------------------------------------------
def load_labels(labels_path: Path | None, data_path: Path | None, records: list[dict]) -> list[str]:
    """``labels_path``, else ``charges.json`` beside the data file, else the gold names seen."""
    candidates = [labels_path] if labels_path else []
    if data_path is not None:
        candidates.append(Path(data_path).parent / "charges.json")
    for candidate in candidates:
        if candidate is not None and Path(candidate).is_file():
            names = json.loads(Path(candidate).read_text(encoding="utf-8"))
            return unique(n for n in map(normalise_charge, names) if n)
    return unique(name for record in records for name in record["charges"])


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

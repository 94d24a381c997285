"""The task's non-LLM baselines, scored once per run on the loop's own val/test examples.

Results are cached by a digest of the data (task, data label, example ids, baseline names),
so a resumed run, or another run on the same data, does not recompute them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from sia.data import RunData
from sia.run import read_json, write_json_atomic
from sia.tasks import Task

log = logging.getLogger(__name__)


def data_digest(task: Task, data: RunData) -> str:
    ids = {split: [e.id for e in getattr(data, split)] for split in ("val", "test")}
    names = [b.name for b in task.baselines()]
    blob = json.dumps([task.name, task.data_label, ids, names, len(data.splits.train)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def score_baselines(task: Task, data: RunData, cache_dir: Path) -> dict[str, dict]:
    """``{name: {"description", "val", "test", "seconds"}}`` (``error`` instead when one fails)."""
    baselines = task.baselines()
    if not baselines:
        return {}
    cache = Path(cache_dir) / "baselines" / f"{task.name}-{data_digest(task, data)}.json"
    if cache.is_file():
        return read_json(cache)
    out: dict[str, dict] = {}
    for b in baselines:
        started = time.perf_counter()
        try:
            row = {"description": b.description}
            for split in ("val", "test"):
                examples = getattr(data, split)
                if examples:
                    answers = b.predict(data.splits, examples)
                    row[split] = task.evaluate(examples, answers, split).primary(task.scoring)
            row["seconds"] = time.perf_counter() - started
        except Exception as exc:   # a broken baseline is reported, it never stops the run
            log.warning("baseline %s failed: %s", b.name, exc)
            row = {"description": b.description, "error": f"{type(exc).__name__}: {exc}"}
        out[b.name] = row
    write_json_atomic(cache, out)
    return out

"""Rollouts: the incumbent harness (with the incumbent adapter) run on train examples, K
samples each, every sample scored by the task's trusted evaluator on the train split.

Sampling is the trusted side's: the pool overrides the harness's own decoding settings with
the rollout's temperature and a distinct seed per call, and records what it used. The reward
of an example is credited to the model calls whose output became the answer
(``sia.train.rollouts.credited_calls``: those marked ``used=True``, else the last call), and
only to calls the pool itself served: a harness cannot put text of its own into the training
data. A job whose answer came without a model call gives no sample.

One line per finished job (its reward and its samples) is appended to ``rollouts.jsonl``
chunk by chunk (fsync'd), so a kill -9 during sampling redraws only the unfinished jobs, and
one during training redraws nothing.

Leave-one-out: a chunk's harness runs see ``ctx.resources`` built without the chunk's own
examples (``resources_for``), so a harness cannot look up the target of the example it is
rolled out on and earn its reward with any text. A chunk holds all K samples of a few
examples, so each run leaves out as few train examples as it can.
"""
from __future__ import annotations

import copy
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sia.evaluation import Workbench
from sia.harness.contract import Job
from sia.tasks import Example, Task
from sia.train.rollouts import cut_torn_tail, sample_record, samples_from_events

CHUNK = 16      # jobs per pool run between two appends to rollouts.jsonl


@dataclass
class RolloutPlan:
    examples: list[Example]
    samples_per_prompt: int
    temperature: float
    seed: int


def job_id(example: Example, k: int) -> str:
    return f"{example.id}~{k}"


def rotating_examples(train: list[Example], n: int, seed: int, generation: int) -> list[Example]:
    """The ``n`` train examples a generation's rollout draws on: a fixed seeded order of the
    train split, walked ``n`` at a time, one window per generation (wrapping around), so
    successive updates see different examples and, over generations, all of them."""
    order = list(train)
    random.Random(seed).shuffle(order)
    if not order:
        return []
    n = min(n, len(order))
    start = (generation * n) % len(order)
    return [order[(start + i) % len(order)] for i in range(n)]


def read_rollouts(path: Path) -> list[dict]:
    """Rows of a rollouts file; a torn last line (kill -9 mid-write) is dropped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break       # only the last line can be torn
    return rows


def append_rollouts(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def collect(task: Task, bench: Workbench, harness: Path, adapter: str | None, plan: RolloutPlan,
            path: Path, desc: str, on_progress: Callable[[int, int], None] | None = None,
            resources_for: Callable[[list[Example]], dict] | None = None) -> list[dict]:
    """Every sample of the plan (one row per job: example id, group, reward, credited calls),
    drawing only the jobs ``path`` does not hold yet. ``on_progress(done, total)`` counts over
    all of them (see ``HarnessPool.run``); the chunks already appended stay when it raises.
    ``resources_for(examples)``: the ``ctx.resources`` of a chunk on those examples (leave-one-out)."""
    cut_torn_tail(path)
    rows = read_rollouts(path)
    done = {r["job"] for r in rows}
    todo = [(e, k) for e in plan.examples for k in range(plan.samples_per_prompt) if job_id(e, k) not in done]
    sampling = {"temperature": plan.temperature, "seed": plan.seed}
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        # the chunk's last job is reported once the chunk is appended: a stop keeps a finished chunk
        progress = None if on_progress is None else (
            lambda done, n, s=start: on_progress(s + done, len(todo)) if done < n else None)
        runner = bench
        if resources_for is not None:
            held = list({e.id: e for e, _ in chunk}.values())
            runner = copy.copy(bench)   # the same pool and files, the chunk's own resources
            runner.resources = resources_for(held)
        results = runner.run(harness, [Job(id=job_id(e, k), inputs=e.inputs) for e, k in chunk], adapter,
                             desc=desc, sampling=sampling, on_progress=progress)
        answers = [r.answer if r.error is None else None for r in results]
        report = task.evaluate([e for e, _ in chunk], answers, "train")
        new = []
        for (example, k), result, scored in zip(chunk, results, report.per_example):
            samples = [] if result.error else samples_from_events(
                result.events, float(scored.score), group=example.id, example_id=example.id, served=result.served)
            new.append({"job": job_id(example, k), "example_id": example.id, "k": k, "reward": float(scored.score),
                        "failure": "error" if result.error else scored.failure,
                        "samples": [sample_record(x) for x in samples]})
        append_rollouts(path, new)
        rows += new
        if on_progress is not None:
            on_progress(start + len(chunk), len(todo))
    return rows

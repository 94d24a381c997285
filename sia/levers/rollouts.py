"""Rollouts: the incumbent harness (with the incumbent adapter) run on train examples, K
samples each, every sample scored by the task's trusted evaluator on the train split; the one
module that draws them, stores them (``rollouts.jsonl``) and turns them into trainer samples.

It lives with the weights lever, not in ``sia.train``: drawing a rollout needs the harness
pool, the tasks and the evaluator, while ``sia.train`` only ever sees ``Sample`` objects.

Sampling is the trusted side's: the pool overrides the harness's own decoding settings with
the rollout's temperature and a distinct seed per call, and records what it used. The reward
of an example is credited to the model calls whose output became the answer
(``credited_calls``: those marked ``used=True``, else the last call), and only to calls the
pool itself served: a harness cannot put text of its own into the training data. A job whose
answer came without a model call gives no sample.

The file: one JSON line per finished job, ``{"job", "example_id", "k", "reward", "failure",
"samples": [sample records]}``, appended chunk by chunk (fsync'd), so a kill -9 during
sampling redraws only the unfinished jobs, and one during training redraws nothing. A torn
last line (the write a kill cut short) is cut off before the next append; a bad line anywhere
else is corruption and raises, naming the line. A run dir's ``gen_NNN/rollouts.jsonl`` copied
into another run dir is reused the same way (benchmarks/weights_algorithms.py does so).

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
from sia.train.samples import Sample

CHUNK = 16      # jobs per pool run between two appends to rollouts.jsonl
ROW_KEYS = ("job", "reward", "samples")   # what every job row holds (collect and the lever read them)


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


# ---- rollouts.jsonl ----------------------------------------------------------------------

def read_rollouts(path: Path) -> list[dict]:
    """The job rows of a rollouts file ([] when it does not exist). A last line without its
    newline is a write cut short and is skipped; a line anywhere else that is not a job row
    raises ValueError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        return []
    body, newline, _torn = path.read_text(encoding="utf-8", errors="replace").rpartition("\n")
    rows = []
    for number, line in enumerate(body.split("\n") if newline else [], 1):
        if line.strip():
            rows.append(_row(line, path, number))
    return rows


def _row(line: str, path: Path, number: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        row, why = None, f"not JSON ({exc})"
    else:
        why = _row_problem(row)
    if why:
        raise ValueError(f"{path}:{number}: not a rollout job row ({why}); the file is corrupt: delete it to "
                         f"draw the rollout again")
    return row


def _row_problem(row) -> str | None:
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        return f"lacks {missing}"
    return None if isinstance(row["samples"], list) else "samples is not a list"


def append_rollouts(path: Path, rows: list[dict]) -> None:
    """Append job rows, durably (fsync'd) before returning; a torn tail is cut off first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _cut_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _cut_torn_tail(path: Path) -> None:
    """Truncate the file after its last newline, so the next append starts a fresh line."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


def sample_record(sample: Sample) -> dict:
    """A sample as a job row stores it."""
    record = {"group": sample.group, "example_id": sample.example_id, "seed": sample.seed,
              "temperature": sample.sampling_temperature, "top_p": sample.top_p, "finish": sample.finish,
              "prompt": sample.prompt, "completion": sample.completion, "reward": sample.reward, "eos": sample.eos}
    if sample.completion_ids is not None:   # the sampled ids: what the trainer trains on
        record["prompt_ids"], record["completion_ids"] = sample.prompt_ids, sample.completion_ids
    return record


def record_sample(record: dict) -> Sample:
    """A Sample from a stored record; one without ids (an engine that reports none) trains on its text."""
    missing = [k for k in ("prompt", "completion") if k not in record]
    if missing:
        raise ValueError(f"rollout record lacks {missing}; each sample needs at least prompt and completion")
    return Sample(prompt=record["prompt"], completion=record["completion"], reward=record.get("reward"),
                  group=str(record.get("group", "")), sampling_temperature=record.get("temperature"),
                  eos=bool(record.get("eos", True)), example_id=str(record.get("example_id", "")),
                  seed=record.get("seed"), top_p=record.get("top_p"), finish=record.get("finish"),
                  prompt_ids=record.get("prompt_ids"), completion_ids=record.get("completion_ids"))


def rollout_samples(rows: list[dict]) -> list[Sample]:
    """The trainer's samples: the credited model calls of every job row."""
    return [record_sample(x) for r in rows for x in r["samples"]]


# ---- drawing -----------------------------------------------------------------------------

def collect(task: Task, bench: Workbench, harness: Path, adapter: str | None, plan: RolloutPlan,
            path: Path, desc: str, on_progress: Callable[[int, int], None] | None = None,
            resources_for: Callable[[list[Example]], dict] | None = None) -> list[dict]:
    """Every job row of the plan (example id, k, reward, credited samples), drawing only the
    jobs ``path`` does not hold yet. ``on_progress(done, total)`` counts over all of them (see
    ``HarnessPool.run``); the chunks already appended stay when it raises.
    ``resources_for(examples)``: the ``ctx.resources`` of a chunk on those examples (leave-one-out)."""
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


# ---- trajectories -> samples -------------------------------------------------------------

def credited_calls(events: list[dict]) -> list[dict]:
    """The model calls whose output became the answer: those the harness marked ``used``
    (``ctx.llm.chat(..., used=True)``); with none marked, the last call before the answer
    unless it is marked ``used=False`` or a ``fallback`` event follows it (an output the harness
    threw away gets no credit)."""
    calls = []
    for event in events:
        if not isinstance(event, dict):
            continue
        if event.get("type") == "llm_call":
            calls.append(event)
        elif event.get("type") == "fallback":   # ctx.log("fallback"): the outputs so far were replaced
            calls = [{**c, "used": False} if c.get("used") is None else c for c in calls]
    marked = [c for c in calls if c.get("used") is True]
    if marked:
        return marked
    unrejected = [c for c in calls if c.get("used") is not False]
    return unrejected[-1:]


def samples_from_events(events: list[dict], reward: float | None, *, group: str, served: list[dict],
                        example_id: str = "") -> list[Sample]:
    """Samples for one harness run: each credited call's messages and completion with the
    run's reward. ``served``: the calls the trusted parent actually answered (the pool's own
    record); each credited call is matched to a served call, each served call to at most one
    credited call (a call logged as used 50 times is one sample), and the sample is built from
    the served record alone (prompt, completion, ids, temperature, top_p, seed, finish): a
    harness can neither put text of its own into the training data nor say how it was sampled."""
    unmatched: dict[str, list[dict]] = {}
    for call in served:
        if isinstance(call, dict) and call.get("type") == "llm_call":
            unmatched.setdefault(_call_key(call), []).append(call)
    out = []
    for call in credited_calls(events):
        left = unmatched.get(_call_key(call))
        if left:
            out.append(_served_sample(left.pop(0), reward, group=group, example_id=example_id))
    return out


def _served_sample(call: dict, reward: float | None, *, group: str, example_id: str) -> Sample:
    """A Sample from one trusted served-call record (``sia.harness.batcher.served_record``)."""
    finish = call.get("finish")
    if finish is None:   # an engine that does not say: its finish_reason is all there is
        eos = call.get("finish_reason", "stop") == "stop"
    else:
        eos = finish == "eos"
    return Sample(prompt=call["messages"], completion=call["completion"], reward=reward, group=group,
                  sampling_temperature=call.get("temperature"), eos=eos, example_id=example_id,
                  seed=call.get("seed"), top_p=call.get("top_p"), finish=finish,
                  prompt_ids=call.get("prompt_ids"), completion_ids=call.get("completion_ids"))


def _call_key(call: dict) -> str | None:
    try:
        return json.dumps([call.get("messages"), call.get("completion")], sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):   # a harness event that is not plain JSON matches nothing
        return None

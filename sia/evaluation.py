"""Running a harness on a split and scoring it: the trusted side of every generation.

``Workbench`` runs harness jobs in the sandboxed pool with the run's public resources and
files. ``SplitEvaluator`` runs a harness on a split, scores the answers with the task's
evaluator and writes, per generation and split:

- ``scores_<split>.json``        primary, metrics and one row per example (score, failure, reason)
- ``trajectories_<split>.jsonl`` every model call, tool call, answer, score, failure, reason
- ``<run>/trusted/gen_NNN_<split>.jsonl``  the evaluator's ``details`` (they may hold the gold):
  trusted-only, for reports; nothing on the feedback side reads that folder.

``SandboxChecker`` is the ``HarnessChecker`` agents use for candidate files.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sia.harness.contract import Job, JobResult
from sia.run import RunDir, read_json, write_json_atomic, write_jsonl_atomic, write_text_atomic
from sia.tasks import Example, Task

TRUSTED_DIR = "trusted"
CHECK_EXAMPLES = 3


@dataclass
class SplitScores:
    primary: float
    metrics: dict[str, float]
    rows: list[dict]             # per example: id, score, failure, reason, error, tokens

    @classmethod
    def from_json(cls, data: dict) -> "SplitScores":
        return cls(primary=data["primary"], metrics=data["metrics"], rows=data["rows"])


def answer_preview(answer: Any) -> Any:
    """What a trajectory keeps of an answer: all of it, unless it is a large array."""
    if hasattr(answer, "shape") and hasattr(answer, "dtype"):
        return {"array": {"shape": list(answer.shape), "dtype": str(answer.dtype)}}
    return answer


class Workbench:
    """The sandboxed pool bound to the run's public resources and files."""

    def __init__(self, pool, resources: dict, files: dict[str, str], progress: bool):
        self.pool, self.resources, self.files, self.progress = pool, resources, files, progress

    @property
    def workers(self) -> int:
        """Jobs that run at once: the pool's workers."""
        return int(self.pool.workers)

    def run(self, harness: Path, jobs: list[Job], adapter: str | None, desc: str, **kw) -> list[JobResult]:
        return self.pool.run(str(harness), jobs, self.resources, self.files, adapter=adapter,
                             progress=self.progress, desc=desc, **kw)

    def check(self, harness: Path) -> str | None:
        return self.pool.check(str(harness), self.resources, self.files)


class SplitEvaluator:
    def __init__(self, task: Task, bench: Workbench, run: RunDir):
        self.task, self.bench, self.run = task, bench, run

    def evaluate(self, generation: int, split: str, examples: list[Example], harness: Path,
                 adapter: str | None, on_progress: Callable[[int, int], None] | None = None,
                 chunk: int | None = None, judge: Callable[[list[dict]], str | None] | None = None) -> SplitScores:
        """Scores of ``harness`` on ``examples``, read back when already on disk. ``on_progress``:
        see ``HarnessPool.run`` (what it raises leaves nothing on disk), called with the jobs done
        over all chunks.

        With ``chunk`` and ``judge`` (the paired keep rule) the examples run ``chunk`` at a time;
        after each chunk ``judge(rows so far)`` returns None to go on, or why to stop here. The
        scores file is written once, when the run ends: it holds the rows of the examples run,
        ``n`` (how many), ``pool`` (how many it could have run) and ``stopped`` (why it stopped
        early, or null), so a resume reads back exactly what the decision saw."""
        gen_dir = self.run.gen_dir(generation)
        scores_file = gen_dir / f"scores_{split}.json"
        if scores_file.is_file():
            return SplitScores.from_json(read_json(scores_file))
        step = len(examples) if not chunk or judge is None else max(1, int(chunk))
        started = time.monotonic()
        rows, trajectories, trusted, stopped, reports = [], [], [], None, []
        for at in range(0, len(examples), step):
            part = examples[at:at + step]
            progress = None if on_progress is None else (lambda done, total, at=at: on_progress(at + done,
                                                                                                len(examples)))
            results = self.bench.run(harness, [Job(id=e.id, inputs=e.inputs) for e in part], adapter,
                                     desc=f"gen {generation} {split}", on_progress=progress)
            report = self.task.evaluate(part, [r.answer if r.error is None else None for r in results], split)
            reports.append((part, results, report))
            for row, trajectory, detail in self._rows(generation, split, adapter, part, results, report):
                rows.append(row)
                trajectories.append(trajectory)
                trusted.append(detail)
            if judge is not None and at + step < len(examples):
                stopped = judge(rows)
                if stopped:
                    break
        run_examples = examples[:len(rows)]
        if len(reports) == 1:
            report = reports[0][2]
        else:   # the metrics of the whole run (a task's metric need not be a mean of its examples')
            report = self.task.evaluate(run_examples, [r.answer if r.error is None else None
                                                       for _, results, _ in reports for r in results], split)
        scores = SplitScores(primary=report.primary(self.task.scoring), metrics=report.metrics, rows=rows)
        write_jsonl_atomic(self.run.path / TRUSTED_DIR / f"gen_{generation:03d}_{split}.jsonl", trusted)
        write_jsonl_atomic(gen_dir / f"trajectories_{split}.jsonl", trajectories)
        write_json_atomic(scores_file, {"primary": scores.primary, "metrics": scores.metrics, "rows": rows,
                                        "notes": report.notes, "split": split, "n": len(rows),
                                        "pool": len(examples), "stopped": stopped,
                                        "wall_s": time.monotonic() - started})   # the pace a budget plans with
        return scores

    def _rows(self, generation: int, split: str, adapter: str | None, examples: list[Example], results,
              report) -> list[tuple[dict, dict, dict]]:
        """Per example: the scores row, the trajectory line and the trusted details."""
        out = []
        for example, result, scored in zip(examples, results, report.per_example):
            failure, reason = scored.failure, scored.reason
            if result.error:   # the evaluator never saw this answer
                failure, reason = "error", f"harness {result.error['kind']}: {result.error['message'][-300:]}"
            elif failure is None and not self.task.scoring.full_credit(scored.score):
                failure = "wrong"   # an evaluator that forgot to say: below full credit is "wrong"
            tokens = result.prompt_tokens + result.completion_tokens
            out.append(({"id": example.id, "score": scored.score, "failure": failure, "reason": reason,
                         "error": result.error, "tokens": tokens},
                        {"generation": generation, "split": split, "id": example.id, "adapter": adapter,
                         "events": result.events, "answer": answer_preview(result.answer),
                         "error": result.error, "score": scored.score, "failure": failure,
                         "reason": reason, "wall_s": result.wall_s, "llm_s": result.llm_s,
                         "prompt_tokens": result.prompt_tokens,
                         "completion_tokens": result.completion_tokens},
                        {"id": example.id, "details": scored.details}))
        return out

    def trajectories(self, generation: int, split: str) -> list[dict]:
        path = self.run.gen_dir(generation) / f"trajectories_{split}.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class SandboxChecker:
    """A candidate harness must parse, load in the sandbox and solve a few train examples
    without a harness error before it is evaluated or becomes generation 0."""

    def __init__(self, bench: Workbench, train: list[Example], scratch: Path):
        self.bench, self.train, self.scratch = bench, train[:CHECK_EXAMPLES], scratch

    def check(self, code: str) -> str | None:
        try:
            compile(code, "harness.py", "exec")
        except SyntaxError as exc:
            return f"the harness does not parse: SyntaxError: {exc.msg} (line {exc.lineno})"
        path = self.scratch / f"candidate_{hashlib.sha256(code.encode()).hexdigest()[:12]}.py"
        write_text_atomic(path, code)
        problem = self.bench.check(path)
        if problem:
            return f"the harness does not load in the sandbox: {problem}"
        results = self.bench.run(path, [Job(id=e.id, inputs=e.inputs) for e in self.train], None, desc="check")
        failed = [r for r in results if r.error]
        if failed:
            e = failed[0].error
            return (f"{len(failed)} of {len(results)} train examples failed in the harness; first "
                    f"({failed[0].id}): {e['kind']}: {e['message'][-1500:]}")
        return None

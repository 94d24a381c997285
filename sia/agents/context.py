"""What a feedback agent is given after every generation: public facts only.

The digest and trajectories are of the incumbent on val; reasons in them are gold-free and
``details`` (which may hold gold) never reach here. Train targets are public, so the train-probe
trajectories come with their examples. Test is reported, never used for a decision: the history
records a feedback is given are copies with every test field cleared (``without_test``).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sia.agents.digest import Digest
from sia.parts import HarnessChecker, HarnessTrier, LeverOffer
from sia.records import GenerationRecord
from sia.tasks import HarnessEdit


TEST_FIELDS = ("test", "test_metrics", "incumbent_test")


def without_test(record: Any) -> Any:
    """A copy of a history record (GenerationRecord or dict) with no test score, metric or field."""
    if isinstance(record, GenerationRecord):
        extra = {k: v for k, v in record.extra.items() if "test" not in k}
        return replace(record, test=None, test_metrics={}, incumbent_test=None, extra=extra)
    if isinstance(record, dict):
        return {k: v for k, v in record.items() if k not in TEST_FIELDS and "test" not in k}
    return record


@dataclass
class FeedbackContext:
    generation: int
    harness_code: str                      # the incumbent harness
    digest: Digest                         # of the incumbent on val (+ train probe)
    history: list[GenerationRecord]        # records of finished generations
    offer: LeverOffer                      # what the weights lever can do now
    edits: list[HarnessEdit] = field(default_factory=list)   # the task's offline edit library
    trajectories: list[dict] = field(default_factory=list)   # the incumbent's val trajectories
    train_trajectories: list[dict] = field(default_factory=list)   # the incumbent on the train probe
    train_examples: list = field(default_factory=list)     # the probe's train examples (gold: train is public)
    baselines: dict[str, float] = field(default_factory=dict)  # baseline name -> val score
    budget_left: dict[str, Any] = field(default_factory=dict)  # generations, minutes, agent tokens/dollars
    train_probe: Digest | None = None      # the incumbent on a few train examples (over-/under-fitting)
    task_text: str = ""                    # task.md
    checker: HarnessChecker | None = None  # checks a candidate harness before it is proposed
    trier: HarnessTrier | None = None      # runs a candidate on a few train examples (an agent's try)

    def __post_init__(self) -> None:
        self.history = [without_test(h) for h in self.history]


class TrainTrier:
    """A candidate harness run on the first ``n`` TRAIN examples in the sandbox, with the
    incumbent's adapter: what an agent may learn before it decides (train is not held out, so the
    rows carry their gold). Never val or test: selection stays on val."""

    MAX_EXAMPLES = 16

    def __init__(self, bench: Any, task: Any, train: list, scratch: Path, adapter: str | None = None):
        self.bench, self.task, self.train = bench, task, list(train)
        self.scratch, self.adapter = Path(scratch), adapter

    def try_on_train(self, code: str, n: int) -> dict:
        """{"problem": why it could not run, or None; "score", "n", "wall_s", "rows"} where each
        row is a trajectory (id, score, failure, reason, error, answer, events) plus its ``gold``."""
        from sia.evaluation import answer_preview
        from sia.harness.contract import Job
        from sia.run import write_text_atomic

        try:
            compile(code, "harness.py", "exec")
        except SyntaxError as exc:
            return {"problem": f"the harness does not parse: SyntaxError: {exc.msg} (line {exc.lineno})"}
        path = self.scratch / f"try_{hashlib.sha256(code.encode()).hexdigest()[:12]}.py"
        write_text_atomic(path, code)
        problem = self.bench.check(path)
        if problem:
            return {"problem": f"the harness does not load in the sandbox: {problem}"}
        examples = self.train[:max(1, min(int(n), self.MAX_EXAMPLES))]
        started = time.monotonic()
        results = self.bench.run(path, [Job(id=e.id, inputs=e.inputs) for e in examples], self.adapter, desc="try")
        report = self.task.evaluate(examples, [r.answer if r.error is None else None for r in results], "train")
        rows = []
        for e, r, scored in zip(examples, results, report.per_example):
            failure, reason = scored.failure, scored.reason
            if r.error:
                failure, reason = "error", f"harness {r.error['kind']}: {str(r.error['message'])[-300:]}"
            elif failure is None and not self.task.scoring.full_credit(scored.score):
                failure = "wrong"
            rows.append({"id": e.id, "score": scored.score, "failure": failure, "reason": reason, "error": r.error,
                         "answer": answer_preview(r.answer), "events": r.events, "gold": e.target})
        return {"problem": None, "score": report.primary(self.task.scoring), "n": len(examples),
                "wall_s": round(time.monotonic() - started, 2), "rows": rows}

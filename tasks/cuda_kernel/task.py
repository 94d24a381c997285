"""Task ``cuda_kernel``: write a faster TriMul kernel; judged in a sandboxed child process.

Examples are attempts: every example asks the harness for one complete submission (the
inputs carry the attempt number and the public problem), and every answer is judged on the
whole suite of cases, correctness and timing. There is no target to hide: the evaluator
draws fresh inputs from secret one-time seeds each time it judges. Identical answers in one
``evaluate`` call are judged once.
"""
from __future__ import annotations

import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sia.tasks import EvalReport, Example, ExampleScore, HarnessEdit, Splits, Task, Scoring, plain_config

from . import settings as config
from .edits import harness_edits
from .judge import REFERENCE_SOURCE, Judge, Verdict, geomean

METRICS = ("speedup", "score", "correct", "best_speedup", "runtime_us", "reference_us", "eval_seconds")
PUBLIC_SECTIONS = {"operator": "Operator", "contract": "Submission contract", "rules": "Rules",
                   "scoring": "Scoring"}


def markdown_sections(text: str) -> dict[str, str]:
    """``## Heading`` -> body, from task.md (one source for the Meta-Agent and the harness)."""
    parts = re.split(r"^## +(.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def reward(speedup: float) -> float:
    """Per-example score in [0, 1): 0 when incorrect, 0.5 at reference speed, -> 1 when faster."""
    return speedup / (1.0 + speedup) if speedup > 0 else 0.0


# Verdict kinds the evaluator could not read or run as a submission (ExampleScore.failure
# "format"): nothing to import, no entry point, a compile error, or a child that could not
# even be set up to run it. Every other failing kind ran and fell short: "wrong".
FORMAT_KINDS = {"no_submission", "compile", "contract", "sandbox", "setup", "evaluator"}


def failure_kind(verdict: Verdict, speedup: float) -> str | None:
    """None only for full credit: correct and faster than the reference."""
    if not verdict.ok:
        return "format" if verdict.kind in FORMAT_KINDS else "wrong"
    return None if speedup > 1.0 else "wrong"


def score_reason(verdict: Verdict, speedup: float) -> str:
    if verdict.ok and speedup <= 1.0:
        return f"correct but not faster than the reference ({speedup:.2f}x its speed)"
    return verdict.reason


def figures_note(device: str) -> str:
    if device == "cpu":
        return ("CPU figures: scaled-down shapes, wall-clock µs of this machine (Triton through "
                "TRITON_INTERPRET=1); never comparable with GPU figures")
    return ("CUDA figures: leaderboard shapes, the evaluator's wall clock around each synchronised "
            "call (includes IPC and the output checksum); child_us holds the child's CUDA-event "
            "times, comparable with leaderboard figures but reported by untrusted code")


class TaskImpl(Task):
    name = "cuda_kernel"
    scoring = Scoring(primary_metric="speedup", direction="max", reward_shape="sparse", metrics=METRICS)

    def __init__(self, cfg: Any, root: Path):
        super().__init__(cfg, root)
        metric = plain_config(cfg).get("primary_metric", "speedup")
        if metric in config.PRIMARY_METRICS:
            self.scoring = Scoring(primary_metric=metric, direction="max", reward_shape="sparse", metrics=METRICS)
        self._settings: config.Settings | None = None

    # ---- configuration -------------------------------------------------------------------
    def config_problems(self) -> list[str]:
        return config.problems(self.cfg)

    @property
    def settings(self) -> config.Settings:
        if self._settings is None:
            self._settings = config.Settings.from_cfg(self.cfg)
        return self._settings

    @property
    def data_label(self) -> str:
        s = self.settings
        shapes = "scaled-down CPU shapes" if s.device == "cpu" else "GPU MODE trimul shapes"
        return f"synthetic TriMul inputs, one-time secret seeds ({s.device}, {shapes})"

    # ---- data ----------------------------------------------------------------------------
    def load(self) -> Splits:
        s = self.settings
        public = {"device": s.device, "benchmark": [c.to_dict() for c in s.benchmark]}

        def attempts(split: str) -> list[Example]:
            return [Example(id=f"{split}-{k}", inputs={"attempt": k, **public})
                    for k in range(s.examples[split])]

        return Splits(train=attempts("train"), val=attempts("val"), test=attempts("test"))

    def public_resources(self, splits: Splits) -> dict[str, Any]:
        s = self.settings
        sections = markdown_sections(self.description())
        resources = {key: sections.get(title, "") for key, title in PUBLIC_SECTIONS.items()}
        resources.update(
            device=s.device,
            tolerance={"rtol": s.rtol, "atol": s.atol},
            shapes={"correctness": [c.to_dict() for c in s.correctness],
                    "benchmark": [c.to_dict() for c in s.benchmark]},
        )
        return resources

    # ---- scoring ---------------------------------------------------------------------------
    def evaluate(self, examples: list[Example], answers: list[Any], split: str) -> EvalReport:
        s = self.settings
        started = time.perf_counter()
        judge = Judge(s, s.plans.get(split, s.plans["val"]))
        verdicts: dict[Any, Verdict] = {}
        for answer in answers:
            key = answer if isinstance(answer, str) else None
            if key not in verdicts:
                verdicts[key] = judge.judge(answer)
        reference = judge.judge(REFERENCE_SOURCE) if any(v.ok for v in verdicts.values()) else None
        if reference is not None and not reference.ok:
            # The evaluator cannot time anything: say so rather than blame the submissions.
            broken = Verdict(False, "evaluator", f"evaluator error: the reference failed ({reference.reason})", s.device)
            verdicts = {k: (broken if v.ok else v) for k, v in verdicts.items()}

        per_example, speedups = [], []
        for example, answer in zip(examples, answers):
            verdict = verdicts[answer if isinstance(answer, str) else None]
            speedup = self._speedup(verdict, reference)
            speedups.append(speedup)
            per_example.append(ExampleScore(
                id=example.id, score=reward(speedup), reason=score_reason(verdict, speedup),
                failure=failure_kind(verdict, speedup),
                details={"verdict": verdict.kind, "device": s.device, "speedup": speedup,
                         "runtime_us": verdict.runtime_us, "case_us": verdict.case_us,
                         "child_us": verdict.child_us, "eval_s": round(verdict.eval_s, 2)}))

        correct = [(sp, verdicts[a if isinstance(a, str) else None]) for sp, a in zip(speedups, answers) if sp > 0]
        best = max(correct, key=lambda pair: pair[0], default=(0.0, None))
        n = max(1, len(per_example))
        metrics = {
            "speedup": sum(speedups) / n,
            "score": sum(e.score for e in per_example) / n,
            "correct": len(correct) / n,
            "best_speedup": best[0],
            "runtime_us": best[1].runtime_us if best[1] else math.nan,
            "reference_us": reference.runtime_us if reference and reference.ok else math.nan,
            "eval_seconds": time.perf_counter() - started,
        }
        notes = {"device": s.device, "figures": figures_note(s.device), "split": split,
                 "verdicts": dict(Counter(e.details["verdict"] for e in per_example)),
                 "reference_case_us": reference.case_us if reference and reference.ok else {}}
        return EvalReport(metrics=metrics, per_example=per_example, notes=notes)

    @staticmethod
    def _speedup(verdict: Verdict, reference: Verdict | None) -> float:
        if not verdict.ok or reference is None or not reference.ok:
            return 0.0
        ratios = [reference.case_us[label] / us for label, us in verdict.case_us.items() if label in reference.case_us]
        return geomean(ratios) if ratios else 0.0

    # ---- levers ------------------------------------------------------------------------------
    def harness_edits(self) -> list[HarnessEdit]:
        return harness_edits()

    def baselines(self) -> list:
        from .baselines import baselines

        return baselines()

    def supports_gold_sft(self) -> bool:
        return False   # no gold kernels: the weights lever learns from the task model's own successes

    def positive_threshold(self, rollout_mean: float, incumbent_score: float | None) -> float:
        # a correct kernel faster than the incumbent's, not merely correct: the reward is
        # monotone in the speed-up, so "faster" is "above the incumbent's val reward"
        return rollout_mean if incumbent_score is None else float(incumbent_score)

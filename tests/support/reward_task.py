"""A task for rollout tests: the test hands over its examples and says how an answer scores."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from sia.tasks import EvalReport, ExampleScore, Scoring, Task


class RewardTask(Task):
    """``load`` is never called (a rollout test passes its examples in ``RolloutPlan``);
    ``reward(answer)`` grades each answer, so the test states the rewards it expects recorded."""

    name = "toy"
    scoring = Scoring(primary_metric="score")

    def __init__(self, root: Path, reward: Callable[[Any], float]):
        super().__init__({}, root)
        self.reward = reward

    def load(self):
        raise NotImplementedError("a rollout test hands over its examples in RolloutPlan")

    def evaluate(self, examples, answers, split):
        per = [ExampleScore(id=e.id, score=float(self.reward(a))) for e, a in zip(examples, answers)]
        return EvalReport(metrics={"score": sum(s.score for s in per) / max(len(per), 1)}, per_example=per)

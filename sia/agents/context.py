"""What a feedback policy is given after every generation: public facts only.

The digest and trajectories are of the incumbent on val; reasons in them are gold-free and
``details`` (which may hold gold) never reach here. Train targets are public.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sia.agents.digest import Digest
from sia.parts import HarnessChecker, LeverOffer
from sia.records import GenerationRecord
from sia.tasks import HarnessEdit


@dataclass
class FeedbackContext:
    generation: int
    harness_code: str                      # the incumbent harness
    digest: Digest                         # of the incumbent on val (+ train probe)
    history: list[GenerationRecord]        # records of finished generations
    offer: LeverOffer                      # what the weights lever can do now
    edits: list[HarnessEdit] = field(default_factory=list)   # the task's offline edit library
    trajectories: list[dict] = field(default_factory=list)   # the incumbent's val trajectories
    baselines: dict[str, float] = field(default_factory=dict)  # baseline name -> val score
    budget_left: dict[str, Any] = field(default_factory=dict)  # generations, minutes, agent tokens/dollars
    train_probe: Digest | None = None      # the incumbent on a few train examples (over-/under-fitting)
    task_text: str = ""                    # task.md
    checker: HarnessChecker | None = None  # checks a candidate harness before it is proposed

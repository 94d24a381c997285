"""The Feedback-Agent's decision, validated before anything is applied."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ACTIONS = ("harness", "weights", "stop")
AUTO = "auto"     # the weights lever picks the algorithm from the rollout's reward statistics


class InvalidDecision(ValueError):
    pass


@dataclass
class Decision:
    action: Literal["harness", "weights", "stop"]
    rationale: str
    harness_code: str | None = None          # action=harness: the full new harness file
    edit: str | None = None                  # action=harness: the library edit's name, if any
    training: dict[str, Any] | None = None   # action=weights: {"algorithm", "steps", "examples"} (a "data"
    #                                          key some feedback agents still write is ignored by the lever)
    stats: dict[str, Any] = field(default_factory=dict)  # the digest the decision was made on

    def validate(self, algorithms: tuple[str, ...] | None = None) -> "Decision":
        """Raise InvalidDecision unless well-formed; ``algorithms``: what the weights lever
        offers now (None: any name)."""
        if self.action not in ACTIONS:
            raise InvalidDecision(f"action {self.action!r} is not one of {ACTIONS}")
        if not self.rationale or not self.rationale.strip():
            raise InvalidDecision("a decision needs a rationale")
        if self.action == "harness":
            if not isinstance(self.harness_code, str) or "def solve" not in self.harness_code:
                raise InvalidDecision("action=harness needs harness_code: a whole harness file defining solve()")
        if self.action == "weights":
            t = self.training or {}
            name = t.get("algorithm")
            allowed = None if algorithms is None else (AUTO, *algorithms)
            if not isinstance(name, str) or not name or (allowed is not None and name not in allowed):
                raise InvalidDecision(f"training.algorithm {name!r} is not one the weights lever offers now "
                                      f"({', '.join(allowed or ('any name',))})")
            for key in ("steps", "examples"):
                if not isinstance(t.get(key), int) or t[key] < 1:
                    raise InvalidDecision(f"training.{key} must be a positive integer, got {t.get(key)!r}")
        return self

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Decision":
        known = {k: data[k] for k in ("action", "rationale", "harness_code", "edit", "training", "stats") if k in data}
        return cls(**known).validate()

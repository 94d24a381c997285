"""The Feedback-Agent's decision, validated before anything is applied.

Everything the loop or the weights lever reads of a decision is a typed field: the training
plan (``TrainingPlan``), the digest it was made on (stamped by the loop), whether a fallback
feedback made it and what the agent's calls cost. ``stats`` is free-form: what the feedback
wants on record (errors, tries, ...), read by people and tests, never by the loop or the lever.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from sia.agents.digest import Digest
from sia.records import split_fields

ACTIONS = ("harness", "weights", "stop")
AUTO = "auto"     # the weights lever picks the algorithm from the rollout's reward statistics


class InvalidDecision(ValueError):
    pass


@dataclass
class PlanForecast:
    """What the loop's time plan (``sia.pace.plan_weights``) forecast for a weight update."""

    fits: bool
    examples: int                # rollout examples
    steps: int
    forecast_s: float            # run time at the generation's end


@dataclass
class TrainingPlan:
    """action=weights: what to train. ``algorithm``: ``auto`` (the lever chooses from the
    rollout's reward statistics) or a name the lever offers; ``examples``: train examples (a
    rollout uses at most ``lora.rollout_examples`` of them); ``steps``: optimizer steps."""

    algorithm: str
    steps: int
    examples: int
    forecast: PlanForecast | None = None   # set by the loop before the decision is written

    @classmethod
    def from_json(cls, data: dict) -> "TrainingPlan":
        """Also reads an older ``decision.json``'s plan (its ``data`` key is ignored)."""
        forecast = data.get("forecast")
        return cls(algorithm=data.get("algorithm"), steps=data.get("steps"), examples=data.get("examples"),
                   forecast=PlanForecast(**forecast) if isinstance(forecast, dict) else None)


@dataclass
class AgentCost:
    """What an LLM agent's calls cost for one decision (``sia.agents.llm.client.cost_since``)."""

    calls: int = 0
    cached_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    dollars: float = 0.0
    latency_s: float = 0.0

    @classmethod
    def from_json(cls, data: dict | None) -> "AgentCost":
        return cls(**split_fields(cls, data or {})[0])


@dataclass
class Decision:
    action: Literal["harness", "weights", "stop"]
    rationale: str
    harness_code: str | None = None          # action=harness: the full new harness file
    edit: str | None = None                  # action=harness: the library edit's name, if any
    training: TrainingPlan | None = None     # action=weights: what to train
    digest: Digest | None = None             # the incumbent's val digest it was made on (the loop sets it)
    fallback: bool = False                   # the feedback's fallback made it (its own agent failed)
    cost: AgentCost = field(default_factory=AgentCost)   # what the feedback's agent calls cost
    stats: dict[str, Any] = field(default_factory=dict)  # free-form, for the record only

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
            t = self.training
            if not isinstance(t, TrainingPlan):
                raise InvalidDecision(f"action=weights needs training: a TrainingPlan(algorithm, steps, examples), "
                                      f"got {t!r}")
            allowed = None if algorithms is None else (AUTO, *algorithms)
            name = t.algorithm
            if not isinstance(name, str) or not name or (allowed is not None and name not in allowed):
                raise InvalidDecision(f"training.algorithm {t.algorithm!r} is not one the weights lever offers now "
                                      f"({', '.join(allowed or ('any name',))})")
            for key in ("steps", "examples"):
                value = getattr(t, key)
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise InvalidDecision(f"training.{key} must be a positive integer, got {value!r}")
        return self

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Decision":
        """A decision read back from ``decision.json``; one written before these fields were typed
        keeps its training plan, digest, fallback and cost in ``stats`` and is read from there."""
        stats = dict(data.get("stats") or {})
        training = data.get("training")
        digest = data.get("digest")
        if digest is None and all(f.name in stats for f in fields(Digest) if f.name in _DIGEST_NEEDED):
            digest = {f.name: stats[f.name] for f in fields(Digest) if f.name in stats}
        decision = cls(action=data.get("action"), rationale=data.get("rationale"),
                       harness_code=data.get("harness_code"), edit=data.get("edit"),
                       training=TrainingPlan.from_json(training) if isinstance(training, dict) else None,
                       digest=Digest(**digest) if isinstance(digest, dict) else None,
                       fallback=bool(data.get("fallback", stats.get("fallback", False))),
                       cost=AgentCost.from_json(data.get("cost") or stats.get("cost")), stats=stats)
        return decision.validate()


_DIGEST_NEEDED = ("n", "score", "error_rate", "format_rate", "wrong_rate", "wellformed_accuracy")

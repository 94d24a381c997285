"""Typed run records: the run state, one record per finished generation, the incumbent.

These are what ``state.json`` holds and what feedback agents, tracking, the summary and the report
read. Every record round-trips through JSON; unknown keys in a file are kept in ``extra`` so
a newer writer's fields survive an older reader.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

STATE_VERSION = 2


def split_fields(cls, data: dict) -> tuple[dict, dict]:
    """(the keys of ``data`` that are fields of dataclass ``cls``, the rest): reads a record an older or
    newer release wrote, whose keys differ from today's."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names}


@dataclass
class Incumbent:
    generation: int
    harness: str                    # path of the harness file
    adapter: str | None = None      # adapter version name, None = base weights
    val: float | None = None
    test: float | None = None

    @classmethod
    def from_json(cls, data: dict | None) -> "Incumbent | None":
        return None if data is None else cls(**split_fields(cls, data)[0])


@dataclass
class GenerationRecord:
    generation: int
    action: str                     # seed | harness | weights | stop | invalid
    rationale: str = ""
    edit: str | None = None         # harness: the library edit's name, if any
    algorithm: str | None = None    # weights: the training algorithm
    kept: bool = False
    failed: str | None = None       # why the candidate could not be built or decided
    fallback: bool = False          # the decision came from the fallback feedback
    harness: str | None = None
    adapter: str | None = None
    val: float | None = None
    test: float | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    train_probe: float | None = None
    tokens: int = 0                 # task-model tokens spent on the val evaluation
    train_loss_first: float | None = None
    train_loss_last: float | None = None
    train_losses: list[float] = field(default_factory=list)   # every optimizer step of this update
    train_s: float = 0.0
    agent_tokens: int = 0           # meta/feedback agent tokens spent deciding this generation
    agent_dollars: float = 0.0
    wall_s: float = 0.0
    val_n: int | None = None        # val examples run (paired keep rule: fewer when it stopped early)
    keep_rule: str | None = None    # paired | strict (sia/keep.py)
    keep_gain: float | None = None  # paired: mean gain per example over the incumbent on the same examples
    keep_low: float | None = None   # its 95% interval
    keep_high: float | None = None
    keep_n: int | None = None       # paired examples that decided it
    keep_why: str | None = None
    incumbent_val: float | None = None    # after this generation
    incumbent_test: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The decision as one word, e.g. ``harness:few_shot`` or ``weights:grpo``."""
        detail = self.edit or self.algorithm
        return self.action + (f":{detail}" if detail else "")

    def to_json(self) -> dict:
        out = asdict(self)
        extra = out.pop("extra")
        return {**extra, **out}

    @classmethod
    def from_json(cls, data: dict) -> "GenerationRecord":
        known, extra = split_fields(cls, data)
        known.setdefault("extra", {})
        known["extra"] = {**known["extra"], **extra}
        return cls(**{k: v for k, v in known.items()})


@dataclass
class RunState:
    version: int = STATE_VERSION
    status: str = "running"          # running | done
    next_generation: int = 0
    incumbent: Incumbent | None = None
    history: list[GenerationRecord] = field(default_factory=list)
    elapsed_s: float = 0.0           # wall time summed over every attempt of this run
    generate_s: float = 0.0          # of which the engine generated
    train_s: float = 0.0             # of which the weights lever trained
    wandb_id: str | None = None
    stop_reason: str | None = None   # why the run ended before its generation budget

    def to_json(self) -> dict:
        return {"version": self.version, "status": self.status, "next_generation": self.next_generation,
                "incumbent": None if self.incumbent is None else asdict(self.incumbent),
                "history": [h.to_json() for h in self.history], "elapsed_s": self.elapsed_s,
                "generate_s": self.generate_s, "train_s": self.train_s, "wandb_id": self.wandb_id,
                "stop_reason": self.stop_reason}

    @classmethod
    def from_json(cls, data: dict) -> "RunState":
        data = migrate(dict(data))
        return cls(version=data["version"], status=data["status"], next_generation=data["next_generation"],
                   incumbent=Incumbent.from_json(data.get("incumbent")),
                   history=[GenerationRecord.from_json(h) for h in data.get("history", [])],
                   elapsed_s=data.get("elapsed_s", 0.0), generate_s=data.get("generate_s", 0.0),
                   train_s=data.get("train_s", 0.0), wandb_id=data.get("wandb_id"),
                   stop_reason=data.get("stop_reason"))


class StateVersionError(RuntimeError):
    pass


def migrate(data: dict) -> dict:
    """Bring a state file of an older version up to ``STATE_VERSION`` (old run dirs still resume)."""
    version = data.get("version")
    if version == 1:   # v1 kept engine/trainer seconds under "timing"
        timing = data.pop("timing", None) or {}
        data["generate_s"] = timing.get("generate_s", 0.0)
        data["train_s"] = timing.get("train_s", 0.0)
        data["version"] = version = 2
    if version != STATE_VERSION:
        raise StateVersionError(f"state version {version!r} is not one this SIA reads (1..{STATE_VERSION}); "
                                f"resume it with the SIA that started it")
    return data

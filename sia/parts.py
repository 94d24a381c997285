"""The parts a run is made of, as interfaces: the loop knows these and none of the concrete
classes. Each part is built by ``hydra.utils.instantiate`` from a ``_target_`` node in its
config group, so a new feedback, meta agent, lever or engine is one class plus one YAML file.

    MetaAgent       writes the first harness (agent.meta=seed|llm)
    Feedback        decides the next lever after every generation (feedback=rules|...|llm)
    WeightsLever    builds training data, trains, returns an adapter (lora.algorithm=auto|sft|...)
    Evaluator       runs a harness on a split and scores it (sia.evaluation.SplitEvaluator)
    Engine          the task model (model.engine=hf|vllm; sia.engine.base.Engine)

Every member the loop or the lever reads is declared here; ``Parts`` checks its parts against
these protocols when it is built, so a part that lacks one fails at assembly, naming it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from sia.agents.decision import AgentCost, Decision
from sia.evaluation import SplitScores
from sia.harness.contract import Job, JobResult
from sia.keep import KeepSettings
from sia.records import split_fields
from sia.tasks import Example, Task

MIN_ROLLOUT_EXAMPLES = 2     # the smallest rollout a weight update runs (and a time plan shrinks to)


class LeverFailed(RuntimeError):
    """A candidate could not be built (no training data, a harness that does not load, ...): the
    generation fails and the loop goes on with the incumbent."""


@dataclass
class MetaOutcome:
    """The first harness and how it came about (``gen_000/meta.json``: these fields, flat)."""

    code: str
    agent: str                           # which Meta-Agent wrote it (seed | llm | ...)
    fell_back_to_seed: bool = False      # the agent's harness never passed: the task's seed harness instead
    cost: AgentCost | None = None        # an LLM agent's calls
    details: dict[str, Any] = field(default_factory=dict)   # the rest, for the record: model, tries, errors, reason

    def to_json(self) -> dict[str, Any]:
        return {**self.details, "agent": self.agent, "fell_back_to_seed": self.fell_back_to_seed,
                "cost": asdict(self.cost) if self.cost is not None else None}

    @classmethod
    def from_json(cls, data: dict, code: str = "") -> "MetaOutcome":
        known = ("agent", "fell_back_to_seed", "cost")
        return cls(code=code, agent=str(data.get("agent", "?")), fell_back_to_seed=bool(data.get("fell_back_to_seed")),
                   cost=AgentCost.from_json(data["cost"]) if data.get("cost") else None,
                   details={k: v for k, v in data.items() if k not in known})


class HarnessChecker(Protocol):
    """What an agent may ask of the trusted side about a candidate harness file."""

    def check(self, code: str) -> str | None:
        """None when ``code`` parses, loads in the sandbox and solves min(3, train size) train
        examples without a harness error; otherwise the problem, in words an agent can act on."""


class HarnessTrier(Protocol):
    """What an agent may run before it decides: a candidate on a few TRAIN examples."""

    def try_on_train(self, code: str, n: int) -> dict:
        """{"problem": str | None, "score": float, "n": int, "wall_s": float, "rows": [trajectory +
        "gold"]}: the candidate run in the sandbox on the first ``n`` train examples."""


@dataclass
class AgentEnv:
    """What the agents see of the run: public things only (train targets are public)."""

    task: Task
    run_dir: Path
    resources: dict[str, Any]            # ctx.resources of the harness
    files: dict[str, str]                # ctx.files of the harness: name -> path
    train: list[Example]                 # train examples, with targets
    checker: HarnessChecker


@runtime_checkable
class MetaAgent(Protocol):
    def first_harness(self, env: AgentEnv) -> MetaOutcome: ...


@runtime_checkable
class Feedback(Protocol):
    name: str
    # True: every kept generation is also scored on the train probe (``budget.probe_train_examples``)
    # and the context carries its digest and trajectories (over-/under-fitting, train with gold).
    wants_train_probe: bool
    # how the loop judges this feedback's candidates on val (``feedback.keep*``, sia/keep.py)
    keep_settings: KeepSettings = KeepSettings()

    def decide(self, ctx: Any) -> Decision:
        """``ctx`` is a ``sia.agents.context.FeedbackContext``; the result is validated."""

    def decide_with(self, ctx: Any, levers: frozenset[str]) -> Decision | None:
        """The decision with only ``levers`` allowed: the loop asks for ``{"harness"}`` when no
        weight update fits the time left. None: this feedback cannot decide so (the loop then
        stops the run; a resume with more time trains). The default, for a feedback that
        subclasses this protocol."""
        return None


@dataclass
class LeverOffer:
    """What the weights lever can do for the current incumbent, asked before deciding."""

    available: bool
    reason: str                          # why not, when unavailable
    algorithms: tuple[str, ...] = ()     # names a decision may use
    max_steps: int = 0
    max_examples: int = 0
    # how an update's size turns into work, for the loop's time plan (sia.pace.plan_weights):
    samples_per_prompt: int = 1          # rollout samples per example
    rollout_examples: int | None = None  # most examples a rollout uses (None: all the decision's)
    steps_per_example: float | None = None   # steps a rollout example feeds at most (None: no limit)
    min_rollout_examples: int = MIN_ROLLOUT_EXAMPLES


@dataclass
class TrainReport:
    """What a weight update did, as ``train.json`` holds it."""

    algorithm: str | None = None         # None: nothing was trained (``skipped`` says why)
    skipped: str | None = None
    rationale: str = ""                  # why this algorithm, or why none
    losses: list[float] = field(default_factory=list)   # one per optimizer step
    wall_s: float = 0.0                  # training time
    steps: int = 0
    examples: int = 0
    rollout_s: float = 0.0               # rollout time (~0 when resumed from a saved rollout)
    reward_stats: dict[str, Any] | None = None   # sia.train.samples.RewardStats of the rollout
    signal_share: float | None = None    # rollout groups with reward spread
    too_long: dict[str, Any] | None = None   # samples over lora.max_seq_len (refused whole)
    tokens_per_s: float | None = None
    peak_rss_mb: float | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainReport":
        """Reads any ``train.json`` (an older one lacks some keys: their defaults)."""
        known = {k: v for k, v in split_fields(cls, data)[0].items() if v is not None}
        return cls(**{**known, "algorithm": data.get("algorithm"), "skipped": data.get("skipped")})


@dataclass
class TrainedAdapter:
    name: str                            # version name the engine serves it under ("" when skipped)
    path: Path
    report: TrainReport = field(default_factory=TrainReport)


@runtime_checkable
class WeightsLever(Protocol):
    def offer(self, task: Task, harness_code: str) -> LeverOffer: ...

    def train(self, generation: int, decision: Decision, harness: Path, adapter: str | None,
              adapter_dir: Path | None, pace: Callable[[int, int], None] | None = None) -> TrainedAdapter:
        """Train from the incumbent (``harness`` with the adapter served as ``adapter``, saved in
        ``adapter_dir``; None: base weights). ``report.skipped`` says why nothing was trained;
        ``LeverFailed``: no candidate (the generation fails, the run goes on).
        ``pace(done, total)``: called as the rollout jobs finish; what it raises (the budget's
        ``OutOfTime``) must reach the caller, with what was sampled kept for a resume."""


class Bench(Protocol):
    """The sandboxed pool bound to the run's public resources (``sia.evaluation.Workbench``)."""

    workers: int                         # jobs that run at once (a pace forecast waits for that many)

    def run(self, harness: Path, jobs: list[Job], adapter: str | None, desc: str, **kw: Any) -> list[JobResult]:
        """Run ``jobs`` with ``harness`` (``kw``: ``HarnessPool.run``'s, e.g. on_progress)."""

    def check(self, harness: Path) -> str | None:
        """None when the harness file loads in the sandbox; otherwise the problem."""


@runtime_checkable
class Evaluator(Protocol):
    bench: Bench

    def evaluate(self, generation: int, split: str, examples: list[Example], harness: Path, adapter: str | None,
                 on_progress: Callable[[int, int], None] | None = None, chunk: int | None = None,
                 judge: Callable[[list[dict]], str | None] | None = None) -> SplitScores:
        """Scores of ``harness`` on ``examples`` (``sia.evaluation.SplitEvaluator.evaluate``)."""

    def trajectories(self, generation: int, split: str) -> list[dict]:
        """The trajectories written for a generation's split ([] when none)."""


@dataclass
class Parts:
    """What the loop is made of (``sia.assemble`` builds it from the config)."""

    meta: MetaAgent
    feedback: Feedback
    lever: WeightsLever
    evaluator: Evaluator
    env: AgentEnv                        # what agents see; env.checker checks candidates

    def __post_init__(self) -> None:
        for role, proto in (("meta", MetaAgent), ("feedback", Feedback), ("lever", WeightsLever),
                            ("evaluator", Evaluator)):
            problem = missing_members(getattr(self, role), proto)
            if problem:
                raise TypeError(f"the {role} part {problem}")


def missing_members(part: Any, proto: type) -> str | None:
    """None when ``part`` has every member ``proto`` declares; otherwise which it lacks."""
    if isinstance(part, proto):
        return None
    names = sorted(n for n in _members(proto) if not hasattr(part, n))
    return (f"{type(part).__module__}.{type(part).__qualname__} lacks {', '.join(names)} "
            f"(declared by sia.parts.{proto.__name__}: define them, or subclass the protocol for its defaults)")


def _members(proto: type) -> set[str]:
    names = set(getattr(proto, "__annotations__", {}))
    names |= {n for n, v in vars(proto).items() if callable(v) and not n.startswith("_")}
    return names

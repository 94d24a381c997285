"""The parts a run is made of, as interfaces: the loop knows these and none of the concrete
classes. Each part is built by ``hydra.utils.instantiate`` from a ``_target_`` node in its
config group, so a new feedback, meta agent, lever or engine is one class plus one YAML file.

    MetaAgent       writes the first harness (agent.meta=seed|llm)
    Feedback  decides the next lever after every generation (feedback=rules|...|llm)
    WeightsLever    builds training data, trains, returns an adapter (lora.algorithm=auto|sft|...)
    Engine          the task model (model.engine=hf|vllm; sia.engine.base.Engine)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from sia.agents.decision import Decision
from sia.tasks import Example, Task


@dataclass
class MetaOutcome:
    """The first harness and how it came about (written to ``gen_000/meta.json``)."""

    code: str
    info: dict[str, Any] = field(default_factory=dict)   # agent, tries, errors, fell_back_to_seed, cost


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

    def decide(self, ctx: Any) -> Decision:
        """``ctx`` is a ``sia.agents.feedback.FeedbackContext``; the result is validated."""


@dataclass
class LeverOffer:
    """What the weights lever can do for the current incumbent, asked before deciding."""

    available: bool
    reason: str                          # why not, when unavailable
    algorithms: tuple[str, ...] = ()     # names a decision may use
    max_steps: int = 0
    max_examples: int = 0


@dataclass
class TrainedAdapter:
    name: str                            # version name the engine serves it under
    path: Path
    info: dict[str, Any] = field(default_factory=dict)   # losses, wall_s, algorithm, reward statistics


@runtime_checkable
class WeightsLever(Protocol):
    def offer(self, task: Task, harness_code: str) -> LeverOffer: ...

    def train(self, generation: int, decision: Decision, harness: Path, adapter: str | None,
              adapter_dir: Path | None, pace: Callable[[int, int], None] | None = None) -> TrainedAdapter:
        """Train from the incumbent (``harness`` with the adapter served as ``adapter``, saved in
        ``adapter_dir``; None: base weights). ``info["skipped"]`` says why nothing was trained.
        ``pace(done, total)``: called as the rollout jobs finish; what it raises (the budget's
        ``OutOfTime``) must reach the caller, with what was sampled kept for a resume."""


@dataclass
class Parts:
    """What the loop is made of (``sia.assemble`` builds it from the config)."""

    meta: MetaAgent
    feedback: Feedback
    lever: WeightsLever
    evaluator: Any                       # sia.evaluation.SplitEvaluator: evaluate(), trajectories(), bench
    env: AgentEnv                        # what agents see; env.checker checks candidates

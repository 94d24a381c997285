"""The task contract and the registry that discovers tasks under ``tasks/<name>/``.

A task folder holds:

- ``task.md``          what the Meta-Agent reads: the problem, the answer contract, the rules;
- ``task.py``          a class ``TaskImpl(Task)`` (loader, evaluator, public resources, edits);
- ``seed_harness.py``  the first harness the offline Meta-Agent uses.

Examples carry ``inputs`` (public: the harness sees them) and ``target`` (private for
val/test: only the evaluator and, for the train split, the trainer and few-shot retrieval
see it). The evaluator is trusted code: it never imports harness code and never runs a
submission in its own process (tasks whose answers are code run them in a child process).
"""
from __future__ import annotations

import importlib
import sys
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from sia.paths import tasks_dir

TASKS_DIR = tasks_dir()


@dataclass(frozen=True)
class Scoring:
    primary_metric: str
    direction: Literal["max", "min"] = "max"
    # binary: right/wrong; graded: partial credit in [0,1]; sparse: most attempts fail outright
    reward_shape: Literal["binary", "graded", "sparse"] = "graded"
    metrics: tuple[str, ...] = ()
    # the per-example score that is full credit (a row below it is a failure); None: the
    # evaluator's own ``failure`` field alone says (e.g. kernels: correct and faster)
    full_credit_score: float | None = 1.0

    def full_credit(self, score: float) -> bool:
        return self.full_credit_score is None or score >= self.full_credit_score

    def better(self, a: float, b: float) -> bool:
        """True when score ``a`` is strictly better than ``b``."""
        return a > b if self.direction == "max" else a < b


@dataclass
class Example:
    id: str
    inputs: dict[str, Any]
    target: Any = None


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]

    def __getitem__(self, name: str) -> list[Example]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


# Why an example fell short, the only thing the digest counts:
# error  - the harness raised, timed out or ran out of memory (set by the loop, never by evaluators);
# format - the evaluator could not read or run the answer (abstention, no valid label, no SQL,
#          a kernel that does not compile, a matrix of the wrong shape or with NaN);
# wrong  - readable and run, but below full credit (the task defines full credit);
# None   - full credit.
FailureKind = Literal["error", "format", "wrong"]
FAILURE_KINDS = ("error", "format", "wrong")


@dataclass
class ExampleScore:
    id: str
    score: float          # reward in [0, 1] for max-direction tasks; raw value otherwise
    reason: str = ""      # one sentence: what kind of mistake it was, never quoting a held-out target
    details: dict[str, Any] = field(default_factory=dict)   # trusted-only (may hold the gold): never
                                                            # written where the feedback side reads
    failure: FailureKind | None = None


@dataclass
class EvalReport:
    metrics: dict[str, float]
    per_example: list[ExampleScore]
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. {"device": "cpu"} labels

    def primary(self, scoring: Scoring) -> float:
        return float(self.metrics[scoring.primary_metric])


@dataclass
class HarnessEdit:
    """One concrete, named rewrite of a harness, offered to the offline feedback agent.

    ``addresses`` names the symptom it treats, which the rules feedback matches against the
    trajectory digest: ``format`` (abstentions, unparseable answers), ``errors`` (exceptions,
    timeouts), ``accuracy`` (well-formed but wrong answers), ``variance`` (unstable answers).
    ``apply`` returns the new source, or None when it does not apply to this harness.
    ``baseline_use``: how the edit brings a non-LLM baseline's method (retrieval voting, copying
    a train answer, a classical pipeline) into the harness: ``replace`` answers with it instead
    of the model, ``ensemble`` combines the two, ``fallback`` uses it where the model's answer
    is unusable; "" for none. The rules feedback reaches for these, most complete first, when the
    incumbent stays far below the task's best baseline.
    """

    name: str
    addresses: Literal["format", "errors", "accuracy", "variance"]
    description: str
    apply: Callable[[str], str | None]
    baseline_use: Literal["", "fallback", "ensemble", "replace"] = ""


@dataclass
class Baseline:
    """A non-LLM reference method of a task, scored with the task's own evaluator on the same
    val/test examples as the loop. ``predict(splits, examples)`` returns one answer per
    example and may read only public data: train examples with targets and the examples' inputs."""

    name: str
    description: str
    predict: Callable[[Splits, list[Example]], list[Any]]


class Task(ABC):
    """Base class of every task. Subclasses live in ``tasks/<name>/task.py`` as ``TaskImpl``."""

    name: str = ""
    scoring: Scoring

    def __init__(self, cfg: Any, root: Path):
        self.cfg = cfg      # the ``task`` config subtree (DictConfig or dict)
        self.root = root    # tasks/<name>/

    # ---- configuration -------------------------------------------------------------
    def config_problems(self) -> list[str]:
        """Problems with ``self.cfg`` (each naming the key, the bad value and the fix)."""
        return []

    @property
    def data_label(self) -> str:
        """Shown in every output next to scores, e.g. 'synthetic (seed 0)' or a file path."""
        return "unspecified"

    # ---- data ------------------------------------------------------------------------
    @abstractmethod
    def load(self) -> Splits:
        """Deterministic train/val/test splits."""

    def description(self) -> str:
        return (self.root / "task.md").read_text(encoding="utf-8")

    def seed_harness(self) -> str:
        return (self.root / "seed_harness.py").read_text(encoding="utf-8")

    def public_resources(self, splits: Splits) -> dict[str, Any]:
        """JSON-serialisable data every harness may read (``ctx.resources``): label lists,
        train examples with their targets for few-shot, schemas. Never val/test targets."""
        return {}

    def public_files(self, splits: Splits, out_dir: Path) -> dict[str, Path]:
        """Files a harness may read (``ctx.files[name]``), written under ``out_dir``:
        a read-only database, a train-count matrix. Never anything holding val/test targets."""
        return {}

    def private_paths(self) -> list[Path]:
        """Files that hold held-out targets and must stay unreadable to harnesses even when
        they lie beneath a folder the sandbox allows (e.g. a data file inside site-packages)."""
        return []

    # ---- scoring ---------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, examples: list[Example], answers: list[Any], split: str) -> EvalReport:
        """Score answers (``None`` = the harness produced none). Trusted code only."""

    # ---- levers ----------------------------------------------------------------------
    def harness_edits(self) -> list[HarnessEdit]:
        """The library of concrete harness rewrites the offline rules feedback may choose."""
        return []

    def baselines(self) -> list[Baseline]:
        """The task's non-LLM baselines (``tasks/<name>/baselines.py``)."""
        return []

    def supports_gold_sft(self) -> bool:
        """True when train targets can be rendered into completions (harness ``sft_pair``)."""
        return True

    def positive_threshold(self, rollout_mean: float, incumbent_score: float | None) -> float:
        """Reward above which a rollout sample is a success worth reinforcing: any success for
        binary reward, else better than the incumbent's mean (the rollout is the incumbent's
        own samples on these examples)."""
        return 0.0 if self.scoring.reward_shape == "binary" else rollout_mean


def plain_config(cfg: Any) -> dict:
    """A task's config subtree (DictConfig, dict or None) as plain, resolved dicts."""
    if cfg is None:
        return {}
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def schema_defaults(schema: type) -> dict:
    """A task's config schema (``tasks/<name>/config_schema.py``) as plain dicts: the one place its
    defaults live, also for a task built from a partial dict (tests, notebooks)."""
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(OmegaConf.structured(schema))
    out.pop("name", None)
    return out  # type: ignore[return-value]


def task_schemas(tasks_dir: Path = TASKS_DIR) -> dict[str, type]:
    """name -> the ``Config`` dataclass of every task that declares one in ``config_schema.py``."""
    package = _tasks_package(tasks_dir)
    out = {}
    for name in available_tasks(tasks_dir):
        if (tasks_dir / name / "config_schema.py").is_file():
            out[name] = importlib.import_module(f"{package}.{name}.config_schema").Config
    return out


def merged_config(defaults: dict, given: dict) -> dict:
    """``defaults`` deep-updated by ``given`` (nested dicts merged key by key)."""
    out = dict(defaults)
    for key, value in (given or {}).items():
        nested = isinstance(defaults.get(key), dict) and isinstance(value, dict)
        out[key] = merged_config(defaults[key], value) if nested else value
    return out


class UnknownTaskError(ValueError):
    pass


def available_tasks(tasks_dir: Path = TASKS_DIR) -> list[str]:
    return sorted(p.name for p in tasks_dir.iterdir() if (p / "task.py").is_file())


def _tasks_package(tasks_dir: Path) -> str:
    """Expose ``tasks_dir`` as the package ``sia_tasks`` so that each task is a package
    (``sia_tasks.<name>``) and its modules can use relative imports without name clashes."""
    pkg = sys.modules.get("sia_tasks")
    if pkg is None or list(pkg.__path__) != [str(tasks_dir)]:
        for key in [k for k in sys.modules if k == "sia_tasks" or k.startswith("sia_tasks.")]:
            del sys.modules[key]
        pkg = types.ModuleType("sia_tasks")
        pkg.__path__ = [str(tasks_dir)]
        sys.modules["sia_tasks"] = pkg
    return "sia_tasks"


def load_task(name: str, cfg: Any, tasks_dir: Path = TASKS_DIR) -> Task:
    root = tasks_dir / name
    if not name or not (root / "task.py").is_file():
        raise UnknownTaskError(
            f"unknown task {name!r}: there is no {root}/task.py. Available tasks: "
            f"{', '.join(available_tasks(tasks_dir))}. Choose one with task=<name>, "
            f"or add tasks/{name}/task.py defining `class TaskImpl(sia.tasks.Task)`."
        )
    module = importlib.import_module(f"{_tasks_package(tasks_dir)}.{name}.task")
    impl = getattr(module, "TaskImpl", None)
    if impl is None or not (isinstance(impl, type) and issubclass(impl, Task)):
        raise UnknownTaskError(f"{root}/task.py must define `class TaskImpl(sia.tasks.Task)`")
    return impl(cfg, root)

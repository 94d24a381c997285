"""Find the runs under a multirun or outputs folder and read them.

Everything the report knows about a run comes through the accessors here: ``state.json``
through ``sia.records.RunState`` (typed, older versions migrated), ``summary.json`` keys,
``config.yaml`` and Hydra's ``.hydra/`` files. A run is a folder holding ``state.json`` or
Hydra's ``.hydra/overrides.yaml`` (a job that failed before its first state).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sia.records import GenerationRecord, RunState

# overrides that say how a run was launched, not what was compared
NOT_SWEPT = {"seed", "feedback", "task", "resume", "run_dir", "cache_dir", "quiet", "logger.group"}


@dataclass
class Run:
    path: Path
    task: str | None
    feedback: str | None
    seed: int | None
    overrides: dict[str, str]                  # key -> value, from .hydra/overrides.yaml
    job_id: str | None                         # SLURM/submitit job id (hydra.job.id), when launched so
    state: RunState | None
    summary: dict | None
    config: dict = field(default_factory=dict)
    status: str = "unknown"                    # finished | running | cancelled | failed | timeout | ...
    detail: str = ""                           # error text or where an unfinished run stands
    swept: dict[str, str] = field(default_factory=dict)
    choices: dict[str, str] = field(default_factory=dict)   # config group -> option (hydra runtime.choices)
    earlier_jobs: list = field(default_factory=list)        # report.jobs.Job: earlier attempts a later job resumed

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def name(self) -> str:
        return self.path.name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def load_state(path: Path) -> RunState | None:
    data = _read_json(path / "state.json")
    if data is None:
        return None
    try:
        return RunState.from_json(data)
    except Exception:   # noqa: BLE001 - an unreadable state is reported, not fatal
        return None


def dig(data: dict | None, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _overrides(path: Path) -> dict[str, str]:
    items = read_yaml(path / ".hydra" / "overrides.yaml") or []
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~").replace("/", ".")] = value
    return out


def read_run(path: Path) -> Run:
    config = read_yaml(path / "config.yaml") or {}
    hydra_cfg = read_yaml(path / ".hydra" / "config.yaml") or {}
    cfg = config or hydra_cfg
    overrides = _overrides(path)
    summary = _read_json(path / "summary.json")
    hydra_yaml = read_yaml(path / ".hydra" / "hydra.yaml")
    job = dig(hydra_yaml, "hydra.job.id")
    choices = {str(k).replace("/", "."): str(v) for k, v in (dig(hydra_yaml, "hydra.runtime.choices") or {}).items()}
    seed = dig(cfg, "seed")
    run = Run(path=path, task=dig(cfg, "task.name") or (summary or {}).get("task"),
              feedback=dig(cfg, "feedback.name") or (summary or {}).get("feedback") or overrides.get("feedback"),
              seed=int(seed) if isinstance(seed, int) else None, overrides=overrides,
              job_id=None if job in (None, "", "???") or str(job).startswith("job_id_for_") else str(job),
              state=load_state(path), summary=summary, config=cfg, choices=choices)
    if run.state is not None and run.state.status == "done" and summary is not None:
        run.status = "finished"
    elif run.state is not None:
        run.status = "incomplete"
        run.detail = (f"stopped at generation {run.state.next_generation}; "
                      f"continue with: python -m sia resume={path}")
    else:
        run.status = "no state"
    return run


def find_runs(folder: Path) -> list[Run]:
    """Every run dir under ``folder`` (a multirun dir, an outputs dir, or one run dir)."""
    folder = Path(folder)
    found = set()
    for marker in ("state.json", ".hydra/overrides.yaml"):
        for hit in folder.rglob(marker):
            run_dir = hit.parent if marker == "state.json" else hit.parent.parent
            if not any(part.startswith(".") for part in run_dir.relative_to(folder).parts):
                found.add(run_dir)
    runs = [read_run(p) for p in sorted(found, key=_natural)]
    mark_swept(runs)
    return runs


def _natural(path: Path):
    head = path.name.split("_", 1)[0]
    return (str(path.parent), int(head) if head.isdigit() else 1 << 30, path.name)


def _value(run: Run, key: str) -> str:
    """A run's value for ``key``: as overridden, else from its resolved config."""
    if key in run.overrides:
        return run.overrides[key]
    if key in run.choices:
        return run.choices[key]
    value = dig(run.config, key)
    if isinstance(value, dict):          # a config group node (model.engine): its name
        value = value.get("name", "?")
    return "-" if value is None else str(value)


def mark_swept(runs: list[Run]) -> None:
    """The keys whose values differ between runs (besides feedback, task and seed)."""
    keys = {k for r in runs for k in r.overrides if k not in NOT_SWEPT and not k.startswith("hydra.")}
    values = {k: [_value(r, k) for r in runs] for k in sorted(keys)}
    swept = [k for k, vals in values.items() if len(set(vals)) > 1]
    for i, r in enumerate(runs):
        r.swept = {k: values[k][i] for k in swept}


# ---- accessors over one run's records ------------------------------------------------------
def history(run: Run) -> list[GenerationRecord]:
    return list(run.state.history) if run.state is not None else []


def metric_name(run: Run) -> str:
    return (run.summary or {}).get("metric") or "score"


def direction(run: Run) -> str:
    return (run.summary or {}).get("direction") or "max"


def first_scores(run: Run) -> tuple[float | None, float | None]:
    first = (run.summary or {}).get("first") or {}
    return first.get("val"), first.get("test")


def best_scores(run: Run) -> tuple[int | None, float | None, float | None]:
    best = (run.summary or {}).get("best") or {}
    return best.get("generation"), best.get("val"), best.get("test")


def generations_used(run: Run) -> int:
    return len(history(run))


def wall_s(run: Run) -> float | None:
    if run.summary is not None:
        return run.summary.get("wall_s")
    return run.state.elapsed_s if run.state is not None else None


def train_s(run: Run) -> float | None:
    if run.summary is not None:
        return run.summary.get("train_s")
    return run.state.train_s if run.state is not None else None


def agent_cost(run: Run) -> tuple[int, float]:
    """(tokens, dollars) the meta/feedback agents spent; (0, 0.0) for offline feedback agents."""
    agent = (run.summary or {}).get("agent") or {}
    tokens = agent.get("tokens") or sum(h.agent_tokens for h in history(run))
    dollars = agent.get("dollars") or sum(h.agent_dollars for h in history(run))
    return int(tokens or 0), float(dollars or 0.0)


def decisions(run: Run) -> list[str]:
    """One word per generation: the decision, then + (kept), - (rejected) or ! (failed)."""
    out = []
    for h in history(run):
        mark = "!" if h.failed else ("+" if h.kept else "-")
        gain = f"({h.keep_gain:+.3f}/{h.keep_n})" if h.keep_gain is not None else ""
        out.append(f"{h.label}{mark}{gain}")
    return out


def incumbent_curve(run: Run) -> list[tuple[int, float | None]]:
    return [(h.generation, h.incumbent_val) for h in history(run)]


def wandb_id(run: Run) -> str | None:
    return run.state.wandb_id if run.state is not None else None

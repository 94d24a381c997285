"""Group runs and turn them into the report's tables: the comparison (one row per task, policy
and swept value, seeds pooled), the per-generation decisions of every run, and every job's fate."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from sia.report import runs as R
from sia.report.jobs import Job


@dataclass
class Group:
    task: str
    policy: str
    swept: tuple[tuple[str, str], ...]
    runs: list[R.Run]

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.swept)
        return self.policy + (f" ({extra})" if extra else "")

    @property
    def finished(self) -> list[R.Run]:
        return [r for r in self.runs if r.finished]


def attach_jobs(runs: list[R.Run], jobs: list[Job], sweep_dir: Path) -> list[R.Run]:
    """Give every unfinished run its SLURM job's fate; a job without a run dir becomes a row too."""
    by_id = {j.job_id: j for j in jobs}
    by_index = {j.index: j for j in jobs if j.index is not None}
    matched = set()
    for run in runs:
        job = by_id.get(run.job_id) if run.job_id else None
        if job is None and run.job_id is None:
            head = run.name.split("_", 1)[0]
            job = by_index.get(int(head)) if head.isdigit() and run.path.parent == sweep_dir else None
        if job is None:
            continue
        matched.add(job.job_id)
        run.job_id = job.job_id
        if not run.finished and job.status not in ("completed", "unknown"):
            run.status, run.detail = job.status, job.detail or run.detail
    extra = []
    for job in jobs:
        if job.job_id in matched:
            continue
        overrides = dict(o.lstrip("+~").replace("/", ".").split("=", 1) for o in job.overrides if "=" in o)
        seed = overrides.get("seed")
        extra.append(R.Run(path=job.folder, task=overrides.get("task"), policy=overrides.get("feedback"),
                           seed=int(seed) if seed and seed.isdigit() else None, overrides=overrides,
                           job_id=job.job_id, state=None, summary=None, status=job.status,
                           detail=job.detail or "no run dir: the job never started the run"))
    out = runs + extra
    R.mark_swept(out)
    return out


def group_runs(runs: list[R.Run]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for run in runs:
        key = (run.task or "?", run.policy or "?", tuple(sorted(run.swept.items())))
        if key not in groups:
            groups[key] = Group(key[0], key[1], key[2], [])
        groups[key].runs.append(run)
    return list(groups.values())


def _stats(values: list[float | None]) -> tuple[float, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _pm(stat: tuple[float, float] | None, digits: int = 3) -> str:
    if stat is None:
        return "-"
    mean, spread = stat
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def comparison_rows(groups: list[Group]) -> list[dict]:
    rows = []
    for g in groups:
        done = g.finished
        first = [R.first_scores(r) for r in done]
        best = [R.best_scores(r) for r in done]
        costs = [R.agent_cost(r) for r in done]
        row = {
            "task": g.task, "policy": g.label, "runs": f"{len(done)}/{len(g.runs)}",
            "seeds": ",".join(str(r.seed) for r in done if r.seed is not None) or "-",
            "first val": _pm(_stats([f[0] for f in first])), "first test": _pm(_stats([f[1] for f in first])),
            "best val": _pm(_stats([b[1] for b in best])), "best test": _pm(_stats([b[2] for b in best])),
            "generations": _pm(_stats([R.generations_used(r) for r in done]), 1),
            "wall s": _pm(_stats([R.wall_s(r) for r in done]), 0),
            "train s": _pm(_stats([R.train_s(r) for r in done]), 0),
        }
        if any(t or d for t, d in costs):
            row["agent $"] = _pm(_stats([d for _, d in costs]), 4)
            row["agent tokens"] = _pm(_stats([t for t, _ in costs]), 0)
        rows.append(row)
    return rows


def decision_rows(groups: list[Group]) -> list[dict]:
    rows = []
    for g in groups:
        for run in g.runs:
            if not R.history(run):
                continue
            rows.append({"policy": g.label, "seed": "-" if run.seed is None else str(run.seed), "run": run.name,
                         "decisions": " ".join(f"{i}:{d}" for i, d in enumerate(R.decisions(run)))})
    return rows


def job_rows(runs: list[R.Run]) -> list[dict]:
    """One row per SLURM job (runs launched otherwise are listed with '-' as job)."""
    rows = []
    for run in runs:
        swept = " ".join(f"{k}={v}" for k, v in run.swept.items())
        rows.append({"job": run.job_id or "-", "run": run.name, "policy": run.policy or "?",
                     "seed": "-" if run.seed is None else str(run.seed), "swept": swept or "-",
                     "status": run.status, "detail": (run.detail or "").replace("|", "/")})
    return rows


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def print_tables(title: str, sections: list[tuple[str, list[dict]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    console.print(f"[bold]{title}[/bold]")
    for heading, rows in sections:
        table = Table(title=heading, show_lines=False)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        for c in columns:
            table.add_column(c, overflow="fold")
        for row in rows:
            table.add_row(*(str(row.get(c, "")) for c in columns))
        console.print(table if rows else f"{heading}: (none)")

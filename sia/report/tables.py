"""Group runs and turn them into the report's tables: the comparison (one row per task, feedback
and swept value, seeds pooled: mean ± the half-width of its 95% t interval over seeds), the
paired comparison (each feedback minus harness-only on the same seeds), the per-generation
decisions of every run, and every job's fate."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from sia.keep import t_half_width
from sia.report import runs as R
from sia.report.jobs import Job


@dataclass
class Group:
    task: str
    feedback: str
    swept: tuple[tuple[str, str], ...]
    runs: list[R.Run]

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.swept)
        return self.feedback + (f" ({extra})" if extra else "")

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
        if job.status == "running" and run.state is not None:
            run.status, run.detail = "running", f"at generation {run.state.next_generation}"
        elif not run.finished and job.status not in ("completed", "unknown"):
            run.status, run.detail = job.status, job.detail or run.detail
    # a resumed sweep's earlier jobs ran the same run dirs (same Hydra job number, same task, feedback
    # and seed); the run dir names only its latest job, so the earlier ones are attempts, not runs
    by_number: dict[str, list[R.Run]] = {}
    for r in runs:
        if r.path.parent == sweep_dir:
            by_number.setdefault(r.name.split("_", 1)[0], []).append(r)
    extra = []
    unstarted: dict[tuple, R.Run] = {}       # (job number, overrides) -> the latest job that made no run dir
    for job in reversed(jobs):               # the newest first: it is the run, older ones its attempts
        if job.job_id in matched:
            continue
        overrides = dict(o.lstrip("+~").replace("/", ".").split("=", 1) for o in job.overrides if "=" in o)
        resumed = [r for r in by_number.get(str(job.index), []) if _same_run(r, overrides)]
        if len(resumed) == 1:
            resumed[0].earlier_jobs.append(job)
            continue
        key = (job.index, tuple(sorted(overrides.items())))
        if job.index is not None and key in unstarted:
            unstarted[key].earlier_jobs.append(job)
            continue
        seed = overrides.get("seed")
        extra.append(R.Run(path=job.folder, task=overrides.get("task"), feedback=overrides.get("feedback"),
                           seed=int(seed) if seed and seed.isdigit() else None, overrides=overrides,
                           job_id=job.job_id, state=None, summary=None, status=job.status,
                           detail=job.detail or "no run dir: the job never started the run"))
        unstarted[key] = extra[-1]
    extra.reverse()
    out = runs + extra
    R.mark_swept(out)
    return out


def _same_run(run: R.Run, overrides: dict[str, str]) -> bool:
    ours = {"task": run.task, "feedback": run.feedback, "seed": None if run.seed is None else str(run.seed)}
    return all(overrides[k] == v for k, v in ours.items() if k in overrides and v is not None)


def group_runs(runs: list[R.Run]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for run in runs:
        key = (run.task or "?", run.feedback or "?", tuple(sorted(run.swept.items())))
        if key not in groups:
            groups[key] = Group(key[0], key[1], key[2], [])
        groups[key].runs.append(run)
    return list(groups.values())


BASELINE = "harness_only"      # the paired comparison subtracts this feedback's runs


def t_interval(values: list[float | None], level: float = 0.95) -> tuple[float, float, int] | None:
    """(mean, half-width of the two-sided t interval, n) over the values given; the half-width
    is nan for one value (no spread to judge from)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return mean, float("nan"), 1
    return mean, t_half_width(vals, level), len(vals)


def _pm(stat: tuple[float, float, int] | None, digits: int = 3) -> str:
    if stat is None:
        return "-"
    mean, half, n = stat
    if n < 2:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def best_baseline(runs: list[R.Run]) -> tuple[str, float, float | None] | None:
    """The best non-LLM baseline by val, as the runs' summaries report it: (name, mean val, mean test)."""
    found = {}
    for run in runs:
        for name, b in ((run.summary or {}).get("baselines") or {}).items():
            if isinstance(b, dict) and b.get("val") is not None:
                found.setdefault(name, []).append((b["val"], b.get("test")))
    if not found:
        return None
    direction = next((R.direction(r) for r in runs if r.summary), "max")
    pick = max if direction == "max" else min
    name = pick(found, key=lambda k: statistics.fmean(v for v, _ in found[k]))
    tests = [t for _, t in found[name] if t is not None]
    return name, statistics.fmean(v for v, _ in found[name]), statistics.fmean(tests) if tests else None


def _best_baseline(runs: list[R.Run]) -> str:
    best = best_baseline(runs)
    if best is None:
        return "-"
    name, val, test = best
    return f"{name} {val:.3f} / {'-' if test is None else f'{test:.3f}'}"


def comparison_rows(groups: list[Group]) -> list[dict]:
    rows = []
    for g in groups:
        done = g.finished
        first = [R.first_scores(r) for r in done]
        best = [R.best_scores(r) for r in done]
        costs = [R.agent_cost(r) for r in done]
        row = {
            "task": g.task, "feedback": g.label, "runs": f"{len(done)}/{len(g.runs)}",
            "seeds": ",".join(str(r.seed) for r in done if r.seed is not None) or "-",
            "first val": _pm(t_interval([f[0] for f in first])), "first test": _pm(t_interval([f[1] for f in first])),
            "best val": _pm(t_interval([b[1] for b in best])), "best test": _pm(t_interval([b[2] for b in best])),
            "best baseline val / test": _best_baseline(done),
            "generations": _pm(t_interval([R.generations_used(r) for r in done]), 1),
            "wall s": _pm(t_interval([R.wall_s(r) for r in done]), 0),
            "train s": _pm(t_interval([R.train_s(r) for r in done]), 0),
        }
        if any(t or d for t, d in costs):
            row["agent $"] = _pm(t_interval([d for _, d in costs]), 4)
            row["agent tokens"] = _pm(t_interval([t for t, _ in costs]), 0)
        rows.append(row)
    return rows


def paired_rows(groups: list[Group]) -> list[dict]:
    """Per task (and swept value): every other feedback minus harness-only, paired by seed (only
    seeds both finished), on best val and on test at the best generation: the mean difference
    with its 95% t interval over the pairs, and each seed's difference."""
    rows = []
    for g in groups:
        if g.feedback == BASELINE:
            continue
        base = next((b for b in groups if b.feedback == BASELINE and b.task == g.task and b.swept == g.swept), None)
        if base is None:
            continue
        mine = {r.seed: r for r in g.finished if r.seed is not None}
        theirs = {r.seed: r for r in base.finished if r.seed is not None}
        seeds = sorted(set(mine) & set(theirs))
        if not seeds:
            continue
        row = {"task": g.task, "feedback": f"{g.label} - {base.label}", "seeds": ",".join(map(str, seeds))}
        for what, index in (("best val", 1), ("best test", 2)):
            diffs = [None if R.best_scores(mine[s])[index] is None or R.best_scores(theirs[s])[index] is None
                     else R.best_scores(mine[s])[index] - R.best_scores(theirs[s])[index] for s in seeds]
            stat = t_interval(diffs)
            row[f"{what} diff"] = _pm(stat)
            row[f"{what} 95% interval"] = "-" if stat is None or stat[2] < 2 else \
                f"[{stat[0] - stat[1]:+.3f}, {stat[0] + stat[1]:+.3f}]"
            row[f"{what} per seed"] = " ".join("-" if d is None else f"{d:+.3f}" for d in diffs)
        rows.append(row)
    return rows


def decision_rows(groups: list[Group]) -> list[dict]:
    rows = []
    for g in groups:
        for run in g.runs:
            if not R.history(run):
                continue
            rows.append({"feedback": g.label, "seed": "-" if run.seed is None else str(run.seed), "run": run.name,
                         "decisions": " ".join(f"{i}:{d}" for i, d in enumerate(R.decisions(run)))})
    return rows


def job_rows(runs: list[R.Run]) -> list[dict]:
    """One row per SLURM job (runs launched otherwise are listed with '-' as job)."""
    rows = []
    for run in runs:
        swept = " ".join(f"{k}={v}" for k, v in run.swept.items())
        rows.append({"job": run.job_id or "-", "run": run.name, "feedback": run.feedback or "?",
                     "seed": "-" if run.seed is None else str(run.seed), "swept": swept or "-",
                     "status": run.status, "detail": (run.detail or "").replace("|", "/")})
        for job in run.earlier_jobs:
            rows.append({**rows[-1], "job": job.job_id, "status": job.status,
                         "detail": f"an earlier attempt of this run; its latest job is {run.job_id or '?'}"})
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

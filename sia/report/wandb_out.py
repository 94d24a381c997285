"""The report in W&B.

Offline (the default logger): the comparison and the run's own decisions go as W&B Tables into
every run's offline W&B run (resumed by its id), so ``wandb sync <run>/wandb/offline-run-*``
uploads them with the run. Online (``--wandb``): one ``sia-report`` run in the sweep's group
carries the tables and report.png, next to the runs it compares, and a W&B Report
(``wandb-workspaces``, ``build_wandb_report``) is saved: per task, the incumbent's val per
generation per feedback (mean line, min-max band over seeds), first/best val and test at the best
generation per feedback (mean, stderr whiskers), each run's generations table, and the report's
own tables: the comparison with 95% t intervals over seeds, each feedback minus harness-only
paired by seed, the decisions. The runs must be synced first (``wandb sync``).
"""
from __future__ import annotations

import os
from pathlib import Path

from sia.report import runs as R


def _table(rows: list[dict]):
    import wandb

    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["empty"]
    return wandb.Table(columns=columns, data=[[str(row.get(c, "")) for c in columns] for row in rows])


def _logger(run: R.Run) -> dict:
    return (run.config or {}).get("logger") or {}


def write_offline_tables(runs: list[R.Run], comparison: list[dict], decisions: list[dict]) -> list[Path]:
    """Resume each finished run's offline W&B run and log the tables; returns the run dirs done."""
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    done = []
    for run in runs:
        logger, run_id = _logger(run), R.wandb_id(run)
        if not run.finished or run_id is None or logger.get("mode") != "offline" or not (run.path / "wandb").is_dir():
            continue
        own = [row for row in decisions if row.get("run") == run.name]
        wb = wandb.init(project=logger.get("project") or "sia", group=logger.get("group"), id=run_id,
                        resume="allow", dir=str(run.path), mode="offline", job_type="sia-loop")
        wb.log({"report/comparison": _table(comparison), "report/decisions": _table(own)})
        wb.finish()
        done.append(run.path)
    return done


def publish_online(runs: list[R.Run], comparison: list[dict], decisions: list[dict], jobs: list[dict],
                   png: Path, name: str) -> str | None:
    """A report run in the sweep's W&B group (needs WANDB_API_KEY or `wandb login`); its URL."""
    import wandb

    logger = next((_logger(r) for r in runs if _logger(r)), {})
    groups = sorted({g for g in (_logger(r).get("group") for r in runs) if g})
    wb = wandb.init(project=logger.get("project") or "sia", group=groups[0] if len(groups) == 1 else None,
                    job_type="sia-report", name=f"report-{name}", mode="online",
                    tags=sorted({t for r in runs for t in (r.task, r.feedback) if t}),
                    config={"runs": [str(r.path) for r in runs], "groups": groups})
    wb.log({"report/comparison": _table(comparison), "report/decisions": _table(decisions),
            "report/jobs": _table(jobs), "report/figure": wandb.Image(str(png))})
    url = wb.url
    wb.finish()
    return url


def _project(runs: list[R.Run]) -> tuple[str, list[str]]:
    logger = next((_logger(r) for r in runs if _logger(r)), {})
    return logger.get("project") or "sia", sorted({g for g in (_logger(r).get("group") for r in runs) if g})


def build_wandb_report(report: dict, title: str, entity: str, project: str | None = None):
    """The W&B Report of a ``sia.report`` folder (``report``: what ``build_report`` returns), not
    saved: ``.save()`` publishes it (needs a W&B login)."""
    import wandb_workspaces.reports.v2 as wr

    from sia.report.tables import BASELINE, markdown_table

    runs = [r for r in report["runs"] if r.finished]
    project = project or _project(runs)[0]
    metric = next((R.metric_name(r) for r in runs), "score")
    blocks = [wr.H1(title),
              wr.P(f"Primary metric: {metric}. Each task's runs grouped by feedback agent: val of the incumbent per "
                   f"generation (line: mean over seeds, band: lowest to highest seed), first and best val and "
                   f"test at the best generation (bar: mean, whisker: standard error over seeds). The tables give "
                   f"the 95% t intervals over seeds and each feedback minus {BASELINE} paired by seed."),
              wr.TableOfContents()]
    for task in sorted({r.task for r in runs if r.task}):
        mine = [r for r in runs if r.task == task]
        groups = sorted({g for g in (_logger(r).get("group") for r in mine) if g})
        filters = f"Config('task.name') == '{task}'"
        if len(groups) == 1:
            filters += f" and Config('logger.group') == '{groups[0]}'"
        runset = wr.Runset(entity=entity, project=project, name=task, filters=filters,
                           groupby=["config.feedback.name"])
        by_feedback = {"groupby": wr.Config("feedback.name"), "groupby_aggfunc": "mean"}
        panels = [
            wr.LinePlot(title=f"{task}: incumbent val per generation", x="generation", y=["incumbent_val"],
                        groupby_rangefunc="minmax", **by_feedback),
            wr.LinePlot(title=f"{task}: candidate val per generation", x="generation", y=["val"],
                        groupby_rangefunc="minmax", **by_feedback),
            wr.BarPlot(title=f"{task}: test at the best generation", metrics=[wr.SummaryMetric("best/test")],
                       groupby_rangefunc="stderr", **by_feedback),
            wr.BarPlot(title=f"{task}: first and best val", metrics=[wr.SummaryMetric("first/val"),
                                                                    wr.SummaryMetric("best/val")],
                       groupby_rangefunc="stderr", **by_feedback),
            wr.WeavePanelSummaryTable(table_name="generations"),
        ]
        rows = {key: [row for row in report[key] if row.get("task") == task] for key in ("comparison", "paired")}
        names = {r.name for r in mine}
        decisions = [row for row in report["decisions"] if row.get("run") in names]
        blocks += [wr.H2(task), wr.PanelGrid(runsets=[runset], panels=panels),
                   wr.H3("comparison: mean ± 95% t half-width over seeds"),
                   wr.MarkdownBlock(markdown_table(rows["comparison"])),
                   wr.H3(f"paired by seed: each feedback minus {BASELINE}"),
                   wr.MarkdownBlock(markdown_table(rows["paired"])),
                   wr.H3("decisions per generation (+ kept, - rejected, ! failed; (gain/n): the paired keep rule)"),
                   wr.MarkdownBlock(markdown_table(decisions))]
    return wr.Report(project=project, entity=entity, title=title, blocks=blocks, width="fluid",
                     description="python -m sia.report --wandb")


def publish_report(report: dict, title: str) -> str:
    """Save the W&B Report online (needs WANDB_API_KEY or `wandb login`); its URL."""
    import wandb

    entity = os.environ.get("WANDB_ENTITY") or wandb.Api().default_entity
    built = build_wandb_report(report, title, entity)
    built.save()
    return built.url

"""The report in W&B.

Offline (the default logger): the comparison and the run's own decisions go as W&B Tables into
every run's offline W&B run (resumed by its id), so ``wandb sync <run>/wandb/offline-run-*``
uploads them with the run. Online (``--wandb``): one ``sia-report`` run in the sweep's group
carries the tables and report.png, next to the runs it compares.
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
                    tags=sorted({t for r in runs for t in (r.task, r.policy) if t}),
                    config={"runs": [str(r.path) for r in runs], "groups": groups})
    wb.log({"report/comparison": _table(comparison), "report/decisions": _table(decisions),
            "report/jobs": _table(jobs), "report/figure": wandb.Image(str(png))})
    url = wb.url
    wb.finish()
    return url

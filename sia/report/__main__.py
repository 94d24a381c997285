"""``python -m sia.report <multirun or outputs folder> [--wandb]``: compare the runs in a folder.

Groups runs by task, feedback (feedback.name) and every swept key, pools the seeds, and prints
the comparison, the per-generation decisions and each SLURM job's fate (cancelled and failed
jobs included, read from submitit's job folders). Writes ``report.md`` and ``report.png`` in
the folder (or ``--out``), and W&B Tables into the runs' offline W&B runs; ``--wandb`` publishes online too.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sia.report import runs as R
from sia.report.jobs import read_jobs
from sia.report.plot import plot_report
from sia.report.tables import (BASELINE, attach_jobs, comparison_rows, decision_rows, group_runs, job_rows,
                               markdown_table, paired_rows, print_tables)


def build_report(folder: Path, use_sacct: bool = True) -> dict:
    runs = R.find_runs(folder)
    jobs = read_jobs(folder, use_sacct=use_sacct)
    runs = attach_jobs(runs, jobs, folder)
    groups = group_runs(runs)
    return {"runs": runs, "jobs": jobs, "groups": groups, "comparison": comparison_rows(groups),
            "paired": paired_rows(groups), "decisions": decision_rows(groups), "job_rows": job_rows(runs)}


def sweep_command(folder: Path) -> str | None:
    """The command line of the newest sweep launched into ``folder``, from Hydra's multirun.yaml (the
    same overrides as typed, the job's before Hydra's own)."""
    overrides = R.dig(R.read_yaml(folder / "multirun.yaml"), "hydra.overrides")
    if not isinstance(overrides, dict):
        return None
    words = [str(o) for o in (overrides.get("task") or []) + (overrides.get("hydra") or [])]
    return "python -m sia -m " + " ".join(words)


def write_markdown(report: dict, out: Path, png: Path | None, title: str, command: str | None = None,
                   report_command: str = "") -> Path:
    metric = next((R.metric_name(r) for r in report["runs"] if r.summary), "score")
    direction = next((R.direction(r) for r in report["runs"] if r.summary), "max")
    better = "higher" if direction == "max" else "lower"
    made = [f"Sweep: `{command}`; report: `{report_command}`.\n\n"] if command else []
    text = [f"# SIA report: {title}\n\n", *made,
            f"Primary metric: {metric} ({better} is better); mean ± the half-width of its 95% t interval over "
            f"the finished seeds ((n=1): one seed, no interval). Best baseline: the non-LLM baseline with the "
            f"best val, its val / test.\n\n",
            "## Comparison\n", markdown_table(report["comparison"]),
            f"\n## Paired by seed: each feedback minus {BASELINE}\n",
            "Differences on the same seeds (best val; test at the best generation): mean ± 95% t half-width, "
            "the interval, and each seed's difference. An interval that holds 0 does not show a difference.\n\n",
            markdown_table(report["paired"]),
            "\n## Decisions per generation\n",
            "`+` kept, `-` rejected, `!` the candidate could not be built; `(gain/n)`: the paired keep rule's "
            "mean gain over the incumbent and the val examples that decided it.\n\n",
            markdown_table(report["decisions"]),
            "\n## Runs and jobs\n", markdown_table(report["job_rows"])]
    if png is not None:
        text.append(f"\n![incumbent val per generation and test at the best generation]({png.name})\n")
    path = out / "report.md"
    path.write_text("".join(text), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sia.report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a multirun dir (multirun/<date>/<time>), outputs/, or one run dir")
    parser.add_argument("--wandb", action="store_true", help="also publish the report to W&B online")
    parser.add_argument("--no-wandb-offline", action="store_true",
                        help="do not write the tables into the runs' offline W&B runs")
    parser.add_argument("--out", type=Path, help="write report.md and report.png here (default: the folder)")
    parser.add_argument("--no-sacct", action="store_true", help="read job states from submitit's logs only")
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    if not folder.is_dir():
        print(f"sia.report: {args.folder} is not a folder; pass a multirun dir (multirun/<date>/<time>) "
              f"or outputs/", file=sys.stderr)
        return 2
    report = build_report(folder, use_sacct=not args.no_sacct)
    if not report["runs"]:
        print(f"sia.report: no runs under {folder} (no state.json, .hydra/ or .submitit/ job folders); "
              f"pass the folder a sweep or run wrote", file=sys.stderr)
        return 2
    out = (args.out or folder).resolve()
    out.mkdir(parents=True, exist_ok=True)
    png = None
    if any(g.finished for g in report["groups"]):
        png = out / "report.png"
        plot_report(report["groups"], png, f"SIA report: {folder.name}")
    typed = "python -m sia.report " + " ".join(sys.argv[1:] if argv is None else argv)
    md = write_markdown(report, out, png, str(args.folder), sweep_command(folder), typed)
    print_tables(f"SIA report: {folder}", [("comparison (mean ± 95% t half-width over seeds)", report["comparison"]),
                                            (f"paired by seed: each feedback minus {BASELINE}", report["paired"]),
                                            ("decisions per generation (+ kept, - rejected, ! failed)",
                                             report["decisions"]),
                                            ("runs and jobs", report["job_rows"])])
    print(f"sia.report: wrote {md}" + (f" and {png}" if png else " (no finished run to plot)"))
    if not args.no_wandb_offline:
        from sia.report.wandb_out import write_offline_tables

        done = write_offline_tables(report["runs"], report["comparison"], report["decisions"])
        if done:
            print(f"sia.report: tables written into {len(done)} offline W&B run(s); upload with "
                  f"wandb sync <run>/wandb/offline-run-*")
    if args.wandb:
        from sia.report.wandb_out import publish_online

        from sia.report.wandb_out import publish_report

        url = publish_online(report["runs"], report["comparison"], report["decisions"], report["job_rows"],
                             png, folder.name) if png else None
        print(f"sia.report: published {url}" if url else "sia.report: nothing finished to publish")
        if png:
            print(f"sia.report: W&B Report {publish_report(report, f'SIA report: {folder.name}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the loop through the CLI under several configurations and print the figures of each:
wall time, first and best val/test, the decisions, and the loop overhead (share of wall time
outside model generation and training).

    python benchmarks/loop_runs.py default          # the default run, rules vs harness_only
    python benchmarks/loop_runs.py lawbench         # the LawBench dev file, within an hour here
    python benchmarks/loop_runs.py smoke            # loop overhead on the smoke budget
    python benchmarks/loop_runs.py custom -- feedback=alternate budget=smoke
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAWBENCH = REPO.parent / "shared" / "data" / "lawbench" / "charge_3-3_dev.json"

SUITES = {
    "default": [["feedback=rules"], ["feedback=harness_only"]],
    "lawbench": [["feedback=rules", f"task.data.path={LAWBENCH}", "budget.val_examples=30",
                  "budget.test_examples=50", "budget.train_examples=150", "budget.train_steps=30",
                  "budget.generations=5", "budget.wall_clock_minutes=50"]],
    "smoke": [["budget=smoke", "feedback=alternate"]],
}


def run_once(overrides: list[str], out_root: Path) -> dict:
    run_dir = out_root / "_".join(o.split("=")[0].split(".")[-1] + "-" + Path(o.split("=")[-1]).stem
                                  for o in overrides)[:120]
    cmd = [sys.executable, "-m", "sia", "quiet=true", "logger=none", f"hydra.run.dir={run_dir}", *overrides]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"run failed: {' '.join(cmd)}")
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["process_wall_s"] = wall
    summary["overrides"] = overrides
    summary["run_dir"] = str(run_dir)
    return summary


def show(s: dict) -> None:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    print(f"\n== {' '.join(s['overrides'])}")
    print(f"   data: {s['data']}   metric: {s['metric']} (x100)")
    print(f"   wall time: {s['process_wall_s'] / 60:.1f} min (loop {s['wall_s'] / 60:.1f} min; "
          f"generation {s['generate_s']:.0f}s, training {s['train_s']:.0f}s, "
          f"overhead {100 * s['overhead_share']:.1f}%)")
    print(f"   first: val {pct(s['first']['val'])} test {pct(s['first']['test'])}   "
          f"best (gen {s['best']['generation']}): val {pct(s['best']['val'])} test {pct(s['best']['test'])}")
    for name in ("first", "best"):
        metrics = s["first"].get("test_metrics") if name == "first" else s.get("best_test_metrics")
        if metrics:
            print(f"   {name} test metrics: " + ", ".join(f"{k} {pct(v)}" for k, v in metrics.items()))
    print(f"   decisions: {', '.join(s['decisions'])}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("suite", choices=[*SUITES, "custom"])
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    runs = [args.overrides] if args.suite == "custom" else [r + args.overrides for r in SUITES[args.suite]]
    out_root = Path(args.out) / time.strftime("%Y-%m-%d_%H-%M-%S")
    summaries = [run_once(r, out_root) for r in runs]
    for s in summaries:
        show(s)


if __name__ == "__main__":
    main()

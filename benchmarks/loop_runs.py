"""Run the loop through the CLI under several configurations and print the figures of each:
wall time, first and best val/test, the decisions, and the loop overhead (share of wall time
outside model generation and training).

    python benchmarks/loop_runs.py default          # the default run, rules vs harness_only
    python benchmarks/loop_runs.py lawbench         # the LawBench dev file, within an hour here
    python benchmarks/loop_runs.py sql_template     # sql_qa with whole query templates held out
    python benchmarks/loop_runs.py smoke            # loop overhead on the smoke budget
    python benchmarks/loop_runs.py custom -- feedback=alternate budget=smoke
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
LAWBENCH = "bundled:lawbench/charge_3-3_dev.json"   # shipped in tasks/legal_charge/lawbench/

SUITES = {
    "default": [["feedback=rules"], ["feedback=harness_only"]],
    "lawbench": [["feedback=rules", f"task.data.path={LAWBENCH}", "budget.val_examples=30",
                  "budget.test_examples=50", "budget.train_examples=150", "budget.train_steps=30",
                  "budget.generations=5", "budget.wall_clock_minutes=50"]],
    "sql_template": [["task=sql_qa", "task.data.split_by=template"]],
    "smoke": [["budget=smoke", "feedback=alternate"]],
}


class PeakTreeRSS(threading.Thread):
    """Peak memory summed over a process and all its descendants (loop, harness workers,
    evaluator children), sampled every 0.5 s, two ways: RSS (counts a page shared by N
    processes N times: the forked workers share the loop's libraries) and PSS (each shared page
    split among its sharers: what the run takes from the machine). Also the loop process's own
    RSS at the PSS peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root, self._done = psutil.Process(pid), threading.Event()
        self.peak_mb = self.peak_pss_mb = self.loop_mb_at_peak = 0.0
        self.processes_at_peak = 0

    def run(self) -> None:
        while not self._done.wait(0.5):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = pss = 0
            for p in procs:
                try:
                    info = p.memory_full_info()
                    rss, pss = rss + info.rss, pss + info.pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_mb = max(self.peak_mb, rss / 2**20)
            if pss / 2**20 > self.peak_pss_mb:
                self.peak_pss_mb, self.processes_at_peak = pss / 2**20, len(procs)
                try:
                    self.loop_mb_at_peak = self.root.memory_info().rss / 2**20
                except psutil.NoSuchProcess:
                    pass

    def stop(self) -> None:
        self._done.set()
        self.join()


def first_gain_s(history: list[dict]) -> float | None:
    """Wall seconds from the start until the first generation that was kept with a better val."""
    elapsed, first = 0.0, history[0]["val"] if history else None
    for h in history:
        elapsed += h.get("wall_s", 0.0)
        if h["generation"] > 0 and h.get("kept") and h.get("val") is not None and h["val"] != first:
            return elapsed
    return None


def run_once(overrides: list[str], out_root: Path) -> dict:
    run_dir = out_root / "_".join(o.split("=")[0].split(".")[-1] + "-" + Path(o.split("=")[-1]).stem
                                  for o in overrides)[:120]
    cmd = [sys.executable, "-m", "sia", "quiet=true", "logger=none", f"hydra.run.dir={run_dir}", *overrides]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = PeakTreeRSS(proc.pid)
    peak.start()
    out, err = proc.communicate()
    peak.stop()
    proc.stdout, proc.stderr = out, err
    wall = time.monotonic() - started
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"run failed: {' '.join(cmd)}")
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["process_wall_s"] = wall
    summary["peak_rss_mb"] = peak.peak_mb
    summary["peak_pss_mb"], summary["loop_rss_mb_at_peak"] = peak.peak_pss_mb, peak.loop_mb_at_peak
    summary["processes_at_peak"] = peak.processes_at_peak
    summary["first_gain_s"] = first_gain_s(json.loads((run_dir / "state.json").read_text())["history"])
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
    gain = s.get("first_gain_s")
    print(f"   first kept gain after {'-' if gain is None else f'{gain / 60:.1f} min'}; peak memory of the loop "
          f"and all its workers {s['peak_pss_mb'] / 1024:.2f} GiB PSS ({s['processes_at_peak']} processes, the "
          f"loop {s['loop_rss_mb_at_peak'] / 1024:.2f} GiB of it), {s['peak_rss_mb'] / 1024:.2f} GiB summed RSS")
    for name, row in (s.get("baselines") or {}).items():
        print(f"   baseline {name}: val {pct(row.get('val'))} test {pct(row.get('test'))}")


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

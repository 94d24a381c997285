"""Reference vs faster baseline of the cuda_kernel task, through the real evaluator.

    .venv/bin/python benchmarks/cuda_kernel_baselines.py [--device auto|cpu|cuda] [--split val|test]

Both are judged in one run, one after the other, exactly as submissions are (sandboxed
child, fresh secret inputs every call, the parent's wall clock, median of the repeats).
Every figure is labelled with its device: CPU figures come from scaled-down shapes and are
never comparable with GPU ones.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sia.tasks import TASKS_DIR, load_task  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--split", default="val", choices=("val", "test"))
    args = parser.parse_args()

    cfg = yaml.safe_load((REPO / "conf" / "task" / "cuda_kernel.yaml").read_text())
    cfg["device"] = args.device
    task = load_task("cuda_kernel", cfg)
    problems = task.config_problems()
    if problems:
        print("\n".join(problems))
        return 2
    from sia_tasks.cuda_kernel.judge import REFERENCE_SOURCE, Judge

    settings = task.settings
    label = settings.device.upper()
    judge = Judge(settings, settings.plans[args.split])
    fast_source = (TASKS_DIR / "cuda_kernel" / "fast_baseline.py").read_text()
    started = time.perf_counter()
    reference = judge.judge(REFERENCE_SOURCE)
    fast = judge.judge(fast_source)
    for name, verdict in (("reference", reference), ("fast baseline", fast)):
        if not verdict.ok:
            print(f"[{label}] {name} failed: {verdict.reason}")
            return 1
    plan = settings.plans[args.split]
    print(f"[{label}] split={args.split}: {len(settings.correctness)} correctness cases x "
          f"{plan.correctness_seeds} seeds, {len(settings.benchmark)} timed shapes x "
          f"({plan.warmup} warm-up + {plan.repeats} timed calls), median per shape")
    print(f"[{label}] {'shape':48s} {'reference µs':>14s} {'fast µs':>10s} {'ratio':>7s}"
          f" {'child ref µs':>13s} {'child fast µs':>14s}")
    for case in settings.benchmark:
        ref_us, fast_us = reference.case_us[case.label], fast.case_us[case.label]
        print(f"[{label}] {case.label:48s} {ref_us:14.0f} {fast_us:10.0f} {ref_us / fast_us:7.2f}"
              f" {reference.child_us.get(case.label, float('nan')):13.0f}"
              f" {fast.child_us.get(case.label, float('nan')):14.0f}")
    print(f"[{label}] geometric mean: reference {reference.runtime_us:.0f} µs, fast baseline "
          f"{fast.runtime_us:.0f} µs, speed-up {reference.runtime_us / fast.runtime_us:.2f}x "
          "(evaluator wall clock; child columns are the child's own, untrusted, figures)")
    print(f"[{label}] time to evaluate one submission: reference {reference.eval_s:.1f} s, "
          f"fast baseline {fast.eval_s:.1f} s (child start, correctness, timing); "
          f"both {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

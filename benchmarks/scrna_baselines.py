"""Score the scrna_denoise baselines with the task's own evaluator.

    .venv/bin/python benchmarks/scrna_baselines.py                 # bundled pbmc68k_reduced
    .venv/bin/python benchmarks/scrna_baselines.py --path my.h5ad --split val

Prints, per method: normalised MSE, normalised Poisson, their mean (the headline score),
the raw losses, the seconds the method took on all cells and the seconds of one evaluation,
and the perfect control. ``benchmarks/baselines.py scrna_denoise`` scores the same methods
(the task's ``baselines()``) on val and test, as for every other task.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

# Before numpy loads: these are small dense products, and on a shared CPU extra BLAS
# threads mostly wait on each other (MAGIC ran 10x slower with them). --threads overrides.
_threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = _threads
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sia.tasks import load_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default=None, help=".h5ad with raw counts (default: bundled pbmc68k_reduced)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", default="1", help="BLAS threads (read before numpy loads)")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")  # anndata's deprecation notes about the bundled file
    cfg = {"name": "scrna_denoise", "primary_metric": "score", "data": {"path": args.path, "seed": args.seed}}
    task = load_task("scrna_denoise", cfg)
    problems = task.config_problems()
    if problems:
        sys.exit("\n".join(problems))
    started = time.perf_counter()
    reports = task.baseline_reports(args.split)
    print(f"data: {task.data_label}; split: {args.split} ({reports['perfect'].notes['cells']} cells)")
    print(f"{'method':<14} {'mse_norm':>9} {'poisson_norm':>13} {'score':>7} {'mse':>8} {'poisson':>8} "
          f"{'method_s':>9} {'eval_s':>7}")
    for name, report in reports.items():
        m = report.metrics
        print(f"{name:<14} {m['mse_norm']:>9.3f} {m['poisson_norm']:>13.3f} {m['score']:>7.3f} "
              f"{m['mse']:>8.4f} {m['poisson']:>8.4f} {report.notes.get('method_s', 0.0):>9.2f} "
              f"{report.notes['eval_s']:>7.3f}")
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

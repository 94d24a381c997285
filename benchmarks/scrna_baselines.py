"""Score the scrna_denoise baselines with the task's own evaluator.

    .venv/bin/python benchmarks/scrna_baselines.py                 # bundled pbmc68k_reduced
    .venv/bin/python benchmarks/scrna_baselines.py --path my.h5ad --split val
    # the seed harness with library edits applied, on val and test, beside MAGIC:
    .venv/bin/python benchmarks/scrna_baselines.py --harness-edits mcv_self_tuning --figure docs/scrna_mcv_self_tuning.png

Prints, per method: normalised MSE, normalised Poisson, their mean (the headline score),
the raw losses, the seconds the method took on all cells and the seconds of one evaluation,
and the perfect control. ``benchmarks/baselines.py scrna_denoise`` scores the same methods
(the task's ``baselines()``) on val and test, as for every other task.

``--harness-edits a,b`` also runs the seed harness with those library edits applied (in order)
through the real sandboxed worker pool (the agent config's workers, per-example timeout,
memory limit and strict sandbox, the task's private paths denied), on val and test, and prints
its score beside MAGIC's (``--figure out.png``: a bar chart of every method's val and test score
and the edited harness's). The edited harness must not ask the model (no engine is loaded here;
``benchmarks/baselines.py --harness-edits`` runs one that does, with the configured model).
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
    parser.add_argument("--harness-edits", default="", help="comma-separated edit names: also score the "
                        "seed harness with them applied (sandboxed pool, no model) on val and test")
    parser.add_argument("--figure", default="", help="with --harness-edits: write a bar chart (PNG) of the "
                        "val and test scores of every method and the edited harness")
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
    if args.harness_edits:
        names = [e for e in args.harness_edits.split(",") if e]
        harness = score_edited_harness(task, names)
        if args.figure:
            plot_scores(task, "harness:\n" + "\n".join(names), harness, Path(args.figure))


class NoModel:
    """The pool's engine when the harness asks no model: any model call fails loudly."""

    max_batch_size = 1

    def __init__(self):
        from sia.engine.base import EngineStats

        self.stats = EngineStats()

    def generate(self, *_, **__):
        raise RuntimeError("this benchmark loads no model: the edited harness must not ask one")


def edited_source(task, edit_names: list[str]) -> str:
    from sia.harness.options import read_options

    edits = {e.name: e for e in task.harness_edits()}
    source = task.seed_harness()
    for name in edit_names:
        if name not in edits:
            sys.exit(f"--harness-edits: {name!r} is not an edit of {task.name}; known: {', '.join(edits)}")
        source = edits[name].apply(source) or source   # None: already applied or not applicable
    if (read_options(source) or {}).get("ask_model", True):
        sys.exit(f"--harness-edits {','.join(edit_names)}: the edited harness still asks the model; add an edit "
                 f"that stops it (e.g. no_model_call, fixed_magic, mcv_self_tuning) or use "
                 f"benchmarks/baselines.py scrna_denoise --harness-edits ... (loads the model)")
    return source


def score_edited_harness(task, edit_names: list[str]) -> dict[str, float]:
    """The edited seed harness on val and test through the sandboxed pool, beside MAGIC;
    returns its score per split."""
    import tempfile

    from hydra import compose, initialize_config_dir

    import sia.__main__  # noqa: F401  (registers the config schemas, as `python -m sia`)
    from sia.harness.contract import Job
    from sia.harness.pool import HarnessPool

    root = Path(__file__).resolve().parent.parent
    with initialize_config_dir(version_base="1.3", config_dir=str(root / "conf")):
        agent = compose(config_name="config", overrides=["task=scrna_denoise", "run_dir=/tmp"]).agent
    source, data = edited_source(task, edit_names), task.load()
    label, scores = "harness:" + ",".join(edit_names), {}
    print(f"\n{label}: sandboxed pool, {agent.workers} workers, {agent.example_timeout_s} s and "
          f"{agent.memory_mb} MB per example, strict sandbox {agent.strict_sandbox}")
    print(f"{'split':<5} {'magic':>7} {'harness':>8} {'mse_norm':>9} {'poisson_norm':>13} {'errors':>7} {'wall_s':>7}")
    with tempfile.TemporaryDirectory(prefix="sia-scrna-") as tmp:
        harness = Path(tmp) / "harness.py"
        harness.write_text(source, encoding="utf-8")
        files = {k: str(v) for k, v in task.public_files(data, Path(tmp) / "public").items()}
        with HarnessPool(NoModel(), workers=agent.workers, example_timeout_s=agent.example_timeout_s,
                         memory_mb=agent.memory_mb, max_llm_calls=agent.max_llm_calls,
                         max_new_tokens=agent.max_new_tokens, strict=agent.strict_sandbox,
                         scratch_root=str(Path(tmp) / "scratch"),
                         deny_paths=[str(p) for p in task.private_paths()]) as pool:
            for split in ("val", "test"):
                magic = task.baseline_reports(split)["magic"].metrics["score"]
                started = time.perf_counter()
                results = pool.run(str(harness), [Job(id=e.id, inputs=e.inputs) for e in data[split]],
                                   task.public_resources(data), files, progress=False, desc=split)
                wall = time.perf_counter() - started
                m = task.evaluate(data[split], [r.answer for r in results], split).metrics
                errors, scores[split] = sum(1 for r in results if r.error), m["score"]
                print(f"{split:<5} {magic:>7.3f} {m['score']:>8.3f} {m['mse_norm']:>9.3f} "
                      f"{m['poisson_norm']:>13.3f} {errors:>7} {wall:>7.1f}")
                tuned = [e for r in results for e in r.events if e.get("type") == "mcv_tune"]
                if tuned:   # the harness's own log: what its inner split chose (one per worker)
                    print(f"  mcv_tune chose {tuned[0].get('chosen')} (inner score {tuned[0].get('inner_score')}, "
                          f"incumbent {tuned[0].get('incumbent_inner_score')}; {len(tuned)} workers tuned)")
                for r in results:
                    if r.error:
                        print(f"  {r.id}: {str(r.error.get('kind'))}: {str(r.error.get('message', ''))[:160]}")
    return scores


def plot_scores(task, label: str, harness: dict[str, float], path: Path) -> None:
    """Grouped bars: val and test score of each method (the perfect control left out) and of
    the edited harness, MAGIC's test score drawn as a line to beat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = {split: task.baseline_reports(split) for split in ("val", "test")}
    names = [n for n in reports["val"] if n != "perfect"]
    values = {split: [reports[split][n].metrics["score"] for n in names] + [harness[split]]
              for split in ("val", "test")}
    labels = [n.replace("_", "\n") for n in names] + [label]
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(labels))
    for offset, split in ((-0.2, "val"), (0.2, "test")):
        bars = ax.bar([x + offset for x in xs], values[split], width=0.4, label=split)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.axhline(reports["test"]["magic"].metrics["score"], color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("score (mean of normalised MSE and Poisson)")
    ax.set_title(f"scrna_denoise on {task.data_label}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()

"""Score every baseline of a task on its val and test splits with the task's own evaluator.

    .venv/bin/python benchmarks/baselines.py legal_charge task.data.path=bundled:lawbench/charge_3-3_dev.json
    .venv/bin/python benchmarks/baselines.py sql_qa task.data.split_by=template
    .venv/bin/python benchmarks/baselines.py scrna_denoise            # bundled pbmc68k_reduced
    .venv/bin/python benchmarks/baselines.py cuda_kernel task.device=cpu
    # also the seed harness with library edits, through the sandboxed pool and the embedded model:
    .venv/bin/python benchmarks/baselines.py legal_charge task.data.path=... --harness-edits ensemble_with_retrieval_vote

Overrides are dotted keys of the task's config (``conf/task/<name>.yaml``), with or without
the ``task.`` prefix. Prints, per baseline and split: the primary metric, the task's other
metrics, and the seconds predict and evaluate took. Oracles are labelled in their names.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

# Before numpy loads: on a shared CPU extra BLAS threads mostly wait on each other.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sia.__main__  # noqa: E402,F401  (registers the config schemas and resolvers, as `python -m sia`)
from sia.tasks import available_tasks, load_task  # noqa: E402

SHOWN_METRICS = 4  # besides the primary one


def compose_config(name: str, overrides: list[str]):
    """The whole run config as ``python -m sia task=<name> task.<key>=<value>...`` composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    dotted = [o if o.startswith("task.") else "task." + o for o in overrides]
    bad = [o for o in dotted if "=" not in o]
    if bad:
        sys.exit(f"override {bad[0]!r} has no '=': write key=value, e.g. task.data.seed=1")
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose(config_name="config", overrides=[f"task={name}", "run_dir=/tmp", *dotted])


def score_baselines(task, splits=("val", "test")) -> list[dict]:
    """One row per (baseline, split): metrics and timings."""
    data = task.load()
    rows = []
    for baseline in task.baselines():
        for split in splits:
            started = time.perf_counter()
            answers = baseline.predict(data, data[split])
            predict_s = time.perf_counter() - started
            report = task.evaluate(data[split], answers, split)
            rows.append({"baseline": baseline.name, "split": split, "n": len(data[split]),
                         "metrics": report.metrics, "predict_s": predict_s,
                         "eval_s": time.perf_counter() - started - predict_s})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=available_tasks())
    parser.add_argument("overrides", nargs="*", help="task config overrides, e.g. task.data.seed=1")
    parser.add_argument("--harness-edits", default="", help="comma-separated edit names: also score the "
                        "seed harness with them applied (real sandboxed pool, default model config)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # anndata's deprecation notes about the bundled file

    cfg = compose_config(args.task, args.overrides)
    task = load_task(args.task, cfg.task)
    problems = task.config_problems()
    if problems:
        print("\n".join(problems))
        return 2
    if not task.baselines():
        print(f"{args.task} has no baselines (tasks/{args.task}/baselines.py)")
        return 1
    primary = task.scoring.primary_metric
    print(f"task {args.task}; data: {task.data_label}; primary metric: {primary} ({task.scoring.direction})")
    for baseline in task.baselines():
        print(f"  {baseline.name}: {baseline.description}")
    rows = score_baselines(task)
    for row in rows:
        others = [k for k in task.scoring.metrics if k != primary and k in row["metrics"]][:SHOWN_METRICS]
        rest = " ".join(f"{k}={row['metrics'][k]:.3f}" for k in others)
        print(f"{row['baseline']:<22} {row['split']:<4} n={row['n']:<4} {primary}={row['metrics'][primary]:.3f} "
              f"{rest}  predict {row['predict_s']:.1f}s eval {row['eval_s']:.1f}s")
    if args.harness_edits:
        for row in score_edited_harness(task, cfg, args.harness_edits.split(",")):
            print(f"{'harness:' + args.harness_edits:<22} {row['split']:<4} n={row['n']:<4} "
                  f"{primary}={row['metrics'][primary]:.3f} errors: {row['errors']}  {row['wall_s']:.0f}s")
    return 0


def _error_summary(results) -> str:
    """'none', or the count per error kind and the first message (harness errors, not gold)."""
    errors = [r.error for r in results if r.error]
    if not errors:
        return "none"
    kinds: dict[str, int] = {}
    for error in errors:
        kinds[error.get("kind", "?")] = kinds.get(error.get("kind", "?"), 0) + 1
    first = str(errors[0].get("message", ""))[:160].replace("\n", " ")
    return f"{', '.join(f'{k} {n}' for k, n in kinds.items())} (first: {first})"


def score_edited_harness(task, cfg, edit_names: list[str]) -> list[dict]:
    """The seed harness with ``edit_names`` applied, run on val and test exactly as the loop runs
    a harness (sandboxed workers, the configured engine), scored by the task's evaluator."""
    import tempfile

    from sia.engine import build_engine
    from sia.harness.contract import Job
    from sia.harness.pool import HarnessPool

    edits = {e.name: e for e in task.harness_edits()}
    source = task.seed_harness()
    for edit_name in edit_names:
        if edit_name not in edits:
            sys.exit(f"--harness-edits: {edit_name!r} is not an edit of {task.name}; known: {', '.join(edits)}")
        source = edits[edit_name].apply(source) or source
    data = task.load()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sia-baselines-") as tmp:
        harness = Path(tmp) / "harness.py"
        harness.write_text(source, encoding="utf-8")
        resources = task.public_resources(data)
        files = {k: str(v) for k, v in task.public_files(data, Path(tmp) / "public").items()}
        engine, agent = build_engine(cfg.model, cfg.cache_dir), cfg.agent
        with HarnessPool(engine, workers=agent.workers, example_timeout_s=agent.example_timeout_s,
                         memory_mb=agent.memory_mb, max_llm_calls=agent.max_llm_calls,
                         max_new_tokens=agent.max_new_tokens, strict=agent.strict_sandbox,
                         scratch_root=str(Path(tmp) / "scratch"),
                         deny_paths=[str(p) for p in task.private_paths()]) as pool:
            for split in ("val", "test"):
                started = time.perf_counter()
                results = pool.run(harness, [Job(id=e.id, inputs=e.inputs) for e in data[split]],
                                   resources, files, progress=False, desc=split)
                report = task.evaluate(data[split], [r.answer for r in results], split)
                rows.append({"split": split, "n": len(data[split]), "metrics": report.metrics,
                             "errors": _error_summary(results),
                             "wall_s": time.perf_counter() - started})
    return rows


if __name__ == "__main__":
    sys.exit(main())

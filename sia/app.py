"""Build a run from a composed config and go: validate, prepare the run dir, run the loop,
report (summary.json, a table, a plot)."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sia.config import ConfigError, validate
from sia.run import RunDir, new_state, write_json_atomic, write_text_atomic
from sia.tasks import UnknownTaskError, load_task

log = logging.getLogger("sia")


def _setup_logging(quiet: bool) -> None:
    logging.getLogger("sia").setLevel(logging.WARNING if quiet else logging.INFO)
    for noisy in ("httpx", "transformers", "lightning", "lightning.pytorch", "wandb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def resolve_run(cfg: DictConfig) -> tuple[DictConfig, RunDir, bool]:
    """The config and run dir to use; a run dir that already holds state is resumed (this is
    also what a SLURM requeue of the same job does)."""
    if cfg.resume:
        run = RunDir(Path(cfg.resume))
        saved = OmegaConf.load(run.path / "config.yaml")
        saved.quiet = cfg.quiet
        saved.resume = str(run.path)
        return saved, run, True
    run = RunDir(Path(cfg.run_dir))
    return cfg, run, run.has_state()


def summarise(cfg: DictConfig, task, state: dict, engine_stats) -> dict:
    history = [h for h in state["history"] if h.get("val") is not None]
    first = history[0] if history else {}
    inc = state["incumbent"] or {}
    timing = state.get("timing", {})
    elapsed = state["elapsed_s"] or 1e-9
    model_s = timing.get("generate_s", 0.0) + timing.get("train_s", 0.0)
    return {
        "task": task.name, "data": task.data_label, "feedback": cfg.feedback.name, "model": cfg.model.name,
        "metric": task.meta.primary_metric, "direction": task.meta.direction,
        "first": {"val": first.get("val"), "test": first.get("test"),
                  "val_metrics": first.get("val_metrics"), "test_metrics": first.get("test_metrics")},
        "best": {"generation": inc.get("generation"), "val": inc.get("val"), "test": inc.get("test"),
                 "adapter": inc.get("adapter"), "harness": inc.get("harness")},
        "best_test_metrics": next((h.get("test_metrics") for h in state["history"]
                                   if h["generation"] == inc.get("generation")), None),
        "generations": len(state["history"]),
        "decisions": [h["action"] + (f":{h['edit']}" if h.get("edit") else "") for h in state["history"]],
        "wall_s": state["elapsed_s"],
        "generate_s": timing.get("generate_s", 0.0), "train_s": timing.get("train_s", 0.0),
        "overhead_share": max(0.0, 1 - model_s / elapsed),
        "engine_tokens": {"prompt": engine_stats.prompt_tokens, "completion": engine_stats.completion_tokens},
    }


def run(cfg: DictConfig) -> int:
    _setup_logging(cfg.quiet)
    try:
        cfg, run_dir, resuming = resolve_run(cfg)
        try:
            task = load_task(cfg.task.name, cfg.task)
        except UnknownTaskError as exc:
            raise ConfigError([f"task.name: {exc}"]) from None
        validate(cfg, task.config_problems())
    except ConfigError as exc:
        print(f"sia: {exc}", file=sys.stderr)
        return 2

    from sia.engine import build_engine
    from sia.harness.pool import HarnessPool
    from sia.loop import Loop
    from sia.tracking import Tracker, plot_progress, print_table

    if resuming:
        state = run_dir.load_state()
        if state["status"] == "done":
            print(f"sia: run {run_dir.path} is already finished; see {run_dir.path / 'summary.json'}")
            return 0
        log.info("resuming %s at generation %d", run_dir.path, state["next_generation"])
    else:
        write_text_atomic(run_dir.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        state = new_state()
        run_dir.save_state(state)
    print(f"sia: run dir {run_dir.path}  (resume with: python -m sia resume={run_dir.path})", flush=True)
    print(f"sia: task {task.name} on {task.data_label}; policy {cfg.feedback.name}; model {cfg.model.name}",
          flush=True)

    started = time.monotonic()
    engine = build_engine(cfg.model, cfg.cache_dir)
    tracker = Tracker(cfg, run_dir.path, state.get("wandb_id"), resume=resuming)
    state["wandb_id"] = tracker.run_id
    run_dir.save_state(state)
    agent = cfg.agent
    with HarnessPool(engine, workers=agent.workers, example_timeout_s=agent.example_timeout_s,
                     memory_mb=agent.memory_mb, max_llm_calls=agent.max_llm_calls,
                     max_new_tokens=agent.max_new_tokens, strict=agent.strict_sandbox,
                     scratch_root=str(run_dir.path / "scratch"),
                     deny_paths=[str(p) for p in task.private_paths()]) as pool:
        state = Loop(cfg, run_dir, task, engine, pool, tracker, state).run_all()

    summary = summarise(cfg, task, state, engine.stats)
    summary["this_attempt_s"] = time.monotonic() - started
    write_json_atomic(run_dir.path / "summary.json", summary)
    metric = f"{task.meta.primary_metric} ({'higher' if task.meta.direction == 'max' else 'lower'} is better)"
    plot_progress(state["history"], task.meta.primary_metric, run_dir.path / "progress.png",
                  f"{task.name} on {task.data_label} - {cfg.feedback.name} - {cfg.model.name}")
    print_table(state["history"], metric, task.data_label)
    print(f"sia: first val {_f(summary['first']['val'])} test {_f(summary['first']['test'])}; "
          f"best (gen {summary['best']['generation']}) val {_f(summary['best']['val'])} "
          f"test {_f(summary['best']['test'])}; {summary['wall_s']:.0f}s; summary {run_dir.path / 'summary.json'}")
    tracker.finish(state["history"], summary)
    return 0


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"

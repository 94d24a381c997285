"""Build a run from a composed config and go: validate, prepare the run dir, build the parts
from their ``_target_`` nodes, run the loop, report (summary.json, a table, a plot)."""
from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sia.config import ConfigError, resume_problems, validate
from sia.data import data_problems
from sia.run import RunDir, StateDamaged, new_state, write_json_atomic, write_text_atomic
from sia.schema import BudgetConfig
from sia.tasks import UnknownTaskError, load_task

log = logging.getLogger("sia")


def _setup_logging(quiet: bool) -> None:
    logging.getLogger("sia").setLevel(logging.WARNING if quiet else logging.INFO)
    for noisy in ("httpx", "transformers", "lightning", "lightning.pytorch", "wandb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


# What a resume may change: more time, generations, training or agent spend. The split sizes
# stay, or the new val scores would not compare with the saved ones.
RESUMABLE_BUDGET = ("generations", "wall_clock_minutes", "train_steps", "train_examples", "agent_tokens",
                    "agent_dollars", "train_step_s")


def budget_overrides() -> list[str]:
    """The ``budget.<key>`` names this command line sets (``budget=smoke`` sets them all)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    names = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    return [n for n in names if n.startswith("budget.")] + \
        ([f"budget.{k}" for k in BudgetConfig.__dataclass_fields__] if "budget" in names else [])


def _new_budget(saved: DictConfig, cfg: DictConfig, names: list[str]) -> list[str]:
    """Writes into ``saved`` the budget values of ``cfg`` named in ``names`` that differ from the
    saved ones; returns what changed as "budget.key=old->new". Only RESUMABLE_BUDGET may change."""
    changed, problems = [], []
    for name in dict.fromkeys(names):
        old, new = OmegaConf.select(saved, name), OmegaConf.select(cfg, name)
        if old == new:
            continue
        if name.removeprefix("budget.") not in RESUMABLE_BUDGET:
            problems.append(f"{name}: a resumed run keeps it ({old}, not {new}): its saved val scores would "
                            f"not compare; a resume may change budget.<key> for {', '.join(RESUMABLE_BUDGET)}")
            continue
        OmegaConf.update(saved, name, new, merge=False)
        changed.append(f"{name}={old}->{new}")
    if problems:
        raise ConfigError(problems)
    return changed


def resolve_run(cfg: DictConfig, budget_names: list[str] = ()) -> tuple[DictConfig, RunDir, bool, list[str]]:
    """The config and run dir to use, whether it resumes, and the budget a resume changed. A run
    dir that already holds state is resumed (this is also what a SLURM requeue of the same job
    does). ``resume=DIR`` runs on the run's saved config, except ``quiet`` and the budget values
    in ``budget_names`` (more time or generations): those go into the run's config.yaml, so a
    requeue keeps them."""
    if cfg.resume:
        problems = resume_problems(cfg.resume)
        if problems:
            raise ConfigError(problems)
        run = RunDir(Path(cfg.resume))
        saved = OmegaConf.load(run.path / "config.yaml")
        changed = _new_budget(saved, cfg, list(budget_names))
        if changed:
            write_text_atomic(run.path / "config.yaml", OmegaConf.to_yaml(saved, resolve=True))
        saved.quiet = cfg.quiet
        saved.resume = str(run.path)
        return saved, run, True, changed
    run = RunDir(Path(cfg.run_dir))
    return cfg, run, run.has_state(), []


def _checked(cfg: DictConfig, budget_names: list[str]):
    cfg, run_dir, resuming, changed = resolve_run(cfg, budget_names)
    try:
        task = load_task(cfg.task.name, cfg.task)
    except UnknownTaskError as exc:
        raise ConfigError([f"task.name: {exc}"]) from None
    # The data checks every task gets (shared splits, resources a worker can receive) need
    # the data read, so they run once the task's own checks pass.
    validate(cfg, task.config_problems() or data_problems(task))
    return cfg, run_dir, resuming, changed, task


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def run(cfg: DictConfig) -> int:
    # A scheduler's SIGTERM (SLURM requeue, preemption, scancel) ends the run at once: every step
    # is on disk atomically, so a requeued job resumes. Carrying on (submitit ignores SIGTERM)
    # would record generations whose harness workers the same signal killed.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    _setup_logging(cfg.quiet)
    try:
        cfg, run_dir, resuming, more_budget, task = _checked(cfg, budget_overrides() if cfg.resume else [])
    except ConfigError as exc:
        print(f"sia: {exc}", file=sys.stderr)
        return 2

    from sia.assemble import assemble
    from sia.build import build
    from sia.harness.pool import HarnessPool
    from sia.summary import report
    from sia.tracking import Tracker

    if resuming:
        try:
            state = run_dir.load_state()   # a damaged state.json is rebuilt from the generation records
        except StateDamaged as exc:
            print(f"sia: {exc}", file=sys.stderr)
            return 2
        if state.status == "done" and not more_budget:
            print(f"sia: run {run_dir.path} is already finished ({state.stop_reason or 'its budget spent'}); see "
                  f"{run_dir.path / 'summary.json'}; to go on, resume it with a larger budget, e.g. "
                  f"resume={run_dir.path} budget.wall_clock_minutes={2 * cfg.budget.wall_clock_minutes:g}")
            return 0
        if state.status == "done":   # the loop checks the new budget before each generation
            state.status, state.stop_reason = "running", None
            print(f"sia: going on with {', '.join(more_budget)}", flush=True)
        log.info("resuming %s at generation %d", run_dir.path, state.next_generation)
    else:
        write_text_atomic(run_dir.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        state = new_state()
        run_dir.save_state(state)
    print(f"sia: run dir {run_dir.path}  (resume with: python -m sia resume={run_dir.path})", flush=True)
    print(f"sia: task {task.name} on {task.data_label}; feedback {cfg.feedback.name}; model {cfg.model.name}",
          flush=True)

    if cfg.model.get("gpu") is not None:   # what runs where, and its peak memory per GPU
        from sia.engine.memory_plan import format_plan

        print(format_plan(cfg.model, cfg.lora), flush=True)
    started = time.monotonic()
    engine = build(cfg.model.engine, model_cfg=cfg.model, cache_dir=cfg.cache_dir)
    tracker = Tracker(cfg, run_dir.path, state.wandb_id, resume=resuming)
    state.wandb_id = tracker.run_id
    run_dir.save_state(state)
    agent = cfg.agent
    with HarnessPool(engine, workers=agent.workers, example_timeout_s=agent.example_timeout_s,
                     memory_mb=agent.memory_mb, max_llm_calls=agent.max_llm_calls,
                     max_new_tokens=agent.max_new_tokens, strict=agent.strict_sandbox,
                     scratch_root=str(run_dir.path / "scratch"),
                     deny_paths=[str(p) for p in task.private_paths()]) as pool:
        loop = assemble(cfg, run_dir, task, engine, pool, tracker, state)
        state = loop.run_all()

    summary = report(cfg, task, state, engine.stats, loop.baselines, run_dir.path)
    summary["this_attempt_s"] = time.monotonic() - started
    write_json_atomic(run_dir.path / "summary.json", summary)
    tracker.finish(state.history, summary)
    return 0

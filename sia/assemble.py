"""Wire the parts of one run together: data, workbench, evaluator, agents, lever, baselines.

Each part comes from its config node's ``_target_`` unless the caller hands one in (tests
inject scripted feedback agents or engines this way, without touching ``sia/``)."""
from __future__ import annotations

from pathlib import Path

from sia.baselines import score_baselines
from sia.build import build
from sia.data import prepare_data
from sia.evaluation import SandboxChecker, SplitEvaluator, Workbench
from sia.loop import Loop
from sia.parts import AgentEnv, Parts
from sia.records import RunState
from sia.run import RunDir
from sia.tasks import Task


def assemble(cfg, run_dir: RunDir, task: Task, engine, pool, tracker, state: RunState, *,
             meta=None, feedback=None, lever=None) -> Loop:
    progress = not cfg.quiet
    data = prepare_data(task, run_dir, cfg.budget)
    bench = Workbench(pool, data.resources, data.files, progress)
    checker = SandboxChecker(bench, data.splits.train, run_dir.path / "candidates")
    env = AgentEnv(task=task, run_dir=run_dir.path, resources=data.resources, files=data.files,
                   train=data.splits.train, checker=checker)
    parts = Parts(meta=meta or build(cfg.agent.meta), feedback=feedback or build(cfg.feedback, optional={"task": task}),
                  lever=lever or build(cfg.lever, cfg=cfg, task=task, bench=bench, run=run_dir, engine=engine,
                                       train=data.splits.train, progress=progress),
                  evaluator=SplitEvaluator(task, bench, run_dir), env=env)
    baselines = score_baselines(task, data, Path(cfg.cache_dir))
    inc = state.incumbent
    if inc is not None and inc.adapter:   # resumed: serve the incumbent's adapter again
        engine.add_adapter(inc.adapter, str(run_dir.incumbent_adapter_dir(state)))
    loop = Loop(run=run_dir, task=task, data=data, parts=parts, tracker=tracker, state=state, budget=cfg.budget,
                generate_seconds=lambda: engine.stats.generate_seconds, baselines=baselines)
    return loop

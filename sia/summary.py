"""What a finished run reports: summary.json, the final table, the progress plot."""
from __future__ import annotations

from pathlib import Path

from sia.records import RunState
from sia.tracking import plot_progress, print_table


def summarise(cfg, task, state: RunState, engine_stats, baselines: dict[str, dict], run_path: Path) -> dict:
    scored = [h for h in state.history if h.val is not None]
    first = scored[0] if scored else None
    inc = state.incumbent
    best = next((h for h in state.history if inc is not None and h.generation == inc.generation), None)
    elapsed = state.elapsed_s or 1e-9
    return {
        "task": task.name, "data": task.data_label, "feedback": cfg.feedback.name, "model": cfg.model.name,
        "metric": task.scoring.primary_metric, "direction": task.scoring.direction,
        "first": {"val": first.val if first else None, "test": first.test if first else None,
                  "val_metrics": first.val_metrics if first else None,
                  "test_metrics": first.test_metrics if first else None},
        "best": {"generation": inc.generation if inc else None, "val": inc.val if inc else None,
                 "test": inc.test if inc else None, "adapter": inc.adapter if inc else None,
                 "harness": inc.harness if inc else None},
        "best_test_metrics": best.test_metrics if best else None,
        "baselines": baselines,
        "generations": len(state.history),
        "decisions": [h.label for h in state.history],
        "stop_reason": state.stop_reason,
        "wall_s": state.elapsed_s, "generate_s": state.generate_s, "train_s": state.train_s,
        "overhead_share": max(0.0, 1 - (state.generate_s + state.train_s) / elapsed),
        "engine_tokens": {"prompt": engine_stats.prompt_tokens, "completion": engine_stats.completion_tokens},
        "agent": agent_totals(run_path, state),
    }


def agent_totals(run_path: Path, state: RunState) -> dict:
    """What the LLM agents cost: the run's agents.jsonl ledger when there is one (every call,
    cached ones included), else the per-generation records (offline agents: zero)."""
    ledger = run_path / "agents.jsonl"
    if ledger.is_file():
        from sia.agents.llm.ledger import Ledger

        return Ledger(ledger).summary()
    return {"tokens": sum(h.agent_tokens for h in state.history),
            "dollars": sum(h.agent_dollars for h in state.history)}


def report(cfg, task, state: RunState, engine_stats, baselines: dict[str, dict], run_path: Path) -> dict:
    summary = summarise(cfg, task, state, engine_stats, baselines, run_path)
    metric = f"{task.scoring.primary_metric} ({'higher' if task.scoring.direction == 'max' else 'lower'} is better)"
    plot_progress(state.history, task.scoring.primary_metric, run_path / "progress.png",
                  f"{task.name} on {task.data_label} - {cfg.feedback.name} - {cfg.model.name}", baselines)
    print_table(state.history, metric, task.data_label, baselines)
    best = summary["best"]
    print(f"sia: first val {_f(summary['first']['val'])} test {_f(summary['first']['test'])}; "
          f"best (gen {best['generation']}) val {_f(best['val'])} test {_f(best['test'])}; "
          f"{summary['wall_s']:.0f}s; summary {run_path / 'summary.json'}")
    if state.stop_reason:
        print(f"sia: stopped early: {state.stop_reason}")
    agent = summary["agent"]
    if agent.get("calls"):
        print(f"sia: LLM agents: {agent['calls']} calls ({agent.get('cached_calls', 0)} from the response cache), "
              f"{agent.get('tokens_in', 0)} tokens in, {agent.get('tokens_out', 0)} out, ${agent.get('dollars', 0):.4f}")
    return summary


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"

"""Metrics out of a run: W&B (offline by default), metrics.jsonl, summary table and plot."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sia.run import write_jsonl_atomic

log = logging.getLogger(__name__)
ACTION_MARKERS = {"seed": "o", "harness": "s", "weights": "^", "stop": "x"}


class Tracker:
    """Logs one row per generation to W&B and to ``metrics.jsonl`` in the run directory."""

    def __init__(self, cfg: DictConfig, run_dir: Path, run_id: str | None, resume: bool):
        self.run_dir = Path(run_dir)
        self.metrics_file = self.run_dir / "metrics.jsonl"
        self.wandb = None
        self.run_id = run_id
        if cfg.logger.mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb = wandb.init(
                project=cfg.logger.project,
                group=cfg.logger.group,
                job_type="sia-loop",
                name=self.run_dir.name,
                id=run_id,
                resume="allow" if resume else None,
                dir=str(self.run_dir),
                mode=cfg.logger.mode,
                config=OmegaConf.to_container(cfg, resolve=True),
                tags=[cfg.task.name, cfg.feedback.name],
            )
            self.run_id = self.wandb.id

    def log_generation(self, row: dict[str, Any], history: list[dict]) -> None:
        # metrics.jsonl is rewritten from the state's history, so a crash never duplicates a row
        write_jsonl_atomic(self.metrics_file, history)
        if self.wandb is not None:
            flat = {k: v for k, v in row.items() if isinstance(v, (int, float, bool)) or k == "decision"}
            self.wandb.log(flat, step=row["generation"])

    def log_train_step(self, generation: int, losses: list[float]) -> None:
        if self.wandb is not None and losses:
            self.wandb.log({"train/loss_first": losses[0], "train/loss_last": losses[-1]}, step=generation)

    def finish(self, history: list[dict], summary: dict) -> None:
        if self.wandb is None:
            return
        import wandb

        columns = ["generation", "decision", "edit", "kept", "val", "test"]
        table = wandb.Table(columns=columns, data=[[h.get(c) for c in columns] for h in history])
        self.wandb.log({"generations": table})
        for key, value in summary.items():
            if isinstance(value, (int, float, str)):
                self.wandb.summary[key] = value
        self.wandb.finish()


def print_table(history: list[dict], metric: str, data_label: str, console=None) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SIA generations ({metric}; data: {data_label})")
    for column in ("gen", "decision", "edit", "kept", f"val {metric}", f"test {metric}", "wall s"):
        table.add_column(column)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for h in history:
        table.add_row(str(h["generation"]), h["action"], h.get("edit") or "", "yes" if h.get("kept") else "no",
                      fmt(h.get("val")), fmt(h.get("test")), f"{h.get('wall_s', 0):.0f}")
    console = console or Console()
    with console.capture() as capture:
        console.print(table)
    text = capture.get()
    print(text, end="")
    return text


def plot_progress(history: list[dict], metric: str, path: Path, title: str) -> None:
    """Val per generation (every candidate) and test of the incumbent, each decision marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    gens = [h["generation"] for h in history]
    ax.plot(gens, [h.get("incumbent_val") for h in history], "-", color="tab:blue", label="val (incumbent)")
    ax.plot(gens, [h.get("incumbent_test") for h in history], "--", color="tab:orange", label="test (incumbent)")
    for h in history:
        if h.get("val") is None:
            continue
        color = "tab:green" if h.get("kept") else "tab:red"
        ax.scatter(h["generation"], h["val"], marker=ACTION_MARKERS.get(h["action"], "o"), color=color, zorder=3)
        ax.annotate(h["action"] + ("" if not h.get("edit") else f":{h['edit']}"), (h["generation"], h["val"]),
                    fontsize=7, xytext=(3, 4), textcoords="offset points")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)

"""Metrics out of a run: W&B (offline by default), metrics.jsonl, summary table and plot."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sia.records import GenerationRecord
from sia.run import write_jsonl_atomic

log = logging.getLogger(__name__)
ACTION_MARKERS = {"seed": "o", "harness": "s", "weights": "^", "stop": "x"}


def wandb_row(record: GenerationRecord) -> dict[str, Any]:
    """One W&B row per generation: the decision, kept, scores, every metric of each split."""
    row: dict[str, Any] = {"generation": record.generation, "decision": record.label, "action": record.action,
                           "edit": record.edit or "", "algorithm": record.algorithm or "", "kept": record.kept,
                           "fallback": record.fallback, "tokens": record.tokens, "wall_s": record.wall_s,
                           "train_s": record.train_s, "agent_tokens": record.agent_tokens,
                           "agent_dollars": record.agent_dollars}
    for key in ("val", "test", "train_probe", "incumbent_val", "incumbent_test", "train_loss_first",
                "train_loss_last", "val_n", "keep_gain", "keep_low", "keep_high", "keep_n"):
        value = getattr(record, key)
        if value is not None:
            row[key] = value
    for split, metrics in (("val", record.val_metrics), ("test", record.test_metrics)):
        row.update({f"{split}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    return row


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
                project=cfg.logger.project, group=cfg.logger.group, job_type="sia-loop",
                name=self.run_dir.name, id=run_id, resume="allow" if resume else None,
                dir=str(self.run_dir), mode=cfg.logger.mode,
                config=OmegaConf.to_container(cfg, resolve=True),
                tags=[cfg.task.name, cfg.feedback.name, f"seed{cfg.seed}"],
            )
            # two step axes: per generation, and per optimizer step of the weight updates
            self.wandb.define_metric("generation")
            self.wandb.define_metric("train/step")
            self.wandb.define_metric("train/*", step_metric="train/step")
            self.wandb.define_metric("*", step_metric="generation")
            self.run_id = self.wandb.id

    def log_generation(self, record: GenerationRecord, history: list[GenerationRecord]) -> None:
        # metrics.jsonl is rewritten from the state's history, so a crash never duplicates a row
        write_jsonl_atomic(self.metrics_file, [h.to_json() for h in history])
        if self.wandb is not None:
            step = sum(len(h.train_losses) for h in history if h.generation < record.generation)
            for i, loss in enumerate(record.train_losses):   # training loss on its own axis
                self.wandb.log({"train/step": step + i + 1, "train/loss": loss, "train/generation": record.generation})
            self.wandb.log(wandb_row(record))

    def finish(self, history: list[GenerationRecord], summary: dict) -> None:
        if self.wandb is None:
            return
        import wandb

        columns = ["generation", "decision", "kept", "val", "test", "rationale"]
        rows = [[h.generation, h.label, h.kept, h.val, h.test, h.rationale[:500]] for h in history]
        self.wandb.log({"generations": wandb.Table(columns=columns, data=rows)})
        for key, value in summary.items():
            if isinstance(value, (int, float, str)):
                self.wandb.summary[key] = value
        for when in ("first", "best"):   # what the W&B Report's bar plots read (sia/report/wandb_out.py)
            for split in ("val", "test"):
                if (summary.get(when) or {}).get(split) is not None:
                    self.wandb.summary[f"{when}/{split}"] = summary[when][split]
        for name, row in (summary.get("baselines") or {}).items():
            for split in ("val", "test"):
                if row.get(split) is not None:
                    self.wandb.summary[f"baseline/{name}/{split}"] = row[split]
        self.wandb.finish()


def print_table(history: list[GenerationRecord], metric: str, data_label: str,
                baselines: dict[str, dict] | None = None, console=None) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SIA generations ({metric}; data: {data_label})")
    for column in ("gen", "decision", "kept", f"val {metric}", f"test {metric}", "paired gain [95%] / n", "wall s"):
        table.add_column(column)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for h in history:
        gain = "-" if h.keep_gain is None else \
            f"{h.keep_gain:+.3f} [{h.keep_low:+.3f}, {h.keep_high:+.3f}] / {h.keep_n}"   # what the keep rule saw
        table.add_row(str(h.generation), h.label, "yes" if h.kept else "no", fmt(h.val), fmt(h.test), gain,
                      f"{h.wall_s:.0f}")
    for name, row in (baselines or {}).items():
        table.add_row("", f"baseline: {name}", "", fmt(row.get("val")), fmt(row.get("test")), "", "")
    console = console or Console()
    with console.capture() as capture:
        console.print(table)
    text = capture.get()
    print(text, end="")
    return text


def plot_progress(history: list[GenerationRecord], metric: str, path: Path, title: str,
                  baselines: dict[str, dict] | None = None) -> None:
    """Val per generation (every candidate) and test of the incumbent, each decision marked;
    the task's baselines as horizontal lines (val solid, test dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    gens = [h.generation for h in history]
    ax.plot(gens, [h.incumbent_val for h in history], "-", color="tab:blue", label="val (incumbent)")
    ax.plot(gens, [h.incumbent_test for h in history], "--", color="tab:orange", label="test (incumbent)")
    for h in history:
        if h.val is None:
            continue
        ax.scatter(h.generation, h.val, marker=ACTION_MARKERS.get(h.action, "o"),
                   color="tab:green" if h.kept else "tab:red", zorder=3)
        ax.annotate(h.label, (h.generation, h.val), fontsize=7, xytext=(3, 4), textcoords="offset points")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"][2:]
    for i, (name, row) in enumerate((baselines or {}).items()):
        color = colors[i % len(colors)]
        if row.get("val") is not None:
            ax.axhline(row["val"], color=color, lw=0.8, alpha=0.7, label=f"{name} (val)")
        if row.get("test") is not None:
            ax.axhline(row["test"], color=color, lw=0.8, ls=":", alpha=0.7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="best", fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)

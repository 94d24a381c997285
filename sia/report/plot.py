"""report.png: left, the incumbent's val score per generation for every group (mean line, band
from the lowest to the highest seed, each seed's decisions marked at its candidate's val score);
right, test at the best generation (mean bar, 95% t interval over seeds, one dot per seed). The best
non-LLM baseline of the runs' own task is a dashed line on both, where all runs share one task."""
from __future__ import annotations

import os
import statistics
from pathlib import Path

from sia.report import runs as R
from sia.report.tables import Group, best_baseline, t_interval

MARKERS = {"seed": "o", "harness": "s", "weights": "^", "stop": "x", "invalid": "X"}


def _curve(run: R.Run, length: int) -> list[float | None]:
    """Incumbent val per generation; after a run's last generation its incumbent stands."""
    values = [v for _, v in R.incumbent_curve(run)]
    last = next((v for v in reversed(values) if v is not None), None)
    return values + [last] * (length - len(values))


def plot_report(groups: list[Group], path: Path, title: str) -> dict[str, list[str]]:
    """Write the figure; returns the legend labels of each panel (what was drawn where)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    drawn = [g for g in groups if g.finished]
    fig, (ax, ax_test) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [2.2, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    metric = next((R.metric_name(r) for g in drawn for r in g.finished), "score")
    labels: dict[str, list[str]] = {"val": [], "test": []}
    for i, group in enumerate(drawn):
        color = colors[i % len(colors)]
        runs = group.finished
        length = max(R.generations_used(r) for r in runs)
        curves = [_curve(r, length) for r in runs]
        gens = list(range(length))
        columns = [[c[g] for c in curves if c[g] is not None] for g in gens]
        mean = [statistics.fmean(col) if col else float("nan") for col in columns]
        low = [min(col) if col else float("nan") for col in columns]
        high = [max(col) if col else float("nan") for col in columns]
        label = f"{group.label} (n={len(runs)})"
        ax.plot(gens, mean, "-", color=color, lw=2, label=label)
        ax.fill_between(gens, low, high, color=color, alpha=0.18, lw=0)
        labels["val"].append(label)
        shift = (i - (len(drawn) - 1) / 2) * 0.05     # groups side by side where their markers meet
        for run in runs:
            for h in R.history(run):
                if h.val is None:
                    continue
                ax.scatter(h.generation + shift, h.val, marker=MARKERS.get(h.action, "o"), s=34, zorder=3,
                           facecolors=color if h.kept else "none", edgecolors=color, linewidths=1.2)
        best_tests = [R.best_scores(r)[2] for r in runs]
        best_tests = [t for t in best_tests if t is not None]
        if best_tests:
            mean, half, n = t_interval(best_tests)
            ax_test.bar(i, mean, color=color, alpha=0.55, width=0.6,
                        yerr=None if n < 2 else half, capsize=5, ecolor="black")
            ax_test.scatter([i] * len(best_tests), best_tests, color=color, edgecolors="black", zorder=3, s=26)
            labels["test"].append(group.label)
    baseline = best_baseline([r for g in drawn for r in g.finished])
    if baseline is not None and len({g.task for g in drawn}) == 1:
        name, val, test = baseline
        ax.axhline(val, ls="--", color="gray", lw=1.2, label=f"best baseline: {name}")
        labels["val"].append(f"best baseline: {name}")
        if test is not None:
            ax_test.axhline(test, ls="--", color="gray", lw=1.2)
            labels["test"].append(f"best baseline: {name}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel(f"val {metric} (incumbent)")
    ax.set_title("incumbent val per generation: mean, band = seed range; markers = candidates", fontsize=9)
    ax.grid(alpha=0.3)
    decision_keys = [Line2D([], [], ls="none", marker=m, color="gray", label=a) for a, m in MARKERS.items()
                     if a != "invalid"] + [Line2D([], [], ls="none", marker="o", mfc="none", color="gray",
                                                  label="rejected (hollow)")]
    first_legend = ax.legend(loc="lower right", fontsize=8)
    ax.add_artist(first_legend)
    ax.legend(handles=decision_keys, loc="upper left", fontsize=7, ncol=3, frameon=False)
    ax_test.set_xticks(range(len(drawn)), [g.label for g in drawn], rotation=20, ha="right", fontsize=8)
    ax_test.set_ylabel(f"test {metric}")
    ax_test.set_title("test at the best generation\n(bar = mean, whisker = 95% t interval,\ndots = seeds, dashed = best baseline)",
                      fontsize=9)
    ax_test.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return labels

"""``plot.png`` of a lab: each arm's per-epoch curve, and its test accuracy as a dot plot.

Read at a glance, so nothing in it may mislead: test accuracies are dots with mean ± sd
error bars and every seed shown (a bar chart cut off at 22% would make a 1-point
difference look like a 3x one); a run of one epoch is a marked single point and says so;
an arm that diverged is drawn where it is counted (chance accuracy) and labelled
"diverged", never silently left out.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from cnnlab.lab.experiments import Experiment
from cnnlab.report.plots import pyplot, save_figure
from cnnlab.runfolder import RunFolder

METRIC_LABELS = {"val_acc": "validation accuracy (%)", "train_err": "training error (%)",
                 "gap": "train - val accuracy (%, during training)"}  # fmt: skip
DIVERGED_COLOR = "tab:red"
# Arm colours: matplotlib's cycle without its red (C3), which marks divergence here.
ARM_COLORS = ("C0", "C1", "C2", "C4", "C5", "C6", "C7", "C8", "C9")


def plot_lab(exp: Experiment, rows: list[dict[str, Any]], path: Path) -> Path:
    """Write the lab's ``plot.png`` (see the module docstring) and return its path."""
    return save_figure(lab_figure(exp, rows), path)


def lab_figure(exp: Experiment, rows: list[dict[str, Any]]):  # noqa: ANN201 - a matplotlib Figure
    """The figure of :func:`plot_lab`: curves (left) and test accuracy per arm (right)."""
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    _curves_panel(ax, exp, rows)
    _accuracy_panel(bx, exp, rows)
    fig.tight_layout()
    return fig


def _curves_panel(ax: Any, exp: Experiment, rows: list[dict[str, Any]]) -> None:
    """Per-epoch curve of the experiment's metric per arm, mean over the seeds that trained."""
    from matplotlib.ticker import MaxNLocator

    label = METRIC_LABELS[exp.plot_metric]
    lengths, diverged = [], []
    for i, arm in enumerate(exp.arms):
        mine = [r for r in rows if r["arm"] == arm.name]
        lost = sum(1 for r in mine if r.get("diverged"))
        if lost:
            diverged.append(f"{arm.name}: diverged, no curve" if lost == len(mine)
                            else f"{arm.name}: {lost} of {len(mine)} seeds diverged (curve: the others)")  # fmt: skip
        curves = [c for c in (_curve(Path(r["run_dir"]), exp.plot_metric) for r in mine if not r.get("diverged")) if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        lengths.append(n)
        mean = [statistics.fmean(c[k] for c in curves) for k in range(n)]
        # A one-epoch curve is a single point: a larger marker keeps it visible.
        ax.plot(range(1, n + 1), mean, marker="o", ms=7 if n == 1 else 3, color=ARM_COLORS[i % len(ARM_COLORS)], label=arm.name)
    title = f"{exp.name}: {label} per epoch"
    if lengths and max(lengths) == 1:
        title += "\n1 epoch: one point per arm, no curve yet"
    ax.set(xlabel="epoch", ylabel=label, title=title)
    ax.title.set_fontsize(10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if lengths:
        ax.set_xlim(0.5, max(lengths) + 0.5)
    for note in diverged:  # in the legend, where a reader looks for the arm
        ax.plot([], [], "x", color=DIVERGED_COLOR, label=note)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _accuracy_panel(bx: Any, exp: Experiment, rows: list[dict[str, Any]]) -> None:
    """Test accuracy per arm: every seed as a small dot, mean ± sd as a large one with error bars.

    A diverged seed is counted at chance accuracy (as in the verdict) and drawn as a red
    cross labelled "diverged", so the plot shows what the verdict used.
    """
    names = [a.name for a in exp.arms if any(r["arm"] == a.name for r in rows)]
    extent: list[float] = []  # every value drawn, error bars included, so none is cut off
    for x, name in enumerate(names):
        mine = [r for r in rows if r["arm"] == name]
        values = [float(r["test_acc"]) for r in mine]
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        bx.errorbar([x], [mean], yerr=[sd], fmt="o", ms=7, capsize=4, color="C0", zorder=3)
        extent += [*values, mean - sd, mean + sd]
        trained = [float(r["test_acc"]) for r in mine if not r.get("diverged")]
        lost = [float(r["test_acc"]) for r in mine if r.get("diverged")]
        bx.scatter([x + 0.12] * len(trained), trained, s=12, color="0.45", zorder=2)
        if lost:
            bx.scatter([x + 0.12] * len(lost), lost, s=30, marker="x", color=DIVERGED_COLOR, zorder=4)
            bx.annotate("diverged" if len(lost) == len(mine) else f"{len(lost)} diverged", (x, min(lost)),
                        xytext=(0, -14), textcoords="offset points", ha="center", fontsize=8, color=DIVERGED_COLOR)  # fmt: skip
    bx.set_xticks(range(len(names)), names)
    bx.set_xlim(-0.5, len(names) - 0.5)
    if extent:  # a floor of 5 points of span, so seed noise does not fill the whole height
        lo, hi = min(extent), max(extent)
        pad = max(5.0 - (hi - lo), 0.0) / 2 + 0.15 * max(hi - lo, 1.0)
        bx.set_ylim(max(lo - pad - 2.0, 0.0), min(hi + pad, 100.0))
    seeds = max((sum(1 for r in rows if r["arm"] == n) for n in names), default=0)
    bx.set(ylabel="test accuracy (%)",
           title="test accuracy: mean ± sd over seeds" if seeds > 1 else "test accuracy (1 seed: no spread)")  # fmt: skip
    bx.title.set_fontsize(10)
    bx.grid(axis="y", alpha=0.3)
    bx.tick_params(axis="x", labelrotation=20)


def _curve(run: Path, metric: str) -> list[float]:
    records = RunFolder(run).read_metrics()
    if metric == "train_err":
        return [100 * (1 - r["train_acc"]) for r in records]
    if metric == "gap":
        return [100 * (r["train_acc"] - (r["val_acc"] or 0.0)) for r in records]
    return [100 * (r["val_acc"] or 0.0) for r in records]

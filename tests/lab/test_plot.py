"""The lab's plot.png reads at a glance: dots with error bars, one-epoch runs and diverged arms said."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cnnlab.lab.experiments import get_experiment
from cnnlab.lab.plot import lab_figure, plot_lab
from cnnlab.runfolder import RunFolder

INIT = get_experiment("init")  # arms normal:0.01, normal:1.0, xavier, kaiming


def _rows(tmp_path: Path, epochs: int, accs: dict[str, list[float]], diverged: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Lab rows for the init experiment, each with a run folder holding ``epochs`` metrics records."""
    rows = []
    for arm, values in accs.items():
        for seed, acc in enumerate(values):
            run = tmp_path / f"{arm}-s{seed}"
            run.mkdir()
            lost = arm in diverged
            if not lost:
                RunFolder(run).write_metrics([{"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0,
                                               "val_acc": acc / 100 * (e + 1) / epochs} for e in range(epochs)])  # fmt: skip
            rows.append({"arm": arm, "seed": seed, "run_dir": str(run), "test_acc": 25.0 if lost else acc,
                         "diverged": 1.0 if lost else 0.0})  # fmt: skip
    return rows


def _texts(ax: Any) -> str:
    return " ".join([ax.get_title(), *(t.get_text() for t in ax.texts)])


def test_accuracy_is_a_dot_plot_with_error_bars_not_a_cut_off_bar_chart(tmp_path: Path) -> None:
    # Before: bars starting at 22% made 85% vs 86% look like a 2x difference.
    accs = {"normal:0.01": [85.0, 86.0], "normal:1.0": [84.0, 85.5], "xavier": [86.0, 86.5], "kaiming": [86.5, 87.0]}
    fig = lab_figure(INIT, _rows(tmp_path, 5, accs))
    _, bx = fig.axes
    assert not bx.patches  # no bars
    assert len(bx.containers) == len(accs)  # one errorbar (mean ± sd) per arm
    assert "mean ± sd" in bx.get_title()
    assert [t.get_text() for t in bx.get_xticklabels()] == list(accs)


def test_one_epoch_runs_and_a_diverged_arm_are_said_on_the_plot(tmp_path: Path) -> None:
    accs = {"normal:0.01": [25.0], "normal:1.0": [0.0], "xavier": [26.0], "kaiming": [29.0]}
    rows = _rows(tmp_path, 1, accs, diverged=("normal:1.0",))
    fig = lab_figure(INIT, rows)
    ax, bx = fig.axes
    assert "1 epoch" in _texts(ax)
    curves = [line for line in ax.lines if not line.get_label().endswith("no curve")]
    assert len(curves) == 3 and all(line.get_marker() == "o" and line.get_markersize() >= 6 for line in curves)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "normal:1.0: diverged, no curve" in legend  # no curve, and the plot says why
    assert "diverged" in _texts(bx)  # drawn at chance, where the verdict counts it
    path = plot_lab(INIT, rows, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("epochs", [1, 3])
def test_curve_epoch_ticks_are_whole(tmp_path: Path, epochs: int) -> None:
    fig = lab_figure(INIT, _rows(tmp_path, epochs, {"kaiming": [80.0], "xavier": [70.0]}))
    ax = fig.axes[0]
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks)

"""cnnlab.report.plots: each picture is written, is a valid PNG of a plausible size, and shows something."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.report.plots import captioned_grid, confusion_plot, image_grid, training_curves, training_curves_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature (no decoder involved)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def _check_png(path: Path, *, min_side: int, max_side: int) -> np.ndarray:
    width, height = _png_size(path)
    assert min_side <= width <= max_side and min_side <= height <= max_side, (width, height)
    with Image.open(path) as img:
        img.load()  # decodes every chunk: a truncated or corrupt file raises here
        pixels = np.asarray(img.convert("L"))
    assert pixels.shape == (height, width)
    assert pixels.std() > 10, "the picture is blank"
    assert not list(path.parent.glob(".*.tmp")), "the atomic write left its temporary file"
    return pixels


RECORDS = [
    {"epoch": e, "train_loss": 2.0 / (e + 1), "train_acc": 0.5 + 0.1 * e, "val_loss": 2.2 / (e + 1), "val_acc": 0.45 + 0.1 * e}
    for e in range(4)
]  # fmt: skip


def test_training_curves(tmp_path: Path) -> None:
    path = training_curves(RECORDS, tmp_path / "curves.png", title="demo")
    assert path == tmp_path / "curves.png"
    _check_png(path, min_side=200, max_side=1200)  # 10 x 3.8 in at 100 dpi, trimmed to the drawing
    width, height = _png_size(path)
    assert width > 2 * height, "two panels side by side"


def test_training_curves_without_validation(tmp_path: Path) -> None:
    # A run without a validation split writes None there; the train curves are still drawn.
    records = [{**r, "val_loss": None, "val_acc": None} for r in RECORDS]
    _check_png(training_curves(records, tmp_path / "c.png"), min_side=200, max_side=1200)


def test_the_curves_show_the_records(tmp_path: Path) -> None:
    a = _check_png(training_curves(RECORDS, tmp_path / "a.png"), min_side=200, max_side=1200)
    flat = [{**r, "train_loss": 1.0, "val_loss": 1.0} for r in RECORDS]
    b = _check_png(training_curves(flat, tmp_path / "b.png"), min_side=200, max_side=1200)
    assert a.shape != b.shape or (a != b).mean() > 0.01, "different records drew the same picture"


@pytest.mark.parametrize("n", [3, 12])
def test_confusion_plot(tmp_path: Path, n: int) -> None:
    cm = np.diag(np.arange(1, n + 1) * 10) + 1
    path = confusion_plot(cm, [f"class {i}" for i in range(n)], tmp_path / "cm.png", title="confusion")
    _check_png(path, min_side=300, max_side=2500)


def test_image_grid_and_captioned_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (6, 1, 12, 12), dtype=np.uint8)
    rgb = rng.integers(0, 256, (5, 3, 12, 12), dtype=np.uint8)
    path = image_grid([list(gray[:3]), list(gray[3:])], tmp_path / "grid.png", row_labels=["a", "b"],
                      col_labels=["1", "2", "3"], title="grid")  # fmt: skip
    _check_png(path, min_side=100, max_side=1000)
    path = captioned_grid(list(rgb), [f"image {i}\nok" for i in range(5)], tmp_path / "cap.png", columns=3)
    _check_png(path, min_side=100, max_side=1000)
    _check_png(captioned_grid([], [], tmp_path / "empty.png"), min_side=50, max_side=1000)  # says "nothing to show"


def _tick_labels(axis) -> list[str]:  # noqa: ANN001 - a matplotlib Axis
    """The labels of the ticks inside the axis' view (matplotlib also places some outside)."""
    lo, hi = sorted(axis.get_view_interval())
    return [t.get_text() for t in axis.get_ticklabels() if lo <= t.get_position()[axis is axis.axes.yaxis] <= hi and t.get_text()]


@pytest.mark.parametrize("epochs", [1, 2, 4, 30])
def test_curves_have_whole_epoch_ticks_and_plain_loss_labels(epochs: int) -> None:
    # Before: 2 epochs gave ticks 1.25, 1.5, ... and a log axis labelled "2.235x10^0".
    records = [{"epoch": e, "train_loss": 2.3 * 0.8**e, "train_acc": 0.5, "val_loss": 2.235 * 0.8**e, "val_acc": 0.4}
               for e in range(epochs)]  # fmt: skip
    fig = training_curves_figure(records)
    fig.canvas.draw()
    ax_loss, ax_acc = fig.axes
    for ax in (ax_loss, ax_acc):
        xs = _tick_labels(ax.xaxis)
        assert xs and all(x.isdigit() for x in xs), xs
        assert {int(x) for x in xs} <= set(range(1, epochs + 1))
    ys = _tick_labels(ax_loss.yaxis) + [t.get_text() for t in ax_loss.get_yticklabels(minor=True) if t.get_text()]
    assert len(ys) >= 2 and all(float(y) > 0 for y in ys), ys  # plain numbers: float() fails on "$2.235\\times10^{0}$"
    assert ax_loss.get_yscale() == ("log" if 0.8 ** (epochs - 1) < 0.1 else "linear")

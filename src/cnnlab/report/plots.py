"""Plotting functions: arrays in, PNG files out (matplotlib with the Agg backend).

Nothing here imports the rest of cnnlab (but :mod:`cnnlab.io`), so any part may call it;
matplotlib is imported on first use, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnnlab.io import atomic_path

# The loss axis of the training curves turns logarithmic when the loss spans more than this factor.
LOG_LOSS_SPAN = 10.0


def pyplot():  # noqa: ANN202 - matplotlib.pyplot, imported lazily and headless (Agg)
    """``matplotlib.pyplot`` with the headless Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:  # noqa: ANN001
    """Write ``fig`` atomically (format from the suffix), close it, return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=fig.dpi, bbox_inches="tight")
    pyplot().close(fig)
    return path


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | Path,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    cell_inches: float = 1.1,
) -> Path:
    """Save a grid of uint8 images (each (C, H, W) with C = 1 or 3) as a PNG.

    Args:
        rows: one sequence of images per grid row.
        path: the output file.
        row_labels: a label left of each row.
        col_labels: a title above each column.
        title: a title over the whole grid.
        cell_inches: size of one cell.
    """
    plt = pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(cell_inches * n_cols + 1.2, cell_inches * n_rows + 0.4), squeeze=False, dpi=100
    )
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j >= len(row):
                continue
            img = np.asarray(row[j])
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
            if i == 0 and col_labels is not None and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=8)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[i], fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def training_curves(records: Sequence[dict], path: str | Path, *, title: str | None = None) -> Path:
    """Save train/val loss and accuracy by epoch (two panels) from ``metrics.jsonl`` records."""
    return save_figure(training_curves_figure(records, title=title), path)


def training_curves_figure(records: Sequence[dict], *, title: str | None = None):  # noqa: ANN201 - a matplotlib Figure
    """The figure of :func:`training_curves`: integer epoch ticks, loss labels as plain numbers.

    The loss axis is logarithmic only when the loss spans more than ``LOG_LOSS_SPAN`` (a
    factor of 10): then the fall from ~2.3 to ~0.05 stays readable. Its labels are plain
    numbers at 1, 2 and 5 times powers of ten (never "2.235x10^0").
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    plt = pyplot()
    epochs = [r["epoch"] + 1 for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    losses: list[float] = []
    for key, label, style in (("train", "train", "-"), ("val", "validation", "--")):
        loss = [r.get(f"{key}_loss") for r in records]
        acc = [r.get(f"{key}_acc") for r in records]
        if any(v is not None for v in loss):
            ax_loss.plot(epochs, [np.nan if v is None else v for v in loss], style, marker=".", label=label)
            ax_acc.plot(epochs, [np.nan if v is None else 100 * v for v in acc], style, marker=".", label=label)
            losses += [float(v) for v in loss if v is not None and np.isfinite(v) and v > 0]
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    if losses and max(losses) / min(losses) > LOG_LOSS_SPAN:
        ax_loss.set_yscale("log")
        ax_loss.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_loss.yaxis.set_minor_formatter(NullFormatter())
    ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole: no 1.25, 1.5 ticks
        if epochs:  # half an epoch of margin: one epoch is a dot at 1, not the middle of a 0.95-1.05 axis
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def confusion_plot(
    confusion: np.ndarray, classes: Sequence[str], path: str | Path, *, title: str | None = None
) -> Path:
    """Save a confusion matrix as a heat map: colour = row-normalised rate, text = count.

    Rows are true classes and columns predicted ones. Colouring by the fraction of each
    row (the recall of the true class) keeps rare classes as visible as common ones;
    the cell text gives the raw count.

    Args:
        confusion: (C, C) counts, rows true class, columns predicted class.
        classes: the C class names.
        path: the output file.
        title: a title over the plot.
    """
    plt = pyplot()
    cm = np.asarray(confusion, dtype=np.int64)
    n = cm.shape[0]
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.5 * n + 2.0), 24.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=100)
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 30:  # beyond that the numbers are unreadable; the colours still tell the story
        size = 9 if n <= 10 else 7 if n <= 20 else 5
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=size,
                            color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=list(classes), rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=8)
    ax.set_yticks(ticks, labels=list(classes), fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def captioned_grid(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    path: str | Path,
    *,
    columns: int = 6,
    title: str | None = None,
    cell_inches: float = 1.6,
) -> Path:
    """Save uint8 images (each (C, H, W), C = 1 or 3) in a grid, each with its own caption.

    Args:
        images: the images, filled in row by row.
        captions: one (possibly multi-line) caption per image, shown above it.
        path: the output file.
        columns: images per row.
        title: a title over the whole grid.
        cell_inches: width of one cell.
    """
    plt = pyplot()
    count = max(len(images), 1)
    cols = max(1, min(columns, count))
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cell_inches * cols, (cell_inches + 0.35) * rows + 0.4), squeeze=False, dpi=100)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(images):
            ax.axis("off")
            continue
        img = np.asarray(images[k])
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
        ax.set_title(captions[k], fontsize=7)
    if not images:
        axes[0][0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)

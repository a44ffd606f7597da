"""Plotting functions: arrays in, PNG files out (matplotlib with the Agg backend).

Nothing here imports the rest of cnnlab, so any part may call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():  # noqa: ANN202 - matplotlib is imported lazily and headless
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:  # noqa: ANN001
    from cnnlab.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=fig.dpi, bbox_inches="tight")
    _pyplot().close(fig)
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
    plt = _pyplot()
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
    return _save(fig, path)


def training_curves(records: Sequence[dict], path: str | Path, *, title: str | None = None) -> Path:
    """Save train/val loss and accuracy by epoch (two panels) from ``metrics.jsonl`` records."""
    plt = _pyplot()
    epochs = [r["epoch"] + 1 for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    for key, label, style in (("train", "train", "-"), ("val", "validation", "--")):
        loss = [r.get(f"{key}_loss") for r in records]
        acc = [r.get(f"{key}_acc") for r in records]
        if any(v is not None for v in loss):
            ax_loss.plot(epochs, [np.nan if v is None else v for v in loss], style, marker=".", label=label)
            ax_acc.plot(epochs, [np.nan if v is None else 100 * v for v in acc], style, marker=".", label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_yscale("log")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)

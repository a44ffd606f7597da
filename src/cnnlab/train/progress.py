"""Live progress: a rich bar on a terminal, one plain line per epoch otherwise (CI logs)."""

from __future__ import annotations

import sys
from typing import Any


class EpochProgress:
    """Shows the batches of one epoch with loss, accuracy, images/s and ETA.

    On a terminal a rich progress bar is redrawn as batches finish; when output goes to a
    file or a pipe nothing is drawn and :meth:`close` prints a single summary line.
    """

    def __init__(self, epoch: int, epochs: int, total: int, *, enabled: bool = True, start: int = 0) -> None:
        self.epoch, self.epochs, self.total = epoch, epochs, total
        self.enabled = enabled
        self.live = enabled and sys.stdout.isatty()
        self._bar: Any = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=True,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=start, stats="")

    def update(self, done: int, loss: float, acc: float, images_per_s: float) -> None:
        if self.live:
            self._bar.update(self._task, completed=done, stats=f"loss {loss:.4f} acc {acc:.2%} {images_per_s:,.0f} img/s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def epoch_line(record: dict[str, Any]) -> str:
    """One line summarising an epoch record (printed after every epoch)."""
    parts = [f"epoch {record['epoch'] + 1:>3}/{record['epochs']}"]
    parts.append(f"train loss {record['train_loss']:.4f} acc {record['train_acc']:.2%}")
    if record.get("val_loss") is not None:
        parts.append(f"val loss {record['val_loss']:.4f} acc {record['val_acc']:.2%}")
    parts.append(f"lr {record['lr']:.3g}")
    parts.append(f"{record['images_per_s']:,.0f} img/s")
    parts.append(f"{record['time']:.1f}s")
    return " | ".join(parts)

"""Live progress: a rich bar on a terminal, one plain line per epoch otherwise (CI logs).

Two kinds of pass over data show progress the same way: a training epoch
(:class:`EpochProgress`, with loss, accuracy and images/s) and any other pass, such as
validation, the test split, ``cnnlab eval``, ``predict`` or feature caching
(:class:`PassProgress`). A pass that ends within a second draws nothing, so short
validations do not flicker; when output goes to a file or a pipe nothing is drawn at all,
and the epoch line says how long validation took instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any

#: A pass over data shows its bar only once it has run this long (s): shorter ones would flicker.
SHOW_AFTER_SECONDS = 1.0


def _columns(label: str) -> list[Any]:
    """The bar's columns, shared by both kinds of pass so they look alike."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    return [TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), TimeRemainingColumn()]


def phase_prefix(phase: str | None) -> str:
    """``"fine-tune "`` before ``epoch 1/5`` when a run trains in named phases, else nothing."""
    return f"{phase} " if phase else ""


class EpochProgress:
    """Shows the batches of one epoch with loss, accuracy, images/s and ETA.

    On a terminal a rich progress bar is redrawn as batches finish; when output goes to a
    file or a pipe nothing is drawn and :meth:`close` prints a single summary line.

    Args:
        epoch: the epoch, counted from 0.
        epochs: the epochs of the run (or of its phase).
        total: batches in the epoch.
        enabled: False draws nothing (``--quiet``, other processes).
        start: the batch a resumed epoch continues from.
        phase: names the phase of a run that trains in phases (transfer learning), e.g.
            ``"fine-tune"``; shown before ``epoch 1/5``.
    """

    def __init__(self, epoch: int, epochs: int, total: int, *, enabled: bool = True, start: int = 0,
                 phase: str | None = None) -> None:  # fmt: skip
        self.epoch, self.epochs, self.total = epoch, epochs, total
        self.enabled = enabled
        self.live = enabled and sys.stdout.isatty()
        self._bar: Any = None
        if self.live:
            from rich.progress import Progress

            self._bar = Progress(*_columns(f"{phase_prefix(phase)}epoch {epoch + 1}/{epochs}"), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=start, stats="")

    def update(self, done: int, loss: float, acc: float, images_per_s: float) -> None:
        if self.live:
            self._bar.update(self._task, completed=done, stats=f"loss {loss:.4f} acc {acc:.2%} {images_per_s:,.0f} img/s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class PassProgress:
    """Progress of one pass over data that is no training epoch (validation, test, eval, ...).

    The bar appears only once the pass has run :data:`SHOW_AFTER_SECONDS`, and only on a
    terminal; it is removed when the pass ends. Use it as a context manager, calling
    :meth:`advance` after each batch.

    Args:
        label: what the pass does, e.g. ``"validating"``.
        total: batches (or items) in the pass.
        enabled: False draws nothing (``--quiet``, other processes).
        live: draw on a terminal; None: when standard output is one.
        delay: seconds before the bar appears.
        console: a ``rich.console.Console`` to draw on (default: standard output).
    """

    def __init__(self, label: str, total: int, *, enabled: bool = True, live: bool | None = None,
                 delay: float = SHOW_AFTER_SECONDS, console: Any = None) -> None:  # fmt: skip
        self.label, self.total, self.delay, self.console = label, total, delay, console
        self.live = enabled and (sys.stdout.isatty() if live is None else live)
        self.done = 0
        self._start = time.monotonic()
        self._bar: Any = None

    def __enter__(self) -> PassProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def seconds(self) -> float:
        """Time since the pass started (s)."""
        return time.monotonic() - self._start

    def advance(self, n: int = 1, stats: str = "") -> None:
        """Count ``n`` more batches done; ``stats`` is shown after the counts (e.g. images/s)."""
        self.done += n
        if not self.live:
            return
        if self._bar is None and self.seconds >= self.delay and self.done < self.total:
            from rich.progress import Progress

            self._bar = Progress(*_columns(self.label), transient=True, console=self.console)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, completed=0, stats="")
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, stats=stats)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def format_duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3 h 20 min``: a duration as a person says it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def epoch_line(record: dict[str, Any], phase: str | None = None) -> str:
    """One line summarising an epoch record (printed after every epoch).

    The time is the epoch's training time, then its validation time (``12.0s + val 3.1s``),
    so that a run whose validation dominates says so. A validation on a subset
    (``--val-subset``) says how many images it used.
    """
    parts = [f"{phase_prefix(phase)}epoch {record['epoch'] + 1:>3}/{record['epochs']}"]
    parts.append(f"train loss {record['train_loss']:.4f} acc {record['train_acc']:.2%}")
    if record.get("val_loss") is not None:
        val = f"val loss {record['val_loss']:.4f} acc {record['val_acc']:.2%}"
        if record.get("val_images") is not None and record.get("val_of") is not None and record["val_images"] < record["val_of"]:
            val += f" on {record['val_images']:,} of {record['val_of']:,}"
        parts.append(val)
    parts.append(f"lr {record['lr']:.3g}")
    parts.append(f"{record['images_per_s']:,.0f} img/s")
    time_part = f"{record['time']:.1f}s"
    if record.get("val_time") is not None:
        time_part += f" + val {record['val_time']:.1f}s"
    parts.append(time_part)
    return " | ".join(parts)

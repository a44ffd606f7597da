"""A run that must end by a wall-clock time: its total steps re-planned from its own epochs' pace.

A plan made before training (the recipe's budget planner times a few steps) misses on a
machine whose speed drifts: measured on 2 shared CPU cores, 24 timed steps read an epoch
13% slower than the epochs that followed in one run and a fast moment in another, so one
run ended 35 s early and another overran its budget by 13% (docs/benchmarks.md). The
first whole epoch, its validation and checkpoint included, is a far better clock, and the
median of the first few a better one still (a first epoch alone missed 10-minute runs'
pace by -16% and +25%: docs/benchmarks.md). So a run with a :class:`Deadline` trains its
first epoch on the planned schedule and then, after every whole epoch while all its steps
were warmup, sets its total steps from the median pace of its epochs so far
(:meth:`Deadline.total_steps`, a pure function).

This stays exact: the re-plan happens only while every step taken so far was in the
learning-rate warmup, whose rates do not depend on the total (:func:`cnnlab.train.schedule.lr_factor`),
so the run is step for step the one a fresh run with the new total would train. The new
total is written to the run's ``config.yaml`` and checkpoints as ``train.steps``: a resume
continues it, and the config reproduces it. :func:`deadline_schedule` gives a run the
warmup this needs (the recipe's final run and ``cnnlab train --time`` both use it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from cnnlab.config import ScheduleConfig


@dataclass(frozen=True)
class Deadline:
    """When a run must be done, and what it must still do after its last epoch.

    Attributes:
        at: the wall-clock time (``time.time()``) by which the run, ``end_seconds``
            included, should be finished.
        end_seconds: one-off seconds after the last epoch (the test pass, TTA's passes).
        max_epochs: at most this many epochs' steps in all (None: no cap).
        margin: the fraction of the time left kept free for the pace to drift.
    """

    at: float
    end_seconds: float = 0.0
    max_epochs: int | None = None
    margin: float = 0.03

    def total_steps(
        self, now: float, steps_done: int, steps_per_epoch: int, epoch_seconds: float, val_seconds: float
    ) -> int:
        """The run's total steps, from the pace of an epoch just finished.

        Args:
            now: the time (``time.time()``).
            steps_done: steps taken so far (whole epochs).
            steps_per_epoch: steps of one whole epoch.
            epoch_seconds: the wall seconds of the last epoch, from its first step to after
                its validation and checkpoint.
            val_seconds: the seconds of that epoch's validation (paid again by every epoch,
                the partial last one too).

        Returns:
            At least ``steps_done`` (the run ends now when not one more step fits).
        """
        step_seconds = max(epoch_seconds - val_seconds, 1e-9) / steps_per_epoch
        left = (self.at - now - self.end_seconds) * (1.0 - self.margin)
        whole = max(int(left // (epoch_seconds if epoch_seconds > 0 else math.inf)), 0)
        rest = left - whole * epoch_seconds
        part = int((rest - val_seconds) // step_seconds) if rest > val_seconds else 0
        if part * step_seconds < val_seconds:
            # A part of an epoch shorter than the validation after it buys almost nothing (measured:
            # `--time 5m` trained 1 step at lr 1e-7 for 0.1 s, then validated for 1.5 s); end on the whole epoch.
            part = 0
        total = steps_done + whole * steps_per_epoch + min(max(part, 0), steps_per_epoch - 1)
        if self.max_epochs is not None:
            total = min(total, max(self.max_epochs * steps_per_epoch, steps_done))
        return max(total, steps_done)


def deadline_schedule(schedule: ScheduleConfig, epochs: float) -> ScheduleConfig | None:
    """The schedule of a run of ``epochs`` planned epochs that lets its deadline re-plan it, or None.

    The re-plan after the first epoch is exact only while that epoch was all warmup. So
    onecycle's rise becomes an explicit warmup of the same length (``pct_start`` x the
    planned epochs: the same schedule but for its first rate, 0 instead of peak/25);
    another schedule keeps its own ``warmup_epochs``.

    Args:
        schedule: the run's schedule.
        epochs: the epochs planned before training (fractional for a run planned in steps).

    Returns:
        The schedule with that warmup, or None when the warmup is shorter than one epoch
        (onecycle: fewer than ``1 / pct_start`` planned epochs): such a run keeps its plan.
    """
    onecycle_rise = schedule.name == "onecycle" and schedule.warmup_epochs == 0
    warmup = schedule.pct_start * epochs if onecycle_rise else schedule.warmup_epochs
    if warmup < 1:
        return None
    return dataclasses.replace(schedule, warmup_epochs=round(warmup, 3))

"""Learning-rate schedules as pure functions of the optimisation step.

A schedule returns the multiplier of the peak learning rate at step ``t`` of ``total``
steps, so resuming a run needs nothing but the step counter, and the value at any step
can be plotted or tested on its own (nanoGPT's ``get_lr`` idea).
"""

from __future__ import annotations

import bisect
import math

from cnnlab.config import ScheduleConfig


def lr_factor(step: int, total: int, cfg: ScheduleConfig, warmup_steps: int = 0) -> float:
    """Multiplier of the peak lr at ``step`` (0-based) of ``total`` steps.

    Args:
        step: the optimisation step about to be taken.
        total: all steps of the run (warmup included).
        cfg: the schedule.
        warmup_steps: steps of linear warmup from ~0 to the schedule's own value.
    """
    total = max(total, 1)
    step = min(max(step, 0), total - 1)
    warm = 1.0 if step >= warmup_steps else (step + 1) / warmup_steps
    # The schedule proper runs over the steps after the warmup.
    span = max(total - warmup_steps, 1)
    t = max(step - warmup_steps, 0) / span  # progress in [0, 1)
    floor = cfg.final_lr_frac
    if cfg.name == "constant":
        factor = 1.0
    elif cfg.name == "cosine":
        factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    elif cfg.name == "step":
        factor = cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), t)
    else:  # onecycle: linear up from peak/25 to the peak, then cosine down to the floor
        start = 1.0 / 25.0
        if warmup_steps == 0 and t < cfg.pct_start:
            factor = start + (1 - start) * t / cfg.pct_start
        else:
            rise = 0.0 if warmup_steps else cfg.pct_start  # an explicit warmup replaces the rise
            u = (t - rise) / (1 - rise)
            factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * u))
    return warm * factor

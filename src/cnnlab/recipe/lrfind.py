"""Step 3 of the recipe: the learning-rate range test (``cnnlab lr-find``).

Train for ``steps`` mini-batches while the learning rate grows exponentially from
``start`` to ``end`` (fastai's defaults: 1e-7 to 10 in 100 steps), record the loss of
every batch, and stop once the smoothed loss exceeds ``diverge`` times its minimum. The
model, the optimizer settings and the augmentation are those of training; the model's
weights, buffers, gradients and train/eval modes and every global RNG are restored
afterwards, so a range test leaves no trace.

The suggestion is made by a pure function of the recorded curve, :func:`suggest_lr`.
Finders that pick the steepest point of the raw or lightly smoothed curve are known to
jump by orders of magnitude between runs: a derivative of a noisy curve is noise. The
rule here reads *levels* of a strongly smoothed curve instead:

1. drop the first few steps (a fresh model's first batches can spike);
2. clip the divergent tail at twice the starting loss, then smooth with a running median
   (removes spikes) and a forward-backward, debiased EMA (smooths without shifting the
   curve towards higher LRs, which a one-sided EMA does by its lag);
3. find the minimum of the smoothed loss and the plateau before it (the highest level held
   for several steps, so a spike is not mistaken for the plateau): the valley;
4. suggest the LR where the smoothed loss has fallen half-way down the valley (the last
   crossing of that level before the minimum), kept between ``min_lr / 30`` and
   ``min_lr / 3`` (the lecture's "an order of magnitude below the minimum" as a
   cross-check);
5. keep it inside the swept range and never below the LR where the loss started to
   descend (the clamp of 4 could otherwise put it below the sweep's own start).

When the curve cannot decide (no clear descent, too few finite points), a caller that
gives ``fallback_lr`` (the recipe gives the configuration's own peak lr, known to train)
gets that instead, and the rule says so; without it a flat curve falls back on
``min_lr / 10`` (kept in the swept range) and too few points raise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from cnnlab import checkpoint as ckpt
from cnnlab.config import RunConfig
from cnnlab.data.imageset import Splits
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.io import atomic_write_json
from cnnlab.run import build_model, load_data
from cnnlab.train.fit import build_loss, seed_everything
from cnnlab.train.loaders import train_loader
from cnnlab.train.loop import BatchSource, TrainStep
from cnnlab.train.optim import build_optimizer
from cnnlab.train.runtime import Runtime, deterministic, prepare, resolve_runtime

# Steps ignored at the start: a fresh model's first batches can spike (prior-bias
# corrections, batch-norm statistics warming up); 5 % of the sweep, at least 3 steps.
SKIP_FRACTION = 0.05
MIN_SKIP = 3
# Running-median window (steps): an odd window of 9 removes any spike of up to 4 steps, and
# a median keeps monotone stretches (the descent) exactly where they are.
MEDIAN_WINDOW = 9
# EMA factor of each pass of the zero-lag smoother. 0.8 averages ~5 steps per pass: with
# 100 steps over 8 decades that is ~0.4 decade, narrower than a typical valley (1-2 decades).
SMOOTH_BETA = 0.8
# EMA factor of the causal smoother that decides when to stop (fastai's test is the same:
# smoothed > diverge x best). 0.9 reacts within a few steps, before the loss overflows.
STOP_BETA = 0.9
# The valley's top is the highest level the smoothed loss holds for 10 % of the steps (at
# least 5) before its minimum, not its maximum: a spike shorter than that cannot become the top.
PLATEAU_FRACTION = 0.1
PLATEAU_MIN_STEPS = 5
# The divergent tail is clipped at 2x the starting loss (the median of the first 10 steps
# used) before smoothing, so its huge values cannot bleed back into the valley.
TAIL_CLIP = 2.0
START_STEPS = 10
# The fraction of the valley's drop where the suggestion sits: half-way down is where the
# descent is steepest for a sigmoid-shaped valley, but found from levels, not slopes.
VALLEY_LEVEL = 0.5
# The suggestion stays within [min_lr / 30, min_lr / 3]: never at the edge of divergence
# (the minimum is already too high to train at), never far below the useful range.
CLAMP_LOW, CLAMP_HIGH = 30.0, 3.0
# A drop of less than 5 % of the loss is no valley: the loss never clearly decreased.
MIN_DROP = 0.05
# Without a valley (and without a fallback lr from the caller) the fallback is fastai's "minimum / 10".
FALLBACK_DIVISOR = 10.0
# The descent starts at the last step, before the minimum, where the smoothed loss is still
# within 10 % of the valley's drop of its plateau: the suggestion never goes below that LR.
DESCENT_START = 0.1
# The rule of a fallback to the caller's lr starts with this, so the report and plot can tell.
NO_DESCENT = "no clear descent"
# The plot's loss axis spans at least 10% of the loss level (twice MIN_DROP, the smallest
# drop that counts as a descent): a flat sweep then looks flat, not like a zoomed-in cliff.
MIN_PLOT_SPAN = 2 * MIN_DROP


# --------------------------------------------------------------------------- the curve


def lr_schedule(start: float, end: float, steps: int) -> np.ndarray:
    """``steps`` learning rates growing geometrically from ``start`` to ``end`` (inclusive)."""
    return np.geomspace(start, end, steps)


def causal_ema(values: np.ndarray, beta: float) -> np.ndarray:
    """Debiased exponential moving average (Adam-style ``/ (1 - beta**t)``): no start-up bias."""
    out = np.empty(len(values), dtype=np.float64)
    avg = 0.0
    for t, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * float(v)
        out[t - 1] = avg / (1 - beta**t)
    return out


def running_median(values: np.ndarray, window: int = MEDIAN_WINDOW) -> np.ndarray:
    """Centred running median; the window shrinks symmetrically at the ends."""
    values = np.asarray(values, dtype=np.float64)
    half = window // 2
    out = np.empty_like(values)
    for i in range(len(values)):
        k = min(half, i, len(values) - 1 - i)
        out[i] = np.median(values[i - k : i + k + 1])
    return out


def smooth_losses(losses: np.ndarray, beta: float = SMOOTH_BETA) -> np.ndarray:
    """Spike-free, zero-lag smoothing: running median, then a forward and a backward debiased EMA.

    A single (causal) EMA lags by ``beta / (1 - beta)`` steps, which moves the whole curve,
    its minimum included, towards higher learning rates; running it forwards and then
    backwards cancels that shift.
    """
    return zero_lag_ema(running_median(np.asarray(losses, dtype=np.float64)), beta)


def zero_lag_ema(values: np.ndarray, beta: float = SMOOTH_BETA) -> np.ndarray:
    """A debiased EMA run forwards and then backwards: smooth, and not shifted in either direction."""
    if len(values) == 0:
        return np.asarray(values, dtype=np.float64)
    forward = causal_ema(values, beta)
    return causal_ema(forward[::-1], beta)[::-1]


def skip_steps(n: int) -> int:
    """How many leading steps the suggestion ignores for a sweep of ``n`` recorded steps."""
    return min(max(MIN_SKIP, int(round(SKIP_FRACTION * n))), max(n - 2, 0))


@dataclass(frozen=True)
class CurveAnalysis:
    """What :func:`analyse_curve` read from a range test."""

    smoothed: np.ndarray  # same length as the losses; NaN over the skipped steps
    suggestion: float
    rule: str
    min_lr: float  # where the smoothed loss is lowest


def analyse_curve(lrs: np.ndarray, losses: np.ndarray, *, fallback_lr: float | None = None) -> CurveAnalysis:
    """Smooth a range-test curve and suggest a learning rate (see the module docstring).

    Args:
        lrs: increasing learning rates, one per step.
        losses: the loss of each step (finite; a sweep stops at the first NaN/inf).
        fallback_lr: the learning rate to suggest when the curve cannot decide (no clear
            descent, too few or non-finite points); None: ``min_lr / 10``, and too few
            points raise.

    Raises:
        CnnlabError: mismatched lengths; without ``fallback_lr``, also fewer than
            ``MIN_SKIP + 2`` steps or a non-finite loss.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if lrs.shape != losses.shape:
        raise CnnlabError(f"lr-find: {len(lrs)} learning rates but {len(losses)} losses")
    if fallback_lr is not None and not (math.isfinite(fallback_lr) and fallback_lr > 0):
        raise CnnlabError(f"lr-find: the fallback learning rate must be positive, got {fallback_lr}")
    if (len(losses) < MIN_SKIP + 2 or not np.all(np.isfinite(losses))) and fallback_lr is not None:
        rule = (f"{NO_DESCENT}: {len(losses)} step(s) recorded, too few finite losses to read a curve; "
                f"fallback: the configuration's own peak lr {fallback_lr:.3g}")  # fmt: skip
        finite = losses[np.isfinite(losses)]
        min_lr = float(lrs[np.isfinite(losses)][np.argmin(finite)]) if finite.size else float(fallback_lr)
        return CurveAnalysis(np.full(len(losses), np.nan), float(fallback_lr), rule, min_lr)
    if len(losses) < MIN_SKIP + 2 or not np.all(np.isfinite(losses)):
        raise CnnlabError(
            f"lr-find recorded {len(losses)} finite loss(es), too few to suggest a learning rate; "
            "lower --start-lr or raise --steps"
        )
    skip = skip_steps(len(losses))
    smoothed = np.full(len(losses), np.nan)
    med = running_median(clip_tail(losses[skip:]))
    s = zero_lag_ema(med)
    smoothed[skip:] = s
    x = lrs[skip:]
    i_min = int(np.argmin(s))
    min_lr = float(x[i_min])
    # The plateau is read before the EMA, which would widen a spike beyond the window.
    top = sustained_max(med[: i_min + 1], max(PLATEAU_MIN_STEPS, int(round(PLATEAU_FRACTION * len(losses)))))
    drop = top - float(s[i_min])
    if i_min == 0 or drop < MIN_DROP * abs(top):
        if fallback_lr is not None:
            rule = (f"{NO_DESCENT} (the smoothed loss fell less than {MIN_DROP:.0%}): "
                    f"fallback: the configuration's own peak lr {fallback_lr:.3g}")  # fmt: skip
            return CurveAnalysis(smoothed, float(fallback_lr), rule, min_lr)
        rule = (f"{NO_DESCENT} (the smoothed loss fell less than {MIN_DROP:.0%}): "
                f"fallback min_lr/{FALLBACK_DIVISOR:g}, kept in the swept range")  # fmt: skip
        return CurveAnalysis(smoothed, float(np.clip(min_lr / FALLBACK_DIVISOR, lrs[0], lrs[-1])), rule, min_lr)
    level = float(s[i_min]) + VALLEY_LEVEL * drop
    raw = _last_crossing(x, s, level, i_min)
    lo, hi = min_lr / CLAMP_LOW, min_lr / CLAMP_HIGH
    suggestion = float(np.clip(raw, lo, hi))
    # Never below where the descent began, nor outside what was swept (a clamp at min_lr/30
    # near the sweep's start would otherwise suggest an lr that was never tried).
    floor = max(descent_start(x, s, top, drop, i_min), float(lrs[0]))
    suggestion = float(np.clip(suggestion, floor, float(lrs[-1])))
    rule = (f"valley: where the smoothed loss (median of {MEDIAN_WINDOW}, forward-backward EMA {SMOOTH_BETA:g}, "
            f"first {skip} steps ignored) has fallen {VALLEY_LEVEL:.0%} of the way from its peak to its minimum, "
            f"kept within [min_lr/{CLAMP_LOW:g}, min_lr/{CLAMP_HIGH:g}], not below the descent's start {floor:.3g}")  # fmt: skip
    if suggestion != raw:
        rule += f" (clamped from {raw:.3g})"
    return CurveAnalysis(smoothed, suggestion, rule, min_lr)


def descent_start(x: np.ndarray, s: np.ndarray, top: float, drop: float, i_min: int) -> float:
    """The LR where the smoothed loss ``s`` leaves its plateau: the last step before ``i_min``
    still within ``DESCENT_START`` of the drop from ``top``; ``x[0]`` when the curve starts descending."""
    near_top = np.nonzero(s[:i_min] >= top - DESCENT_START * drop)[0]
    return float(x[int(near_top[-1])]) if len(near_top) else float(x[0])


def clip_tail(losses: np.ndarray) -> np.ndarray:
    """Clip the losses at ``TAIL_CLIP`` x the starting level (median of the first steps).

    The last steps of a sweep that diverged can be 100x the rest; a backward EMA would
    carry them far back into the valley. Values above the starting level say nothing
    about the valley, so clipping them loses nothing.
    """
    start = float(np.median(losses[:START_STEPS]))
    return np.minimum(losses, TAIL_CLIP * start) if start > 0 else losses


def sustained_max(values: np.ndarray, width: int) -> float:
    """The highest level ``values`` stays at or above for ``width`` consecutive steps.

    A morphological opening: the maximum over windows of each window's minimum. A spike
    narrower than ``width`` does not count.
    """
    width = max(1, min(width, len(values)))
    windows = np.lib.stride_tricks.sliding_window_view(values, width)
    return float(windows.min(axis=1).max())


def _last_crossing(x: np.ndarray, s: np.ndarray, level: float, i_min: int) -> float:
    """The LR where ``s`` last comes down through ``level`` before ``i_min`` (log-linear interpolation)."""
    above = np.nonzero(s[:i_min] >= level)[0]
    if len(above) == 0:  # smoothing pulled the plateau under the level: the valley starts at once
        return float(x[0])
    j = int(above[-1])  # s[j] >= level > s[j + 1]
    frac = (s[j] - level) / max(s[j] - s[j + 1], 1e-12)
    return math.exp(math.log(x[j]) + frac * (math.log(x[j + 1]) - math.log(x[j])))


def suggest_lr(
    lrs: np.ndarray | list[float], losses: np.ndarray | list[float], *, fallback_lr: float | None = None
) -> tuple[float, str]:
    """The suggested learning rate of a range-test curve and the rule that chose it.

    A pure function of the curve (the same curve always gives the same answer).

    Args:
        lrs: increasing learning rates, one per step.
        losses: the raw loss of each step.
        fallback_lr: what to suggest when the curve cannot decide (see :func:`analyse_curve`).

    Returns:
        ``(lr, rule)``; ``rule`` names the rule in words.
    """
    result = analyse_curve(np.asarray(lrs), np.asarray(losses), fallback_lr=fallback_lr)
    return result.suggestion, result.rule


def loss_limits(losses: Sequence[float], smoothed: np.ndarray) -> tuple[float, float]:
    """The y-axis limits of the range-test plot: the data up to the loss minimum, at least ``MIN_PLOT_SPAN`` tall.

    The divergent tail (after the smoothed minimum, clipped like the rule clips it) would
    flatten the valley, so it is left partly out of view; the mini-batch losses up to the
    minimum are kept in view (2nd-98th percentile), not only the smoothed curve, so a short,
    flat sweep shows its noise around a level instead of a 0.0004-tall slice of it.
    """
    raw = np.asarray(losses, dtype=np.float64)
    s = np.asarray(smoothed, dtype=np.float64)
    finite = np.isfinite(s)
    end = int(np.nanargmin(np.where(finite, s, np.inf))) + 1 if finite.any() else len(raw)
    head = raw[: max(end, MIN_SKIP + 1)]
    head = head[np.isfinite(head)]
    values = np.concatenate([s[:end][finite[:end]], np.percentile(head, [2, 98]) if head.size else []])
    if not values.size:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    span = max(high - low, MIN_PLOT_SPAN * max(abs(high), 1e-12))
    middle = (low + high) / 2
    low, high = middle - span / 2, middle + span / 2
    return low - 0.1 * span, high + 0.25 * span  # room above for the labels


def _interpolate_log(lrs: np.ndarray, values: np.ndarray, lr: float) -> float | None:
    """``values`` at ``lr`` (linear in log lr between the recorded steps); None outside them or on NaN."""
    ok = np.isfinite(values) & (lrs > 0)
    if ok.sum() < 2 or not (lrs[ok][0] <= lr <= lrs[ok][-1]):
        return None
    return float(np.interp(math.log(lr), np.log(lrs[ok]), values[ok]))


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class LRFindResult:
    """A learning-rate range test: the curve, the suggestion and how it was chosen."""

    lrs: list[float]  # one per recorded step
    losses: list[float]  # raw mini-batch losses
    smoothed: list[float | None]  # the curve the rule read (None over the ignored first steps)
    suggestion: float
    rule: str
    min_lr: float  # the LR of the smoothed loss's minimum
    stopped_early: bool  # the loss diverged (or became NaN/inf) before the last step
    stop_reason: str | None = None
    start: float = 1e-7
    end: float = 10.0
    steps: int = 100
    diverge: float = 4.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return dict(self.__dict__)

    @classmethod
    def load(cls, path: str | Path) -> LRFindResult:
        """Read a result back from ``lr_find.json`` (or the folder holding it)."""
        path = Path(path)
        path = path / "lr_find.json" if path.is_dir() else path
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CnnlabError(f"{path} is not an lr_find.json written by `cnnlab lr-find` ({str(exc)[:120]})") from None

    def line(self) -> str:
        """One line for the terminal: the suggestion and the rule that chose it."""
        stop = f"; stopped early: {self.stop_reason}" if self.stopped_early else ""
        return (f"suggested lr {self.suggestion:.3g} (loss minimum at lr {self.min_lr:.3g}{stop}) "
                f"-- rule: {self.rule}")  # fmt: skip

    def plot(self, path: str | Path) -> Path:
        """Save loss vs learning rate (log x axis), the smoothed curve and the suggestion as a PNG."""
        from cnnlab.report.plots import save_figure  # lazy: matplotlib is slow to import

        return save_figure(self.figure(), path)

    def figure(self):  # noqa: ANN201 - a matplotlib Figure
        """The picture of :meth:`plot`: limits from the data (see :func:`loss_limits`), the suggestion marked."""
        from cnnlab.report.plots import pyplot  # lazy: matplotlib is slow to import

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
        ax.plot(self.lrs, self.losses, color="0.7", lw=1, label="mini-batch loss")
        smoothed = np.array([np.nan if v is None else v for v in self.smoothed], dtype=np.float64)
        ax.plot(self.lrs, smoothed, color="C0", lw=2, label="smoothed")
        ax.axvline(self.min_lr, color="0.4", ls=":", label=f"minimum {self.min_lr:.2g}")
        ax.axvline(self.suggestion, color="C3", ls="--", label=f"suggestion {self.suggestion:.2g}")
        ax.set_xscale("log")
        low, high = loss_limits(self.losses, smoothed)
        ax.set_ylim(low, high)
        at = _interpolate_log(np.asarray(self.lrs, dtype=np.float64), smoothed, self.suggestion)
        if at is not None and low <= at <= high:  # the suggestion as a point on the curve it was read from
            ax.plot([self.suggestion], [at], "o", color="C3", ms=8, zorder=5)
            ax.annotate(f"suggested lr {self.suggestion:.2g}", (self.suggestion, at), xytext=(8, 8),
                        textcoords="offset points", color="C3", fontsize=9)  # fmt: skip
        if self.rule.startswith(NO_DESCENT):
            fallback = self.rule.split("fallback", 1)[-1].lstrip(": ")
            ax.text(0.5, 0.92, f"{NO_DESCENT}: the curve cannot decide;\n"
                    f"the suggestion is the fallback ({fallback})", transform=ax.transAxes,
                    ha="center", va="top", fontsize=9, color="C3",
                    bbox={"facecolor": "white", "edgecolor": "C3", "alpha": 0.9})  # fmt: skip
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title("learning-rate range test" + (" (stopped early: diverged)" if self.stopped_early else ""), fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        return fig

    def save(self, out_dir: str | Path) -> Path:
        """Write ``lr_find.json`` and ``lr_find.png`` into ``out_dir``; return the folder."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "lr_find.json", self.as_dict())
        self.plot(out / "lr_find.png")
        return out


# --------------------------------------------------------------------------- the sweep


def lr_find(
    cfg: RunConfig,
    *,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    diverge: float = 4.0,
    splits: Splits | None = None,
    model: torch.nn.Module | None = None,
    runtime: Runtime | None = None,
    out_dir: str | Path | None = None,
    fallback_lr: float | None = None,
) -> LRFindResult:
    """Run a learning-rate range test with the configured model, optimizer and augmentation.

    Args:
        cfg: the run configuration (:class:`cnnlab.config.RunConfig`); ``cfg.optim.lr``
            and the schedule are ignored, everything else is used as in training
            (optimizer, momentum, weight decay, batch size, augmentation, label
            smoothing, gradient clipping, precision, seed).
        start: the first learning rate.
        end: the last learning rate.
        steps: mini-batches in the sweep (more than one epoch cycles through epochs).
        diverge: stop once the smoothed loss exceeds this multiple of its minimum.
        splits: the data (default: loaded from ``cfg``).
        model: the model to test (default: built from ``cfg``); its weights, buffers,
            gradients, modes and device are restored afterwards.
        runtime: device and precision (default: resolved from ``cfg.train``).
        out_dir: when given, write ``lr_find.json`` and ``lr_find.png`` there.
        fallback_lr: the suggestion when the curve cannot decide (the recipe gives
            ``cfg.optim.lr``); None: ``min_lr / 10``, and too few points raise.

    Returns:
        The curve and the suggested learning rate (the same for the same seed).

    Raises:
        CnnlabError: bad arguments, too few usable steps, or a distributed runtime.
    """
    _check_args(start, end, steps, diverge)
    runtime = runtime or resolve_runtime(cfg.train)
    if runtime.distributed:
        raise CnnlabError("lr-find runs in one process; start it without torchrun")
    splits = splits if splits is not None else load_data(cfg)
    rng = ckpt.rng_state()  # build_model and the sweep both draw from the global RNGs
    try:
        own = model is None
        model = build_model(cfg, splits) if own else model
        saved = None if own else _snapshot(model)
        seed_everything(cfg.train.seed)
        try:
            with deterministic(cfg.train.deterministic):
                lrs, losses, reason = _sweep(model, splits, cfg, runtime, lr_schedule(start, end, steps), diverge, own)
        finally:
            if saved is not None:
                _restore(model, saved)
    finally:
        ckpt.set_rng_state(rng)
    analysis = analyse_curve(np.array(lrs), np.array(losses), fallback_lr=fallback_lr)
    result = LRFindResult(
        lrs=lrs, losses=losses, smoothed=[None if math.isnan(v) else float(v) for v in analysis.smoothed],
        suggestion=analysis.suggestion, rule=analysis.rule, min_lr=analysis.min_lr,
        stopped_early=reason is not None, stop_reason=reason, start=start, end=end, steps=steps, diverge=diverge,
    )  # fmt: skip
    if out_dir is not None:
        result.save(out_dir)
    return result


def _check_args(start: float, end: float, steps: int, diverge: float) -> None:
    """Reject settings that cannot give a curve, naming the flag to change."""
    # UsageError: refused before any work (exit 2); nan fails every comparison, so it is refused too
    if not 0 < start < end < float("inf"):
        raise UsageError(f"lr-find needs 0 < --start-lr < --end-lr, got {start:g} and {end:g}")
    if steps < MIN_SKIP + 10:
        raise UsageError(f"lr-find needs at least {MIN_SKIP + 10} --steps to read a curve, got {steps}")
    if not 1 < diverge < float("inf"):
        raise UsageError(f"lr-find --diverge must be above 1 (a multiple of the minimum loss), got {diverge:g}")


def _snapshot(model: torch.nn.Module) -> dict[str, Any]:
    """Everything the sweep changes in a caller's model: weights, buffers, grads, modes, device."""
    first = next(iter(model.parameters()), None)
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()},
        "modes": [(m, m.training) for m in model.modules()],
        "device": None if first is None else first.device,
    }


def _restore(model: torch.nn.Module, saved: dict[str, Any]) -> None:
    """Put back what :func:`_snapshot` saved (device first, so the weights land where they were)."""
    if saved["device"] is not None:
        model.to(saved["device"])
    model.load_state_dict(saved["state"])
    for name, p in model.named_parameters():
        grad = saved["grads"][name]
        p.grad = None if grad is None else grad.to(p.device)
    for module, training in saved["modes"]:
        module.training = training


def _sweep(
    model: torch.nn.Module,
    splits: Splits,
    cfg: RunConfig,
    runtime: Runtime,
    schedule: np.ndarray,
    diverge: float,
    channels_last: bool,
) -> tuple[list[float], list[float], str | None]:
    """Train one batch per learning rate; return the LRs and losses recorded and why it stopped early.

    Each step is training's own :class:`TrainStep` (loss, autocast, gradient clipping) with
    the schedule replaced by the sweep; the loss is read after every step, since the sweep
    decides from each one whether to go on.
    """
    tc = cfg.train
    batches = _endless(train_loader(splits, cfg, runtime))
    # only a model we built changes memory format: a caller's keeps its layout
    model = prepare(model, runtime, channels_last=channels_last)
    model.train()
    step = TrainStep(build_optimizer(model, cfg.optim), build_loss(tc, splits, runtime.device),
                     lambda t: float(schedule[t]), runtime, grad_clip=tc.grad_clip)  # fmt: skip
    lrs: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    for t, lr in enumerate(schedule, start=1):
        x, y = next(batches)
        value = float(step(model, x, y)[0])  # the loss before this step's update
        if not math.isfinite(value):
            return lrs, losses, f"the loss became NaN/inf at lr {lr:.3g}"
        lrs.append(float(lr))
        losses.append(value)
        avg = STOP_BETA * avg + (1 - STOP_BETA) * value
        smooth = avg / (1 - STOP_BETA**t)
        best = min(best, smooth)
        if t > MIN_SKIP and smooth > diverge * best:
            return lrs, losses, f"the smoothed loss exceeded {diverge:g}x its minimum at lr {lr:.3g}"
    return lrs, losses, None


def _endless(loader: BatchSource) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches, epoch after epoch (each epoch its own permutation and augmentation)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1

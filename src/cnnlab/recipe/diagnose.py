"""Step 6 of the recipe: read a run's training curves and name what they show (``cnnlab diagnose``).

:func:`diagnose` takes the epoch records of ``metrics.jsonl`` (``epoch``, ``epochs``,
``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (None without a validation
split), ``lr``) and checks them for the textbook failure patterns, each with a fixed,
named threshold: the learning rate too high (divergence or spikes) or too low (a slow,
straight descent), a plateau at a constant learning rate, a bad initialisation (a
"hockey stick"), labels that cannot be learned, overfitting and underfitting. Every
finding carries its evidence (numbers read from the curves) and advice, and the
:class:`Diagnosis` merges the findings into a machine-usable :class:`Suggestion` that the
recipe loop applies to its next search (:meth:`cnnlab.recipe.space.SearchSpace.adjusted`).

The thresholds are heuristics for whole-epoch averages; they are deliberately strict so
a healthy run reports no finding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_write_json
from cnnlab.report.plots import pyplot, save_figure
from cnnlab.runfolder import RunFolder

# --------------------------------------------------------------------------- thresholds

# Fewer epochs than this cannot show a trend: the only finding is "too short".
MIN_EPOCHS = 3
# LR too high (divergence): the last training loss is this many times its best. A run
# whose epoch-mean training loss ends 50 % above its best has lost what it learned.
DIVERGE_RATIO = 1.5
# LR too high (spikes): an epoch's training loss exceeds the previous epoch's by 25 % and
# by 0.05 nats. Epoch means of a healthy run fall almost every epoch; the absolute floor
# keeps a near-zero loss (0.010 -> 0.013) from counting as a spike.
SPIKE_RATIO = 1.25
SPIKE_MIN_NATS = 0.05
# Bad init: the first epoch's mean training loss is 1.5x the loss of a uniform guess,
# ln(classes). A sane initialisation starts at ln(classes) or below and learning only
# lowers the epoch mean, so a mean far above it means very confident wrong outputs.
INIT_LOSS_FACTOR = 1.5
# Bad init (hockey stick): the loss stays within 3 % of its first value for 2+ epochs,
# then falls by 30 % or more within one epoch: the network was stuck before it learned.
HOCKEY_FLAT_TOL = 0.03
HOCKEY_FLAT_EPOCHS = 2
HOCKEY_DROP = 0.30
# Labels not learnable: the training accuracy gains 20 points while the validation
# accuracy of the later half of training stays (by its median) within 5 points of chance
# (or, with the class count unknown, of its first value): the network memorises training
# labels that carry no generalisable signal. The median, not the maximum: on a small
# validation split one lucky epoch (measured: 26% on 10 classes) must not hide it.
LABELS_TRAIN_GAIN = 0.20
LABELS_VAL_MARGIN = 0.05
# Overfitting: the validation loss ends 10 % above its minimum, reached 2+ epochs before
# the end, while the training loss kept falling by 10 %...
OVERFIT_VAL_RISE = 0.10
OVERFIT_MIN_EPOCHS_AFTER = 2
OVERFIT_TRAIN_FALL = 0.10
# ...or the train-val accuracy gap is 15 points and grew by 5 points from its smallest.
OVERFIT_GAP = 0.15
OVERFIT_GAP_GROWTH = 0.05
# Underfitting: the final training accuracy is below 85 % and validation is within 5
# points of it (a model that cannot fit its training data has no gap to close).
UNDERFIT_TRAIN_ACC = 0.85
UNDERFIT_GAP = 0.05
# "Still improving": the training loss fell 3 % or more over the last 3 epochs.
IMPROVING_EPOCHS = 3
IMPROVING_FALL = 0.03
# LR too low: a straight, unbent descent. The loss falls every epoch, a line fits it
# (R^2 >= 0.97), the second half of the run lowers it by 60 % as much as the first half
# (a healthy curve falls fast first, then flattens), and it is still above 40 % of where
# it started. Needs 5+ epochs to see a bend.
SLOW_MIN_EPOCHS = 5
SLOW_R2 = 0.97
SLOW_HALF_RATIO = 0.6
SLOW_REMAINING = 0.4
# Plateau: the training loss changed less than 2 % over the last 4 epochs at a constant
# learning rate (within 1 %), after falling 10 % before, and is not already fit.
PLATEAU_EPOCHS = 4
PLATEAU_TOL = 0.02
PLATEAU_LR_TOL = 0.01
PLATEAU_PRIOR_FALL = 0.10
FIT_LOSS = 0.05  # nats: a training loss this low is fit, flat because there is nothing left
# The learning-rate factors suggested: NaN/divergence needs a big cut, spikes a smaller one.
LR_SCALE_DIVERGED = 0.1
LR_SCALE_SPIKES = 0.3
LR_SCALE_SLOW = 3.0

SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2}


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Suggestion:
    """What to change next, as a diagnosis sees it: the one vocabulary the recipe acts on.

    Attributes:
        lr_scale: multiply the learning rate (range) by this (0.1, 0.3 or 3; 1: leave it).
        more_regularisation: more weight decay / augmentation / dropout, or more data.
        less_regularisation: less weight decay / augmentation / dropout.
        longer: train for more epochs.
        bigger_model: more capacity (width / depth).
        decay: use a decaying schedule (cosine, onecycle, step).
        check_init: inspect the initialisation and the initial loss.
        check_labels: inspect the labels (shuffled? misaligned with the images?).
    """

    lr_scale: float = 1.0
    more_regularisation: bool = False
    less_regularisation: bool = False
    longer: bool = False
    bigger_model: bool = False
    decay: bool = False
    check_init: bool = False
    check_labels: bool = False

    def __bool__(self) -> bool:
        """True when it suggests anything at all."""
        return self != Suggestion()

    def merged(self, other: Suggestion) -> Suggestion:
        """Both suggestions at once. Two LR findings cannot point in different directions
        (the detectors exclude each other); if several scale it, the strongest cut wins."""
        flags = {f.name: getattr(self, f.name) or getattr(other, f.name) for f in fields(self) if f.name != "lr_scale"}
        scales = [s for s in (self.lr_scale, other.lr_scale) if s != 1.0]
        return Suggestion(lr_scale=min(scales) if scales else 1.0, **flags)

    def as_dict(self) -> dict[str, Any]:
        """Plain data: only what it suggests, e.g. ``{"lr_scale": 0.3}``; ``{}`` for nothing."""
        default = Suggestion()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Suggestion:
        """The inverse of :meth:`as_dict` (unknown keys, from a newer cnnlab, are ignored)."""
        data = data or {}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Finding:
    """One pattern seen in the curves."""

    kind: str  # lr_too_high | lr_too_low | plateau | bad_init | labels_not_learnable | overfitting | underfitting | too_short
    severity: str  # high (fix first) | medium | low
    evidence: str  # the numbers from the curves that show it
    advice: str  # what to try next
    suggestion: Suggestion = Suggestion()  # the machine-usable part
    epochs: tuple[int, int] | None = None  # first and last epoch (0-based) of the evidence

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"kind": self.kind, "severity": self.severity, "evidence": self.evidence, "advice": self.advice,
                "suggestion": self.suggestion.as_dict(), "epochs": list(self.epochs) if self.epochs else None}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        """The inverse of :meth:`as_dict`."""
        epochs = data.get("epochs")
        return cls(data["kind"], data["severity"], data["evidence"], data["advice"],
                   Suggestion.from_dict(data.get("suggestion")), tuple(epochs) if epochs else None)  # fmt: skip

    def line(self) -> str:
        """One line for the terminal."""
        return f"[{self.severity}] {self.kind}: {self.evidence} -> {self.advice}"


@dataclass(frozen=True)
class Diagnosis:
    """What the curves of one run show."""

    findings: list[Finding]
    summary: str
    suggestion: Suggestion  # the findings' suggestions merged; empty for a healthy run
    epochs: int
    num_classes: int | None = None

    @property
    def healthy(self) -> bool:
        """No finding: the curves show no problem."""
        return not self.findings

    @property
    def kinds(self) -> list[str]:
        return [f.kind for f in self.findings]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "summary": self.summary, "healthy": self.healthy, "suggestion": self.suggestion.as_dict(),
            "findings": [f.as_dict() for f in self.findings], "epochs": self.epochs, "num_classes": self.num_classes,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Diagnosis:
        """The inverse of :meth:`as_dict`."""
        return cls([Finding.from_dict(f) for f in data.get("findings") or []], data.get("summary", ""),
                   Suggestion.from_dict(data.get("suggestion")), int(data.get("epochs") or 0), data.get("num_classes"))  # fmt: skip

    def save(self, run_dir: str | Path, records: Sequence[dict[str, Any]] | None = None) -> Path:
        """Write ``diagnosis.json`` (and ``diagnosis.png`` when ``records`` are given) into ``run_dir``."""
        path = Path(run_dir) / "diagnosis.json"
        atomic_write_json(path, self.as_dict())
        if records:
            self.plot(records, Path(run_dir) / "diagnosis.png")
        return path

    def plot(self, records: Sequence[dict[str, Any]], path: str | Path) -> Path:
        """Save the loss and accuracy curves with each finding's epochs shaded and named."""
        plt = pyplot()
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
        x = [r["epoch"] + 1 for r in records]
        for key, style in (("train", "-"), ("val", "--")):
            loss, acc = _series(records, f"{key}_loss"), _series(records, f"{key}_acc")
            if any(math.isfinite(v) for v in loss):
                ax_loss.plot(x, loss, style, marker=".", label=key)
                ax_acc.plot(x, [100 * v for v in acc], style, marker=".", label=key)
        for i, finding in enumerate(self.findings):
            if finding.epochs is None:
                continue
            lo, hi = finding.epochs
            for ax in (ax_loss, ax_acc):
                ax.axvspan(lo + 0.5, hi + 1.5, color=f"C{i + 2}", alpha=0.15, label=finding.kind if ax is ax_loss else None)
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("cross-entropy loss")
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("accuracy (%)")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(self.summary, fontsize=9)
        fig.tight_layout()
        return save_figure(fig, path)


# --------------------------------------------------------------------------- the curves


@dataclass(frozen=True)
class _Curves:
    """The records as aligned lists (NaN for a missing value)."""

    train_loss: list[float]
    train_acc: list[float]
    val_loss: list[float]
    val_acc: list[float]
    lr: list[float]
    num_classes: int | None
    has_val: bool  # every epoch has a validation loss and accuracy
    nonfinite: list[int]  # epochs whose training or validation loss is NaN/inf

    @property
    def n(self) -> int:
        return len(self.train_loss)

    @property
    def chance(self) -> float | None:
        return 1.0 / self.num_classes if self.num_classes else None


def _series(records: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [math.nan if r.get(key) is None else float(r[key]) for r in records]


def _curves(records: Sequence[dict[str, Any]], num_classes: int | None) -> _Curves:
    if not records:
        raise CnnlabError("no epoch records to diagnose; train at least one epoch first")
    missing = [k for k in ("epoch", "train_loss", "train_acc") if k not in records[0]]
    if missing:
        raise CnnlabError(f"the epoch records lack {', '.join(missing)}; pass the records of a cnnlab metrics.jsonl")
    ordered = sorted(records, key=lambda r: r["epoch"])
    has_val = all(r.get("val_loss") is not None and r.get("val_acc") is not None for r in ordered)
    nonfinite = [i for i, r in enumerate(ordered)
                 if not _finite(r.get("train_loss")) or (r.get("val_loss") is not None and not _finite(r["val_loss"]))]  # fmt: skip
    return _Curves(
        _series(ordered, "train_loss"), _series(ordered, "train_acc"), _series(ordered, "val_loss"),
        _series(ordered, "val_acc"), _series(ordered, "lr"), num_classes, has_val, nonfinite,
    )  # fmt: skip


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _pts(v: float) -> str:
    return f"{100 * v:.1f} points"


def _ep(i: int) -> str:
    return f"epoch {i + 1}"


# --------------------------------------------------------------------------- detectors
# Each returns a Finding or None; they read the curves only.


def _lr_too_high(c: _Curves) -> Finding | None:
    tl = c.train_loss
    if c.nonfinite:
        first = c.nonfinite[0]
        return Finding("lr_too_high", "high", f"the loss became NaN/inf in {_ep(first)} (lr {c.lr[first]:.3g})",
                       "lower the learning rate about 10x (or run `cnnlab lr-find`); add --grad-clip",
                       Suggestion(lr_scale=LR_SCALE_DIVERGED), (first, first))  # fmt: skip
    best_i = min(range(c.n), key=lambda i: tl[i])
    if best_i < c.n - 1 and tl[-1] > DIVERGE_RATIO * tl[best_i]:
        return Finding("lr_too_high", "high",
                       f"the training loss rose from its best {tl[best_i]:.3f} ({_ep(best_i)}) to {tl[-1]:.3f} "
                       f"({_ep(c.n - 1)}), {tl[-1] / tl[best_i]:.1f}x: training diverged",
                       "lower the learning rate about 10x (or run `cnnlab lr-find`)",
                       Suggestion(lr_scale=LR_SCALE_DIVERGED), (best_i, c.n - 1))  # fmt: skip
    spikes = [i for i in range(1, c.n) if tl[i] > SPIKE_RATIO * tl[i - 1] and tl[i] - tl[i - 1] > SPIKE_MIN_NATS]
    if spikes:
        shown = ", ".join(f"{_ep(i)} {tl[i - 1]:.3f} -> {tl[i]:.3f}" for i in spikes[:3])
        return Finding("lr_too_high", "medium",
                       f"{len(spikes)} spike(s) of the training loss ({shown}) at lr {c.lr[spikes[0]]:.3g}",
                       "lower the learning rate about 3x, or add warmup / --grad-clip",
                       Suggestion(lr_scale=LR_SCALE_SPIKES), (spikes[0], spikes[-1]))  # fmt: skip
    return None


def _bad_init(c: _Curves) -> Finding | None:
    tl = c.train_loss
    if c.num_classes and c.num_classes > 1 and tl[0] > INIT_LOSS_FACTOR * math.log(c.num_classes):
        return Finding("bad_init", "medium",
                       f"the first epoch's training loss {tl[0]:.3f} is {tl[0] / math.log(c.num_classes):.1f}x "
                       f"ln({c.num_classes}) = {math.log(c.num_classes):.3f}, the loss of a uniform guess",
                       "check the initial loss (`cnnlab check`): scale down the last layer's weights, keep the prior bias",
                       Suggestion(check_init=True), (0, 0))  # fmt: skip
    flat = 1
    while flat < c.n and tl[flat] >= tl[0] * (1 - HOCKEY_FLAT_TOL):
        flat += 1
    if flat >= HOCKEY_FLAT_EPOCHS and flat < c.n and tl[flat] <= (1 - HOCKEY_DROP) * tl[flat - 1]:
        return Finding("bad_init", "medium",
                       f"hockey stick: the training loss stayed at {tl[0]:.3f} for {flat} epochs, then fell to "
                       f"{tl[flat]:.3f} in {_ep(flat)}",
                       "check the initialisation (kaiming for ReLU, normalisation layers) and the initial loss; warmup",
                       Suggestion(check_init=True), (0, flat))  # fmt: skip
    return None


def _labels_not_learnable(c: _Curves) -> Finding | None:
    if not c.has_val:
        return None
    ta, va = c.train_acc, c.val_acc
    base = c.chance if c.chance is not None else va[0]
    gain = max(ta[1:]) - ta[0] if c.n > 1 else 0.0
    late = sorted(va[c.n // 2 :])
    typical = late[len(late) // 2] if late else va[-1]
    if gain >= LABELS_TRAIN_GAIN and typical <= base + LABELS_VAL_MARGIN:
        what = f"chance ({_pct(base)})" if c.chance is not None else f"its first value ({_pct(base)})"
        return Finding("labels_not_learnable", "high",
                       f"the training accuracy rose {_pct(ta[0])} -> {_pct(max(ta))} while the validation accuracy "
                       f"stayed at {what}: median {_pct(typical)} over the last {len(late)} epochs (at most {_pct(max(va))})",
                       "the network memorises labels that do not generalise: check that labels match images "
                       "(shuffled? misaligned?) and that train and validation come from the same source",
                       Suggestion(check_labels=True), (0, c.n - 1))  # fmt: skip
    return None


def _overfitting(c: _Curves) -> Finding | None:
    if not c.has_val:
        return None
    vl, tl = c.val_loss, c.train_loss
    best = min(range(c.n), key=lambda i: vl[i])
    gaps = [t - v for t, v in zip(c.train_acc, c.val_acc, strict=True)]
    rise = vl[-1] / vl[best] - 1 if vl[best] > 0 else 0.0
    if best <= c.n - 1 - OVERFIT_MIN_EPOCHS_AFTER and rise >= OVERFIT_VAL_RISE and tl[-1] <= (1 - OVERFIT_TRAIN_FALL) * tl[best]:
        return Finding("overfitting", "high",
                       f"the validation loss rose {rise:.0%} from its minimum {vl[best]:.3f} ({_ep(best)}) to "
                       f"{vl[-1]:.3f} while the training loss fell {tl[best]:.3f} -> {tl[-1]:.3f}; the accuracy gap "
                       f"grew {_pts(gaps[best])} -> {_pts(gaps[-1])}",
                       "more regularisation (weight decay, augmentation, dropout) or more data; early stopping "
                       f"keeps the weights of {_ep(best)}",
                       Suggestion(more_regularisation=True), (best, c.n - 1))  # fmt: skip
    smallest = min(range(c.n), key=lambda i: gaps[i])
    if gaps[-1] >= OVERFIT_GAP and gaps[-1] - gaps[smallest] >= OVERFIT_GAP_GROWTH:
        return Finding("overfitting", "medium",
                       f"the train-val accuracy gap grew from {_pts(gaps[smallest])} ({_ep(smallest)}) to "
                       f"{_pts(gaps[-1])} (train {_pct(c.train_acc[-1])}, val {_pct(c.val_acc[-1])})",
                       "more regularisation (weight decay, augmentation, dropout) or more data",
                       Suggestion(more_regularisation=True), (smallest, c.n - 1))  # fmt: skip
    return None


def _lr_too_low(c: _Curves) -> Finding | None:
    tl = c.train_loss
    if c.n < SLOW_MIN_EPOCHS or any(b >= a for a, b in zip(tl, tl[1:])):
        return None
    half = c.n // 2
    first, second = tl[0] - tl[half], tl[half] - tl[-1]
    r2 = _line_r2(tl)
    if r2 >= SLOW_R2 and second >= SLOW_HALF_RATIO * first and tl[-1] >= SLOW_REMAINING * tl[0]:
        return Finding("lr_too_low", "medium",
                       f"the training loss fell in a straight line {tl[0]:.3f} -> {tl[-1]:.3f} (R^2 {r2:.2f}; the second "
                       f"half of the run lowered it {second:.3f}, the first {first:.3f}): it has not started to bend",
                       "raise the learning rate about 3x (or run `cnnlab lr-find`)",
                       Suggestion(lr_scale=LR_SCALE_SLOW), (0, c.n - 1))  # fmt: skip
    return None


def _line_r2(values: Sequence[float]) -> float:
    """R^2 of a least-squares line through ``values`` against their index."""
    n = len(values)
    xs = range(n)
    mx, my = (n - 1) / 2, sum(values) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, values, strict=True))
    syy = sum((y - my) ** 2 for y in values)
    return 1.0 if syy == 0 else (sxy * sxy) / (sxx * syy)


def _plateau(c: _Curves) -> Finding | None:
    tl, lr = c.train_loss, c.lr
    k = PLATEAU_EPOCHS
    if c.n < k + 1 or tl[-1] <= FIT_LOSS:
        return None
    window, lrs = tl[-k:], lr[-k:]
    change = (max(window) - min(window)) / max(window)
    constant_lr = all(math.isfinite(v) for v in lrs) and max(lrs) <= (1 + PLATEAU_LR_TOL) * min(lrs)
    fell_before = tl[-k] <= (1 - PLATEAU_PRIOR_FALL) * tl[0]
    if change < PLATEAU_TOL and constant_lr and fell_before:
        return Finding("plateau", "medium",
                       f"the training loss stayed at {tl[-k]:.3f}-{tl[-1]:.3f} (within {change:.1%}) for the last {k} "
                       f"epochs at a constant lr {lrs[-1]:.3g}",
                       "decay the learning rate (--schedule cosine or onecycle, or step) to go below the plateau",
                       Suggestion(decay=True), (c.n - k, c.n - 1))  # fmt: skip
    return None


def _underfitting(c: _Curves) -> Finding | None:
    ta = c.train_acc[-1]
    if ta >= UNDERFIT_TRAIN_ACC or (c.has_val and ta - c.val_acc[-1] >= UNDERFIT_GAP):
        return None
    tl = c.train_loss
    k = min(IMPROVING_EPOCHS, c.n - 1)
    fall = (tl[-1 - k] - tl[-1]) / tl[-1 - k] if tl[-1 - k] > 0 else 0.0
    val = f", val {_pct(c.val_acc[-1])}" if c.has_val else ""
    if fall >= IMPROVING_FALL:
        trend, advice = (f"still improving ({fall:.0%} lower over the last {k} epochs)",
                         "train longer; then less regularisation or a bigger model")  # fmt: skip
        # A curve that still falls is cut short, not held back: less regularisation is the
        # second move, once a longer run has gone flat (acting on it at once drives short
        # search trials toward no regularisation at all).
        suggestion = Suggestion(longer=True)
    else:
        trend, advice = (f"flat ({fall:.1%} over the last {k} epochs)",
                         "a bigger model, less regularisation, or a higher learning rate")  # fmt: skip
        suggestion = Suggestion(less_regularisation=True, bigger_model=True)
    return Finding("underfitting", "medium",
                   f"the training accuracy is only {_pct(ta)}{val} after {c.n} epochs, {trend}",
                   advice, suggestion, (max(0, c.n - 1 - k), c.n - 1))  # fmt: skip


# Underfitting is what every other failure looks like from far away: when one of these
# explains the poor fit, the underfitting finding would only repeat it.
_EXPLAINS_UNDERFITTING = ("lr_too_high", "lr_too_low", "labels_not_learnable", "plateau")
# Overfitting is the symptom of unlearnable labels, not a separate problem.
_EXPLAINS_OVERFITTING = ("labels_not_learnable",)


def diagnose(records: Sequence[dict[str, Any]], *, num_classes: int | None = None) -> Diagnosis:
    """Name the problems that a run's epoch records show, with evidence and advice.

    Args:
        records: the run's ``metrics.jsonl`` records (keys ``epoch``, ``train_loss``,
            ``train_acc``, ``val_loss``, ``val_acc`` (may be None), ``lr``).
        num_classes: the number of classes, when known: enables the chance-level and
            initial-loss checks (without it, the first epoch's values stand in).

    Returns:
        The findings (most severe first), a summary line and the merged suggestion.

    Raises:
        CnnlabError: no records, or records without training losses.
    """
    c = _curves(records, num_classes)
    if c.n < MIN_EPOCHS:
        short = Finding("too_short", "low", f"only {c.n} epoch(s): too few to read a trend",
                        f"train at least {MIN_EPOCHS} epochs (5-10 for the LR and plateau checks)", Suggestion(longer=True))  # fmt: skip
        return _assemble([short], c)
    if c.nonfinite:  # every other check would compare NaNs: the divergence is the finding
        return _assemble([_lr_too_high(c)], c)  # type: ignore[list-item]
    findings = [f for f in (_lr_too_high(c), _bad_init(c), _labels_not_learnable(c), _lr_too_low(c), _plateau(c)) if f]
    kinds = {f.kind for f in findings}
    if not kinds & set(_EXPLAINS_OVERFITTING) and (over := _overfitting(c)):
        findings.append(over)
    if not kinds & set(_EXPLAINS_UNDERFITTING) and (under := _underfitting(c)):
        findings.append(under)
    findings.sort(key=lambda f: SEVERITY_ORDER[f.severity])
    return _assemble(findings, c)


def _assemble(findings: list[Finding], c: _Curves) -> Diagnosis:
    suggestion = Suggestion()
    for f in findings:
        suggestion = suggestion.merged(f.suggestion)
    if findings:
        summary = f"{len(findings)} finding{'' if len(findings) == 1 else 's'}: " + ", ".join(f"{f.kind} ({f.severity})" for f in findings)
    else:
        val = f", val {_pct(c.val_acc[-1])}" if c.has_val else ""
        summary = f"no problem found: train {_pct(c.train_acc[-1])}{val} after {c.n} epochs"
    return Diagnosis(findings, summary, suggestion, c.n, c.num_classes)


def load_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch records of a run folder's ``metrics.jsonl``.

    Raises:
        CnnlabError: the folder or its ``metrics.jsonl`` is missing or unreadable.
    """
    run = RunFolder(run_dir)
    if not run.path.is_dir():
        raise CnnlabError(f"run folder {run.path} does not exist; pass a folder written by `cnnlab train`")
    records = run.read_metrics()
    if not records:
        raise CnnlabError(f"{run.path} has no metrics.jsonl; pass a run folder written by `cnnlab train` (after its first epoch)")
    return records


def diagnose_run(run_dir: str | Path, *, num_classes: int | None = None) -> Diagnosis:
    """Diagnose the run in ``run_dir`` from its ``metrics.jsonl``.

    Args:
        run_dir: a run folder written by ``cnnlab train`` (or the recipe).
        num_classes: the number of classes (default: from the run's ``summary.json``).

    Raises:
        CnnlabError: the folder or its ``metrics.jsonl`` is missing or unreadable.
    """
    records = load_records(run_dir)
    if num_classes is None:
        num_classes = _classes_from_summary(RunFolder(run_dir))
    return diagnose(records, num_classes=num_classes)


def _classes_from_summary(run: RunFolder) -> int | None:
    """The class count a finished run wrote to summary.json (None while it runs)."""
    value = (run.read_summary() or {}).get("classes")
    return int(value) if isinstance(value, int) and value > 1 else None

"""Step 2 of the recipe: overfit a tiny fixed subset, and the input-independent baseline.

A correct model and pipeline can memorise a few batches: :func:`overfit_small` trains on
``batches * batch_size`` training images (a stratified, fixed subset) with every
regulariser off (no augmentation, dropout, weight decay or label smoothing) at a constant
learning rate, and passes when one pass over the subset reaches at least 99% accuracy and
a mean loss below 0.05 (an average probability of ~0.95 for the right class) within the
step budget.

It then trains the same initial model for the same number of steps on zeroed inputs
(Karpathy's input-independent baseline: in normalised units zero is the mean image, so
the model can only learn the class frequencies). If the real inputs do not reach a loss
at most half of the zeroed one, the model ignores, or barely uses, its input. Losses alone
cannot tell a model whose output ignores the input from one that does not learn at all (a
learning rate far too low): both stay at the prior entropy. The spread of the trained
model's logits across the subset's images can: it is exactly 0 only for the first.
The report's ``diagnosis`` names the case: memorised, diverged, ignores-input,
not-learning, barely-uses-input or too-slow.

Passing does not prove the labels are right: a tiny set can be memorised with any labels,
shuffled ones included. Wrong labels show later, in validation curves that stay at chance.

Optimizer: by default AdamW at lr 3e-3, constant. This step comes before the learning
rate is searched (step 3), so it needs an optimizer that works without tuning: Adam's
per-parameter step size makes it insensitive to the model's scale, and a tiny set
tolerates a higher rate than full training. Measured on CPU (synthetic data, batches of
32-64): lr 3e-3 memorised every model tried (simple nets with and without BatchNorm,
resnet20) in 60-190 steps, 1e-3 needed 1.5-3x as many and missed the 300-step budget for
the smallest nets. A run's own optimizer (``optim=cfg.optim``) tests its settings instead.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.config import OptimConfig, RunConfig
from cnnlab.data.imageset import Splits
from cnnlab.data.sources import stratified_subset
from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_write_json
from cnnlab.recipe.checks import resolve_setup, train_mode_without_dropout
from cnnlab.train.fit import seed_everything
from cnnlab.train.loaders import build_loader
from cnnlab.train.loop import TrainStep
from cnnlab.train.optim import build_optimizer
from cnnlab.train.runtime import Runtime, prepare

#: The default optimizer of the overfit step (see the module docstring).
DEFAULT_OVERFIT_OPTIM = OptimConfig(name="adamw", lr=3e-3, weight_decay=0.0)
#: Pass thresholds: one pass over the subset must reach both.
MAX_LOSS = 0.05  # nats: mean cross-entropy, i.e. ~0.95 probability for the right class on average
MIN_ACC = 0.99
#: Real inputs must reach a loss at most this fraction of the zeroed-input loss to count
#: as "using the input" (zeroed inputs cannot go below the label entropy of the subset).
INPUT_LOSS_RATIO = 0.5
#: Below this spread of the logits across images (std over the subset, nats), the output
#: does not depend on the input at all; any real network gives orders of magnitude more.
MIN_INPUT_SENSITIVITY = 1e-6
#: A real-input loss still above this fraction of where it started has "barely moved".
STUCK_FRACTION = 0.9


@dataclass(frozen=True)
class StepCurve:
    """Per-step training-mode loss and accuracy of one run, and when it passed."""

    loss: tuple[float, ...]  # mean loss of each step's batch (before that step's update)
    acc: tuple[float, ...]
    window_loss: float  # mean loss over the last pass through the subset
    window_acc: float
    reached_step: int | None  # 1-based step at which one full pass met both thresholds
    diverged: bool  # the loss became NaN/inf


@dataclass(frozen=True)
class OverfitReport:
    """What :func:`overfit_small` found."""

    passed: bool
    diagnosis: str  # memorised | diverged | ignores-input | not-learning | barely-uses-input | too-slow
    uses_input: bool  # real inputs reach at most INPUT_LOSS_RATIO x the zeroed-input loss
    input_sensitivity: float  # std of the trained model's logits across the subset (0: constant output)
    reached_step: int | None  # steps needed to memorise the subset (None: not within the budget)
    steps: int  # steps trained (the zeroed baseline trains as many)
    max_steps: int
    images: int
    batches: int
    optimizer: str
    initial_loss: float
    final_loss: float
    final_acc: float
    zero_final_loss: float
    max_loss: float
    min_acc: float
    message: str
    loss_curve: tuple[float, ...]
    acc_curve: tuple[float, ...]
    zero_loss_curve: tuple[float, ...]
    files: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (``overfit.json``); non-finite numbers become strings."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v

        return {k: clean(v) for k, v in dataclasses.asdict(self).items()}

    def lines(self) -> list[str]:
        """A few lines for the terminal: numbers, then the verdict."""
        reached = f"after {self.reached_step} steps" if self.reached_step else f"not within {self.max_steps} steps"
        return [
            f"subset      {self.images} training images in {self.batches} fixed batch(es); {self.optimizer}",
            f"real        loss {self.initial_loss:.4f} -> {self.final_loss:.4f}, accuracy {self.final_acc:.1%} "
            f"(needs < {self.max_loss:g} and >= {self.min_acc:.0%}): {reached}",
            f"zeroed      loss -> {self.zero_final_loss:.4f} after {self.steps} steps "
            f"(real must be <= {INPUT_LOSS_RATIO:g} x this)",
            f"{'PASS' if self.passed else 'FAIL'}  overfit ({self.diagnosis})  {self.message}",
        ]

    def text(self) -> str:
        """:meth:`lines` joined by newlines."""
        return "\n".join(self.lines())


def overfit_small(
    cfg: RunConfig,
    *,
    batches: int = 2,
    max_steps: int = 300,
    splits: Splits | None = None,
    model: nn.Module | None = None,
    runtime: Runtime | None = None,
    out_dir: str | Path | None = None,
    optim: OptimConfig | None = None,
    max_loss: float = MAX_LOSS,
    min_acc: float = MIN_ACC,
) -> OverfitReport:
    """Step 2 of the recipe: memorise a tiny subset, compared with zeroed inputs.

    Args:
        cfg: the run configuration (data, model, batch size, seed).
        batches: the subset holds ``batches * cfg.train.batch_size`` training images.
        max_steps: the step budget of the real-input run.
        splits: the data (default: loaded as ``cfg`` says).
        model: the model (default: built from ``cfg``); it is not modified (copies train).
        runtime: device and precision (default: from ``cfg.train``).
        out_dir: when given, ``overfit.json`` and ``overfit.png`` are written there.
        optim: the optimizer, used at a constant learning rate with weight decay 0
            (default AdamW lr 3e-3, see the module docstring).
        max_loss: pass threshold of the mean loss over the subset.
        min_acc: pass threshold of the accuracy over the subset.

    Returns:
        The report; ``report.passed`` is the verdict.
    """
    if batches < 1 or max_steps < 1:
        raise CnnlabError(f"overfit needs --batches >= 1 and --steps >= 1, got {batches} and {max_steps}")
    splits, model, runtime = resolve_setup(cfg, splits, model, runtime)
    optim = dataclasses.replace(optim or DEFAULT_OVERFIT_OPTIM, weight_decay=0.0)
    data = subset_batches(splits, cfg.train.batch_size, batches, cfg.train.seed, runtime)
    initial = copy.deepcopy(model)  # both runs start from the same weights
    trained = copy.deepcopy(initial)
    real = train_on_batches(trained, data, optim, max_steps, runtime, seed=cfg.train.seed,
                            max_loss=max_loss, min_acc=min_acc)  # fmt: skip
    sensitivity = input_sensitivity(trained, data, runtime)
    zeroed = [(torch.zeros_like(x), y) for x, y in data]
    zero = train_on_batches(copy.deepcopy(initial), zeroed, optim, len(real.loss), runtime, seed=cfg.train.seed,
                            max_loss=max_loss, min_acc=min_acc, stop_early=False)  # fmt: skip
    report = _report(real, zero, sensitivity, data, optim, max_steps, max_loss, min_acc)
    if out_dir is not None:
        report = write_overfit(report, out_dir, title=f"{cfg.model.name} on {cfg.data.source}: overfit {report.images} images")
    return report


def subset_batches(
    splits: Splits, batch_size: int, batches: int, seed: int, runtime: Runtime
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed, stratified subset of ``batches * batch_size`` training images, as normalised batches."""
    idx = stratified_subset(splits.train.labels, batches * batch_size, seed)
    return list(build_loader(splits.train.subset(idx), splits.stats, runtime, batch_size=batch_size))


def train_on_batches(
    model: nn.Module,
    data: list[tuple[torch.Tensor, torch.Tensor]],
    optim: OptimConfig,
    steps: int,
    runtime: Runtime,
    *,
    seed: int = 0,
    max_loss: float = MAX_LOSS,
    min_acc: float = MIN_ACC,
    stop_early: bool = True,
) -> StepCurve:
    """Cycle through ``data`` for up to ``steps`` steps at a constant learning rate.

    Dropout is off, the loss is plain cross-entropy. After each step, the last
    ``len(data)`` steps (one pass over the subset) decide whether both thresholds are met;
    with ``stop_early`` training stops there. Each step is training's own :class:`TrainStep`.
    """
    seed_everything(seed)
    model = prepare(model, runtime)
    # a constant learning rate: this step tests learnability, not a schedule
    train_step = TrainStep(build_optimizer(model, optim), nn.CrossEntropyLoss(), lambda step: optim.lr, runtime)
    train_mode_without_dropout(model)
    losses: list[float] = []
    accs: list[float] = []
    counts = [len(y) for _, y in data]
    reached = None
    diverged = False
    for step in range(steps):
        x, y = data[step % len(data)]
        loss, logits = train_step(model, x, y)
        losses.append(float(loss))  # a sync per step: every step's loss decides whether to go on
        accs.append(float((logits.argmax(1) == y).float().mean()))
        if not math.isfinite(losses[-1]):
            diverged = True
            break
        w_loss, w_acc = _window(losses, accs, counts, step)
        if reached is None and step + 1 >= len(data) and w_loss < max_loss and w_acc >= min_acc:
            reached = step + 1
            if stop_early:
                break
    w_loss, w_acc = _window(losses, accs, counts, len(losses) - 1)
    return StepCurve(tuple(losses), tuple(accs), w_loss, w_acc, reached, diverged)


@torch.no_grad()
def input_sensitivity(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], runtime: Runtime) -> float:
    """Std of the logits across the subset's images (mean over classes), in eval mode.

    Exactly 0 when the output does not depend on the input; this separates a model that
    ignores its input from one that just did not learn (a learning rate far too low),
    which the losses alone cannot: both stay at the prior entropy.
    """
    model.eval()
    with runtime.autocast():
        logits = torch.cat([model(x).float() for x, _ in data])
    return float(logits.std(dim=0, unbiased=False).mean()) if len(logits) > 1 else 0.0


def _window(losses: list[float], accs: list[float], counts: list[int], step: int) -> tuple[float, float]:
    """Image-weighted mean loss and accuracy of the last pass over the subset up to ``step``."""
    k = min(len(counts), step + 1)
    ws = [counts[(step - i) % len(counts)] for i in range(k)]
    total = sum(ws)
    loss = sum(w * losses[step - i] for i, w in enumerate(ws)) / total
    acc = sum(w * accs[step - i] for i, w in enumerate(ws)) / total
    return loss, acc


def _report(
    real: StepCurve,
    zero: StepCurve,
    sensitivity: float,
    data: list[tuple[torch.Tensor, torch.Tensor]],
    optim: OptimConfig,
    max_steps: int,
    max_loss: float,
    min_acc: float,
) -> OverfitReport:
    """Turn both runs into the verdict and its explanation."""
    images = sum(len(y) for _, y in data)
    # A diverged real run never "uses" its input; a diverged zero run is no reference at all.
    uses_input = math.isfinite(real.window_loss) and (
        not math.isfinite(zero.window_loss) or real.window_loss <= INPUT_LOSS_RATIO * zero.window_loss
    )
    passed = real.reached_step is not None and uses_input
    diagnosis, message = _diagnose(real, zero, sensitivity, uses_input, passed, images, optim, max_steps)
    return OverfitReport(
        passed=passed, diagnosis=diagnosis, uses_input=uses_input, input_sensitivity=sensitivity,
        reached_step=real.reached_step, steps=len(real.loss), max_steps=max_steps, images=images, batches=len(data),
        optimizer=f"{optim.name} lr {optim.lr:g} (constant), weight decay 0",
        initial_loss=real.loss[0], final_loss=real.window_loss, final_acc=real.window_acc,
        zero_final_loss=zero.window_loss, max_loss=max_loss, min_acc=min_acc, message=message,
        loss_curve=real.loss, acc_curve=real.acc, zero_loss_curve=zero.loss,
    )  # fmt: skip


def _diagnose(
    real: StepCurve, zero: StepCurve, sensitivity: float, uses_input: bool, passed: bool, images: int,
    optim: OptimConfig, max_steps: int,
) -> tuple[str, str]:
    """The diagnosis code and a message that says what it usually means."""
    losses = f"real inputs reach loss {real.window_loss:.4f}, zeroed inputs {zero.window_loss:.4f}"
    if real.diverged:
        return "diverged", (
            f"the loss became NaN/inf at step {len(real.loss)}: the learning rate ({optim.lr:g}) is too high "
            "for this model, or the model overflows; lower --lr"
        )
    if passed:
        return "memorised", (
            f"memorised {images} images in {real.reached_step} steps (loss {real.window_loss:.4f}, accuracy "
            f"{real.window_acc:.1%}; zeroed inputs {zero.window_loss:.4f}). This cannot catch wrong labels: "
            "any labels can be memorised; watch the validation curves"
        )
    if sensitivity < MIN_INPUT_SENSITIVITY:
        return "ignores-input", (
            f"the model ignores its input: its output is the same for every image (logit spread {sensitivity:.2g}); "
            f"{losses}. Usually the input never reaches the output (overwritten or multiplied by zero, a "
            "constant path, all ReLUs dead) or all images look alike after preprocessing (blank images)"
        )
    if not uses_input and real.window_loss > STUCK_FRACTION * real.loss[0]:
        return "not-learning", (
            f"the loss barely moved ({real.loss[0]:.4f} -> {real.window_loss:.4f} in {len(real.loss)} steps; "
            f"zeroed inputs {zero.window_loss:.4f}): the learning rate ({optim.lr:g}) is far too low, or the "
            "parameters do not train (frozen, or not given to the optimizer)"
        )
    if not uses_input:
        return "barely-uses-input", (
            f"the model barely uses its input: {losses} (real must reach at most {INPUT_LOSS_RATIO:g} x that). "
            "Usually a pipeline or normalisation bug (images too alike or scaled to near zero), labels not "
            "matching their images, or a model that throws most of the input away"
        )
    return "too-slow", (
        f"did not memorise {images} images in {max_steps} steps (loss {real.window_loss:.4f}, accuracy "
        f"{real.window_acc:.1%}; zeroed inputs {zero.window_loss:.4f}). Usually a learning rate too low (or too "
        "high if the loss jumps), a label bug (the same image with different labels), or a model too small or "
        "broken; try another --lr or more --steps"
    )


def write_overfit(report: OverfitReport, out_dir: str | Path, *, title: str | None = None) -> OverfitReport:
    """Write ``overfit.json`` and ``overfit.png`` into ``out_dir``; return the report with ``files`` set."""
    out = Path(out_dir)
    png = overfit_plot(report, out / "overfit.png", title=title)
    report = dataclasses.replace(report, files=(str(out / "overfit.json"), str(png)))
    atomic_write_json(out / "overfit.json", report.as_dict())
    return report


def overfit_plot(report: OverfitReport, path: str | Path, *, title: str | None = None) -> Path:
    """Loss per step on real vs zeroed inputs (log scale), with the pass threshold.

    With several batches the per-batch loss is drawn faintly and the mean over the last pass
    (``batches`` steps) boldly: the pass mean is what the verdict reads.
    """
    from cnnlab.report.plots import pyplot, save_figure  # lazy: matplotlib is slow to import

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
    finite = lambda xs: [v if math.isfinite(v) and v > 0 else float("nan") for v in xs]  # noqa: E731 - log axis
    k = max(1, report.batches)  # one pass over the subset: the per-batch loss is a sawtooth over its batches
    for curve, style, color, name in ((report.loss_curve, "-", "C0", "real inputs"),
                                      (report.zero_loss_curve, "--", "C1", "zeroed inputs")):  # fmt: skip
        ax.plot(range(1, len(curve) + 1), finite(curve), style, color=color, alpha=0.3 if k > 1 else 1.0, lw=1,
                label=f"{name} (batch)" if k > 1 else name)
        if k > 1 and len(curve) >= k:
            means = [sum(curve[i - k + 1 : i + 1]) / k for i in range(k - 1, len(curve))]
            ax.plot(range(k, len(curve) + 1), finite(means), style, color=color, lw=2, label=f"{name} (mean of a pass)")
    ax.axhline(report.max_loss, color="gray", linestyle=":", label=f"pass: loss < {report.max_loss:g}")
    if report.reached_step:
        ax.axvline(report.reached_step, color="green", alpha=0.4, label=f"memorised at step {report.reached_step}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (batch)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "overfit a tiny subset", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)

"""Step 1 of the recipe: sanity checks of a training setup before any training.

:func:`check_setup` runs four quick checks on a freshly initialised model and a few
training batches, with regularisation off (no dropout, no weight decay, no label
smoothing), and returns a :class:`CheckReport`:

* ``initial-loss``: the loss at initialisation is what chance predicts. cnnlab sets the
  classifier bias to the log class priors (``model.prior_bias``), so the expected loss is
  the cross-entropy of those priors on the labels seen (the prior entropy; ln C for C
  balanced classes); without the prior bias it is ln C. A loss well above it means the
  model starts confidently wrong (inputs not normalised, too large an init scale, a bad
  last-layer bias or activation), well below means the loss is not measuring what it
  should (labels leak into the inputs, a reduction other than the mean).
* ``gradients``: one backward pass gives every trainable parameter a finite, non-zero
  gradient (a zero one is disconnected from the loss or sits behind dead units).
* ``weight-decay``: turning weight decay on raises the total loss
  ``loss + sum_g wd_g / 2 * ||w||^2`` over the parameters cnnlab's optimizer decays (conv
  and linear weights, never norm parameters or biases), i.e. the regulariser is wired in.
* ``batch-independence``: in eval mode (norm layers use their running statistics) the
  loss of sample i has no gradient with respect to any other sample j of the batch; a
  layer that mixes the batch (a BatchNorm stuck in training mode, a batch-mean
  subtraction) fails it.

The user's model is never changed: every check runs on a deep copy.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import RunConfig
from cnnlab.data.sources import Splits
from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_write_json
from cnnlab.train.loaders import build_loader
from cnnlab.train.optim import build_optimizer
from cnnlab.run import build_model, load_data
from cnnlab.train.runtime import Runtime, resolve_runtime

#: Relative tolerance of the initial-loss check: |measured - expected| <= 10% of expected.
#: Near-zero initial logits (cnnlab's classifier init) land within ~1% of it; PyTorch's
#: default init (logit std ~0.5) still passes, inputs off by a factor of 255 do not.
INITIAL_LOSS_TOLERANCE = 0.1
#: Absolute floor of that tolerance (nats), for very imbalanced data whose prior entropy is tiny.
INITIAL_LOSS_MIN_TOLERANCE = 0.02
#: The weight decay the weight-decay check turns on when the config has none (cnnlab's default).
DEFAULT_CHECK_WEIGHT_DECAY = 5e-4
#: Largest |d loss_i / d x_j| (j != i) allowed, relative to |d loss_i / d x_i|: independent
#: samples give exactly 0; anything that mixes the batch gives ~1/batch or more.
BATCH_LEAK_TOLERANCE = 1e-6
#: Class names of modules that must not act while checking (dropout and its relatives).
_DROPOUT_LIKE = ("Dropout", "DropPath", "DropBlock", "StochasticDepth")


@dataclass(frozen=True)
class CheckItem:
    """The result of one check.

    Attributes:
        name: short identifier (``initial-loss``, ``gradients``, ...).
        passed: the verdict.
        measured: the measured value (its meaning depends on the check; see ``message``).
        expected: the value the check compares with.
        message: one sentence with the numbers and, on failure, what it usually means.
        relation: how ``measured`` must compare with ``expected``: ``~`` (within
            ``tolerance``), ``<=`` or ``>``.
        tolerance: the allowed absolute difference for ``~``.
    """

    name: str
    passed: bool
    measured: float
    expected: float
    message: str
    relation: str = "~"
    tolerance: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (non-finite numbers become strings, which JSON lacks)."""
        out = dataclasses.asdict(self)
        for key in ("measured", "expected", "tolerance"):
            if isinstance(out[key], float) and not math.isfinite(out[key]):
                out[key] = str(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckItem:
        """The inverse of :meth:`as_dict`."""
        number = lambda v: None if v is None else float(v)  # noqa: E731 - "inf"/"nan" strings back to floats
        return cls(data["name"], bool(data["passed"]), number(data["measured"]), number(data["expected"]),
                   data["message"], data.get("relation", "~"), number(data.get("tolerance")))  # fmt: skip

    def line(self) -> str:
        """One line for the terminal: verdict, name, message."""
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name:<19} {self.message}"


@dataclass(frozen=True)
class CheckReport:
    """All checks of :func:`check_setup`, plus what they were run on."""

    items: tuple[CheckItem, ...]
    context: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(item.passed for item in self.items)

    def item(self, name: str) -> CheckItem:
        """The check called ``name``."""
        for item in self.items:
            if item.name == name:
                return item
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (``check.json``)."""
        return {"passed": self.passed, "context": dict(self.context), "items": [i.as_dict() for i in self.items]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckReport:
        """The inverse of :meth:`as_dict`."""
        return cls(tuple(CheckItem.from_dict(i) for i in data.get("items", [])), dict(data.get("context") or {}))

    def lines(self) -> list[str]:
        """One line per check, then the verdict."""
        failed = [i.name for i in self.items if not i.passed]
        verdict = (
            f"check passed: {len(self.items)}/{len(self.items)} items"
            if not failed
            else f"check FAILED: {', '.join(failed)} ({len(failed)} of {len(self.items)} items)"
        )
        return [item.line() for item in self.items] + [verdict]

    def text(self) -> str:
        """:meth:`lines` joined by newlines."""
        return "\n".join(self.lines())


# --------------------------------------------------------------------------- shared setup


def resolve_setup(
    cfg: RunConfig, splits: Splits | None, model: nn.Module | None, runtime: Runtime | None
) -> tuple[Splits, nn.Module, Runtime]:
    """Fill in what the caller did not pass: the run's data, a fresh model, the runtime."""
    runtime = runtime or resolve_runtime(cfg.train)
    splits = splits if splits is not None else load_data(cfg)
    if len(splits.train) == 0:
        raise CnnlabError(f"the training split of {splits.name} is empty; check --data")
    model = model if model is not None else build_model(cfg, splits)
    return splits, model, runtime


def train_mode_without_dropout(model: nn.Module) -> nn.Module:
    """Training mode (norm layers use batch statistics) with dropout-like layers off.

    Regularisation must not blur the checks: dropout makes the initial loss noisy and
    keeps a tiny set from being memorised, so those layers go to eval mode (identity).
    """
    model.train()
    for module in model.modules():
        if any(key in type(module).__name__ for key in _DROPOUT_LIKE):
            module.eval()
    return model


def training_batches(
    splits: Splits, batch_size: int, count: int, seed: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` shuffled, normalised, un-augmented training batches."""
    size = min(batch_size, len(splits.train))
    loader = build_loader(splits.train, splits.stats, Runtime.local(device), batch_size=size, train=True, seed=seed)
    out = []
    for x, y in loader:
        out.append((x, y))
        if len(out) >= count:
            break
    return out


def log_priors(splits: Splits) -> torch.Tensor:
    """The log class priors cnnlab's prior bias uses (counts + 1, as in ``build_model``)."""
    counts = torch.as_tensor(splits.train.class_counts() + 1, dtype=torch.float64)
    return (counts / counts.sum()).log()


# --------------------------------------------------------------------------- the checks


def check_setup(
    cfg: RunConfig,
    *,
    splits: Splits | None = None,
    model: nn.Module | None = None,
    runtime: Runtime | None = None,
    batches: int = 4,
    tolerance: float = INITIAL_LOSS_TOLERANCE,
    weight_decay: float | None = None,
    out_dir: str | Path | None = None,
) -> CheckReport:
    """Step 1 of the recipe: check the setup at initialisation (see the module docstring).

    Args:
        cfg: the run configuration (data, model, optimizer, batch size, seed).
        splits: the data (default: loaded as ``cfg`` says).
        model: the model to check (default: built from ``cfg``); it is not modified.
        runtime: device (default: from ``cfg.train``); the checks run in float32.
        batches: training batches (of ``cfg.train.batch_size``) the initial loss averages.
        tolerance: relative tolerance of the initial-loss check.
        weight_decay: the decay the weight-decay check turns on (default: the config's,
            or 5e-4 when the config has none).
        out_dir: when given, ``check.json`` is written there.

    Returns:
        The report; ``report.passed`` is the overall verdict.
    """
    if batches < 1:
        raise CnnlabError(f"the check needs at least 1 batch, got {batches}")
    model_name = cfg.model.name if model is None else type(model).__name__
    splits, model, runtime = resolve_setup(cfg, splits, model, runtime)
    device = runtime.device
    data = training_batches(splits, cfg.train.batch_size, batches, cfg.train.seed, device)
    probe = copy.deepcopy(model).to(device).float()
    prior_bias = cfg.model.prior_bias
    items = (
        initial_loss_check(probe, data, log_priors(splits) if prior_bias else None, len(splits.classes), tolerance),
        gradient_check(probe, data[0]),
        weight_decay_check(probe, data[0], cfg, weight_decay),
        batch_independence_check(probe, data[0]),
    )
    context = {
        "model": model_name,
        "data": splits.name, "classes": len(splits.classes), "batch_size": int(data[0][1].shape[0]),
        "batches": len(data), "prior_bias": prior_bias, "device": str(device),
    }  # fmt: skip
    report = CheckReport(items, context)
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "check.json", report.as_dict())
    return report


@torch.no_grad()
def initial_loss_check(
    model: nn.Module,
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    log_prior: torch.Tensor | None,
    num_classes: int,
    tolerance: float = INITIAL_LOSS_TOLERANCE,
) -> CheckItem:
    """Mean cross-entropy at initialisation against chance on the same labels.

    Args:
        model: the model (put in training mode without dropout here).
        data: the batches to average over.
        log_prior: log class priors the classifier bias starts at; None: uniform (ln C).
        num_classes: C.
        tolerance: relative tolerance.
    """
    train_mode_without_dropout(model)
    loss_sum, expected_sum, n, logit_sq = 0.0, 0.0, 0, 0.0
    for x, y in data:
        logits = model(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        # Chance on exactly these labels: -log q(y), with q the priors the bias encodes.
        expected_sum += float(-log_prior.to(y.device)[y].sum()) if log_prior is not None else math.log(num_classes) * len(y)
        logit_sq += float(logits.var(dim=1, unbiased=False).sum())
        n += len(y)
    measured, expected = loss_sum / n, expected_sum / n
    tol = max(tolerance * expected, INITIAL_LOSS_MIN_TOLERANCE)
    logit_std = math.sqrt(logit_sq / n)
    what = (
        "cross-entropy of the class priors the classifier bias starts at"
        if log_prior is not None
        else f"ln {num_classes} for uniform predictions"
    )
    numbers = f"{measured:.4f} vs expected {expected:.4f} +- {tol:.3f} ({what}); logit std {logit_std:.3g}"
    passed = math.isfinite(measured) and abs(measured - expected) <= tol
    if passed:
        message = numbers
    elif not math.isfinite(measured) or measured > expected:
        message = (
            f"{numbers}. The model starts confidently wrong: usually inputs not normalised (check mean/std), "
            "too large an init scale (especially the last layer), a wrong last-layer bias, or an activation "
            "or softmax applied to the logits (the loss wants raw logits)"
        )
    else:
        message = (
            f"{numbers}. Better than chance before training: labels leak into the inputs, the loss is not the "
            "mean cross-entropy of raw logits, or the expected priors are wrong (see --no-prior-bias)"
        )
    return CheckItem("initial-loss", passed, measured, expected, message, "~", tol)


def _unblock_zero_gates(model: nn.Module) -> list[str]:
    """Give all-zero multiplicative weights a small random value; return their names.

    A weight that starts at exactly zero (zero-init residual gammas, a zeroed classifier)
    blocks the gradient of everything before it at step 0 by design, which says nothing
    about whether those parameters are connected. The gradient check tests connectivity,
    so on its private copy such gates are opened a little first. Biases are additive, so
    a zero bias never blocks anything and is left alone.
    """
    opened = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.numel() and not p.any():
                p.normal_(0.0, 0.01)
                opened.append(name)
    return opened


def gradient_check(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], *, show: int = 5) -> CheckItem:
    """Every trainable parameter gets a finite, non-zero gradient from one batch.

    Args:
        model: the model (copied here; the copy has its zero gates opened).
        batch: one training batch.
        show: at most this many offending parameters are named.
    """
    model = copy.deepcopy(model)
    opened = _unblock_zero_gates(model)
    train_mode_without_dropout(model)
    x, y = batch
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x).float(), y).backward()
    missing, nonfinite, zero = [], [], []
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    for name, p in trainable:
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            nonfinite.append(name)
        elif not p.grad.any():
            zero.append(name)
    bad = len(missing) + len(nonfinite) + len(zero)

    def named(kind: str, names: list[str]) -> str:
        more = f" and {len(names) - show} more" if len(names) > show else ""
        return f"{kind}: {', '.join(names[:show])}{more}"

    note = f" (zero-initialised {', '.join(opened[:show])} opened for the check)" if opened else ""
    if not trainable:
        return CheckItem("gradients", False, 0.0, 0.0, "the model has no trainable parameters", "<=", None)
    if not bad:
        return CheckItem("gradients", True, 0.0, 0.0, f"all {len(trainable)} parameter tensors get finite, non-zero gradients{note}", "<=")
    parts = [named(k, v) for k, v in (("no gradient", missing), ("NaN/inf", nonfinite), ("all zero", zero)) if v]
    message = (
        f"{bad} of {len(trainable)} parameter tensors are broken ({'; '.join(parts)}){note}. No gradient means "
        "the parameter is not used in the forward pass (or its output is detached); zero gradients mean dead "
        "units (all ReLU inputs negative) or a path cut off from the loss; NaN/inf means overflow at init"
    )
    return CheckItem("gradients", False, float(bad), 0.0, message, "<=")


@torch.no_grad()
def weight_decay_check(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], cfg: RunConfig, weight_decay: float | None = None
) -> CheckItem:
    """Turning weight decay on raises the total loss (the regulariser is wired in).

    The penalty is ``sum_g wd_g / 2 * ||w_g||^2`` over the optimizer's parameter groups,
    built by cnnlab's own :func:`~cnnlab.train.optim.build_optimizer`, so it follows the
    same rule as training: conv and linear weights decay, norm parameters and biases not.
    """
    wd = weight_decay if weight_decay is not None else (cfg.optim.weight_decay or DEFAULT_CHECK_WEIGHT_DECAY)
    if not wd > 0:
        raise CnnlabError(f"the weight-decay check needs a positive weight decay, got {wd}")
    train_mode_without_dropout(model)
    x, y = batch
    data_loss = float(F.cross_entropy(model(x).float(), y))
    optimizer = build_optimizer(model, dataclasses.replace(cfg.optim, weight_decay=wd))
    penalty, decayed, values, kept = 0.0, 0, 0, 0
    for group in optimizer.param_groups:
        if group["weight_decay"] > 0:
            penalty += group["weight_decay"] / 2 * sum(float(p.double().pow(2).sum()) for p in group["params"])
            decayed += len(group["params"])
            values += sum(p.numel() for p in group["params"])
        else:
            kept += len(group["params"])
    # What the user sees is the total loss, so the increase is measured on it (a penalty
    # lost in float rounding against the data loss would not count).
    increase = (data_loss + penalty) - data_loss
    passed = math.isfinite(increase) and increase > 0
    numbers = (
        f"wd {wd:g} raises the loss {data_loss:.4f} -> {data_loss + penalty:.4f} (+{increase:.4g}); "
        f"decays {decayed} weight tensors ({values:,} values), not {kept} norm/bias tensors"
    )
    message = numbers if passed else (
        f"{numbers}. Weight decay has nothing to act on: no trainable conv/linear weights (all frozen or "
        "1-dimensional), or they are all zero"
    )
    return CheckItem("weight-decay", passed, increase, 0.0, message, ">")


def batch_independence_check(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], *, samples: int = 8
) -> CheckItem:
    """In eval mode the loss of one sample has no gradient w.r.t. the other samples.

    Args:
        model: the model (put in eval mode: norm layers use running statistics).
        batch: a training batch; its first ``samples`` images are used.
        samples: batch size of the probe (small: one backward per probed sample).
    """
    model.eval()
    x_all, y_all = batch
    n = min(samples, len(y_all))
    if n < 2:
        return CheckItem("batch-independence", True, 0.0, 0.0, "skipped: needs a batch of at least 2 images", "<=")
    worst, self_min = 0.0, math.inf
    for i in sorted({0, n - 1}):
        x = x_all[:n].detach().clone().requires_grad_(True)
        loss_i = F.cross_entropy(model(x)[i : i + 1].float(), y_all[i : i + 1])
        (grad,) = torch.autograd.grad(loss_i, x, allow_unused=True)
        grad = torch.zeros_like(x) if grad is None else grad
        own = float(grad[i].abs().max())
        others = torch.cat([grad[:i], grad[i + 1 :]])
        worst = max(worst, float(others.abs().max()) / max(own, 1e-30))
        self_min = min(self_min, own)
    if not self_min > 0:
        message = (
            "the loss of a sample has no gradient with respect to its own input: the model ignores its input "
            "(a detached or overwritten tensor, a constant output); the overfit step will fail too"
        )
        return CheckItem("batch-independence", False, math.inf, 0.0, message, "<=", BATCH_LEAK_TOLERANCE)
    passed = worst <= BATCH_LEAK_TOLERANCE
    numbers = f"max |d loss_i / d x_j| for j != i is {worst:.3g} x |d loss_i / d x_i| (eval mode, {n} images)"
    message = numbers if passed else (
        f"{numbers}. Samples influence each other in eval mode: a layer mixes the batch (a BatchNorm kept in "
        "training mode, a statistic taken over dim 0, a reshape/view that mixes the batch dimension)"
    )
    return CheckItem("batch-independence", passed, worst, 0.0, message, "<=", BATCH_LEAK_TOLERANCE)

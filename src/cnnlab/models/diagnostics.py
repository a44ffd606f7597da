"""Activation and gradient diagnostics (seed sections 4 and 6).

:func:`activation_stats` forwards one batch and records, at the output of every activation
layer (and at the logits), the mean, the std and the fraction of exact zeros, plus a sample
of values for histograms. A layer is flagged

* **vanishing** when its std is below ``VANISHING_RATIO`` (1/100) of the input's std, and
* **exploding** when its std is above ``EXPLODING_RATIO`` (100x) the input's std.

The logits are reported but not flagged (they start small on purpose, see
:mod:`cnnlab.models.init`).

The thresholds are relative to the input so they hold for raw noise and normalised images
alike, and they are wide on purpose: a well-initialised net stays within a factor of a few
of its input through any depth (Kaiming with ReLU keeps the pre-activation variance
constant), while a bad scale compounds per layer (``normal:0.01`` on 3x3x64 convs shrinks
the std ~6x per layer, ``normal:1.0`` grows it ~17x), so after a few layers it is far out.

:func:`gradient_stats` runs one backward pass (cross-entropy; random labels unless given)
and records the gradient norm of every conv and FC weight. Each layer's gradient RMS (norm /
sqrt(numel), comparable between layers of different size) is compared with that of the
last layer before the classifier, where the backward signal starts: below
``GRAD_VANISHING_RATIO`` (1/1000) it is flagged vanishing, above ``GRAD_EXPLODING_RATIO``
(1000x) exploding. Sigmoid nets vanish: each sigmoid passes back at most 1/4 of the signal,
so through ten of them the first layer gets ~1e-7 of the last. Deep plain nets with batch
norm explode instead (``plain56``: ~3e4 at init, ``plain110``: ~4e7), while their residual
twins stay within ~100x: the skips carry the gradient down unchanged.

Both run the model in train mode (batch statistics in the norms, as during training) and
afterwards restore its mode, its buffers (BatchNorm running statistics) and its ``.grad``
fields, and remove every hook, also on error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.inspect import forward_hooks
from cnnlab.models.layers import ACTIVATIONS

VANISHING_RATIO = 1e-2
EXPLODING_RATIO = 1e2
GRAD_VANISHING_RATIO = 1e-3
GRAD_EXPLODING_RATIO = 1e3
# Histogram panels per row: five keep each panel readable on a laptop screen (plain56: 12 rows).
MAX_HISTOGRAM_COLUMNS = 5

_ACT_TYPES = tuple(ACTIVATIONS.values())
# Layers that renormalise their input (cnnlab's own norms subclass GroupNorm).
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)  # fmt: skip


@dataclass(frozen=True)
class ActivationRecord:
    """Statistics of one layer's output over a batch.

    Attributes:
        name: module path (``#2`` appended for a module's second call).
        kind: module class name.
        shape: output shape without the batch dimension.
        mean: mean of all output values.
        std: standard deviation of all output values.
        zero_fraction: fraction of outputs that are exactly 0 (dead ReLUs).
        ratio: ``std`` / input std.
        flag: ``""``, ``"vanishing"`` or ``"exploding"``.
        sample: up to ``max_samples`` output values (CPU), for histograms.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    mean: float
    std: float
    zero_fraction: float
    ratio: float
    flag: str
    sample: torch.Tensor = field(repr=False, compare=False)


class _Flagged:
    """The layers a report flags (``layers`` items carry ``name`` and ``flag``)."""

    layers: list

    @property
    def vanishing(self) -> list[str]:
        """Names of the layers flagged vanishing."""
        return [r.name for r in self.layers if r.flag == "vanishing"]

    @property
    def exploding(self) -> list[str]:
        """Names of the layers flagged exploding."""
        return [r.name for r in self.layers if r.flag == "exploding"]


@dataclass(frozen=True)
class ActivationReport(_Flagged):
    """Per-layer activation statistics of one batch (see the module docstring)."""

    input_mean: float
    input_std: float
    layers: list[ActivationRecord]
    norm_layers: int = 0  # normalisation modules in the model (batch, group, layer, instance norm)

    @property
    def norm_note(self) -> str | None:
        """What a reader must know when the model normalises: the init scale is hidden (None without norms).

        A norm layer rescales its input to unit variance in every layer, so a weight scale
        of 0.01 or 1.0 leaves the activations looking healthy: the lecture's vanishing and
        exploding activations show only without normalisation.
        """
        if not self.norm_layers:
            return None
        return (f"note: the model's {self.norm_layers} normalisation layer(s) rescale every layer's output, "
                "which hides the init scale; add --norm none to see what the initialisation alone does")


@dataclass(frozen=True)
class GradientRecord:
    """Gradient of one conv or FC weight after one backward pass.

    Attributes:
        name: module path.
        kind: module class name.
        weight_norm: L2 norm of the weight.
        grad_norm: L2 norm of its gradient.
        grad_rms: ``grad_norm / sqrt(numel)``.
        update_ratio: ``grad_norm / weight_norm``: how much one unit-LR step would change it.
        relative: ``grad_rms`` / that of the last layer before the classifier.
        flag: ``""``, ``"vanishing"`` or ``"exploding"``.
    """

    name: str
    kind: str
    weight_norm: float
    grad_norm: float
    grad_rms: float
    update_ratio: float
    relative: float
    flag: str


@dataclass(frozen=True)
class GradientReport(_Flagged):
    """Per-layer weight-gradient norms of one backward pass."""

    loss: float
    layers: list[GradientRecord]


def noise_batch(input_shape: tuple[int, int, int], n: int = 64, seed: int = 0) -> torch.Tensor:
    """A reproducible N(0, 1) batch of shape (n, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *input_shape, generator=g)


def _classifier(model: nn.Module) -> nn.Module | None:
    get_classifier = getattr(model, "get_classifier", None)
    return get_classifier() if callable(get_classifier) else None


def stat_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Where activations are measured: every activation layer, plus the classifier
    (logits). Models without activation modules (functional activations) fall back to
    every conv and FC layer."""
    points = {n: m for n, m in model.named_modules() if isinstance(m, _ACT_TYPES)}
    if not points:
        points = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    fc = _classifier(model)
    points.update({n: m for n, m in model.named_modules() if m is fc})
    return points


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore the model's train/eval mode and buffers (e.g. BatchNorm running stats)
    on exit, so a diagnostic pass leaves no trace on a model that is being trained."""
    was_training = model.training
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])


def _flag(ratio: float, low: float, high: float) -> str:
    if not math.isfinite(ratio) or ratio > high:
        return "exploding"
    return "vanishing" if ratio < low else ""


def _sample(t: torch.Tensor, k: int) -> torch.Tensor:
    flat = t.detach().flatten()
    if flat.numel() > k:
        # Evenly spaced indices: deterministic, and it covers every sample of the batch.
        flat = flat[torch.linspace(0, flat.numel() - 1, k, device=flat.device).long()]
    return flat.float().cpu().clone()


def activation_stats(model: nn.Module, x: torch.Tensor, max_samples: int = 4096) -> ActivationReport:
    """Forward ``x`` and report mean / std / zero fraction of every activation layer.

    Args:
        model: the model (left unchanged: mode and buffers are restored).
        x: an input batch on the model's device, e.g. :func:`noise_batch` or real images.
        max_samples: values kept per layer for histograms.

    Returns:
        The report; flags are explained in the module docstring.
    """
    in_std = float(x.float().std())
    if not in_std > 0:
        raise CnnlabError("the input batch has zero variance; use noise or real images, not a constant")
    calls: dict[str, int] = {}
    records: list[ActivationRecord] = []
    fc = _classifier(model)

    def record(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            return
        calls[name] = calls.get(name, 0) + 1
        label = name if calls[name] == 1 else f"{name}#{calls[name]}"
        # Statistics are taken here, at once: an in-place op later could overwrite `output`.
        out = output.detach().float()
        std = float(out.std()) if out.numel() > 1 else 0.0
        ratio = std / in_std
        # The logits are shown but never flagged: they are small by design (the classifier
        # starts at std 0.01 so the first loss is ln C); the layers before them tell the story.
        is_logits = module is fc
        records.append(ActivationRecord(
            name=label, kind="logits" if is_logits else type(module).__name__, shape=tuple(out.shape[1:]),
            mean=float(out.mean()), std=std, zero_fraction=float((out == 0).float().mean()), ratio=ratio,
            flag="" if is_logits else _flag(ratio, VANISHING_RATIO, EXPLODING_RATIO), sample=_sample(out, max_samples),
        ))

    with preserved_state(model), forward_hooks(stat_modules(model), record), torch.no_grad():
        model.train()
        model(x)
    norms = sum(1 for m in model.modules() if isinstance(m, _NORM_TYPES))
    return ActivationReport(input_mean=float(x.float().mean()), input_std=in_std, layers=records, norm_layers=norms)


def gradient_stats(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, seed: int = 0
) -> GradientReport:
    """One forward/backward pass; report the gradient norm of every conv and FC weight.

    Gradients are computed with ``torch.autograd.grad``, so the parameters' ``.grad``
    fields (e.g. of a model in the middle of training) are not touched.

    Args:
        model: the model (mode and buffers restored afterwards).
        x: an input batch on the model's device.
        y: class labels; random ones (seeded) when None.
        seed: seed for the random labels.

    Returns:
        The report; flags are explained in the module docstring.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    weights = [m.weight for _, m in layers if m.weight.requires_grad]
    if not weights:
        raise CnnlabError("the model has no trainable conv or FC weights to take gradients of")
    with preserved_state(model):
        model.train()
        logits = model(x)
        if y is None:
            g = torch.Generator().manual_seed(seed)
            y = torch.randint(0, logits.shape[1], (x.shape[0],), generator=g).to(logits.device)
        loss = F.cross_entropy(logits.float(), y)
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
    by_weight = {id(w): gr for w, gr in zip(weights, grads)}
    rows = []
    for name, m in layers:
        gr = by_weight.get(id(m.weight))
        gn = float(gr.norm()) if gr is not None else 0.0
        rows.append((name, m, float(m.weight.detach().norm()), gn, gn / math.sqrt(m.weight.numel())))
    # The reference is the layer nearest the loss, not counting the classifier (whose gradient
    # is large by design: its weights start at std 0.01 while its inputs are O(1)). The backward
    # signal starts there, so a layer far below it has seen the signal vanish on the way down.
    fc = _classifier(model)
    body = [r[4] for r in rows if r[1] is not fc and math.isfinite(r[4])]
    top = (body[-1] if body else max((r[4] for r in rows if math.isfinite(r[4])), default=0.0)) or 1.0
    records = [
        GradientRecord(
            name=name, kind=type(m).__name__, weight_norm=wn, grad_norm=gn, grad_rms=rms,
            update_ratio=gn / wn if wn > 0 else math.inf, relative=rms / top,
            flag="" if m is fc else _flag(rms / top, GRAD_VANISHING_RATIO, GRAD_EXPLODING_RATIO),
        )
        for name, m, wn, gn, rms in rows
    ]
    return GradientReport(loss=float(loss.detach()), layers=records)


def plot_activation_histograms(report: ActivationReport, path: str | Path, title: str = "", share_x: bool = True) -> Path:
    """Write a PNG with one activation histogram per layer, every layer (flagged layers in red).

    See :func:`activation_figure`.

    Args:
        report: from :func:`activation_stats`.
        path: the PNG to write (parent folders are created).
        title: figure title.
        share_x: one x range for every layer but the logits (see :func:`activation_figure`).

    Returns:
        The path written.
    """
    fig = activation_figure(report, title=title, share_x=share_x)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def histogram_grid(count: int) -> tuple[int, int]:
    """(rows, columns) for ``count`` panels: near-square, at most ``MAX_HISTOGRAM_COLUMNS`` wide."""
    cols = max(1, min(MAX_HISTOGRAM_COLUMNS, math.ceil(math.sqrt(count))))
    return math.ceil(count / cols), cols


def activation_figure(report: ActivationReport, title: str = "", share_x: bool = True):  # noqa: ANN201 - a Figure
    """One histogram per recorded layer (all of them, the grid sized from the count) with a count axis.

    Exact zeros (ReLU's dead half) are left out of the bars and given in the title
    instead, so the shape of the rest stays visible.

    Args:
        report: from :func:`activation_stats`.
        title: figure title.
        share_x: one x range for every layer but the logits, so a shrinking or growing
            scale shows as a shrinking or spreading histogram (as in the lecture's plots).
    """
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import

    layers = report.layers
    if not layers:
        raise CnnlabError("no activation layers were recorded; nothing to plot")
    values = {id(r): r.sample[torch.isfinite(r.sample) & (r.sample != 0)].numpy() for r in layers}
    shared = [values[id(r)] for r in layers if r.kind != "logits" and values[id(r)].size]
    x_range = (min(v.min() for v in shared), max(v.max() for v in shared)) if share_x and shared else None
    rows, cols = histogram_grid(len(layers))
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows + 0.6), layout="constrained")
    if title:
        fig.suptitle(title)
    for i, rec in enumerate(layers):
        ax = fig.add_subplot(rows, cols, i + 1)
        color = "tab:red" if rec.flag else "tab:blue"
        v = values[id(rec)]
        if v.size:
            ax.hist(v, bins=50, color=color, range=None if rec.kind == "logits" else x_range)
        ax.set_title(f"{rec.name}{' (logits)' if rec.kind == 'logits' else ''}\n"
                     f"std {rec.std:.2g}  zeros {rec.zero_fraction:.0%}", fontsize=8,
                     color="tab:red" if rec.flag else "black")
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel("count", fontsize=8)
    return fig

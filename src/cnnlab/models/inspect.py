"""Layer table: output shape, parameters, multiply-adds and receptive field of every layer.

One forward pass of a single image (batch 1, eval mode, no gradients) with forward hooks
on the layers. The receptive field is tracked per *tensor*, not per module, so residual
additions, functional calls and padding shortcuts are followed correctly: a
``TorchFunctionMode`` gives every op's output the widest receptive field of its inputs,
and the conv / pool hooks then grow it:

    size_out = size_in + (kernel - 1) * dilation * jump_in,    jump_out = jump_in * stride

``size`` is the side (in input pixels) of the square patch one output unit sees, ``jump``
the distance in input pixels between neighbouring output units (the cumulative stride).
A global pool or an FC layer sees the whole image (size ``None``, printed "all").

Multiply-adds count the convs and FC layers (weights x positions); norms, activations and
pools are elementwise and left out, as is customary (torchvision's "GFLOPS" are the
same count). The pass also works on the ``meta`` device, so the table of a 140M-parameter
model costs no memory and almost no time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from cnnlab.models.registry import create_model

RF = tuple[int | None, int]  # (size in pixels or None for the whole image, jump in pixels)


@dataclass(frozen=True)
class LayerRow:
    """One row of the layer table.

    Attributes:
        name: module path, e.g. ``layer1.0.conv1``.
        kind: module class name.
        output_shape: output shape without the batch dimension.
        params: parameters of the module (and its children).
        macs: multiply-adds for one image (of the module and its children).
        rf_size: receptive field side in input pixels; None = the whole image.
        rf_jump: input pixels between neighbouring output units (cumulative stride).
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    rf_size: int | None
    rf_jump: int


@dataclass(frozen=True)
class LayerTable:
    """A model's layer table and totals.

    Attributes:
        input_shape: (C, H, W) of the image.
        output_shape: shape of the model output without the batch dimension.
        rows: one row per layer, in execution order.
        total_params: all parameters of the model.
        trainable_params: parameters with ``requires_grad``.
        total_macs: multiply-adds for one image.
        features_rf: (size, jump) at the output of ``forward_features`` (None if the model
            has no such method).
    """

    input_shape: tuple[int, int, int]
    output_shape: tuple[int, ...]
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    total_macs: int
    features_rf: RF | None


@contextmanager
def forward_hooks(
    modules: Mapping[str, nn.Module], hook: Callable[[str, nn.Module, tuple[Any, ...], Any], None],
    pre_hook: Callable[[str, nn.Module], None] | None = None,
) -> Iterator[None]:
    """Register ``hook(name, module, inputs, output)`` on every module; always remove them.

    The hooks are removed when the block exits, also when it raises, so a failed
    inspection never leaves a model slowed down or leaking tensors through a hook.

    Args:
        modules: name -> module.
        hook: called after each module's forward.
        pre_hook: optional ``pre_hook(name, module)`` called before each forward.
    """
    handles: list[RemovableHandle] = []
    try:
        for name, module in modules.items():
            if pre_hook is not None:
                handles.append(module.register_forward_pre_hook(lambda m, i, n=name: pre_hook(n, m)))
            handles.append(module.register_forward_hook(lambda m, i, o, n=name: hook(n, m, i, o)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def module_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one conv or FC call for one sample (0 for other modules)."""
    if not isinstance(output, torch.Tensor) or output.dim() == 0:
        return 0
    per_sample = output.numel() // max(1, output.shape[0])
    if isinstance(module, nn.Conv2d):
        k = math.prod(module.kernel_size)
        return per_sample * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    return 0


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


class _ReceptiveFields(TorchFunctionMode):
    """Tracks the receptive field of every tensor made during a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self._rf: dict[int, RF] = {}
        self._alive: list[torch.Tensor] = []  # keeps ids unique while the pass runs

    def get(self, t: Any) -> RF | None:
        return self._rf.get(id(t)) if isinstance(t, torch.Tensor) else None

    def set(self, t: Any, rf: RF) -> None:
        if isinstance(t, torch.Tensor):
            self._rf[id(t)] = rf
            self._alive.append(t)

    def _merge(self, values: Any) -> RF | None:
        found = [rf for rf in (self.get(v) for v in _tensors(values)) if rf is not None]
        if not found:
            return None
        # Adding two paths (a residual block) sees the union: the wider field wins.
        size = None if any(s is None for s, _ in found) else max(s for s, _ in found)
        return size, max(j for _, j in found)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        rf = self._merge((args, kwargs or {}))
        if rf is not None:
            for t in _tensors(out):
                self.set(t, rf)
        return out

    def grow(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        """Update the output's field for a conv / pool / FC module (called from its hook)."""
        size, jump = self.get(inputs[0] if inputs else None) or (1, 1)
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s = _first(module.kernel_size), _first(module.stride or module.kernel_size)
            d = _first(getattr(module, "dilation", 1))
            self.set(output, (None if size is None else size + (k - 1) * d * jump, jump * s))
        elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and inputs:
            h_in, h_out = inputs[0].shape[-2], output.shape[-2]
            if h_out == 1:
                self.set(output, (None, jump))
            elif h_out < h_in:
                k, s = math.ceil(h_in / h_out), h_in // h_out
                self.set(output, (None if size is None else size + (k - 1) * jump, jump * s))
        elif isinstance(module, nn.Linear):
            self.set(output, (None, jump))


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _row_modules(model: nn.Module, depth: int | None) -> dict[str, nn.Module]:
    rows = {}
    for name, module in model.named_modules():
        if not name:
            continue
        level = name.count(".") + 1
        is_leaf = next(module.children(), None) is None
        if (depth is None and is_leaf) or (depth is not None and (level == depth or (is_leaf and level < depth))):
            rows[name] = module
    return rows


def layer_table(model: nn.Module, input_shape: tuple[int, int, int], depth: int | None = None) -> LayerTable:
    """Run one image through ``model`` and tabulate its layers.

    Args:
        model: any module taking (N, C, H, W); cnnlab models also get ``features_rf``.
        input_shape: (C, H, W).
        depth: one row per module at this nesting depth (1 = top-level children) instead
            of one per leaf layer; deeper modules are summed into their parent's row.

    Returns:
        The table. The model's train/eval mode is restored afterwards.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, *input_shape, device=device)
    rows_for = _row_modules(model, depth)
    leaves = {n: m for n, m in model.named_modules() if n and next(m.children(), None) is None}
    tracker = _ReceptiveFields()
    macs_so_far = [0]
    started: dict[str, list[int]] = {}
    rows: list[LayerRow] = []

    def count(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        macs_so_far[0] += module_macs(module, output)
        tracker.grow(module, inputs, output)

    def start(name: str, module: nn.Module) -> None:
        started.setdefault(name, []).append(macs_so_far[0])

    def finish(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        out = next(_tensors(output), None)
        size, jump = tracker.get(out) or (1, 1)
        rows.append(LayerRow(
            name=name, kind=type(module).__name__,
            output_shape=tuple(out.shape[1:]) if out is not None else (),
            params=sum(p.numel() for p in module.parameters()),
            macs=macs_so_far[0] - started[name].pop(), rf_size=size, rf_jump=jump,
        ))

    was_training = model.training
    model.eval()
    try:
        # Leaf hooks are registered first, so a leaf's MACs are counted before its row closes.
        with forward_hooks(leaves, count), forward_hooks(rows_for, finish, pre_hook=start), torch.no_grad():
            with tracker:
                tracker.set(x, (1, 1))
                if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
                    feats = model.forward_features(x)
                    features_rf = tracker.get(feats)
                    out = model.forward_head(feats)
                else:
                    features_rf, out = None, model(x)
    finally:
        model.train(was_training)
    return LayerTable(
        input_shape=tuple(input_shape), output_shape=tuple(out.shape[1:]), rows=rows,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_macs=macs_so_far[0], features_rf=features_rf,
    )


def receptive_field(model: nn.Module, input_shape: tuple[int, int, int]) -> RF | None:
    """(size, jump) of the units of ``forward_features``' output (see :func:`layer_table`)."""
    return layer_table(model, input_shape).features_rf


def create_for_input(
    name: str, input_shape: tuple[int, int, int], meta: bool = False, **options: Any
) -> nn.Module:
    """Build a registered model for images of ``input_shape``: ``in_chans`` and
    ``input_size`` are taken from it (unless given in ``options``).

    Args:
        name: registered model name.
        input_shape: (C, H, W).
        meta: build on the ``meta`` device (no memory, no init cost): enough for
            :func:`layer_table`, not for real forwards.
        **options: other factory options.

    Raises:
        CnnlabError: unknown model or option.
    """
    options = {"in_chans": input_shape[0], "input_size": input_shape[1], **options}
    if not meta:
        return create_model(name, **options)
    with torch.device("meta"):
        return create_model(name, **options)


def model_cost(name: str, input_shape: tuple[int, int, int], **options: Any) -> tuple[int, int]:
    """(parameters, multiply-adds per image) of a registered model built for ``input_shape``.

    Built and run on the meta device: no memory, no weight init, no CPU threads (so the
    cost stays low even on a busy machine), at any model size.
    """
    table = layer_table(create_for_input(name, input_shape, meta=True, **options), input_shape)
    return table.total_params, table.total_macs


def model_params(name: str, input_shape: tuple[int, int, int], **options: Any) -> int:
    """Parameters of a registered model built for ``input_shape`` (meta device: instant)."""
    return sum(p.numel() for p in create_for_input(name, input_shape, meta=True, **options).parameters())

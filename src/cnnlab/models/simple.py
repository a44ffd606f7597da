"""``simple``: a conv stack written as a short spec string, for teaching and quick runs.

Spec grammar (tokens joined by ``-``):

* ``c32``      conv 3x3 with 32 output channels -> norm -> act
* ``c32k7``    the same with a 7x7 kernel (``k`` sets any odd kernel size)
* ``c32s2``    stride 2 (``k`` and ``s`` combine: ``c64k5s2``)
* ``p``        max pool 2x2, stride 2
* ``ap``       average pool 2x2, stride 2
* ``fc128``    a hidden FC layer of 128 units in the head (after every conv token)

The head is global average pool -> [hidden FC -> act -> dropout]* -> FC by default, so the
model works for any input size; ``head="flatten"`` flattens the last feature map into the
first FC instead (the typical script's head: it keeps where each feature was, but fixes the
input size to ``input_size``). ``depth=D`` builds a plain stack of D identical convs
instead (``width`` channels, ``kernel_size`` kernels): the net used for the init
diagnostics, and for the "three 3x3 convs vs one 7x7" experiment.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.base import HeadModuleModel, check_common
from cnnlab.models.init import init_weights
from cnnlab.models.layers import (
    ClassifierHead, ConvNormAct, check_dropout, check_head, get_act_layer, get_norm_layer, same_conv_size,
)
from cnnlab.models.registry import register_model

DEFAULT_SPEC = "c32-c32-p-c64-c64-p-fc128"

_CONV = re.compile(r"c(\d+)(?:k(\d+))?(?:s(\d+))?")
_FC = re.compile(r"fc(\d+)")


def stack_spec(depth: int, width: int = 64, kernel_size: int = 3) -> str:
    """Spec of a plain stack of ``depth`` identical convs, e.g. ``stack_spec(3, 32)`` ->
    ``"c32k3-c32k3-c32k3"``.

    Raises:
        CnnlabError: depth, width or kernel size below 1.
    """
    if depth < 1 or width < 1 or kernel_size < 1:
        raise CnnlabError(f"a conv stack needs depth, width and kernel_size >= 1 (got {depth}, {width}, {kernel_size})")
    return "-".join([f"c{width}k{kernel_size}"] * depth)


def parse_spec(spec: str) -> tuple[list[tuple[str, int, int, int]], list[int]]:
    """Parse a spec string.

    Returns:
        ``(layers, hidden)``: layers as ``("conv", out, kernel, stride)`` or
        ``("max"|"avg", 2, 2, 2)`` tuples, and the hidden FC widths.

    Raises:
        CnnlabError: an unknown token, a conv after an FC, an even kernel, or no conv.
    """
    layers: list[tuple[str, int, int, int]] = []
    hidden: list[int] = []
    for token in str(spec).strip().lower().split("-"):
        conv, fc = _CONV.fullmatch(token), _FC.fullmatch(token)
        if fc:
            hidden.append(int(fc.group(1)))
        elif hidden:
            raise CnnlabError(f"spec {spec!r}: {token!r} comes after an fc layer; put every fcN token last")
        elif conv:
            out, k, s = int(conv.group(1)), int(conv.group(2) or 3), int(conv.group(3) or 1)
            if out < 1 or s < 1 or k % 2 == 0:
                raise CnnlabError(f"spec {spec!r}: {token!r} needs channels >= 1, an odd kernel and stride >= 1")
            layers.append(("conv", out, k, s))
        elif token in ("p", "ap"):
            layers.append(("max" if token == "p" else "avg", 2, 2, 2))
        else:
            raise CnnlabError(
                f"spec {spec!r}: unknown token {token!r}; use cN[kK][sS] (conv), p (max pool), "
                "ap (avg pool), fcN (hidden FC), e.g. c32-c32-p-c64-fc128"
            )
    if not any(kind == "conv" for kind, *_ in layers):
        raise CnnlabError(f"spec {spec!r} has no conv layer; start with e.g. c32")
    if any(h < 1 for h in hidden):
        raise CnnlabError(f"spec {spec!r}: fc widths must be >= 1")
    return layers, hidden


class SimpleNet(HeadModuleModel):
    """A conv stack from a spec string (see the module docstring).

    Args:
        spec: the layer spec.
        num_classes: classifier outputs.
        in_chans: image channels.
        norm: norm name (see :mod:`cnnlab.models.layers`).
        act: activation name.
        dropout: dropout before each FC of the head.
        head: ``gap`` or ``flatten`` (see :class:`~cnnlab.models.layers.ClassifierHead`).
        input_size: image side (px) the flatten head is sized for; unused by ``gap``.
    """

    head_prefixes = ("head",)

    def __init__(
        self, spec: str, num_classes: int = 10, in_chans: int = 3, norm: str = "batch",
        act: str = "relu", dropout: float = 0.0, head: str = "gap", input_size: int = 32,
    ) -> None:
        super().__init__()
        norm_layer, act_layer = get_norm_layer(norm), get_act_layer(act)
        layers, hidden = parse_spec(spec)
        modules: OrderedDict[str, nn.Module] = OrderedDict()
        width, n_conv, n_pool, side = in_chans, 0, 0, int(input_size)
        for kind, out, k, s in layers:
            side = same_conv_size(side, s)  # 'same' convs and ceil-mode pools: ceil(side / stride)
            if kind == "conv":
                n_conv += 1
                modules[f"conv{n_conv}"] = ConvNormAct(width, out, k, s, norm_layer, act_layer)
                width = out
            else:
                n_pool += 1
                # ceil_mode keeps odd maps' last row/column: 7 px -> 4 px, and 1 px stays 1 px,
                # so a spec written for 32 px also runs on 28 px inputs.
                pool = nn.MaxPool2d(2, ceil_mode=True) if kind == "max" else nn.AvgPool2d(2, ceil_mode=True)
                modules[f"pool{n_pool}"] = pool
        self.features = nn.Sequential(modules)
        self.num_features = width
        self.head = ClassifierHead(width, num_classes, tuple(hidden), dropout, act_layer, head, side)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model(family="simple")
def simple(
    spec: str | None = None,
    depth: int | None = None,
    width: int = 64,
    kernel_size: int = 3,
    num_classes: int = 10,
    in_chans: int = 3,
    norm: str = "batch",
    act: str = "relu",
    dropout: float = 0.25,
    init: str = "kaiming",
    input_size: int = 32,
    head: str = "gap",
) -> SimpleNet:
    """Conv stack from a spec string (default c32-c32-p-c64-c64-p-fc128) or depth x width.

    Args:
        spec: layer spec (see the module docstring); default :data:`DEFAULT_SPEC`.
        depth: build a plain stack of ``depth`` identical convs instead of ``spec``.
        width: channels of each conv of the ``depth`` stack.
        kernel_size: kernel of each conv of the ``depth`` stack.
        num_classes: classifier outputs.
        in_chans: image channels (1 or 3).
        norm: norm name.
        act: activation name.
        dropout: dropout before each FC of the head (inverted dropout).
        init: weight init name (see :mod:`cnnlab.models.init`).
        input_size: image side in pixels; with the default ``gap`` head any size works
            (pools use ceil mode), so this only records what the model was built for; a
            ``flatten`` head is sized for it.
        head: ``gap`` (global average pool) or ``flatten`` (the last feature map flattened
            into the first FC; fixed input size).
    """
    check_common(num_classes, in_chans, input_size)
    check_dropout(dropout)
    if depth is not None and spec is not None:
        raise CnnlabError("give either spec or depth (a plain stack of depth convs), not both")
    spec = stack_spec(depth, width, kernel_size) if depth is not None else (spec or DEFAULT_SPEC)
    check_head(head)
    model = SimpleNet(spec, num_classes, in_chans, norm, act, dropout, head, input_size)
    return init_weights(model, init, act)

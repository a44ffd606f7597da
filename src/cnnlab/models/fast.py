"""``resnet9``: the fast residual net of the DAWNBench / airbench line (Page 2018, "How to
train your ResNet"; Jordan 2024, airbench), for accuracy per FLOP on small images.

Layout, with ``w = width`` (64 gives the published ResNet-9, 6.57M parameters at 10 classes)::

    stem    conv3x3(w)                                       full resolution, few channels: cheap
    layer1  conv3x3(2w) -> maxpool2 -> residual[conv3x3(2w) -> conv3x3(2w)]
    layer2  conv3x3(4w) -> maxpool2
    layer3  conv3x3(8w) -> maxpool2 -> residual[conv3x3(8w) -> conv3x3(8w)]
    head    global average pool (``head="gap"``) or flatten (``head="flatten"``) -> dropout -> FC

Every conv is conv -> norm -> act. Three 2x2 pools (ceil mode) shrink a 32 px image to 4 px
and a 28 px one to 4 px (28 -> 14 -> 7 -> 4), so the deep, wide convs run on few pixels;
that is where the net saves its FLOPs compared with a CIFAR ResNet of the same accuracy.
The stride-free stem keeps the whole image for the first features; it works from 1 px up
(a 12 px image reaches the head as 2 px). ``drop_path`` is stochastic depth on the two
residual branches (rates 0 and ``drop_path``: the deeper block is dropped more).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.base import HeadModuleModel, check_common
from cnnlab.models.init import init_weights
from cnnlab.models.layers import (
    ActLayer, ClassifierHead, ConvNormAct, NormLayer, check_dropout, check_head, drop_path_rates, get_act_layer,
    get_drop_path, get_norm_layer, same_conv_size,
)
from cnnlab.models.registry import register_model

#: 2x2 max pools between the stem and the head (each halves the side, ceil mode).
N_POOLS = 3


class Residual(nn.Module):
    """x + branch(x), with two conv -> norm -> act layers of the same width in the branch.

    Args:
        chans: channels in and out.
        norm_layer: from :func:`~cnnlab.models.layers.get_norm_layer`.
        act_layer: from :func:`~cnnlab.models.layers.get_act_layer`.
        drop_path: stochastic-depth rate of the branch (0 off).
    """

    def __init__(self, chans: int, norm_layer: NormLayer, act_layer: ActLayer, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(chans, chans, 3, 1, norm_layer, act_layer)
        self.conv2 = ConvNormAct(chans, chans, 3, 1, norm_layer, act_layer)
        self.drop_path = get_drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        if self.drop_path is not None:
            out = self.drop_path(out)
        return x + out


def _stage(in_chans: int, out_chans: int, norm_layer: NormLayer, act_layer: ActLayer,
           residual: Residual | None) -> nn.Sequential:
    """conv -> pool [-> residual]: the conv runs before the pool, at the finer resolution."""
    layers: list[nn.Module] = [ConvNormAct(in_chans, out_chans, 3, 1, norm_layer, act_layer),
                               nn.MaxPool2d(2, ceil_mode=True)]
    if residual is not None:
        layers.append(residual)
    return nn.Sequential(*layers)


class ResNet9(HeadModuleModel):
    """ResNet-9 (see the module docstring).

    Args:
        width: channels of the stem; the stages have 2x, 4x and 8x this.
        num_classes: classifier outputs.
        in_chans: image channels.
        norm: norm name.
        act: activation name.
        dropout: dropout before the FC.
        head: ``gap`` or ``flatten``.
        input_size: image side (px) a flatten head is sized for.
        drop_path: stochastic-depth rate of the deeper residual block.
    """

    head_prefixes = ("head",)

    def __init__(
        self, width: int = 64, num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
        dropout: float = 0.0, head: str = "gap", input_size: int = 32, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        norm_layer, act_layer = get_norm_layer(norm), get_act_layer(act)
        rates = drop_path_rates(drop_path, 2)
        w = width
        self.stem = ConvNormAct(in_chans, w, 3, 1, norm_layer, act_layer)
        self.layer1 = _stage(w, 2 * w, norm_layer, act_layer, Residual(2 * w, norm_layer, act_layer, rates[0]))
        self.layer2 = _stage(2 * w, 4 * w, norm_layer, act_layer, None)
        self.layer3 = _stage(4 * w, 8 * w, norm_layer, act_layer, Residual(8 * w, norm_layer, act_layer, rates[1]))
        side = int(input_size)
        for _ in range(N_POOLS):
            side = same_conv_size(side, 2)
        self.num_features = 8 * w
        self.head = ClassifierHead(8 * w, num_classes, (), dropout, act_layer, head, side)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


@register_model(family="fast")
def resnet9(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
            dropout: float = 0.0, init: str = "kaiming", input_size: int = 32, width: int = 64,
            head: str = "gap", drop_path: float = 0.0) -> ResNet9:
    """ResNet-9 (airbench style): cheap stem, 3 conv-pool stages, 2 residual blocks; width option.

    Args:
        num_classes: classifier outputs.
        in_chans: image channels (1 or 3).
        norm: norm name.
        act: activation name.
        dropout: dropout before the FC.
        init: weight init name.
        input_size: image side (px); any size from 1 px works with ``head="gap"``, a
            ``flatten`` head is sized for it.
        width: stem channels (64: the published ResNet-9; the stages have 2x/4x/8x). The
            multiply-adds grow with width squared: width 16 costs 1/16 of width 64.
        head: ``gap`` (global average pool) or ``flatten``.
        drop_path: stochastic depth, the deeper residual block's rate (0 off).
    """
    check_common(num_classes, in_chans, input_size)
    check_dropout(dropout)
    check_head(head)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise CnnlabError(f"width must be a positive integer (stem channels, 64 in ResNet-9), got {width!r}")
    model = ResNet9(width, num_classes, in_chans, norm, act, dropout, head, input_size, drop_path)
    return init_weights(model, init, act)


@register_model(family="fast")
def resnet9s(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
             dropout: float = 0.0, init: str = "kaiming", input_size: int = 32, width: int = 16,
             head: str = "gap", drop_path: float = 0.0) -> ResNet9:
    """ResNet-9 small (width 16): cnnlab's default model, the most accuracy per minute measured on a CPU.

    The same network as :func:`resnet9` at a sixteenth of its multiply-adds, chosen by
    measurement (``bench/bench_models.py``, table in docs/models.md): on 2 CPU cores,
    Fashion-MNIST, 7 epochs, it reached 93.7% test accuracy in about 5 minutes, ahead of
    the demo CNN, a typical script's CNN and resnet20 at equal time. The pooled head was
    as accurate as a flatten head there (93.68% against 93.73%) and works at any input size.

    Args: as :func:`resnet9`, with ``width`` 16 by default.
    """
    return resnet9(num_classes, in_chans, norm, act, dropout, init, input_size, width, head, drop_path)

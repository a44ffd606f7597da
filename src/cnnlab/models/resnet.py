"""ResNets (He et al. 2016), seed section 5.2: blocks, the ResNet class, ImageNet nets.

``resnet18/34/50/101/152`` are the ImageNet nets. At the default settings their parameter
layout (``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample.0/1``, ``fc``) is torchvision's,
so its pretrained state dicts load with ``strict=True``. ``small_input`` (default:
``input_size <= 64``) swaps the 7x7/2 conv + max pool stem for a 3x3/1 conv without pool,
so a 32 px image is not shrunk to 8 px before the first stage. Activations are separate
modules (``act1``, ``act2``, ...) rather than one reused ``relu``: they hold no parameters,
so the state dict is unchanged, and each gets its own hook in the diagnostics.

The blocks and the :class:`ResNet` class are shared with the CIFAR nets and their plain
twins (``skip=False``), registered in :mod:`cnnlab.models.resnet_cifar`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.base import PooledLinearHead, check_common
from cnnlab.models.init import init_weights
from cnnlab.models.layers import (
    ActLayer, NormLayer, check_dropout, drop_path_rates, get_act_layer, get_drop_path, get_dropout, get_norm_layer,
    is_no_norm,
)
from cnnlab.models.registry import register_model


def conv3x3(in_chans: int, out_chans: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 conv with padding 1 (keeps the size at stride 1)."""
    return nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=bias)


def conv1x1(in_chans: int, out_chans: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """1x1 conv (channel mixing / projection)."""
    return nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=bias)


class PadShortcut(nn.Module):
    """Option-A shortcut: take every ``stride``-th pixel and zero-pad the new channels.

    Parameter-free, so a ResNet has exactly as many weights as its plain twin.
    """

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        if out_chans < in_chans:
            raise CnnlabError("an option-A shortcut cannot reduce channels; use shortcut='B'")
        self.stride, self.extra = stride, out_chans - in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    """Two 3x3 convs; output = act(branch(x) + shortcut(x)), or act(branch(x)) when
    ``skip`` is False (the plain twin). ``drop_path`` > 0 drops the branch of a random
    share of the samples while training (stochastic depth; residual blocks only)."""

    expansion = 1

    def __init__(
        self, in_chans: int, planes: int, stride: int, downsample: nn.Module | None,
        norm_layer: NormLayer, act_layer: ActLayer, skip: bool = True, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        bias = is_no_norm(norm_layer)
        self.conv1 = conv3x3(in_chans, planes, stride, bias)
        self.bn1 = norm_layer(planes)
        self.act1 = act_layer()
        self.conv2 = conv3x3(planes, planes, 1, bias)
        self.bn2 = norm_layer(planes)
        self.act2 = act_layer()
        self.downsample = downsample
        self.skip = skip
        self.drop_path = _block_drop_path(skip, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.skip:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.act2(out)

    def zero_init_last(self) -> bool:
        """Zero the branch's last norm gamma (or last conv without norm); False if plain."""
        return _zero_last(self.skip, self.bn2, self.conv2)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride, as torchvision's "v1.5") -> 1x1 expand x4;
    ``drop_path`` as in :class:`BasicBlock`."""

    expansion = 4

    def __init__(
        self, in_chans: int, planes: int, stride: int, downsample: nn.Module | None,
        norm_layer: NormLayer, act_layer: ActLayer, skip: bool = True, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        bias, out_chans = is_no_norm(norm_layer), planes * self.expansion
        self.conv1 = conv1x1(in_chans, planes, 1, bias)
        self.bn1 = norm_layer(planes)
        self.act1 = act_layer()
        self.conv2 = conv3x3(planes, planes, stride, bias)
        self.bn2 = norm_layer(planes)
        self.act2 = act_layer()
        self.conv3 = conv1x1(planes, out_chans, 1, bias)
        self.bn3 = norm_layer(out_chans)
        self.act3 = act_layer()
        self.downsample = downsample
        self.skip = skip
        self.drop_path = _block_drop_path(skip, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.act2(self.bn2(self.conv2(out)))))
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.skip:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.act3(out)

    def zero_init_last(self) -> bool:
        """Zero the branch's last norm gamma (or last conv without norm); False if plain."""
        return _zero_last(self.skip, self.bn3, self.conv3)


def _block_drop_path(skip: bool, rate: float) -> nn.Module | None:
    if rate > 0 and not skip:
        # Stochastic depth keeps the shortcut and drops the branch; without a shortcut it
        # would zero the sample's whole signal.
        raise CnnlabError(
            "drop_path (stochastic depth) needs residual blocks: it drops a block's branch and keeps its "
            "shortcut, and a plain net has no shortcut to keep; use the ResNet twin or drop_path=0"
        )
    return get_drop_path(rate)


@torch.no_grad()
def _zero_last(skip: bool, norm: nn.Module, conv: nn.Conv2d) -> bool:
    if not skip:
        return False  # zeroing a plain block would cut the signal, not make an identity
    target = norm if getattr(norm, "weight", None) is not None else conv
    target.weight.zero_()
    return True


class ResNet(PooledLinearHead):
    """Stem -> stages of residual (or plain) blocks -> global pool -> dropout -> FC.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage.
        widths: ``planes`` of each stage (output channels / block.expansion).
        num_classes: classifier outputs.
        in_chans: image channels.
        norm: norm name.
        act: activation name.
        dropout: dropout before the FC.
        stem_width: channels of the stem conv.
        small_stem: 3x3/1 conv without max pool (CIFAR style) instead of 7x7/2 + max pool.
        shortcut: ``"A"`` (pad, parameter-free) or ``"B"`` (1x1 conv + norm) where the shape
            changes; identity elsewhere.
        skip: False builds the plain twin (no shortcuts at all).
        drop_path: stochastic-depth rate of the deepest block; the rates rise linearly
            from 0 at the first block (see :func:`~cnnlab.models.layers.drop_path_rates`).
    """

    head_prefixes = ("fc",)

    def __init__(
        self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], widths: list[int],
        num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
        dropout: float = 0.0, stem_width: int = 64, small_stem: bool = False, shortcut: str = "B",
        skip: bool = True, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if str(shortcut).upper() not in ("A", "B"):
            raise CnnlabError(f"shortcut must be 'A' (zero padding) or 'B' (1x1 projection), got {shortcut!r}")
        norm_layer, act_layer = get_norm_layer(norm), get_act_layer(act)
        self._norm_layer, self._act_layer = norm_layer, act_layer
        self._shortcut, self._skip = str(shortcut).upper(), skip
        bias = is_no_norm(norm_layer)
        if small_stem:
            self.conv1 = conv3x3(in_chans, stem_width, 1, bias)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=bias)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = norm_layer(stem_width)
        self.act1 = act_layer()
        self._in = stem_width
        self.stage_names: list[str] = []
        rates = drop_path_rates(drop_path, sum(layers))
        for i, (n, planes) in enumerate(zip(layers, widths)):
            name = f"layer{i + 1}"
            first = sum(layers[:i])
            setattr(self, name, self._make_stage(block, planes, n, 1 if i == 0 else 2, rates[first:first + n]))
            self.stage_names.append(name)
        self.num_features = self._in
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.drop = get_dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

    def _make_stage(self, block: type[BasicBlock] | type[Bottleneck], planes: int, n: int, stride: int,
                    rates: list[float]) -> nn.Sequential:
        out_chans = planes * block.expansion
        downsample: nn.Module | None = None
        if self._skip and (stride != 1 or self._in != out_chans):
            if self._shortcut == "A":
                downsample = PadShortcut(self._in, out_chans, stride)
            else:
                downsample = nn.Sequential(
                    conv1x1(self._in, out_chans, stride, is_no_norm(self._norm_layer)),
                    self._norm_layer(out_chans),
                )
        blocks = [block(self._in, planes, stride, downsample, self._norm_layer, self._act_layer, self._skip, rates[0])]
        self._in = out_chans
        blocks += [
            block(out_chans, planes, 1, None, self._norm_layer, self._act_layer, self._skip, rates[j])
            for j in range(1, n)
        ]
        return nn.Sequential(*blocks)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


_IMAGENET: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


def _imagenet(name: str, num_classes: int, in_chans: int, norm: str, act: str, dropout: float, init: str,
              input_size: int, small_input: bool | None, zero_init_residual: bool, drop_path: float) -> ResNet:
    check_common(num_classes, in_chans, input_size)
    check_dropout(dropout)
    block, layers = _IMAGENET[name]
    small = input_size <= 64 if small_input is None else bool(small_input)
    model = ResNet(block, layers, [64, 128, 256, 512], num_classes, in_chans, norm, act, dropout,
                   stem_width=64, small_stem=small, shortcut="B", drop_path=drop_path)
    return init_weights(model, init, act, zero_init_residual)


# --- ImageNet ResNets -------------------------------------------------------------------------
# Options (all factories): num_classes, in_chans (1 or 3), norm, act, dropout (before the FC),
# init, input_size (<= 64 selects the small stem), small_input (force the stem choice),
# zero_init_residual (each block starts as the identity), drop_path (stochastic depth: the
# deepest block's rate, 0 off).


@register_model(family="resnet")
def resnet18(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
             dropout: float = 0.0, init: str = "kaiming", input_size: int = 224,
             small_input: bool | None = None, zero_init_residual: bool = False,
             drop_path: float = 0.0) -> ResNet:
    """ResNet-18 (basic blocks 2-2-2-2); torchvision layout at the default settings."""
    return _imagenet("resnet18", num_classes, in_chans, norm, act, dropout, init, input_size, small_input,
                     zero_init_residual, drop_path)


@register_model(family="resnet")
def resnet34(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
             dropout: float = 0.0, init: str = "kaiming", input_size: int = 224,
             small_input: bool | None = None, zero_init_residual: bool = False,
             drop_path: float = 0.0) -> ResNet:
    """ResNet-34 (basic blocks 3-4-6-3); torchvision layout at the default settings."""
    return _imagenet("resnet34", num_classes, in_chans, norm, act, dropout, init, input_size, small_input,
                     zero_init_residual, drop_path)


@register_model(family="resnet")
def resnet50(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
             dropout: float = 0.0, init: str = "kaiming", input_size: int = 224,
             small_input: bool | None = None, zero_init_residual: bool = False,
             drop_path: float = 0.0) -> ResNet:
    """ResNet-50 (bottlenecks 3-4-6-3); torchvision layout at the default settings."""
    return _imagenet("resnet50", num_classes, in_chans, norm, act, dropout, init, input_size, small_input,
                     zero_init_residual, drop_path)


@register_model(family="resnet")
def resnet101(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
              dropout: float = 0.0, init: str = "kaiming", input_size: int = 224,
              small_input: bool | None = None, zero_init_residual: bool = False,
             drop_path: float = 0.0) -> ResNet:
    """ResNet-101 (bottlenecks 3-4-23-3); torchvision layout at the default settings."""
    return _imagenet("resnet101", num_classes, in_chans, norm, act, dropout, init, input_size, small_input,
                     zero_init_residual, drop_path)


@register_model(family="resnet")
def resnet152(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
              dropout: float = 0.0, init: str = "kaiming", input_size: int = 224,
              small_input: bool | None = None, zero_init_residual: bool = False,
             drop_path: float = 0.0) -> ResNet:
    """ResNet-152 (bottlenecks 3-8-36-3); torchvision layout at the default settings."""
    return _imagenet("resnet152", num_classes, in_chans, norm, act, dropout, init, input_size, small_input,
                     zero_init_residual, drop_path)

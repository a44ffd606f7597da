"""Wide ResNets (Zagoruyko & Komodakis 2016), seed section 5.2.

WRN-d-k: a 3x3 conv with 16 channels, three stages of n = (d - 4) / 6 pre-activation
blocks with 16k / 32k / 64k channels, then norm -> act -> global pool -> FC. Pre-activation
(norm -> act -> conv, He et al. 2016b) keeps the shortcut path a pure identity from input
to output, which is what lets these nets be trained wide rather than deep. Where a block
changes shape, the shortcut is a 1x1 conv applied to the *pre-activated* input, as in the
authors' code.

``block_dropout`` puts dropout between the two convs of each block (the paper uses 0.3);
``dropout`` is, as for every cnnlab model, the dropout before the classifier.
``drop_path`` is stochastic depth: the deepest block's rate of dropping its residual branch
per sample while training, rising linearly from 0 at the first block.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.base import PooledLinearHead, check_common
from cnnlab.models.init import init_weights
from cnnlab.models.layers import (
    ActLayer, NormLayer, check_dropout, drop_path_rates, get_act_layer, get_drop_path, get_dropout, get_norm_layer,
    is_no_norm,
)
from cnnlab.models.registry import register_model


class PreActBlock(nn.Module):
    """norm -> act -> conv3x3 -> norm -> act -> dropout -> conv3x3 [-> drop path], plus the shortcut."""

    def __init__(
        self, in_chans: int, out_chans: int, stride: int, block_dropout: float,
        norm_layer: NormLayer, act_layer: ActLayer, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        bias = is_no_norm(norm_layer)
        self.bn1 = norm_layer(in_chans)
        self.act1 = act_layer()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=bias)
        self.bn2 = norm_layer(out_chans)
        self.act2 = act_layer()
        self.drop = get_dropout(block_dropout)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=bias)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_chans != out_chans:
            self.shortcut = nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=bias)
        self.drop_path = get_drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(self.drop(self.act2(self.bn2(self.conv1(pre)))))
        if self.drop_path is not None:
            out = self.drop_path(out)
        return out + identity

    @torch.no_grad()
    def zero_init_last(self) -> bool:
        """A pre-activation branch ends in a conv, not a norm: zero that conv instead."""
        self.conv2.weight.zero_()
        return True


class WideResNet(PooledLinearHead):
    """WRN-depth-widen (see the module docstring).

    Args:
        depth: 6n + 4 (16, 22, 28, 40, ...).
        widen: width multiplier k.
        num_classes: classifier outputs.
        in_chans: image channels.
        norm: norm name.
        act: activation name.
        dropout: dropout before the FC.
        block_dropout: dropout between the two convs of each block.
        drop_path: stochastic-depth rate of the deepest block (0 off).
    """

    head_prefixes = ("fc",)

    def __init__(
        self, depth: int, widen: int, num_classes: int = 10, in_chans: int = 3, norm: str = "batch",
        act: str = "relu", dropout: float = 0.0, block_dropout: float = 0.0, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise CnnlabError(f"a wide ResNet needs depth = 6n + 4 with n >= 1 (e.g. 16, 28, 40), got {depth}")
        norm_layer, act_layer = get_norm_layer(norm), get_act_layer(act)
        check_dropout(block_dropout, "block_dropout")
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_chans, 16, 3, padding=1, bias=is_no_norm(norm_layer))
        width = 16
        rates = drop_path_rates(drop_path, 3 * n)
        for i, out in enumerate(widths):
            blocks = [
                PreActBlock(width if j == 0 else out, out, 2 if (i > 0 and j == 0) else 1, block_dropout,
                            norm_layer, act_layer, rates[i * n + j])
                for j in range(n)
            ]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            width = out
        # The last block's output has not been normalised yet (pre-activation), so the
        # features end with norm -> act before pooling.
        self.norm = norm_layer(width)
        self.act = act_layer()
        self.num_features = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.drop = get_dropout(dropout)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.act(self.norm(x))


def _wrn(depth: int, widen: int, num_classes: int, in_chans: int, norm: str, act: str, dropout: float,
         block_dropout: float, init: str, input_size: int, zero_init_residual: bool,
         drop_path: float) -> WideResNet:
    check_common(num_classes, in_chans, input_size)
    check_dropout(dropout)
    model = WideResNet(depth, widen, num_classes, in_chans, norm, act, dropout, block_dropout, drop_path)
    return init_weights(model, init, act, zero_init_residual)


# Options (all factories): num_classes, in_chans (1 or 3), norm, act, dropout (before the FC),
# block_dropout (between the convs of each block), init, input_size (recorded only: any size
# from 4 px works), zero_init_residual, drop_path (stochastic depth: the deepest block's rate).


@register_model(family="wide-resnet")
def wrn16_4(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
            dropout: float = 0.0, block_dropout: float = 0.0, init: str = "kaiming", input_size: int = 32,
            zero_init_residual: bool = False, drop_path: float = 0.0) -> WideResNet:
    """WRN-16-4: 2 pre-activation blocks per stage, 64/128/256 channels (2.7M parameters)."""
    return _wrn(16, 4, num_classes, in_chans, norm, act, dropout, block_dropout, init, input_size,
                zero_init_residual, drop_path)


@register_model(family="wide-resnet")
def wrn28_10(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
             dropout: float = 0.0, block_dropout: float = 0.0, init: str = "kaiming", input_size: int = 32,
             zero_init_residual: bool = False, drop_path: float = 0.0) -> WideResNet:
    """WRN-28-10: 4 pre-activation blocks per stage, 160/320/640 channels (36.5M parameters)."""
    return _wrn(28, 10, num_classes, in_chans, norm, act, dropout, block_dropout, init, input_size,
                zero_init_residual, drop_path)


@register_model(family="wide-resnet")
def wrn40_4(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
            dropout: float = 0.0, block_dropout: float = 0.0, init: str = "kaiming", input_size: int = 32,
            zero_init_residual: bool = False, drop_path: float = 0.0) -> WideResNet:
    """WRN-40-4: 6 pre-activation blocks per stage, 64/128/256 channels (8.9M parameters)."""
    return _wrn(40, 4, num_classes, in_chans, norm, act, dropout, block_dropout, init, input_size,
                zero_init_residual, drop_path)

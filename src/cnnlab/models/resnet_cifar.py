"""CIFAR ResNets (He et al. 2016, Section 4.2) and their plain twins, seed section 5.2.

``resnet20/32/44/56/110``: a 3x3 conv with 16 channels, then three stages of n basic blocks
(depth = 6n + 2) with 16/32/64 channels, global pool, FC. The shortcut that changes shape is
**option A** by default: stride-2 subsampling plus zero channel padding, no parameters, as
in the paper's CIFAR experiments. That gives the published 0.27M / 0.46M / 0.66M / 0.85M /
1.7M parameters; ``shortcut="B"`` uses a 1x1 conv + norm projection instead (a few thousand
more parameters).

``plain20/32/44/56/110``: the same nets without any skip connection, for the degradation
experiment (Fig. 6 of the paper: deeper plain nets train *worse*, deeper ResNets better).
Having no parameters in the option-A shortcuts, each ResNet has exactly as many weights as
its plain twin.

Options: num_classes, in_chans (1 or 3), norm, act, dropout (before the FC), init,
input_size (recorded only: the nets are fully convolutional and work from 4 px up),
``width`` (channels of the first stage, 16 in the paper; the stages have width/2x/4x: a
smaller width makes the depth experiment affordable on a CPU), and for the ResNets
``shortcut``, ``zero_init_residual`` and ``drop_path`` (stochastic depth: the deepest block's
rate, rising linearly from 0; the plain twins accept the option only to refuse a non-zero
rate with the reason: they have no shortcut to keep).
"""

from __future__ import annotations

from cnnlab.errors import CnnlabError
from cnnlab.models.base import check_common
from cnnlab.models.init import init_weights
from cnnlab.models.layers import check_dropout
from cnnlab.models.registry import register_model
from cnnlab.models.resnet import BasicBlock, ResNet

#: Depths of the registered CIFAR nets (6n + 2).
CIFAR_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110)


def _cifar(depth: int, num_classes: int, in_chans: int, norm: str, act: str, dropout: float, init: str,
           input_size: int, shortcut: str, zero_init_residual: bool, skip: bool, width: int = 16,
           drop_path: float = 0.0) -> ResNet:
    check_common(num_classes, in_chans, input_size)
    check_dropout(dropout)
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise CnnlabError(f"width must be a positive integer (channels of the first stage, 16 in the paper), got {width!r}")
    n = (depth - 2) // 6
    model = ResNet(BasicBlock, [n, n, n], [width, 2 * width, 4 * width], num_classes, in_chans, norm, act, dropout,
                   stem_width=width, small_stem=True, shortcut=shortcut, skip=skip, drop_path=drop_path)
    return init_weights(model, init, act, zero_init_residual)


@register_model(family="resnet-cifar")
def resnet20(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
             dropout: float = 0.0, init: str = "kaiming", input_size: int = 32, shortcut: str = "A",
             zero_init_residual: bool = False, width: int = 16, drop_path: float = 0.0) -> ResNet:
    """CIFAR ResNet-20: 3 stages x 3 basic blocks, 16/32/64 channels, option-A shortcuts."""
    return _cifar(20, num_classes, in_chans, norm, act, dropout, init, input_size, shortcut, zero_init_residual,
                  skip=True, width=width, drop_path=drop_path)


@register_model(family="resnet-cifar")
def resnet32(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
             dropout: float = 0.0, init: str = "kaiming", input_size: int = 32, shortcut: str = "A",
             zero_init_residual: bool = False, width: int = 16, drop_path: float = 0.0) -> ResNet:
    """CIFAR ResNet-32: 3 stages x 5 basic blocks, 16/32/64 channels, option-A shortcuts."""
    return _cifar(32, num_classes, in_chans, norm, act, dropout, init, input_size, shortcut, zero_init_residual,
                  skip=True, width=width, drop_path=drop_path)


@register_model(family="resnet-cifar")
def resnet44(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
             dropout: float = 0.0, init: str = "kaiming", input_size: int = 32, shortcut: str = "A",
             zero_init_residual: bool = False, width: int = 16, drop_path: float = 0.0) -> ResNet:
    """CIFAR ResNet-44: 3 stages x 7 basic blocks, 16/32/64 channels, option-A shortcuts."""
    return _cifar(44, num_classes, in_chans, norm, act, dropout, init, input_size, shortcut, zero_init_residual,
                  skip=True, width=width, drop_path=drop_path)


@register_model(family="resnet-cifar")
def resnet56(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
             dropout: float = 0.0, init: str = "kaiming", input_size: int = 32, shortcut: str = "A",
             zero_init_residual: bool = False, width: int = 16, drop_path: float = 0.0) -> ResNet:
    """CIFAR ResNet-56: 3 stages x 9 basic blocks, 16/32/64 channels, option-A shortcuts."""
    return _cifar(56, num_classes, in_chans, norm, act, dropout, init, input_size, shortcut, zero_init_residual,
                  skip=True, width=width, drop_path=drop_path)


@register_model(family="resnet-cifar")
def resnet110(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
             dropout: float = 0.0, init: str = "kaiming", input_size: int = 32, shortcut: str = "A",
             zero_init_residual: bool = False, width: int = 16, drop_path: float = 0.0) -> ResNet:
    """CIFAR ResNet-110: 3 stages x 18 basic blocks, 16/32/64 channels, option-A shortcuts."""
    return _cifar(110, num_classes, in_chans, norm, act, dropout, init, input_size, shortcut, zero_init_residual,
                  skip=True, width=width, drop_path=drop_path)


@register_model(family="plain-cifar")
def plain20(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
            dropout: float = 0.0, init: str = "kaiming", input_size: int = 32, width: int = 16,
            drop_path: float = 0.0) -> ResNet:
    """Plain-20: CIFAR ResNet-20 without skip connections (degradation experiment)."""
    return _cifar(20, num_classes, in_chans, norm, act, dropout, init, input_size, "A", False, skip=False, width=width,
                  drop_path=drop_path)


@register_model(family="plain-cifar")
def plain32(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
            dropout: float = 0.0, init: str = "kaiming", input_size: int = 32, width: int = 16,
            drop_path: float = 0.0) -> ResNet:
    """Plain-32: CIFAR ResNet-32 without skip connections (degradation experiment)."""
    return _cifar(32, num_classes, in_chans, norm, act, dropout, init, input_size, "A", False, skip=False, width=width,
                  drop_path=drop_path)


@register_model(family="plain-cifar")
def plain44(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
            dropout: float = 0.0, init: str = "kaiming", input_size: int = 32, width: int = 16,
            drop_path: float = 0.0) -> ResNet:
    """Plain-44: CIFAR ResNet-44 without skip connections (degradation experiment)."""
    return _cifar(44, num_classes, in_chans, norm, act, dropout, init, input_size, "A", False, skip=False, width=width,
                  drop_path=drop_path)


@register_model(family="plain-cifar")
def plain56(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
            dropout: float = 0.0, init: str = "kaiming", input_size: int = 32, width: int = 16,
            drop_path: float = 0.0) -> ResNet:
    """Plain-56: CIFAR ResNet-56 without skip connections (degradation experiment)."""
    return _cifar(56, num_classes, in_chans, norm, act, dropout, init, input_size, "A", False, skip=False, width=width,
                  drop_path=drop_path)


@register_model(family="plain-cifar")
def plain110(num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu",
            dropout: float = 0.0, init: str = "kaiming", input_size: int = 32, width: int = 16,
            drop_path: float = 0.0) -> ResNet:
    """Plain-110: CIFAR ResNet-110 without skip connections (degradation experiment)."""
    return _cifar(110, num_classes, in_chans, norm, act, dropout, init, input_size, "A", False, skip=False, width=width,
                  drop_path=drop_path)

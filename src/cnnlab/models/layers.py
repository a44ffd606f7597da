"""Building blocks chosen by name: normalization, activation, dropout (seed sections 1-4).

Every model factory takes ``norm=`` and ``act=`` strings. They are resolved *once*, at
the top of the constructor, into layer factories that are passed down to the blocks
(``norm_layer(planes)``, ``act_layer()``), so a block never parses a string and an
unknown name fails before any layer is built.

Normalization, for an activation tensor of shape (N, C, H, W):

* ``batch``    - statistics over (N, H, W) for each channel; running averages at eval.
* ``layer``    - statistics over (C, H, W) for each sample.
* ``instance`` - statistics over (H, W) for each sample and channel.
* ``group:G``  - statistics over (C/G, H, W) for each sample and group of C/G channels.
* ``none``     - identity.

All of them (except ``none``) end with a learned per-channel scale gamma and shift beta.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from math import gcd

import torch
from torch import nn

from cnnlab.config import HeadName, choices
from cnnlab.errors import CnnlabError

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]

#: Default number of groups for ``group`` norm. 8 rather than the usual 32 because the
#: small CIFAR nets have stages of only 16 channels.
DEFAULT_GROUPS = 8

#: The axes of an (N, C, H, W) tensor each norm averages over (the SPEC wants cnnlab to
#: print this). ``C/G`` means "the C/G channels of one group". Tests check these claims
#: against a manual mean/std, so this table is the single source of truth.
NORM_AXES: dict[str, tuple[str, ...]] = {
    "batch": ("N", "H", "W"),
    "layer": ("C", "H", "W"),
    "instance": ("H", "W"),
    "group": ("C/G", "H", "W"),
    "none": (),
}

_NORM_NOTES: dict[str, str] = {
    "batch": "running averages are used at eval, so train and eval differ and tiny batches are noisy",
    "layer": "same at train and eval, independent of batch size",
    "instance": "removes each image's per-channel contrast; same at train and eval",
    "group": "between layer (G=1) and instance (G=C); independent of batch size",
    "none": "",
}

NORMS: tuple[str, ...] = tuple(NORM_AXES)

#: Activation name -> module class. ``leaky_relu`` uses PyTorch's slope 0.01.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}

_INPLACE = {"relu", "leaky_relu", "silu"}


class LayerNorm2d(nn.GroupNorm):
    """Layer norm for NCHW maps: per sample over (C, H, W), per-channel gamma/beta.

    This is ``GroupNorm`` with one group; ``nn.LayerNorm`` would instead want its shape
    fixed in advance (C, H, W) and learn one gamma per pixel, which ties the model to
    one input size.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(1, num_channels, eps=eps, affine=True)


class InstanceNorm2d(nn.GroupNorm):
    """Instance norm: per sample and channel over (H, W), per-channel gamma/beta.

    Written as ``GroupNorm`` with C groups so it has the same parameter names as the
    other group-style norms and no running statistics (train and eval agree).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(num_channels, num_channels, eps=eps, affine=True)


class GroupNorm2d(nn.GroupNorm):
    """Group norm with the group count clipped to divide the channel count.

    Args:
        num_channels: C.
        groups: requested G. If C is not divisible by G, gcd(C, G) groups are used, so one
            ``group:8`` setting works for every stage width of a model.
        eps: added to the variance.
    """

    def __init__(self, num_channels: int, groups: int = DEFAULT_GROUPS, eps: float = 1e-5) -> None:
        super().__init__(gcd(num_channels, groups), num_channels, eps=eps, affine=True)


class NoNorm(nn.Identity):
    """``norm="none"``: an identity that accepts (and ignores) the channel count."""

    def __init__(self, num_channels: int = 0) -> None:
        super().__init__()


def parse_norm(norm: str) -> tuple[str, int | None]:
    """Split a norm name into its kind and group count.

    Args:
        norm: ``batch``, ``layer``, ``instance``, ``group``, ``group:G`` or ``none``.

    Returns:
        ``(kind, groups)``; ``groups`` is None except for ``group``.

    Raises:
        CnnlabError: unknown name or a bad group count.
    """
    kind, _, arg = str(norm).strip().lower().partition(":")
    if kind not in NORM_AXES:
        raise CnnlabError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)} (group:G sets G)")
    if kind != "group":
        if arg:
            raise CnnlabError(f"norm {kind!r} takes no ':' argument (got {norm!r}); only group:G does")
        return kind, None
    try:
        groups = int(arg) if arg else DEFAULT_GROUPS
    except ValueError:
        raise CnnlabError(f"bad group count in norm {norm!r}; write e.g. group:8") from None
    if groups < 1:
        raise CnnlabError(f"group count must be >= 1 in norm {norm!r}; write e.g. group:8")
    return kind, groups


def get_norm_layer(norm: str, groups: int | None = None) -> NormLayer:
    """Resolve a norm name into a factory ``norm_layer(num_channels) -> nn.Module``.

    Args:
        norm: see :data:`NORMS`; ``group:G`` sets the group count inline.
        groups: group count for ``group`` when not given inline.

    Returns:
        A callable building the layer for a given channel count.

    Raises:
        CnnlabError: unknown name.
    """
    kind, inline_groups = parse_norm(norm)
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "layer":
        return LayerNorm2d
    if kind == "instance":
        return InstanceNorm2d
    if kind == "group":
        # An inline count (group:4) wins over the separate option; without either, the default.
        explicit = ":" in str(norm)
        return partial(GroupNorm2d, groups=inline_groups if explicit or groups is None else groups)
    return NoNorm


def is_no_norm(norm_layer: NormLayer) -> bool:
    """True when ``norm_layer`` builds no normalization (so the preceding conv needs a bias)."""
    return norm_layer is NoNorm


def describe_norm(norm: str) -> str:
    """Say in one line which axes a norm averages over, e.g. for ``cnnlab inspect``.

    Args:
        norm: a norm name as accepted by :func:`get_norm_layer`.

    Returns:
        A sentence such as ``"layer: mean/var over (C, H, W) of each sample; ..."``.
    """
    kind, groups = parse_norm(norm)
    axes = NORM_AXES[kind]
    if kind == "none":
        return "none: no normalization (the conv then gets a bias)"
    per = {
        "batch": "of each channel, across the batch",
        "layer": "of each sample",
        "instance": "of each sample and channel",
        "group": f"of each sample and group (G={groups}; C/G channels per group)",
    }[kind]
    return f"{kind}: mean/var over ({', '.join(axes)}) {per}; learned gamma/beta per channel; {_NORM_NOTES[kind]}"


def get_act_layer(act: str) -> ActLayer:
    """Resolve an activation name into a factory ``act_layer() -> nn.Module``.

    ReLU-like activations are in-place: it halves their memory, and nothing in cnnlab
    reads a pre-activation tensor after the activation ran (the diagnostics take their
    statistics inside the hook).

    Raises:
        CnnlabError: unknown name.
    """
    name = str(act).strip().lower()
    if name not in ACTIVATIONS:
        raise CnnlabError(f"unknown activation {act!r}; choose one of: {', '.join(ACTIVATIONS)}")
    cls = ACTIVATIONS[name]
    return partial(cls, inplace=True) if name in _INPLACE else cls


def check_dropout(p: float, what: str = "dropout") -> float:
    """Validate a dropout probability and return it as float.

    Raises:
        CnnlabError: p outside [0, 1).
    """
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise CnnlabError(f"{what} must be in [0, 1), got {p}; 0 disables it")
    return p


def get_dropout(p: float) -> nn.Module:
    """Inverted dropout (``nn.Dropout``): kept units are scaled by 1/(1-p) while training,
    so eval needs no rescaling; ``p == 0`` gives an identity."""
    p = check_dropout(p)
    return nn.Dropout(p) if p > 0 else nn.Identity()


def check_drop_path(rate: float, what: str = "drop_path") -> float:
    """Validate a stochastic-depth rate (the probability that a block's residual branch is
    dropped for one sample) and return it as float.

    Raises:
        CnnlabError: rate outside [0, 1).
    """
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise CnnlabError(f"{what} must be in [0, 1) (the deepest block's drop rate), got {rate}; 0 disables it")
    return rate


def drop_path_rates(max_rate: float, n_blocks: int) -> list[float]:
    """Per-block stochastic-depth rates, rising linearly from 0 (first block) to ``max_rate``
    (last block), as in Huang et al. 2016 and timm: early blocks compute features every later
    block needs, so they are dropped least.

    Args:
        max_rate: rate of the deepest block, in [0, 1).
        n_blocks: number of residual blocks.

    Returns:
        ``n_blocks`` rates; all 0 when ``max_rate`` is 0; ``[max_rate]`` for one block.
    """
    max_rate = check_drop_path(max_rate)
    if n_blocks <= 1:
        return [max_rate] * n_blocks
    return [max_rate * i / (n_blocks - 1) for i in range(n_blocks)]


class DropPath(nn.Module):
    """Stochastic depth for one residual branch: while training, each sample's branch output
    is zeroed with probability ``p`` and the kept ones are scaled by 1/(1-p), so the expected
    output is unchanged and eval needs no rescaling; at eval it is the identity.

    One Bernoulli draw per sample (a (N, 1, 1, 1) mask, batched): the whole branch of that
    sample is dropped, not single units as in dropout. The draw uses torch's global generator,
    so it follows the run's seed like ``nn.Dropout`` does.

    Args:
        p: drop probability of the branch, in [0, 1).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = check_drop_path(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:.3g}"


def get_drop_path(p: float) -> DropPath | None:
    """A :class:`DropPath` for ``p > 0``, None for 0: a block without stochastic depth keeps
    exactly the modules (and the ``cnnlab inspect`` rows) it had before the option existed."""
    return DropPath(p) if check_drop_path(p) > 0 else None


#: The head choices, from :data:`cnnlab.config.HeadName`.
HEADS: tuple[str, ...] = choices(HeadName)


def check_head(head: str) -> str:
    """Validate a head name.

    Raises:
        CnnlabError: not one of :data:`HEADS`.
    """
    if head not in HEADS:
        raise CnnlabError(
            f"unknown head {head!r}; choose gap (global average pool, any input size), max (global max pool, any "
            "input size) or flatten (flattened feature map into the FC, for the input size the model was built for)"
        )
    return head


def same_conv_size(size: int, stride: int) -> int:
    """Output side of a 'same'-padded odd-kernel conv, or of a 2x2 ceil-mode pool (stride 2):
    ceil(size / stride) pixels."""
    return -(-size // stride)


class ConvNormAct(nn.Sequential):
    """conv -> norm -> activation, with 'same' padding for odd kernels.

    The conv has a bias only when there is no norm after it: a norm subtracts the mean,
    which would cancel any bias anyway.

    Args:
        in_chans: input channels.
        out_chans: output channels.
        kernel_size: square kernel side.
        stride: conv stride.
        norm_layer: from :func:`get_norm_layer`.
        act_layer: from :func:`get_act_layer`; None for no activation.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer | None = nn.ReLU,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride=stride, padding=kernel_size // 2,
            bias=is_no_norm(norm_layer),
        )
        self.norm = norm_layer(out_chans)
        self.act = act_layer() if act_layer is not None else nn.Identity()


class ClassifierHead(nn.Module):
    """global pool (or flatten) -> [hidden FC -> act -> dropout]* -> dropout -> FC.

    With no hidden layers this is the ResNet head (pool, dropout, FC); with hidden widths
    it is VGG's MLP head (each hidden FC followed by its activation and dropout).

    Args:
        in_features: channels of the feature map.
        num_classes: outputs of the final FC.
        hidden: widths of the hidden FC layers.
        dropout: dropout probability before each FC after the first pooled features.
        act_layer: activation after the hidden FC layers.
        head: ``gap`` (global average pool: any input size), ``max`` (global max pool, the
            head of the DAWNBench ResNet-9: any input size) or ``flatten`` (the whole
            feature map, channels x h x w values, enters the first FC: it keeps where a
            feature was, at the price of a fixed input size and h*w times the FC weights).
        feature_size: side (px) of the square feature map; needed by ``flatten`` only.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: tuple[int, ...] = (),
        dropout: float = 0.0,
        act_layer: ActLayer = nn.ReLU,
        head: str = "gap",
        feature_size: int | None = None,
    ) -> None:
        super().__init__()
        check_head(head)
        self.feature_size: int | None = None
        if head == "flatten":
            if feature_size is None or feature_size < 1:
                raise CnnlabError(f"a flatten head needs the feature map's size (>= 1 px), got {feature_size!r}")
            # No pool: the map is flattened as it is, so the FC sees every position.
            self.pool: nn.Module = nn.Identity()
            self.feature_size = int(feature_size)
            width = in_features * self.feature_size**2
        else:
            self.pool = nn.AdaptiveMaxPool2d(1) if head == "max" else nn.AdaptiveAvgPool2d(1)
            width = in_features
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), act_layer(), get_dropout(dropout)]
            width = h
        if not hidden:
            layers.append(get_dropout(dropout))
        self.mlp = nn.Sequential(*layers)
        self.pre_logits_features = width
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.feature_size is not None and tuple(x.shape[-2:]) != (self.feature_size,) * 2:
            raise CnnlabError(
                f"this model's flatten head expects a {self.feature_size}x{self.feature_size} feature map, got "
                f"{x.shape[-2]}x{x.shape[-1]}: feed images of the input_size it was built for, or use head=gap"
            )
        x = self.mlp(torch.flatten(self.pool(x), 1))
        return x if pre_logits else self.fc(x)

    def reset(self, num_classes: int) -> None:
        """Replace the final FC with a freshly initialised one for ``num_classes``."""
        old = self.fc.weight
        self.fc = nn.Linear(self.pre_logits_features, num_classes, device=old.device, dtype=old.dtype)

"""VGG-11/13/16/19 (Simonyan & Zisserman 2014), seed section 5.1.

Only 3x3 convs: two stacked 3x3 convs see 5x5 and three see 7x7, with 18C^2 and 27C^2
weights instead of 25C^2 and 49C^2, and an activation between each. With ``norm="none"`` the
parameter layout is torchvision's ``vgg*``; with ``norm="batch"`` it is ``vgg*_bn``
(``features.N``, ``classifier.0/3/6``), so torchvision's pretrained weights load with
``strict=True``.

Small inputs: VGG was built for 224 px; at 28-32 px the five pools leave a 1x1 map, which
torchvision's 7x7 adaptive pool would copy 49 times into a 25088 -> 4096 FC layer (100M
weights fed by one pixel). ``small_input`` (default: ``input_size <= 64``) swaps the head for
global average pooling and 512-wide hidden FCs. Pools use ``ceil_mode`` so odd maps keep
their border (28 -> 14 -> 7 -> 4 -> 2 -> 1); at multiples of 32 px this changes nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.base import ClassifierModel, check_common
from cnnlab.models.init import init_weights
from cnnlab.models.layers import check_dropout, get_act_layer, get_dropout, get_norm_layer, is_no_norm
from cnnlab.models.registry import register_model

#: Output channels of each 3x3 conv; "M" is a 2x2 max pool. (Table 1 of the paper, A/B/D/E.)
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(ClassifierModel):
    """VGG with a configurable norm/activation and an optional small-input head.

    Args:
        config: channel list with "M" for pools (see :data:`VGG_CONFIGS`).
        num_classes: classifier outputs.
        in_chans: image channels.
        norm: norm name; ``batch`` gives torchvision's ``vgg*_bn`` layout.
        act: activation name.
        dropout: dropout after each hidden FC (VGG uses 0.5).
        small_input: global-pool + 512-wide head instead of the 7x7 -> 4096 head.
    """

    head_prefixes = ("classifier",)

    def __init__(
        self, config: list[int | str], num_classes: int = 10, in_chans: int = 3, norm: str = "batch",
        act: str = "relu", dropout: float = 0.5, small_input: bool = False,
    ) -> None:
        super().__init__()
        norm_layer, act_layer = get_norm_layer(norm), get_act_layer(act)
        layers: list[nn.Module] = []
        width = in_chans
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                continue
            # Conv bias kept even before a norm, only to match torchvision's state dict.
            layers.append(nn.Conv2d(width, int(v), 3, padding=1))
            if not is_no_norm(norm_layer):
                layers.append(norm_layer(int(v)))
            layers.append(act_layer())
            width = int(v)
        self.features = nn.Sequential(*layers)
        self.num_features = width
        pooled, hidden = (1, 512) if small_input else (7, 4096)
        self.avgpool = nn.AdaptiveAvgPool2d(pooled)
        self.classifier = nn.Sequential(
            nn.Linear(width * pooled * pooled, hidden), act_layer(), get_dropout(dropout),
            nn.Linear(hidden, hidden), act_layer(), get_dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        x = self.classifier[:-1](x)
        return x if pre_logits else self.classifier[-1](x)

    def get_classifier(self) -> nn.Linear:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        old = self.classifier[-1]
        self.classifier[-1] = nn.Linear(
            old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype
        )
        self._record_num_classes(num_classes)


def _vgg(
    name: str, num_classes: int, in_chans: int, norm: str, act: str, dropout: float, init: str,
    input_size: int, small_input: bool | None,
) -> VGG:
    check_common(num_classes, in_chans, input_size)
    check_dropout(dropout)
    small = input_size <= 64 if small_input is None else bool(small_input)
    model = VGG(VGG_CONFIGS[name], num_classes, in_chans, norm, act, dropout, small)
    return init_weights(model, init, act)


@register_model(family="vgg")
def vgg11(
    num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu", dropout: float = 0.5,
    init: str = "kaiming", input_size: int = 224, small_input: bool | None = None,
) -> VGG:
    """VGG-11 (config A): 8 convs + 3 FC.

    Args:
        num_classes: classifier outputs.
        in_chans: image channels (1 or 3).
        norm: norm name (``none`` = torchvision ``vgg11``, ``batch`` = ``vgg11_bn``).
        act: activation name.
        dropout: dropout after each hidden FC.
        init: weight init name.
        input_size: image side in pixels; <= 64 selects the small-input head.
        small_input: force the small-input head on or off (None: from ``input_size``).
    """
    return _vgg("vgg11", num_classes, in_chans, norm, act, dropout, init, input_size, small_input)


@register_model(family="vgg")
def vgg13(
    num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu", dropout: float = 0.5,
    init: str = "kaiming", input_size: int = 224, small_input: bool | None = None,
) -> VGG:
    """VGG-13 (config B): 10 convs + 3 FC.

    Options as :func:`vgg11`.
    """
    return _vgg("vgg13", num_classes, in_chans, norm, act, dropout, init, input_size, small_input)


@register_model(family="vgg")
def vgg16(
    num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu", dropout: float = 0.5,
    init: str = "kaiming", input_size: int = 224, small_input: bool | None = None,
) -> VGG:
    """VGG-16 (config D): 13 convs + 3 FC.

    Options as :func:`vgg11`.
    """
    return _vgg("vgg16", num_classes, in_chans, norm, act, dropout, init, input_size, small_input)


@register_model(family="vgg")
def vgg19(
    num_classes: int = 10, in_chans: int = 3, norm: str = "batch", act: str = "relu", dropout: float = 0.5,
    init: str = "kaiming", input_size: int = 224, small_input: bool | None = None,
) -> VGG:
    """VGG-19 (config E): 16 convs + 3 FC.

    Options as :func:`vgg11`.
    """
    return _vgg("vgg19", num_classes, in_chans, norm, act, dropout, init, input_size, small_input)

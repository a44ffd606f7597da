"""``TransferModel``: any backbone behind cnnlab's model contract, with its own preprocessing.

The data stays what every cnnlab run uses: uint8 images at their native size on the
device, normalised per batch with the *training split's* mean/std by the loader. The
model's first module, :class:`Preprocess`, turns such a batch into what the backbone's
weights expect: undo the data normalisation, repeat grayscale to RGB (or take the luma
of RGB), resize on the device (``F.interpolate``) to the backbone's input size, and
normalise with the backbone's mean/std. Because the preprocessing lives in the model,
``cnnlab eval`` / ``predict`` / ``export`` work on transfer checkpoints unchanged.

``forward_features`` returns the backbone's pooled features as an (N, F, 1, 1) map;
``forward_head`` accepts that map or cached (N, F) feature vectors, so the head can be
trained on features extracted once (:mod:`cnnlab.transfer.features`).

The family is registered as the model ``transfer`` (unlisted: it is not picked by name, it
is what a transfer run's checkpoint rebuilds), so ``create_model(**model.model_args)``
rebuilds a transfer model offline like any other; its weights come from the state dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.backbones import (
    BackboneSpec,
    backbone_from_checkpoint,
    build_backbone,
    is_backbone_name,
    rebuild_backbone,
    weights_hash,
)
from cnnlab.models.base import PooledLinearHead
from cnnlab.models.registry import register_model

NAME = "transfer"  # model_args["name"] of every transfer model
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


class Preprocess(nn.Module):
    """Data-normalised images (N, C, H, W) -> the backbone's input (N, C', S, S).

    Args:
        data_mean, data_std: the statistics the loader normalised with ([0, 1] units).
        in_chans: channels of the data.
        spec: the backbone's preprocessing (channels, mean/std, interpolation).
        size: the backbone's input side in px.
    """

    def __init__(self, data_mean: Sequence[float], data_std: Sequence[float], in_chans: int, spec: BackboneSpec, size: int) -> None:
        super().__init__()
        self.in_chans, self.out_chans, self.size = int(in_chans), int(spec.in_chans), int(size)
        self.mode = spec.interpolation
        shape = (1, -1, 1, 1)
        # Non-persistent: they follow from model_args, so state dicts hold only weights.
        self.register_buffer("data_mean", torch.tensor(data_mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("data_std", torch.tensor(data_std, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.data_std + self.data_mean  # back to [0, 1]
        if self.in_chans == 1 and self.out_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        elif self.in_chans == 3 and self.out_chans == 1:
            x = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if x.shape[-2:] != (self.size, self.size):
            down = x.shape[-1] > self.size  # antialias only when shrinking (aliasing), not when enlarging
            x = F.interpolate(x, size=(self.size, self.size), mode=self.mode, align_corners=False, antialias=down)
        return (x - self.mean) / self.std


class TransferModel(PooledLinearHead):
    """A backbone (images -> pooled features), its preprocessing and a new linear head.

    Args:
        backbone: maps preprocessed images to (N, F) features.
        spec: what the backbone is and expects.
        num_features: F.
        num_classes: outputs of the new head.
        in_chans, data_mean, data_std: the data the model is given (channels, loader stats).
        image_size: the backbone's input side (default: the size its weights were trained at).
        dropout: dropout before the new FC.
    """

    head_prefixes = ("drop", "fc")

    def __init__(
        self, backbone: nn.Module, spec: BackboneSpec, num_features: int, num_classes: int, *, in_chans: int,
        data_mean: Sequence[float], data_std: Sequence[float], image_size: int | None = None, dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.spec = spec
        self.num_features = int(num_features)
        self.prep = Preprocess(data_mean, data_std, in_chans, spec, image_size or spec.input_size)
        self.backbone = backbone
        self.avgpool = nn.Identity()  # the backbone already pools: features are (N, F, 1, 1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.backbone_eval = False  # the whole backbone in eval mode (frozen feature extractor)
        self.norm_eval = False  # only its norm layers in eval mode (fine-tuning with frozen norms)
        self.model_args = {
            "name": NAME, "backbone": spec.as_dict(), "num_features": self.num_features, "num_classes": num_classes,
            "in_chans": int(in_chans), "data_mean": list(data_mean), "data_std": list(data_std),
            "image_size": self.prep.size, "dropout": float(dropout),
        }  # fmt: skip

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> the backbone's pooled features as an (N, F, 1, 1) map."""
        feats = self.backbone(self.prep(x))
        return feats.flatten(1)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> logits; cached feature vectors (N, F) go straight to the head."""
        return self.forward_head(x if x.ndim == 2 else self.forward_features(x))

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, F) features the head sees (what the feature cache stores)."""
        return self.forward_features(x).flatten(1)

    # ----------------------------------------------------------------- freezing

    def freeze_backbone(self) -> None:
        """No gradients for the backbone, and the whole backbone in eval mode (norm statistics
        and dropout fixed), so its features are a pure function of the image."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone_eval, self.norm_eval = True, True
        self.train(self.training)

    def unfreeze_backbone(self, norm: str = "train") -> None:
        """Train the backbone too. ``norm="frozen"`` keeps its norm layers in eval mode with
        fixed scale/shift (useful with small batches); ``"train"`` lets them learn."""
        self.backbone_eval = False
        self.norm_eval = norm == "frozen"
        for m in self.backbone.modules():
            frozen_norm = self.norm_eval and isinstance(m, _NORMS)
            for p in m.parameters(recurse=False):
                p.requires_grad_(not frozen_norm)
        self.train(self.training)

    def train(self, mode: bool = True) -> TransferModel:
        """Set train/eval mode; a frozen backbone (or its norm layers) stays in eval mode."""
        super().train(mode)
        if mode and self.backbone_eval:
            self.backbone.eval()
        elif mode and self.norm_eval:
            for m in self.backbone.modules():
                if isinstance(m, _NORMS):
                    m.eval()
        return self

    def cache_identity(self) -> dict[str, Any]:
        """What the features depend on besides the data: backbone, weights, preprocessing."""
        args = {k: v for k, v in self.model_args.items() if k not in ("num_classes", "dropout")}
        return {**args, "weights": weights_hash(self.backbone)}


@register_model(family="transfer", listed=False)
def transfer(
    backbone: dict[str, Any], num_features: int, num_classes: int, in_chans: int, data_mean: Sequence[float],
    data_std: Sequence[float], image_size: int | None = None, dropout: float = 0.0,
) -> TransferModel:  # fmt: skip
    """A backbone and a new linear head, rebuilt from a transfer model's ``model_args``.

    Nothing is downloaded: the architecture follows from ``backbone`` (a
    :class:`BackboneSpec` as a dict) and a checkpoint's state dict supplies the weights.
    The arguments are those of :class:`TransferModel`.
    """
    spec = BackboneSpec.from_dict(backbone)
    return TransferModel(rebuild_backbone(spec), spec, num_features, num_classes, in_chans=in_chans,
                         data_mean=data_mean, data_std=data_std, image_size=image_size, dropout=dropout)  # fmt: skip


def build_transfer_model(
    name: str, *, num_classes: int, in_chans: int, data_mean: Sequence[float], data_std: Sequence[float],
    pretrained: bool = True, backbone_checkpoint: str | None = None, image_size: int | None = None,
    dropout: float = 0.0,
) -> TransferModel:  # fmt: skip
    """A new transfer model: a pretrained backbone and a fresh head for this data.

    Args:
        name: the backbone (``timm:NAME``, ``torchvision:NAME``, ``efficientnet_lite0``);
            ignored when ``backbone_checkpoint`` is given.
        num_classes: outputs of the new head.
        in_chans: channels of the data.
        data_mean, data_std: the statistics the loader normalises with ([0, 1] units).
        pretrained: load the backbone's pretrained weights.
        backbone_checkpoint: a cnnlab run folder or checkpoint whose model is the backbone.
        image_size: the backbone's input side in px (default: the size its weights expect).
        dropout: dropout before the new FC.

    Raises:
        CnnlabError: ``name`` is one of cnnlab's own models (no pretrained weights), an
            unknown backbone, or weights that cannot be had.
    """
    if backbone_checkpoint is not None:
        backbone, spec = backbone_from_checkpoint(backbone_checkpoint)
    elif is_backbone_name(name):
        backbone, spec = build_backbone(name, pretrained=pretrained)
    else:
        raise CnnlabError(
            f"cnnlab's own '{name}' has no pretrained weights; use --model timm:NAME, torchvision:NAME or "
            "efficientnet_lite0 with --pretrained, or --backbone RUN/best.pt"
        )
    return TransferModel(backbone, spec, _feature_width(backbone, spec), num_classes, in_chans=in_chans,
                         data_mean=data_mean, data_std=data_std, image_size=image_size, dropout=dropout)  # fmt: skip


@torch.no_grad()
def _feature_width(backbone: nn.Module, spec: BackboneSpec) -> int:
    """F, measured with one tiny forward pass (robust to any backbone)."""
    was = backbone.training
    backbone.eval()
    out = backbone(torch.zeros(1, spec.in_chans, spec.input_size, spec.input_size))
    backbone.train(was)
    return int(out.flatten(1).shape[1])

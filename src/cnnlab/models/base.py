"""The one model contract every cnnlab model follows (the timm contract, trimmed).

``forward(x) == forward_head(forward_features(x))``; ``forward_features`` returns the last
feature map (N, num_features, h, w) and ``forward_head`` pools it and classifies. Transfer
learning needs two more things: a way to swap the classifier (``reset_classifier``) and a
split of the parameters into the pretrained backbone and the new head
(``parameter_groups``) so the backbone can get a lower learning rate or be frozen.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError


class ClassifierModel(nn.Module):
    """Base class of all cnnlab models.

    Subclasses set ``num_features`` and ``head_prefixes`` (names of the top-level child
    modules that form the head) and implement ``forward_features``, ``forward_head`` and
    ``get_classifier`` / ``reset_classifier``.

    Attributes:
        num_features: channels of the feature map that enters the head.
        head_prefixes: top-level module names whose parameters form the head.
        model_args: how the model was built (``{"name": ..., **options}``), set by
            :func:`cnnlab.models.create_model`, so ``create_model(**model.model_args)``
            rebuilds an identical architecture (e.g. from a checkpoint).
    """

    num_features: int
    head_prefixes: tuple[str, ...] = ("head",)
    model_args: dict[str, Any]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone: images (N, C, H, W) -> feature map (N, num_features, h, w)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_features")

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Head: feature map -> logits (N, num_classes), or the pooled features before the
        final FC when ``pre_logits`` is true."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_head")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final FC layer (the one whose outputs are the logits)."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_classifier")

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final FC with a freshly initialised one with ``num_classes`` outputs
        (same device and dtype as before) and record it in ``model_args``."""
        raise NotImplementedError(f"{type(self).__name__} must implement reset_classifier")

    def _record_num_classes(self, num_classes: int) -> None:
        # Keep model_args truthful so a checkpoint of a fine-tuned model rebuilds the new head.
        if getattr(self, "model_args", None) is not None:
            self.model_args = {**self.model_args, "num_classes": num_classes}

    @property
    def num_classes(self) -> int:
        """Number of outputs of the classifier."""
        return self.get_classifier().out_features

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Split the parameters into ``backbone`` and ``head`` (everything after
        ``forward_features``: hidden FC layers included) for transfer learning.

        Returns:
            ``{"backbone": [...], "head": [...]}``; every parameter is in exactly one list.
        """
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "head": []}
        for name, param in self.named_parameters():
            top = name.split(".", 1)[0]
            groups["head" if top in self.head_prefixes else "backbone"].append(param)
        return groups


class PooledLinearHead(ClassifierModel):
    """The ResNet-family head: global average pool -> dropout -> FC.

    Subclasses provide the modules ``avgpool``, ``drop`` and ``fc`` (and
    ``num_features``); the head methods of the contract follow from them.
    """

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        w = self.fc.weight
        self.fc = nn.Linear(self.num_features, num_classes, device=w.device, dtype=w.dtype)
        self._record_num_classes(num_classes)


class HeadModuleModel(ClassifierModel):
    """A model whose whole head is one ``self.head`` module
    (:class:`cnnlab.models.layers.ClassifierHead`: pool or flatten -> hidden FCs -> FC);
    the head methods of the contract delegate to it.
    """

    head: nn.Module

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def get_classifier(self) -> nn.Linear:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.head.reset(num_classes)
        self._record_num_classes(num_classes)


def check_common(num_classes: int, in_chans: int, input_size: int) -> None:
    """Validate the options every model factory shares.

    Raises:
        CnnlabError: a value below 1.
    """
    for what, value in (("num_classes", num_classes), ("in_chans", in_chans), ("input_size", input_size)):
        if int(value) < 1:
            raise CnnlabError(f"{what} must be >= 1, got {value}")

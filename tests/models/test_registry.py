"""The registry: decorator, lookups and the errors a user sees."""

from __future__ import annotations

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models, model_info, register_model
from cnnlab.models import registry


def test_lists_every_family() -> None:
    names = list_models()
    for expected in ("simple", "vgg11", "vgg19", "resnet18", "resnet152", "resnet20", "resnet110", "plain56",
                     "wrn16_4", "wrn28_10", "wrn40_4"):
        assert expected in names
    assert list_models("resnet-cifar") == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
    assert model_info("plain20").family == "plain-cifar" and model_info("vgg16").description


def test_every_factory_takes_the_common_options() -> None:
    for name in list_models():
        options = model_info(name).options()
        for key in ("num_classes", "in_chans", "norm", "act", "dropout", "init", "input_size"):
            assert key in options, f"{name} lacks {key}"


def test_duplicate_name_raises() -> None:
    with pytest.raises(CnnlabError, match="already registered"):
        @register_model
        def resnet20():  # noqa: ANN202 - never called
            raise AssertionError


def test_register_and_create_a_new_model() -> None:
    from cnnlab.models.simple import SimpleNet

    @register_model(family="test")
    def tiny_test_net(num_classes: int = 2, in_chans: int = 1) -> SimpleNet:
        """A tiny test net."""
        return SimpleNet("c4", num_classes, in_chans)

    try:
        model = create_model("tiny_test_net", num_classes=3)
        assert model.model_args == {"name": "tiny_test_net", "num_classes": 3, "in_chans": 1}
        assert model_info("tiny_test_net").description == "A tiny test net."
    finally:
        del registry._REGISTRY["tiny_test_net"]


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(CnnlabError, match="resnet20") as err:
        create_model("resnet21")
    assert "cnnlab models" in str(err.value)


def test_unknown_option_and_bad_values() -> None:
    with pytest.raises(CnnlabError, match="did you mean 'dropout'"):
        create_model("resnet20", dropuot=0.1)
    with pytest.raises(CnnlabError, match="batch, layer, instance, group, none"):
        create_model("resnet20", norm="bn")
    with pytest.raises(CnnlabError, match="relu, gelu, sigmoid"):
        create_model("resnet20", act="swish")
    with pytest.raises(CnnlabError, match="normal:STD"):
        create_model("resnet20", init="he")
    with pytest.raises(CnnlabError, match=r"\[0, 1\)"):
        create_model("vgg11", dropout=1.5)
    with pytest.raises(CnnlabError, match="shortcut"):
        create_model("resnet20", shortcut="C")
    with pytest.raises(CnnlabError, match="unknown token"):
        create_model("simple", spec="c32-x-fc10")
    with pytest.raises(CnnlabError, match="either spec or depth"):
        create_model("simple", spec="c8", depth=3)


def test_transfer_is_registered_but_not_listed() -> None:
    """Transfer models rebuild through the registry like any model, but are not a name to pick."""
    assert "transfer" not in list_models()
    assert model_info("transfer").family == "transfer" and not model_info("transfer").listed
    with pytest.raises(CnnlabError) as err:
        create_model("transfr")
    assert "transfer" not in str(err.value)  # suggestions name only models a user can pick


def test_a_checkpoint_of_a_transfer_model_rebuilds_from_its_model_args() -> None:
    """A transfer model whose backbone is a cnnlab model: rebuilt from ``model_args`` alone
    (no download, no source checkpoint), it computes the same function once given the weights."""
    import torch

    from cnnlab.models import model_from_args, model_from_checkpoint
    from cnnlab.models.backbones import BackboneSpec, strip_classifier
    from cnnlab.models.transfer import TransferModel

    torch.manual_seed(0)
    source = create_model("simple", num_classes=4, in_chans=1, spec="c8-p-c16")
    body, width = strip_classifier(source)
    spec = BackboneSpec("cnnlab", "simple", 12, (0.5,), (0.25,), 1, "bilinear", dict(source.model_args))
    model = TransferModel(body, spec, width, 3, in_chans=1, data_mean=(0.4,), data_std=(0.2,)).eval()
    rebuilt = model_from_checkpoint({"model_args": model.model_args, "model": model.state_dict()}).eval()
    assert isinstance(rebuilt, TransferModel) and rebuilt.model_args == model.model_args
    x = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(rebuilt(x), model(x))
    untrained = model_from_args(model.model_args)
    assert type(untrained) is TransferModel and not torch.equal(untrained.fc.weight, model.fc.weight)

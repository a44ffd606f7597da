"""Every registered model: output shape, no NaN, every parameter gets a gradient; the model
contract (forward_features / forward_head / reset_classifier / parameter_groups)."""

from __future__ import annotations

import pytest
import torch

from cnnlab.models import create_model, list_models

# The biggest nets: a forward + backward of batch 2 at 32 px takes a few seconds on 2 cores.
SLOW = {"resnet101", "resnet152", "wrn28_10"}


def _params(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


@pytest.mark.parametrize("name", _params(list_models()))
def test_every_model_shapes_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    # Fashion-MNIST-like input: forward only, eval mode (running stats), shape and finiteness.
    gray = create_model(name, num_classes=7, in_chans=1, input_size=28).eval()
    with torch.no_grad():
        out = gray(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    # CIFAR-like input: train mode, one backward pass; every parameter must get a finite,
    # non-zero gradient (a dead or disconnected layer would show as None or all zeros).
    rgb = create_model(name, num_classes=10, in_chans=3, input_size=32).train()
    out = rgb(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, torch.tensor([1, 2])).backward()
    for pname, p in rgb.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: {pname} gradient is zero or NaN"


@pytest.mark.parametrize("name", ["simple", "vgg11", "resnet18", "resnet20", "plain20", "wrn16_4"])
def test_model_contract(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.dim() == 4 and feats.shape[1] == model.num_features
        assert torch.allclose(model.forward_head(feats), model(x))
        assert model.forward_head(feats, pre_logits=True).shape[0] == 2
    groups = model.parameter_groups()
    every = {id(p) for p in model.parameters()}
    backbone, head = {id(p) for p in groups["backbone"]}, {id(p) for p in groups["head"]}
    assert backbone | head == every and not backbone & head and head
    assert {id(p) for p in model.get_classifier().parameters()} <= head
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3
    assert model.model_args["num_classes"] == 3  # a checkpoint of the new head rebuilds it


def test_model_args_rebuild_the_same_architecture() -> None:
    model = create_model("simple", spec="c8-p-c16-fc12", norm="group:4", act="gelu", in_chans=1)
    assert model.model_args["name"] == "simple" and model.model_args["spec"] == "c8-p-c16-fc12"
    rebuilt = create_model(**model.model_args)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())  # strict


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_small_input_variant_is_chosen_from_input_size(name: str) -> None:
    big = create_model(name, input_size=224, init="torch")
    small = create_model(name, input_size=32, init="torch")
    forced = create_model(name, input_size=224, small_input=True, init="torch")
    assert big.state_dict().keys() == small.state_dict().keys()
    assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in forced.state_dict().items()}
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    if name == "vgg16":
        assert n(small) < n(big) / 5  # no 25088 -> 4096 layer fed by a copied pixel
    else:
        assert small.conv1.kernel_size == (3, 3) and big.conv1.kernel_size == (7, 7)

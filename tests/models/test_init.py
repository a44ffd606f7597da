"""Weight init: the std each scheme promises, zero-init of residual branches, prior bias."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.init import CLASSIFIER_STD, init_classifier_bias, init_weights, prior_entropy


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize(("act", "gain"), [("relu", math.sqrt(2)), ("tanh", 5 / 3), ("sigmoid", 1.0)])
def test_kaiming_std_is_gain_over_sqrt_fan_in(act: str, gain: float) -> None:
    torch.manual_seed(0)
    model = create_model("simple", depth=4, width=64, act=act, init="kaiming")
    for conv in _convs(model)[1:]:  # 64 * 3 * 3 = 576 inputs per unit, 36,864 weights
        fan_in = conv.in_channels * 9
        assert conv.weight.std().item() == pytest.approx(gain / math.sqrt(fan_in), rel=0.03)
    assert model.get_classifier().weight.std().item() == pytest.approx(CLASSIFIER_STD, rel=0.2)


def test_xavier_and_normal_std() -> None:
    torch.manual_seed(0)
    xavier = create_model("simple", depth=3, width=64, init="xavier")
    conv = _convs(xavier)[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9 + 64 * 9)), rel=0.03)
    normal = create_model("simple", depth=3, width=64, init="normal:0.01")
    assert all(c.weight.std().item() == pytest.approx(0.01, rel=0.05) for c in _convs(normal)[1:])
    assert all(m.bias is None or not m.bias.any() for m in normal.modules() if isinstance(m, nn.Conv2d))


def test_torch_init_is_left_alone() -> None:
    torch.manual_seed(0)
    model = create_model("simple", depth=2, width=32, norm="none", init="torch")
    conv = _convs(model)[1]
    bound = 1 / math.sqrt(32 * 9)  # PyTorch's default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), ..)
    assert conv.weight.abs().max().item() <= bound and conv.weight.std().item() > 0.5 * bound / math.sqrt(3)
    assert conv.bias.abs().sum() > 0  # PyTorch's default bias is not zero


def test_bad_init_names() -> None:
    for bad in ("he", "normal", "normal:-1", "normal:abc", "kaiming:2"):
        with pytest.raises(CnnlabError):
            init_weights(nn.Linear(2, 2), bad)


def test_zero_init_residual_makes_each_block_the_identity() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", zero_init_residual=True).eval()
    block = model.layer1[1]  # identity shortcut
    assert not block.bn2.weight.any()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), torch.relu(x))
    wide = create_model("wrn16_4", zero_init_residual=True).eval()
    with torch.no_grad():
        x = torch.randn(2, 64, 8, 8)
        assert torch.allclose(wide.layer1[1](x), x)  # pre-activation: a pure identity
    with pytest.raises(CnnlabError, match="residual"):
        init_weights(create_model("plain20"), "kaiming", zero_init_residual=True)


def test_prior_bias_makes_the_initial_loss_the_prior_entropy() -> None:
    torch.manual_seed(0)
    priors = [700, 200, 100]  # counts
    model = create_model("simple", spec="c8-p", num_classes=3, in_chans=1)
    init_classifier_bias(model, priors, zero_weight=True)
    y = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)  # labels in the prior proportions
    loss = F.cross_entropy(model.eval()(torch.randn(100, 1, 12, 12)), y).item()
    assert loss == pytest.approx(prior_entropy(priors), abs=1e-6)
    assert prior_entropy([1] * 10) == pytest.approx(math.log(10))
    # Without zeroing the weights the small classifier init keeps it close.
    other = init_classifier_bias(create_model("resnet20", num_classes=3), priors)
    loss = F.cross_entropy(other.eval()(torch.randn(100, 3, 32, 32)), y).item()
    assert loss == pytest.approx(prior_entropy(priors), abs=0.05)
    with pytest.raises(CnnlabError, match="3 outputs"):
        init_classifier_bias(model, [0.5, 0.5])
    with pytest.raises(CnnlabError, match="positive"):
        init_classifier_bias(model, [1, 0, 2])


def test_default_initial_loss_is_ln_c() -> None:
    torch.manual_seed(0)
    for name in ("resnet20", "vgg11", "simple"):
        model = create_model(name, input_size=32)
        loss = F.cross_entropy(model.train()(torch.randn(64, 3, 32, 32)), torch.randint(0, 10, (64,))).item()
        assert loss == pytest.approx(math.log(10), abs=0.15), name

"""Norms, activations, dropout and blocks, against manual computations and PyTorch's modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.layers import (
    ACTIVATIONS, NORM_AXES, NORMS, ClassifierHead, ConvNormAct, describe_norm, get_act_layer, get_dropout,
    get_norm_layer,
)

C, G, EPS = 16, 4, 1e-5


def manual_norm(x: torch.Tensor, axes: tuple[str, ...], groups: int) -> torch.Tensor:
    """Normalise x over the named axes (the claim in NORM_AXES), by hand."""
    if "C/G" in axes:  # split the channels into groups, then normalise each (sample, group)
        n, c, h, w = x.shape
        xg = x.reshape(n, groups, c // groups, h, w)
        mean = xg.mean(dim=(2, 3, 4), keepdim=True)
        var = xg.var(dim=(2, 3, 4), keepdim=True, unbiased=False)
        return ((xg - mean) / torch.sqrt(var + EPS)).reshape_as(x)
    dims = tuple("NCHW".index(a) for a in axes)
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + EPS)


@pytest.mark.parametrize("norm", [n for n in NORMS if n != "none"])
def test_each_norm_normalises_over_the_axes_it_claims(norm: str) -> None:
    torch.manual_seed(0)
    spec = f"group:{G}" if norm == "group" else norm
    layer = get_norm_layer(spec)(C).train()
    with torch.no_grad():  # learned gamma/beta, per channel
        layer.weight.copy_(torch.rand(C) + 0.5)
        layer.bias.copy_(torch.randn(C))
    x = torch.randn(6, C, 5, 7) * 3 + 2
    expected = manual_norm(x, NORM_AXES[norm], G) * layer.weight.view(1, C, 1, 1) + layer.bias.view(1, C, 1, 1)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert ", ".join(NORM_AXES[norm]) in describe_norm(spec)


@pytest.mark.parametrize(("norm", "groups"), [("layer", 1), ("instance", C), (f"group:{G}", G)])
def test_layer_instance_group_agree_with_torch_groupnorm(norm: str, groups: int) -> None:
    torch.manual_seed(1)
    ours, ref = get_norm_layer(norm)(C), nn.GroupNorm(groups, C)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(C))
        ref.bias.copy_(torch.randn(C))
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, C, 4, 4)
    assert torch.allclose(ours(x), ref(x), atol=1e-6)
    assert torch.allclose(ours.eval()(x), ref(x), atol=1e-6)  # no running stats: eval == train


def test_group_norm_options() -> None:
    assert get_norm_layer("group")(16).num_groups == 8  # the default
    assert get_norm_layer("group", groups=2)(16).num_groups == 2
    assert get_norm_layer("group:4", groups=2)(16).num_groups == 4  # inline wins
    assert get_norm_layer("group:8")(12).num_groups == 4  # gcd: one setting fits every width
    assert isinstance(get_norm_layer("none")(8), nn.Identity)
    with pytest.raises(CnnlabError, match="group:8"):
        get_norm_layer("group:x")
    with pytest.raises(CnnlabError, match="choose one of"):
        get_norm_layer("weight")
    assert "(C, H, W)" in describe_norm("layer") and "(N, H, W)" in describe_norm("batch")


def test_activations_by_name() -> None:
    x = torch.linspace(-3, 3, 13)
    reference = {"relu": torch.relu, "gelu": nn.functional.gelu, "sigmoid": torch.sigmoid,
                 "leaky_relu": nn.functional.leaky_relu, "silu": nn.functional.silu, "tanh": torch.tanh}
    assert set(reference) == set(ACTIVATIONS)
    for name, fn in reference.items():
        assert torch.allclose(get_act_layer(name)()(x.clone()), fn(x))
    with pytest.raises(CnnlabError, match="relu, gelu, sigmoid, leaky_relu, silu, tanh"):
        get_act_layer("swish")


def test_inverted_dropout_scales_at_train_time_only() -> None:
    torch.manual_seed(0)
    drop, x = get_dropout(0.25), torch.ones(10_000)
    y = drop.train()(x)
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.75))  # survivors scaled by 1/(1-p)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.02
    assert torch.equal(drop.eval()(x), x)
    assert isinstance(get_dropout(0.0), nn.Identity)


def test_dropout_eval_output_is_the_train_time_expectation() -> None:
    torch.manual_seed(0)
    head = ClassifierHead(32, 5, hidden=(64,), dropout=0.5, act_layer=nn.ReLU)
    feats = torch.randn(1, 32, 3, 3)
    with torch.no_grad():
        eval_out = head.eval()(feats)
        # 40k dropout masks in one batch: the mean over masks estimates E[train output].
        train_mean = head.train()(feats.expand(40_000, -1, -1, -1)).mean(0, keepdim=True)
    scale = eval_out.abs().max()
    assert torch.allclose(train_mean, eval_out, atol=0.02 * float(scale))


def test_conv_norm_act_bias_only_without_norm() -> None:
    assert ConvNormAct(3, 8, norm_layer=get_norm_layer("batch")).conv.bias is None
    block = ConvNormAct(3, 8, kernel_size=5, stride=2, norm_layer=get_norm_layer("none"), act_layer=get_act_layer("gelu"))
    assert block.conv.bias is not None and block(torch.zeros(1, 3, 9, 9)).shape == (1, 8, 5, 5)


def test_classifier_head_layouts() -> None:
    plain = ClassifierHead(16, 4, dropout=0.3)
    assert [type(m) for m in plain.mlp] == [nn.Dropout]
    vgg_like = ClassifierHead(16, 4, hidden=(8, 8), dropout=0.5, act_layer=nn.ReLU)
    assert [type(m) for m in vgg_like.mlp] == [nn.Linear, nn.ReLU, nn.Dropout] * 2
    assert vgg_like(torch.zeros(2, 16, 3, 3)).shape == (2, 4)
    vgg_like.reset(7)
    assert vgg_like(torch.zeros(2, 16, 3, 3)).shape == (2, 7)

"""Model options for accuracy per FLOP (issue 17): stochastic depth (``drop_path``) in the
residual nets, the ``resnet9`` fast net, and ``simple``'s ``head=flatten``. References: hand
computations of shapes and parameter counts, the published ResNet-9 count, and the identity
the options must leave at their defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.models import create_model, model_from_checkpoint
from cnnlab.models.inspect import model_cost
from cnnlab.models.layers import DropPath, drop_path_rates
from cnnlab.models.simple import DEFAULT_SPEC


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _drop_paths(model: nn.Module) -> list[DropPath]:
    return [m for m in model.modules() if isinstance(m, DropPath)]


# --- DropPath -----------------------------------------------------------------------------------


def test_drop_path_is_the_identity_at_eval() -> None:
    x = torch.randn(64, 3, 5, 5)
    layer = DropPath(0.5).eval()
    assert torch.equal(layer(x), x)


def test_drop_path_drops_whole_samples_at_its_rate_and_keeps_the_mean() -> None:
    torch.manual_seed(0)
    p, n = 0.3, 20_000
    out = DropPath(p).train()(torch.ones(n, 2, 3, 3))
    per_sample = out.flatten(1)
    # Every sample is either dropped entirely (all zeros) or kept entirely, scaled by 1/(1-p).
    dropped = (per_sample == 0).all(1)
    kept = torch.isclose(per_sample, torch.full_like(per_sample, 1 / (1 - p))).all(1)
    assert bool((dropped | kept).all())
    # Binomial(n, p): the standard error of the share is sqrt(p(1-p)/n) ~ 0.0032; allow ~6 of them.
    assert abs(dropped.float().mean().item() - p) < 0.02
    assert abs(out.mean().item() - 1.0) < 0.03  # inverted scaling keeps the expectation


def test_drop_path_rates_rise_linearly_from_zero() -> None:
    assert drop_path_rates(0.2, 5) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert drop_path_rates(0.0, 3) == [0.0, 0.0, 0.0]
    with pytest.raises(CnnlabError, match="drop_path"):
        drop_path_rates(1.0, 3)


@pytest.mark.parametrize(("name", "n_blocks"), [("resnet20", 9), ("resnet18", 8), ("wrn16_4", 6), ("resnet9", 2)])
def test_residual_nets_get_rates_increasing_with_depth(name: str, n_blocks: int) -> None:
    model = create_model(name, drop_path=0.2, input_size=32)
    # The first block gets rate 0, so it has no DropPath module; the others rise to 0.2.
    rates = [m.p for m in _drop_paths(model)]
    assert rates == pytest.approx(drop_path_rates(0.2, n_blocks)[1:])
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.2)


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "wrn16_4", "resnet9"])
def test_drop_path_changes_training_only(name: str) -> None:
    torch.manual_seed(0)
    base = create_model(name, num_classes=4, input_size=16)
    deep = create_model(name, num_classes=4, input_size=16, drop_path=0.5)
    deep.load_state_dict(base.state_dict())  # the option adds no parameters or buffers
    x = torch.randn(8, 3, 16, 16)
    base.eval(), deep.eval()
    with torch.no_grad():
        torch.testing.assert_close(deep(x), base(x))
    base.train(), deep.train()
    with torch.no_grad():
        assert not torch.allclose(deep(x), base(x))


def test_default_residual_nets_have_no_drop_path_modules() -> None:
    # Existing defaults unchanged: no new modules (state dicts, inspect rows, diagnostics hooks).
    for name in ("resnet20", "resnet18", "wrn16_4", "resnet9"):
        assert not _drop_paths(create_model(name))


@pytest.mark.parametrize("name", ["plain20", "plain56"])
def test_plain_twins_refuse_drop_path_with_the_reason(name: str) -> None:
    with pytest.raises(CnnlabError, match="no shortcut to keep"):
        create_model(name, drop_path=0.1)
    assert not _drop_paths(create_model(name, drop_path=0.0))


@pytest.mark.parametrize("bad", [1.0, -0.1])
def test_drop_path_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(CnnlabError, match=r"\[0, 1\)"):
        create_model("resnet20", drop_path=bad)


# --- resnet9 ------------------------------------------------------------------------------------


def _resnet9_params(w: int, in_chans: int, classes: int, fc_in: int | None = None) -> int:
    """By hand: each conv is bias-free (BN follows) with 2 BN parameters per channel."""
    conv = lambda i, o: 9 * i * o + 2 * o  # noqa: E731
    body = conv(in_chans, w) + conv(w, 2 * w) + 2 * conv(2 * w, 2 * w) + conv(2 * w, 4 * w)
    body += conv(4 * w, 8 * w) + 2 * conv(8 * w, 8 * w)
    fc_in = 8 * w if fc_in is None else fc_in
    return body + fc_in * classes + classes


def test_resnet9_at_width_64_has_the_published_parameter_count() -> None:
    # ResNet-9 of "How to train your ResNet" (Myrtle.ai, DAWNBench): 6,573,130 at 10 classes.
    assert _n_params(create_model("resnet9")) == 6_573_130 == _resnet9_params(64, 3, 10)


@pytest.mark.parametrize("width", [8, 16, 32])
@pytest.mark.parametrize(("size", "chans", "side"), [(12, 1, 2), (28, 1, 4), (32, 3, 4), (64, 3, 8)])
def test_resnet9_shapes_and_params(width: int, size: int, chans: int, side: int) -> None:
    model = create_model("resnet9", width=width, num_classes=7, in_chans=chans, input_size=size).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, chans, size, size))
        assert feats.shape == (2, 8 * width, side, side)  # three ceil-mode pools: ceil(size / 8)
        assert model.forward_head(feats).shape == (2, 7)
    assert _n_params(model) == _resnet9_params(width, chans, 7)
    params, macs = model_cost("resnet9", (chans, size, size), width=width, num_classes=7)
    assert params == _n_params(model) and macs > 0


def test_resnet9_macs_match_a_hand_count() -> None:
    # 32 px, width 16: convs at 32 (stem, layer1 conv), 16 (residual 1, layer2 conv), 8 (layer3 conv),
    # 4 (residual 3) px; multiply-adds of a 3x3 conv = 9 * in * out * side^2; the FC adds 128 * 10.
    w, hand = 16, 0
    for i, o, s in [(3, w, 32), (w, 2 * w, 32), (2 * w, 2 * w, 16), (2 * w, 2 * w, 16), (2 * w, 4 * w, 16),
                    (4 * w, 8 * w, 8), (8 * w, 8 * w, 4), (8 * w, 8 * w, 4)]:
        hand += 9 * i * o * s * s
    _, macs = model_cost("resnet9", (3, 32, 32), width=w)
    assert macs == hand + 8 * w * 10


def test_resnet9_flatten_head() -> None:
    model = create_model("resnet9", width=8, in_chans=1, input_size=28, head="flatten", num_classes=10)
    assert _n_params(model) == _resnet9_params(8, 1, 10, fc_in=64 * 4 * 4)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_resnet9_refuses_a_bad_width() -> None:
    with pytest.raises(UsageError, match="width"):
        create_model("resnet9", width=0)


# --- simple head=flatten ------------------------------------------------------------------------


def test_simple_gap_head_is_unchanged_by_default() -> None:
    model = create_model("simple", in_chans=1, input_size=28)
    assert model.model_args["head"] == "gap"
    assert isinstance(model.head.pool, nn.AdaptiveAvgPool2d)
    # c32-c32-p-c64-c64-p-fc128 with BN: the conv weights, BN, then 64 -> 128 -> 10.
    convs = 9 * 1 * 32 + 64 + 9 * 32 * 32 + 64 + 9 * 32 * 64 + 128 + 9 * 64 * 64 + 128
    assert DEFAULT_SPEC == "c32-c32-p-c64-c64-p-fc128"
    assert _n_params(model) == convs + (64 * 128 + 128) + (128 * 10 + 10)


@pytest.mark.parametrize(("size", "side"), [(28, 7), (32, 8), (13, 4)])
def test_simple_flatten_head_shapes_and_params(size: int, side: int) -> None:
    model = create_model("simple", in_chans=1, input_size=size, head="flatten")
    convs = 9 * 1 * 32 + 64 + 9 * 32 * 32 + 64 + 9 * 32 * 64 + 128 + 9 * 64 * 64 + 128
    # Two ceil-mode pools: 28 -> 7, 32 -> 8, 13 -> 7 -> 4; the FC sees 64 * side^2 values.
    assert _n_params(model) == convs + (64 * side * side * 128 + 128) + (128 * 10 + 10)
    assert model(torch.randn(3, 1, size, size)).shape == (3, 10)
    params, _ = model_cost("simple", (1, size, size), head="flatten")
    assert params == _n_params(model)


def test_simple_flatten_head_without_hidden_fc() -> None:
    model = create_model("simple", spec="c8-p-c16s2", in_chans=3, input_size=32, head="flatten", num_classes=5)
    # 32 -> pool 16 -> stride-2 conv 8: 16 * 8 * 8 features straight into the classifier.
    assert model.get_classifier().in_features == 16 * 8 * 8
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_flatten_head_refuses_another_input_size_with_the_fix() -> None:
    model = create_model("simple", in_chans=1, input_size=28, head="flatten").eval()
    with pytest.raises(CnnlabError, match="input_size it was built for"):
        model(torch.randn(1, 1, 32, 32))


def test_an_unknown_head_is_refused() -> None:
    with pytest.raises(CnnlabError, match="unknown head"):
        create_model("simple", head="avg")


# --- every new option round-trips through a checkpoint ---------------------------------------


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("resnet20", {"drop_path": 0.1}),
        ("resnet18", {"drop_path": 0.1}),
        ("wrn16_4", {"drop_path": 0.2}),
        ("resnet9", {"width": 16, "drop_path": 0.1, "head": "flatten"}),
        ("simple", {"head": "flatten"}),
    ],
)
def test_new_options_round_trip_through_a_checkpoint(name: str, options: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=1, input_size=16, **options).eval()
    assert {k: model.model_args[k] for k in options} == options
    path = save_checkpoint(tmp_path / "best.pt", {
        "model": model.state_dict(), "model_args": model.model_args,
        "data": {"classes": ["a", "b", "c"], "image_shape": [1, 16, 16], "mean": [0.5], "std": [0.25]},
    })
    rebuilt = model_from_checkpoint(load_checkpoint(path)).eval()
    assert rebuilt.model_args == model.model_args
    assert [m.p for m in _drop_paths(rebuilt)] == [m.p for m in _drop_paths(model)]
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_max_head_pools_the_largest_activation_at_any_input_size() -> None:
    model = create_model("resnet9", num_classes=3, in_chans=1, width=4, head="max", input_size=28).eval()
    assert isinstance(model.head.pool, torch.nn.AdaptiveMaxPool2d)
    for side in (12, 28, 40):  # no size is baked in, unlike flatten
        assert model(torch.randn(2, 1, side, side)).shape == (2, 3)
    feats = model.forward_features(torch.randn(2, 1, 28, 28))
    assert torch.equal(model.head(feats, pre_logits=True), feats.amax(dim=(2, 3)))


def test_resnet9s_is_resnet9_at_width_16_and_the_default_model() -> None:
    from cnnlab.config import ModelConfig

    small, ref = create_model("resnet9s", in_chans=1, input_size=28), create_model("resnet9", in_chans=1, input_size=28, width=16)
    assert [p.shape for p in small.parameters()] == [p.shape for p in ref.parameters()]
    assert ModelConfig().name == "resnet9s"

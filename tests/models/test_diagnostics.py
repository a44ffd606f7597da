"""Activation / gradient diagnostics: the lecture's init experiment, and no side effects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.models import create_model
from cnnlab.models.diagnostics import (
    MAX_HISTOGRAM_COLUMNS, activation_figure, activation_stats, gradient_stats, histogram_grid, noise_batch,
    plot_activation_histograms,
)


def plain_net(init: str, act: str = "relu") -> nn.Module:
    """The lecture's 10-layer plain conv net (no norm, so nothing rescues a bad init)."""
    torch.manual_seed(0)
    return create_model("simple", depth=10, width=32, norm="none", act=act, init=init, in_chans=1)


X = noise_batch((1, 28, 28), n=16, seed=0)


@pytest.mark.parametrize(("init", "expect"), [("normal:0.01", "vanishing"), ("normal:1.0", "exploding"),
                                              ("kaiming", None)])
def test_activation_flags_follow_the_init_scale(init: str, expect: str | None) -> None:
    report = activation_stats(plain_net(init), X)
    convs = [r for r in report.layers if r.kind != "logits"]
    assert len(convs) == 10 and report.input_std == pytest.approx(float(X.std()))
    if expect is None:
        assert not report.vanishing and not report.exploding
        assert all(0.1 < r.ratio < 10 for r in convs)  # Kaiming keeps the scale through depth
    else:
        flagged = report.vanishing if expect == "vanishing" else report.exploding
        other = report.exploding if expect == "vanishing" else report.vanishing
        assert convs[-1].name in flagged and len(flagged) >= 7 and not other
    relu = convs[0]
    assert 0.3 < relu.zero_fraction < 0.7 and relu.mean >= 0  # ReLU zeroes about half


def test_sigmoid_gradients_vanish_relu_gradients_do_not() -> None:
    sig = gradient_stats(plain_net("kaiming", act="sigmoid"), X)
    relu = gradient_stats(plain_net("kaiming", act="relu"), X)
    first = "features.conv1.conv"
    assert first in sig.vanishing and not relu.vanishing
    by_name = {r.name: r for r in sig.layers}
    assert by_name[first].relative < 1e-5  # each sigmoid passes back at most 1/4
    assert sig.loss > 0 and all(r.grad_norm > 0 for r in relu.layers)


class Boom(Exception):
    pass


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_and_model_state_restored_even_on_error() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    model.conv1.weight.grad = torch.ones_like(model.conv1.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = noise_batch((3, 32, 32), n=8)
    activation_stats(model, x)
    gradient_stats(model, x)
    assert _hook_count(model) == 0 and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN running stats too
    assert torch.equal(model.conv1.weight.grad, torch.ones_like(model.conv1.weight))  # .grad untouched

    def explode(module: nn.Module, inputs: tuple) -> None:
        raise Boom

    handle = model.layer2.register_forward_pre_hook(explode)
    try:
        with pytest.raises(Boom):
            activation_stats(model, x)
        with pytest.raises(Boom):
            from cnnlab.models.inspect import layer_table

            layer_table(model, (3, 32, 32))
    finally:
        handle.remove()
    assert _hook_count(model) == 0 and not model.training


def test_histogram_png(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    report = activation_stats(plain_net("xavier"), X)
    path = plot_activation_histograms(report, tmp_path / "sub" / "hist.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histograms_show_every_layer_of_plain20_with_a_count_axis() -> None:
    # plain20 has 19 ReLUs; before, 12 evenly spaced panels were drawn and the counts hidden.
    torch.manual_seed(0)
    report = activation_stats(create_model("plain20"), noise_batch((3, 32, 32), n=4))
    assert len(report.layers) == 20  # 19 activations + the logits
    fig = activation_figure(report)
    rows, cols = histogram_grid(len(report.layers))
    assert len(fig.axes) == len(report.layers) and rows * cols >= len(report.layers) > (rows - 1) * cols
    assert [ax.get_title().split("\n")[0] for ax in fig.axes][-1].endswith("(logits)")
    assert all(ax.get_yticks().size for ax in fig.axes)  # a count axis on every panel
    assert [ax.get_ylabel() for ax in fig.axes[::cols]] == ["count"] * rows


@pytest.mark.parametrize(("count", "grid"), [(1, (1, 1)), (4, (2, 2)), (11, (3, 4)), (20, (4, 5)), (56, (12, 5))])
def test_histogram_grid_is_sized_from_the_layer_count(count: int, grid: tuple[int, int]) -> None:
    assert histogram_grid(count) == grid and grid[1] <= MAX_HISTOGRAM_COLUMNS


def test_a_norm_layer_is_reported_as_hiding_the_init_scale() -> None:
    # The README's example: with batch norm, N(0, 0.01) flags nothing, and the report says why.
    torch.manual_seed(0)
    x = noise_batch((3, 32, 32), n=8)
    normed = activation_stats(create_model("plain20", init="normal:0.01"), x)
    assert not normed.vanishing and normed.norm_layers == 19
    assert normed.norm_note is not None and "--norm none" in normed.norm_note and "hides the init scale" in normed.norm_note
    torch.manual_seed(0)
    bare = activation_stats(create_model("plain20", init="normal:0.01", norm="none"), x)
    assert len(bare.vanishing) >= 10 and bare.norm_layers == 0 and bare.norm_note is None


def test_deep_plain_net_gradients_explode_its_resnet_twin_does_not() -> None:
    # The degradation experiment's starting point: same layers, only the skips differ. With
    # batch norm the plain net's gradient grows layer by layer towards the input.
    x = noise_batch((3, 32, 32), n=4)
    torch.manual_seed(0)
    plain = gradient_stats(create_model("plain56"), x)
    torch.manual_seed(0)
    residual = gradient_stats(create_model("resnet56"), x)
    assert len(plain.exploding) > 5 and "conv1" in plain.exploding
    assert not residual.vanishing and not residual.exploding

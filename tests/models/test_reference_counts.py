"""Against published references: parameter counts (He et al. 2016, Zagoruyko & Komodakis
2016, torchvision), torchvision's state-dict layout and outputs, torchvision's MAC counts,
and the lecture's 3x3-stack arithmetic."""

from __future__ import annotations

import pytest
import torch
import torchvision

from cnnlab.models import create_model
from cnnlab.models.inspect import create_for_input, layer_table


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "millions"),
    [("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85), ("resnet110", 1.7),
     ("plain20", 0.27), ("wrn16_4", 2.7), ("wrn40_4", 8.9), ("wrn28_10", 36.5)],
)
def test_published_parameter_counts(name: str, millions: float) -> None:
    # He et al. 2016 Table 6 (CIFAR-10, option A), Zagoruyko & Komodakis 2016 Table 1 / 4.
    with torch.device("meta"):
        model = create_model(name, num_classes=10)
    decimals = len(str(millions).split(".")[1])  # as precise as the paper prints it
    assert round(n_params(model) / 1e6, decimals) == pytest.approx(millions)


def test_option_b_shortcut_adds_only_projections() -> None:
    a, b = create_model("resnet20"), create_model("resnet20", shortcut="B")
    # two 1x1 projections + their norms: 16*32 + 2*32 and 32*64 + 2*64
    assert n_params(b) - n_params(a) == 16 * 32 + 64 + 32 * 64 + 128


def test_cifar_width_scales_every_stage() -> None:
    # conv weights scale with width squared: width 8 has about a quarter of the weights, and
    # the plain twin stays exactly as large as its ResNet (option-A shortcuts have none)
    full, half = n_params(create_model("resnet56")), n_params(create_model("resnet56", width=8))
    assert 0.24 < half / full < 0.27
    assert n_params(create_model("plain56", width=8)) == half
    assert create_model("resnet20", width=8)(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    with pytest.raises(Exception, match="width must be an integer >= 1"):
        create_model("resnet20", width=0)


@pytest.mark.parametrize(
    ("ours", "theirs", "options"),
    [
        ("resnet18", "resnet18", {}),
        ("resnet50", "resnet50", {}),
        pytest.param("vgg16", "vgg16", {"norm": "none"}, marks=pytest.mark.slow),
        pytest.param("vgg16", "vgg16_bn", {"norm": "batch"}, marks=pytest.mark.slow),
    ],
)
def test_torchvision_state_dicts_load_and_give_identical_outputs(ours: str, theirs: str, options: dict) -> None:
    torch.manual_seed(0)
    reference = getattr(torchvision.models, theirs)(weights=None, num_classes=1000).eval()
    model = create_model(ours, num_classes=1000, init="torch", **options).eval()
    assert n_params(model) == n_params(reference)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("name", "weights", "options"),
    [("resnet18", "ResNet18_Weights", {}), ("resnet50", "ResNet50_Weights", {}),
     ("vgg16", "VGG16_Weights", {"norm": "none"})],
)
def test_multiply_adds_match_torchvision(name: str, weights: str, options: dict) -> None:
    meta = getattr(torchvision.models, weights).IMAGENET1K_V1.meta  # published metadata, no download
    model = create_for_input(name, (3, 224, 224), meta=True, num_classes=1000, **options)
    table = layer_table(model, (3, 224, 224))
    assert table.total_params == meta["num_params"]
    assert table.total_macs / 1e9 == pytest.approx(meta["_ops"], rel=2e-3)


def test_three_3x3_convs_see_what_one_7x7_sees_with_27_instead_of_49_c_squared_weights() -> None:
    c = 16
    stack = create_model("simple", depth=3, width=c, kernel_size=3, in_chans=c, norm="none")
    single = create_model("simple", spec=f"c{c}k7", in_chans=c, norm="none")
    weights = lambda m: sum(p.numel() for p in m.features.parameters() if p.dim() > 1)  # noqa: E731
    assert weights(stack) == 27 * c * c and weights(single) == 49 * c * c
    t_stack, t_single = layer_table(stack, (c, 20, 20)), layer_table(single, (c, 20, 20))
    assert t_stack.features_rf == t_single.features_rf == (7, 1)
    assert [r.rf_size for r in t_stack.rows if r.kind == "Conv2d"] == [3, 5, 7]


def test_receptive_field_of_vgg16_and_resnet20() -> None:
    table = layer_table(create_for_input("vgg16", (3, 224, 224), meta=True, norm="none"), (3, 224, 224))
    rf = {r.name: (r.rf_size, r.rf_jump) for r in table.rows}
    assert rf["features.28"] == (196, 16)  # conv5_3: the textbook 196 px
    assert rf["features.30"] == (212, 32)  # pool5
    assert rf["classifier.0"][0] is None  # an FC layer sees the whole image
    # CIFAR ResNet-20, the longest path through the residual branches (19 3x3 convs), by hand:
    # stem 3; stage 1: 6 convs at jump 1 -> 3 + 6*2 = 15; stage 2: its stride-2 conv still moves at
    # jump 1 (+2), the other 5 at jump 2 (+4 each) -> 37; stage 3: +2*2 + 5*2*4 -> 81, jump 4.
    assert layer_table(create_model("resnet20"), (3, 32, 32)).features_rf == (81, 4)

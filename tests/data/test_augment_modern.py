"""Tests for the modern augmentation ops: random erasing and TrivialAugment (issue 17)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as TF

from cnnlab.data.augment import Erase, TrivialAugment, build_augment, parse_augment
from cnnlab.data.augment_ops import TRIVIAL_OPS
from cnnlab.errors import CnnlabError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 64, c: int = 3, h: int = 16, w: int = 16, seed: int = 1) -> torch.Tensor:
    """Random images in (0, 1): no pixel is exactly 0, so erased pixels are identifiable."""
    return torch.rand(n, c, h, w, generator=gen(seed)).mul_(0.98).add_(0.01)


# --- erase -------------------------------------------------------------------------


def test_erase_blanks_one_rectangle_per_sample_or_nothing():
    x = images(n=400, c=2, h=20, w=24)
    out = Erase(p=1.0)(x.clone(), gen())
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1])  # every channel, same rectangle
    for mask in zero[:, 0]:
        rows, cols = mask.any(1), mask.any(0)
        # The zeros fill exactly the bounding box of their rows and columns: one rectangle.
        assert mask.sum() == rows.sum() * cols.sum()
        assert rows.sum() < 20 and cols.sum() < 24  # strictly smaller than the image
    assert torch.equal(out[~zero], x[~zero])  # the rest is untouched


def test_erase_area_and_aspect_follow_their_parameters():
    h, w = 64, 64
    op = Erase(p=1.0, min_scale=0.05, max_scale=0.25, min_ratio=0.5, max_ratio=2.0)
    masks = op.rect_mask(4000, h, w, gen(), torch.zeros(()))[:, 0].bool()
    rh = masks.any(2).sum(1).double()
    rw = masks.any(1).sum(1).double()
    area = rh * rw / (h * w)
    # Rounding the sides to whole px moves the area by at most ~2 px of side: loose bounds.
    assert area.min() >= 0.05 * 0.85 and area.max() <= 0.25 * 1.15
    # Uniform area in [0.05, 0.25]: mean 0.15, quartiles near 0.10 and 0.20.
    assert abs(area.mean().item() - 0.15) < 0.01
    assert abs(area.quantile(0.25).item() - 0.10) < 0.015 and abs(area.quantile(0.75).item() - 0.20) < 0.015
    # log(h / w) uniform in [log 0.5, log 2]: mean 0, |mean| of uniform = log 2 / 2.
    log_ratio = (rh / rw).log()
    assert log_ratio.min() >= math.log(0.5) - 0.15 and log_ratio.max() <= math.log(2.0) + 0.15
    assert abs(log_ratio.mean().item()) < 0.03
    assert abs(log_ratio.abs().mean().item() - math.log(2.0) / 2) < 0.04
    # Positions cover the image: some rectangle touches each border.
    assert masks[:, 0].any() and masks[:, -1].any() and masks[:, :, 0].any() and masks[:, :, -1].any()


def test_erase_probability_and_no_fit_leaves_samples_unchanged():
    x = images(n=2000, c=1, h=8, w=8)
    out = Erase(p=0.3)(x.clone(), gen())
    erased = (out == 0).flatten(1).any(1).float().mean().item()
    assert 0.25 < erased < 0.35
    # An area of the whole image never fits (sides must be strictly smaller): no change.
    x = images(n=50, c=1, h=8, w=8)
    assert torch.equal(Erase(p=1.0, min_scale=1.0, max_scale=1.0, min_ratio=1, max_ratio=1)(x.clone(), gen()), x)


def test_erase_fills():
    x = images(n=64, c=3)
    mask = Erase(p=1.0).rect_mask(64, 16, 16, gen(5), x)
    out = build_augment("erase:1:fill=mean", mean=[0.25, 0.5, 0.75])(x.clone(), gen(5))
    fill = torch.tensor([0.25, 0.5, 0.75]).view(1, 3, 1, 1).expand_as(x)
    m = mask.expand_as(x).bool()
    assert m.any() and torch.equal(out[m], fill[m]) and torch.equal(out[~m], x[~m])
    noisy = build_augment("erase:1:fill=random")(x.clone(), gen(5))
    assert torch.equal(noisy[~m], x[~m]) and not torch.equal(noisy[m], x[m])
    assert noisy.min() >= 0 and noisy.max() <= 1
    with pytest.raises(CnnlabError, match="mean"):
        build_augment("erase:fill=mean")


def test_erase_spec_and_bad_arguments():
    assert str(parse_augment("erase")[0]) == "erase:0.5"
    assert str(parse_augment("erase:1:max_scale=0.2:fill=random")[0]) == "erase:1:max_scale=0.2:fill=random"
    with pytest.raises(CnnlabError, match="min_scale <= max_scale"):
        parse_augment("erase:0.5:0.4:0.2")
    with pytest.raises(CnnlabError, match="p must be in"):
        parse_augment("erase:1.5")


# --- trivial -----------------------------------------------------------------------


def test_trivial_draws_every_op_and_level_uniformly():
    op, level = TrivialAugment().draw(13000, gen(), torch.device("cpu"))
    counts = torch.bincount(op, minlength=len(TRIVIAL_OPS)).double()
    assert counts.min() > 850 and counts.max() < 1150  # ~1000 each
    assert level.min() == -1 and level.max() == 1
    assert len(level.unique()) == 61  # 31 levels, signed (0 shared)
    _, half = TrivialAugment(magnitude=0.5).draw(100, gen(), torch.device("cpu"))
    assert half.abs().max() <= 0.5


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trivial_keeps_shape_dtype_and_range(c, dtype):
    x = images(n=64, c=c, h=12, w=14).to(dtype)
    out = TrivialAugment()(x.clone(), gen())
    assert out.shape == x.shape and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


def test_trivial_leaves_identity_samples_exact_and_changes_the_others():
    x = images(n=256, c=3)
    op, level = TrivialAugment().draw(256, gen(7), torch.device("cpu"))
    out = TrivialAugment()(x.clone(), gen(7))
    same = (out == x).flatten(1).all(1)
    identity = op == TRIVIAL_OPS.index("identity")
    assert identity.any() and same[identity].all()
    # Every non-identity op at a non-zero level changes a random image (color on RGB too).
    moved = ~identity & (level != 0)
    assert (~same[moved]).all()


def test_trivial_samples_are_independent():
    one = images(n=1, c=3, h=20, w=20)
    out = TrivialAugment()(one.expand(300, -1, -1, -1).clone(), gen())
    # 13 ops x 61 signed levels: copies of one image come out in many different ways.
    assert out.flatten(1).unique(dim=0).shape[0] >= 150
    # A sample's result depends on its own draw only, not on its neighbours.
    x = images(n=32, c=3)
    a = TrivialAugment()(x.clone(), gen(3))
    x2 = x.clone()
    x2[1:] = images(n=31, c=3, seed=9)
    b = TrivialAugment()(x2, gen(3))
    assert torch.allclose(a[0], b[0], atol=1e-6)


def _one(name: str, level: float, x: torch.Tensor) -> torch.Tensor:
    """Apply one TrivialAugment op at a signed level by finding a seed that draws it."""
    for seed in range(20000):
        op, lv = TrivialAugment().draw(1, gen(seed), torch.device("cpu"))
        if TRIVIAL_OPS[op.item()] == name and abs(lv.item() - level) < 1e-6:
            return TrivialAugment()(x.clone(), gen(seed))
    raise AssertionError(f"no seed draws {name} at {level}")


@pytest.mark.parametrize(
    ("name", "level", "reference"),
    [
        ("brightness", 0.5, lambda x: TF.adjust_brightness(x, 1 + 0.99 * 0.5)),
        ("contrast", -0.5, lambda x: TF.adjust_contrast(x, 1 - 0.99 * 0.5)),
        ("color", 0.5, lambda x: TF.adjust_saturation(x, 1 + 0.99 * 0.5)),
        ("sharpness", 0.5, lambda x: TF.adjust_sharpness(x, 1 + 0.99 * 0.5)),
        ("solarize", 0.5, lambda x: TF.solarize(x, 0.5)),
        ("autocontrast", 0.5, TF.autocontrast),
        ("posterize", 0.5, lambda x: TF.posterize((x * 255).round().to(torch.uint8), 5).float() / 255),
        ("rotate", 0.0, lambda x: x),
    ],
)
def test_trivial_colour_ops_match_torchvision(name, level, reference):
    x = (images(n=1, c=3) * 255).round() / 255  # on the uint8 grid, as the loader gives
    assert torch.allclose(_one(name, level, x), reference(x), atol=2e-6)


def test_trivial_geometry_moves_pixels_like_the_named_transform():
    x = torch.zeros(1, 1, 30, 30)
    x[0, 0, 10, 15] = 1.0  # one bright pixel
    # Levels are k / 30 of the side: a level of 4 / 30 on a 30 px side shifts by 4 px, either way.
    out = _one("translate_x", 4 / 30, x)
    assert torch.allclose(out, torch.roll(x, 4, dims=3), atol=1e-5) or torch.allclose(
        out, torch.roll(x, -4, dims=3), atol=1e-5
    )
    # A level-1 rotation is 135 degrees about the centre, one way or the other, with
    # bilinear sampling and zero fill: torchvision's rotate, on a smooth image.
    smooth = images(n=1, c=1, h=30, w=30)
    out = _one("rotate", 1.0, smooth)
    bilinear = TF.InterpolationMode.BILINEAR
    references = [TF.rotate(smooth, angle, interpolation=bilinear) for angle in (135.0, -135.0)]
    assert min((out - ref).abs().max().item() for ref in references) < 1e-4


def test_trivial_is_seeded_and_spec_round_trips():
    x = images(n=32)
    aug = build_augment("flip,trivial,erase:0.5")
    assert torch.equal(aug(x.clone(), gen(1)), aug(x.clone(), gen(1)))
    assert not torch.equal(aug(x.clone(), gen(1)), aug(x.clone(), gen(2)))
    assert str(aug) == "hflip,trivial,erase:0.5"
    assert str(parse_augment("trivial:0.5")[0]) == "trivial:magnitude=0.5"
    with pytest.raises(CnnlabError, match="magnitude must be in"):
        parse_augment("trivial:2")


@pytest.mark.parametrize("name", ["shear_x", "shear_y"])
def test_trivial_shear_matches_torchvision_affine_about_the_centre(name):
    x = images(n=1, c=1, h=30, w=30)
    out = _one(name, 10 / 30, x)
    s = 0.99 * 10 / 30  # shear factor; torchvision takes it as an angle, atan(s)
    errors = []
    for sign in (1.0, -1.0):
        angle = math.degrees(math.atan(sign * s))
        shear = [angle, 0.0] if name == "shear_x" else [0.0, angle]
        ref = TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                        interpolation=TF.InterpolationMode.BILINEAR)  # fmt: skip
        errors.append((out - ref).abs().max().item())
    assert min(errors) < 1e-4

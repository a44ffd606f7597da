"""Tests for cnnlab.data.augment: batched per-sample augmentation against references."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from cnnlab.data.augment import (
    AUGMENT_HELP,
    OPS,
    Augment,
    ColorJitter,
    Crop,
    Cutout,
    HFlip,
    ResizedCrop,
    VFlip,
    build_augment,
    parse_augment,
)
from cnnlab.data.augment_ops import _hue_matrices
from cnnlab.errors import CnnlabError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 64, c: int = 3, h: int = 16, w: int = 16, seed: int = 1) -> torch.Tensor:
    """Random images: every pixel distinct, so flips and shifts are identifiable."""
    return torch.rand(n, c, h, w, generator=gen(seed))


# --- flips -------------------------------------------------------------------------


@pytest.mark.parametrize("op", [HFlip(p=1.0), VFlip(p=1.0)])
def test_flip_twice_with_p1_is_identity(op):
    x = images()
    once = op(x.clone(), gen())
    assert not torch.equal(once, x)
    assert torch.equal(op(once, gen()), x)


@pytest.mark.parametrize(("op", "dim"), [(HFlip(), -1), (VFlip(), -2)])
def test_flip_flips_exactly_the_selected_samples(op, dim):
    x = images(n=256)
    out = op(x.clone(), gen(3))
    flipped = torch.tensor([torch.equal(o, s.flip(dim)) for o, s in zip(out, x)])
    kept = torch.tensor([torch.equal(o, s) for o, s in zip(out, x)])
    assert bool((flipped ^ kept).all()), "each sample is either flipped or untouched, exactly"
    assert 0.35 < flipped.float().mean().item() < 0.65  # p = 0.5 per sample


def test_flip_p0_is_identity():
    x = images()
    assert torch.equal(HFlip(p=0.0)(x.clone(), gen()), x)


# --- crop --------------------------------------------------------------------------


def _offsets(out: torch.Tensor, padded: torch.Tensor, pad: int) -> list[tuple[int, int]]:
    """For each sample, the (dy, dx) whose slice of the padded image equals the output."""
    h, w = out.shape[-2:]
    found = []
    for o, p in zip(out, padded):
        hits = [
            (dy, dx)
            for dy, dx in itertools.product(range(2 * pad + 1), repeat=2)
            if torch.equal(o, p[:, dy : dy + h, dx : dx + w])
        ]
        assert len(hits) == 1, f"expected exactly one matching window, got {hits}"
        found.append(hits[0])
    return found


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_crop_is_a_per_sample_slice_of_the_padded_image(mode):
    x = images(n=128, c=2, h=12, w=10)
    out = Crop(padding=3, mode=mode)(x.clone(), gen(5))
    assert out.shape == x.shape
    padded = F.pad(x, (3, 3, 3, 3), mode="constant" if mode == "zero" else "reflect")
    offsets = _offsets(out, padded, 3)
    assert len(set(offsets)) > 30  # 49 possible offsets, drawn per sample
    assert {dy for dy, _ in offsets} == set(range(7))


def test_crop_handles_channels_last_input_and_padding_zero():
    x = images(n=8)
    expected = Crop(padding=2)(x.clone(), gen(1))
    got = Crop(padding=2)(x.clone().to(memory_format=torch.channels_last), gen(1))
    assert torch.equal(got, expected)
    assert torch.equal(Crop(padding=0)(x.clone(), gen()), x)


def test_crop_reflect_needs_images_larger_than_padding():
    with pytest.raises(CnnlabError, match="reflect padding 4 needs images larger"):
        Crop(padding=4, mode="reflect")(torch.rand(2, 1, 4, 4), gen())


# --- cutout ------------------------------------------------------------------------


def test_cutout_blanks_one_clipped_square_per_sample():
    x = torch.rand(512, 3, 20, 20, generator=gen(2)) + 0.5  # no zeros to begin with
    out = Cutout(size=6)(x.clone(), gen(4))
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
    whole = 0
    for z, orig, new in zip(zero[:, 0], x, out):
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        assert int(z.sum()) == len(rows) * len(cols), "the blanked pixels form a rectangle"
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
        # Each side is the full 6 px unless the square is clipped by that border.
        assert len(rows) == 6 or rows[0] == 0 or rows[-1] == 19
        assert len(cols) == 6 or cols[0] == 0 or cols[-1] == 19
        assert len(rows) >= 3 and len(cols) >= 3  # the centre is always inside the image
        whole += int(z.sum()) == 36
        assert torch.equal(new[:, ~z], orig[:, ~z])
    # Centres are uniform over the image: a square is whole for 15 x 15 of 20 x 20
    # centres (56%), clipped otherwise.
    assert 0.45 < whole / 512 < 0.67


def test_cutout_zeroes_exactly_size_squared_pixels_when_inside():
    x = torch.ones(256, 1, 40, 40)
    zero = Cutout(size=8)(x, gen(1)) == 0
    counts = zero.flatten(1).sum(1)
    touches = zero[:, 0, 0].any(1) | zero[:, 0, -1].any(1) | zero[:, 0, :, 0].any(1) | zero[:, 0, :, -1].any(1)
    assert bool((counts[~touches] == 64).all()) and (~touches).sum() > 100
    assert counts.min() >= 16  # a corner centre keeps a 4 x 4 quarter


def test_cutout_mean_fill_and_probability():
    mean = (0.25, 0.5, 0.75)
    aug = build_augment("cutout:4:mean:0.5", mean=mean)
    x = torch.full((400, 3, 16, 16), 0.1)
    out = aug(x.clone(), gen())
    hit = (out != 0.1).flatten(1).any(1)
    assert 0.35 < hit.float().mean().item() < 0.65
    for c, m in enumerate(mean):
        values = out[:, c][out[:, c] != 0.1]
        assert values.numel() > 0 and bool((values == torch.tensor(m)).all())


# --- random resized crop -----------------------------------------------------------


def test_rrc_full_scale_square_is_identity():
    x = images(n=16, h=24, w=24)
    out = ResizedCrop(min_scale=1, max_scale=1, min_ratio=1, max_ratio=1)(x.clone(), gen())
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_rrc_samples_windows_of_the_requested_size_per_sample():
    # On a horizontal ramp, bilinear sampling of a window of width w_frac * W into W
    # output columns gives a ramp of slope w_frac, offset by the window's left edge.
    n, size = 128, 32
    ramp = torch.arange(size, dtype=torch.float32).expand(n, 1, size, size).contiguous()
    out = ResizedCrop(min_scale=0.25, max_scale=0.25, min_ratio=1, max_ratio=1)(ramp, gen(2))
    slope = out[:, 0, :, 1:].diff(dim=-1).mean(dim=(-1, -2))
    torch.testing.assert_close(slope, torch.full((n,), 0.5), atol=1e-4, rtol=0)
    # Output column j samples input position left + (j + 0.5) * 0.5 - 0.5; column 1 is
    # never clamped by the border.
    left = out[:, 0, 0, 1] - 0.25
    assert left.min() >= -1e-4 and left.max() <= size / 2 + 1e-4
    assert left.unique().numel() > n // 2


def test_rrc_output_size_and_aspect_ratio_range():
    x = images(n=64, h=20, w=30)
    out = ResizedCrop(size=12)(x.clone(), gen())
    assert out.shape == (64, 3, 12, 12)
    with pytest.raises(CnnlabError, match="min_scale"):
        ResizedCrop(min_scale=0.5, max_scale=0.2)


# --- colour jitter -----------------------------------------------------------------


@pytest.mark.parametrize("c", [1, 3])
def test_jitter_zero_strength_is_exact_identity(c):
    x = images(c=c) * 2 - 0.5  # even out-of-range values pass untouched (no clamp)
    assert torch.equal(ColorJitter(0, 0, 0, 0)(x.clone(), gen()), x)


def test_jitter_brightness_matches_definition_on_constant_image():
    x = torch.full((256, 3, 4, 4), 0.7)
    out = ColorJitter(brightness=0.8, contrast=0, saturation=0)(x.clone(), gen())
    level = out[:, 0, 0, 0]
    assert torch.equal(out, level.view(-1, 1, 1, 1).expand_as(out))  # one factor per sample
    factor = level[level < 1] / 0.7
    assert factor.min() >= 0.2 - 1e-6 and factor.max() <= 1.8 + 1e-6  # uniform in [1 - b, 1 + b]
    assert factor.min() < 0.3 and factor.unique().numel() > 100
    clamped = (level == 1).float().mean().item()  # factor > 1 / 0.7 is clamped to 1
    assert 0.2 < clamped < 0.4  # P(f > 1.4286) = 0.37 / 1.6 = 0.23


@pytest.mark.parametrize(
    ("kind", "reference"),
    [
        ("brightness", TF.adjust_brightness),
        ("contrast", TF.adjust_contrast),
        ("saturation", TF.adjust_saturation),
    ],
)
def test_jitter_factors_match_torchvision(kind, reference):
    x = 0.35 + 0.3 * images(n=32)  # mid-range, so no output is clamped
    op = ColorJitter(**{"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, kind: 0.4})
    out = op(x.clone(), gen(7))
    if kind == "brightness":
        anchor = torch.zeros_like(x)
    elif kind == "contrast":
        anchor = TF.rgb_to_grayscale(x).mean((1, 2, 3), keepdim=True).expand_as(x)
    else:
        anchor = TF.rgb_to_grayscale(x).expand_as(x)
    # Recover each sample's factor by least squares, then compare with torchvision.
    d_in, d_out = (x - anchor).flatten(1), (out - anchor).flatten(1)
    factors = (d_in * d_out).sum(1) / (d_in * d_in).sum(1)
    assert factors.min() >= 0.6 - 1e-4 and factors.max() <= 1.4 + 1e-4
    assert factors.std() > 0.1  # per-sample factors
    expected = torch.stack([reference(s, float(f)) for s, f in zip(x, factors)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_hue_and_saturation_skip_one_channel_input():
    x = images(c=1)
    assert torch.equal(ColorJitter(0, 0, 0.5, 0.5)(x.clone(), gen()), x)


def test_hue_rotation_matches_torchvision_at_thirds_and_keeps_gray():
    colours = 0.25 + 0.5 * torch.rand(3, 1, 100, generator=gen())
    for turn in (1 / 3, -1 / 3):
        rot = _hue_matrices(torch.tensor([turn]))[0]
        got = torch.einsum("ij,jhw->ihw", rot, colours)
        torch.testing.assert_close(got, TF.adjust_hue(colours, turn), atol=1e-5, rtol=0)
    gray = torch.full((3,), 0.4)
    torch.testing.assert_close(_hue_matrices(torch.tensor([0.17]))[0] @ gray, gray)


def test_hue_jitter_shifts_hue_per_sample_within_range():
    x = (0.3 + 0.4 * images(n=64, h=4, w=4)).clone()
    out = ColorJitter(0, 0, 0, hue=0.1)(x.clone(), gen())
    assert out.min() >= 0 and out.max() <= 1
    # Rotation about the gray axis keeps each pixel's mean of R, G, B (before clamping).
    torch.testing.assert_close(out.mean(1), x.mean(1), atol=1e-5, rtol=0)
    assert (out - x).abs().amax((1, 2, 3)).unique().numel() == 64


# --- pipeline ----------------------------------------------------------------------

FULL = "flip,vflip,crop:2:reflect,rrc:0.5,jitter:0.3:0.3:0.3:0.1,cutout:4"


def test_seeds_reproduce_and_differ():
    aug = build_augment(FULL)
    x = images()
    a1, a2 = aug(x.clone(), gen(1)), aug(x.clone(), gen(1))
    b = aug(x.clone(), gen(2))
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, b)


def test_global_rng_is_not_used():
    state = torch.get_rng_state()
    build_augment(FULL)(images(), gen())
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("spec", ["flip,crop:4,cutout:8", "rrc", "jitter:0.4:0.4:0.4:0.1", "vflip"])
def test_each_sample_gets_its_own_parameters(spec):
    one = images(n=1, h=20, w=20)
    out = build_augment(spec)(one.expand(200, -1, -1, -1).clone(), gen())
    distinct = out.flatten(1).unique(dim=0).shape[0]
    assert distinct >= (2 if spec == "vflip" else 150)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pipeline_keeps_shape_dtype_and_range(dtype):
    x = images(n=16, h=12, w=14).to(dtype)
    out = build_augment(FULL)(x.clone(), gen())
    assert out.shape == x.shape and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1


def test_bfloat16_flip_and_crop_match_float32():
    x = images(n=16).to(torch.bfloat16)
    aug = build_augment("flip,crop:4,cutout:8")
    assert torch.equal(aug(x.clone(), gen(3)), aug(x.float(), gen(3)).to(torch.bfloat16))


def test_call_rejects_non_float_batches():
    with pytest.raises(CnnlabError, match="float batch"):
        build_augment("flip")(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), gen())


# --- spec grammar ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("standard", "hflip,crop:4"),
        ("flip,crop:4,cutout:8", "hflip,crop:4,cutout:8"),
        ("crop:padding=4:mode=reflect", "crop:4:mode=reflect"),
        ("RESIZED-CROP:0.25:size=16", "rrc:0.25:1:size=16"),
        ("jitter", "jitter:0.4"),
        ("jitter:0.2:0.2:0.2:0.05", "jitter:0.2:hue=0.05"),
        ("jitter:0.1:0.2:0.3:0", "jitter:0.1:0.2:0.3:0"),
        ("vflip:1, cutout:4:mean:0.5", "vflip:p=1,cutout:4:fill=mean:p=0.5"),
    ],
)
def test_canonical_string_round_trips(spec, canonical):
    ops = parse_augment(spec)
    text = ",".join(str(op) for op in ops)
    assert text == canonical
    assert parse_augment(text) == ops


def test_specs_as_lists_mappings_and_ops():
    ops = parse_augment(["flip", {"op": "crop", "padding": 2, "mode": "reflect"}, Cutout(4), "standard"])
    assert ops == [HFlip(), Crop(2, "reflect"), Cutout(4), HFlip(), Crop(4)]
    aug = build_augment(ops)
    assert isinstance(aug, Augment) and parse_augment(aug) == ops
    assert parse_augment(str(aug)) == list(aug.ops)


@pytest.mark.parametrize("spec", [None, "", " ", "none", "NONE", []])
def test_empty_specs_build_nothing(spec):
    assert parse_augment(spec) == []
    assert build_augment(spec) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("flp", r"unknown augmentation op 'flp' \(did you mean 'flip'\?\); valid ops: hflip \(flip\)"),
        ("crop:pad=4", r"unknown argument 'pad' \(did you mean 'padding'\?\); valid arguments: padding, mode"),
        ("crop:4:mirror", r"mode must be one of zero, reflect, got 'mirror'"),
        ("crop:four", r"padding must be an integer, got 'four'"),
        ("crop:2.5", r"padding must be an integer"),
        ("crop:-1", r"padding must be >= 0"),
        ("crop:4:zero:1", r"takes at most 2 positional arguments \(padding, mode\)"),
        ("crop:padding=4:2", r"positional value '2' after a key=value"),
        ("crop:4:padding=2", r"argument 'padding' is given twice"),
        ("flip:1.5", r"p must be in \[0, 1\], got 1.5"),
        ("jitter:0.1:0.2", r"takes one value .* or four"),
        ("jitter:hue=0.7", r"hue must be in \[0, 0.5\]"),
        ("jitter:nan", r"brightness must be a number"),
        ("cutout:0", r"size must be >= 1"),
        ("none,flip", r"'none' cannot be combined"),
        ("standard:2", r"preset 'standard' takes no arguments"),
        ([{"padding": 4}], r"needs an 'op' key"),
        ([3], r"must be a spec string or a mapping"),
        (7, r"must be a string or a list"),
        ([{"op": "flip", "p": True}], r"p must be a number"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(CnnlabError, match=message):
        parse_augment(spec)


def test_mean_fill_needs_a_mean_in_batch_units():
    with pytest.raises(CnnlabError, match="pass mean= to build_augment"):
        build_augment("cutout:8:mean")
    with pytest.raises(CnnlabError, match=r"in \[0, 1\].*divide 0-255"):
        build_augment("cutout:8:mean", mean=[125.3, 123.0, 113.9])
    aug = build_augment("cutout:8:mean", mean=[0.5])
    with pytest.raises(CnnlabError, match="3-channel mean, got a mean of 1 values"):
        aug(torch.rand(2, 3, 8, 8), gen())


def test_help_text_covers_every_op_and_preset():
    for name, cls in OPS.items():
        assert name in AUGMENT_HELP
        for alias in cls.aliases:
            assert alias in AUGMENT_HELP
        for f in cls.spec_fields():
            assert f.name in AUGMENT_HELP
    assert "standard" in AUGMENT_HELP and "none" in AUGMENT_HELP


def test_static_help_text_matches_the_op_classes() -> None:
    # `--help` uses a torch-free copy of the grammar; it must describe the real ops.
    from cnnlab.data.augment import _help_text
    from cnnlab.data.augment_help import AUGMENT_HELP

    assert AUGMENT_HELP == _help_text()

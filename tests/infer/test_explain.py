"""`cnnlab explain`: Grad-CAM files of a trained run, maps that point at the evidence, the default layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("captum", reason="cnnlab explain needs captum (pip install 'cnnlab[explain]')")

from cnnlab.cli.main import main  # noqa: E402
from cnnlab.errors import CnnlabError  # noqa: E402
from cnnlab.infer.explain import explain_files, find_target_layer, grad_cam, plan_output  # noqa: E402
from cnnlab.infer.predict import load_predictor  # noqa: E402
from cnnlab.models import create_model  # noqa: E402


def test_explain_cli_writes_overlays_a_sheet_and_json(gray_run: Path, gray_test, write_pngs, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001  # fmt: skip
    images, labels, classes = gray_test
    files = write_pngs(images[:5], labels[:5], tmp_path / "imgs")
    out = tmp_path / "why"
    assert main(["explain", str(gray_run), str(tmp_path / "imgs"), "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "Grad-CAM at layer features.conv2" in text and "contact_sheet.png" in text  # the last conv block, before its pool
    saved = json.loads((out / "explain.json").read_text())
    assert saved["layer"] == "features.conv2"
    assert [Path(e["file"]).name for e in saved["images"]] == [f.name for f in files]
    for entry in saved["images"]:
        assert (out / entry["overlay"]).stat().st_size > 1000
        assert entry["target"] == entry["predicted"] and 0 < entry["prob"] <= 1
    assert (out / "contact_sheet.png").stat().st_size > 1000
    # the classes and probabilities are predict's
    probs = load_predictor(gray_run, device="cpu").predict_images(images[:5])
    assert [e["predicted"] for e in saved["images"]] == [classes[i] for i in probs.argmax(1)]
    assert [e["prob"] for e in saved["images"]] == pytest.approx(probs.max(1).tolist(), abs=1e-6)
    # an earlier result in --out is replaced only with --force
    assert main(["explain", str(gray_run), str(files[0]), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_explain_defaults_into_the_run_folder_and_maps_have_the_image_size(run_copy: Path, gray_test, write_pngs,
                                                                          tmp_path: Path) -> None:  # noqa: ANN001  # fmt: skip
    images, labels, classes = gray_test
    files = write_pngs(images[:3], labels[:3], tmp_path)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    pred = load_predictor(run_copy, device="cpu")
    out = plan_output(pred, [*files, bad], None)
    assert out == run_copy / "explain"
    result = explain_files(pred, [*files, bad], out, target_class=classes[1])
    good = [e for e in result.explanations if e.error is None]
    assert len(good) == 3 and "not an image" in result.explanations[-1].error
    for e in good:
        assert e.heatmap.shape == images.shape[2:] and e.heatmap.dtype == np.float32
        assert e.heatmap.min() >= 0 and e.heatmap.max() <= 1 and e.target == 1
        assert e.output.parent == run_copy / "explain" and e.output.is_file()
    assert result.sheet == run_copy / "explain" / "contact_sheet.png"


def test_unknown_layer_and_class_are_named(gray_run: Path) -> None:
    pred = load_predictor(gray_run, device="cpu")
    with pytest.raises(CnnlabError, match=r"--layer features\.99 is not a module.*features"):
        find_target_layer(pred.model, pred.image_shape, "features.99")
    with pytest.raises(CnnlabError, match="--target-class nope is not one of"):
        explain_files(pred, [], Path("unused"), target_class="nope")


# --------------------------------------------------------------------------- maps that mean something


def _quadrant_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 noise images; class 1 has a bright 4x4 square in the top-left quadrant, class 0 none.
    Both classes have a bright cross (the distractor) in one of the other three quadrants."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 60, (n, 1, 16, 16)).astype(np.float32)
    y = np.arange(n) % 2
    for i in range(n):
        qy, qx = [(0, 8), (8, 0), (8, 8)][rng.integers(3)]
        cy, cx = qy + rng.integers(2, 6), qx + rng.integers(2, 6)
        x[i, 0, cy, cx - 2 : cx + 3] = x[i, 0, cy - 2 : cy + 3, cx] = 230  # the cross
        if y[i]:
            r, c = rng.integers(0, 5, 2)
            x[i, 0, r : r + 4, c : c + 4] = 230
    return torch.from_numpy((x / 255 - 0.3) / 0.3), torch.from_numpy(y)


def test_the_map_points_at_the_quadrant_that_decides_the_class() -> None:
    torch.manual_seed(0)
    model = create_model("simple", spec="c16-p-c32-p", num_classes=2, in_chans=1)
    x, y = _quadrant_data(600, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(6):  # 100% test accuracy from the second epoch; the map sharpens after
        for i in range(0, len(x), 32):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 32]), y[i : i + 32]).backward()
            opt.step()
    model.eval()
    xt, yt = _quadrant_data(200, seed=1)
    with torch.no_grad():
        assert (model(xt).argmax(1) == yt).float().mean() > 0.95  # it learned the rule
    name, layer = find_target_layer(model, (1, 16, 16))
    assert name == "features.conv2"
    squares = xt[yt == 1]
    maps = grad_cam(model, layer, squares, torch.ones(len(squares), dtype=torch.long))
    assert maps.shape == (len(squares), 16, 16)
    share = maps[:, :8, :8].sum((1, 2)) / maps.sum((1, 2))
    # the evidence for class 1 is the square, always top-left; chance would be 1/4
    assert np.median(share) > 0.6, (name, np.median(share))


# --------------------------------------------------------------------------- transfer backbones


@pytest.mark.parametrize(("backbone", "layer"), [("efficientnet_lite0", "backbone.bn2"), ("torchvision:resnet18", "backbone.layer4")])
def test_the_default_layer_of_a_transfer_backbone_is_its_last_conv_block(backbone: str, layer: str) -> None:
    if backbone == "efficientnet_lite0":
        pytest.importorskip("timm", reason="efficientnet_lite0 is timm's architecture (pip install timm)")
    from cnnlab.models.transfer import build_transfer_model

    model = build_transfer_model(backbone, num_classes=3, in_chans=1, data_mean=[0.4], data_std=[0.3],
                                 pretrained=False, image_size=64).eval()  # fmt: skip
    name, module = find_target_layer(model, (1, 12, 12))
    assert name == layer and module is model.get_submodule(layer)
    x = torch.randn(2, 1, 12, 12)
    maps = grad_cam(model, module, x, torch.tensor([0, 2]))
    assert maps.shape == (2, 12, 12) and np.isfinite(maps).all() and maps.max() <= 1
    assert all(p.grad is None for p in model.parameters())  # nothing left behind in the weights

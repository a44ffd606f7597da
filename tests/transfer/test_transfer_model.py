"""TransferModel: the model contract, the backbone's preprocessing, offline rebuild from a checkpoint."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab.checkpoint import load_checkpoint
from cnnlab.models import model_from_checkpoint
from cnnlab.models.backbones import BackboneSpec
from cnnlab.models.transfer import Preprocess
from cnnlab.run import build_model, load_data, run_training


def test_contract_and_head(backbone_run, make_config) -> None:
    cfg = make_config(transfer={"backbone": str(backbone_run)})
    splits = load_data(cfg)
    model = build_model(cfg, splits).eval()
    x = torch.randn(4, 1, 16, 16)
    feats = model.forward_features(x)
    assert feats.shape == (4, model.num_features, 1, 1)
    torch.testing.assert_close(model(x), model.forward_head(feats))
    torch.testing.assert_close(model(x), model(model.features(x)))  # cached (N, F) features take the same path
    assert model.num_classes == len(splits.classes) == 3
    groups = model.parameter_groups()
    assert {id(p) for p in groups["head"]} == {id(p) for p in model.fc.parameters()}
    assert len(groups["backbone"]) + len(groups["head"]) == len(list(model.parameters()))
    model.reset_classifier(7)
    assert model(x).shape == (4, 7) and model.model_args["num_classes"] == 7


def test_preprocess_repeats_gray_resizes_and_normalises() -> None:
    spec = BackboneSpec("timm", "x", 8, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5), 3, "bilinear")
    prep = Preprocess((0.3,), (0.2,), 1, spec, 8)
    raw = torch.rand(2, 1, 4, 4)  # images in [0, 1]
    out = prep((raw - 0.3) / 0.2)  # what the loader hands the model
    want = F.interpolate(raw.expand(-1, 3, -1, -1), size=(8, 8), mode="bilinear", align_corners=False)
    want = (want - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, want)


def test_checkpoint_rebuilds_offline(backbone_run, make_config, tmp_path, monkeypatch) -> None:
    cfg = make_config(transfer={"backbone": str(backbone_run), "mode": "feature-extract"}, train={"epochs": 1})
    run_training(cfg, tmp_path / "run", verbose=False)
    state = load_checkpoint(tmp_path / "run" / "best.pt")
    # Rebuilding must not need the source checkpoint (nor any download): its architecture is in model_args.
    monkeypatch.setattr("cnnlab.models.transfer.backbone_from_checkpoint", lambda *a: pytest.fail("source read"))
    model = model_from_checkpoint(state).eval()
    x = torch.randn(3, 1, 16, 16)
    assert model(x).shape == (3, 3)


@pytest.mark.slow
def test_lite0_transfer_run_then_eval_and_predict(make_config, tmp_path) -> None:
    """EfficientNet-Lite0 (offline weights) on 1-channel 16 px data resized to 32 px: the run,
    then `cnnlab eval` and `cnnlab predict` on its checkpoint."""
    from cnnlab.cli.main import main
    from cnnlab.infer.predict import load_predictor

    cfg = make_config(model={"name": "efficientnet_lite0", "pretrained": True}, transfer={"mode": "feature-extract"},
                      data={"image_size": 32}, train={"epochs": 3})  # fmt: skip
    run = tmp_path / "lite0"
    summary = run_training(cfg, run, verbose=False)
    assert summary["test_acc"] is not None
    assert main(["eval", str(run)]) == 0
    pred = load_predictor(run, device="cpu")
    assert pred.model_args["backbone"]["kind"] == "lite0"
    probs = pred.predict_images(load_data(cfg).test.images[:5])
    assert probs.shape[0] == 5

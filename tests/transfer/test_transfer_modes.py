"""The modes: frozen stays frozen, the feature cache hits and misses, finetune's lower LR, auto's choice."""

from __future__ import annotations

import json

import dataclasses

import pytest
import torch

from cnnlab.cli.main import main
from cnnlab.config import TransferConfig
from cnnlab.data.sources import select_classes
from cnnlab.errors import CnnlabError
from cnnlab.run import build_model, load_data
from cnnlab.transfer import features
from cnnlab.transfer.finetune import choose_mode, fit_transfer


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_feature_extract_keeps_backbone_bit_identical(backbone_run, make_config) -> None:
    cfg = make_config(transfer={"backbone": str(backbone_run), "mode": "feature-extract"}, train={"epochs": 3})
    splits = load_data(cfg)
    model = build_model(cfg, splits)
    before, head_before = _snapshot(model.backbone), model.fc.weight.detach().clone()
    fit_transfer(model, splits, cfg, verbose=False)
    after = model.backbone.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():  # weights and norm statistics alike
        assert torch.equal(value, after[key]), key
    assert not torch.equal(head_before, model.fc.weight)  # the head did learn
    assert model.fc.out_features == len(splits.classes)


def test_feature_cache_hits_and_misses(backbone_run, make_config, monkeypatch) -> None:
    calls = []
    real = features.extract
    monkeypatch.setattr(features, "extract", lambda *a, **k: calls.append(1) or real(*a, **k))
    cold = "synthetic:classes=3,n=300,size=16,channels=1,seed=3"  # data no other test extracts
    cfg = make_config(source=cold, transfer={"backbone": str(backbone_run), "mode": "feature-extract"}, train={"epochs": 1})
    splits = load_data(cfg)
    model = build_model(cfg, splits)
    kw = {"device": torch.device("cpu")}
    first, hit1 = features.cached_features(model, splits, "train", **kw)
    again, hit2 = features.cached_features(model, splits, "train", **kw)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert torch.equal(first, again)
    torch.testing.assert_close(first[:4], model.eval().features(_normalised(splits, 4)))
    with torch.no_grad():  # a changed backbone misses
        next(model.backbone.parameters()).add_(0.01)
    assert features.cached_features(model, splits, "train", **kw)[1] is False
    other = load_data(make_config(source="synthetic:classes=3,n=300,size=16,channels=1,seed=7"))
    assert features.cached_features(model, other, "train", **kw)[1] is False  # a changed dataset misses
    # Whole runs: the first extracts only the validation features (train is cached above), a second run nothing.
    calls.clear()
    fit_transfer(build_model(cfg, splits), splits, cfg, verbose=False)
    assert len(calls) == 1
    fit_transfer(build_model(cfg, splits), splits, cfg, verbose=False)
    assert len(calls) == 1


def _normalised(splits, n: int) -> torch.Tensor:
    mean, std = splits.stats
    x = torch.from_numpy(splits.train.images[:n]).float() / 255
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def test_feature_views_cache_augmented_copies(backbone_run, make_config) -> None:
    cfg = make_config(data={"augment": "flip,crop:2"}, transfer={"backbone": str(backbone_run), "feature_views": 2})
    splits = load_data(cfg)
    model = build_model(cfg, splits)
    model.freeze_backbone()
    from cnnlab.train.runtime import resolve_runtime
    from cnnlab.transfer.finetune import feature_loaders

    train, _ = feature_loaders(model, splits, cfg, resolve_runtime(cfg.train))
    assert train.views.shape[:2] == (3, len(splits.train))
    assert not torch.equal(train.views[0], train.views[1]) and not torch.equal(train.views[1], train.views[2])
    with pytest.raises(CnnlabError, match="--augment"):
        feature_loaders(model, splits, make_config(data={"augment": "none"}, transfer={"backbone": str(backbone_run), "feature_views": 1}),
                        resolve_runtime(cfg.train))  # fmt: skip


def test_finetune_trains_backbone_with_lower_lr(backbone_run, make_config, monkeypatch) -> None:
    import cnnlab.train.fit as fit_module

    optimizers = []
    real = fit_module.build_optimizer
    monkeypatch.setattr(fit_module, "build_optimizer", lambda *a, **k: optimizers.append(real(*a, **k)) or optimizers[-1])
    cfg = make_config(
        optim={"name": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0}, schedule={"name": "constant"},
        transfer={"backbone": str(backbone_run), "mode": "finetune", "freeze_epochs": 1, "backbone_lr_ratio": 0.1},
    )  # fmt: skip
    splits = load_data(cfg)
    model = build_model(cfg, splits)
    before = _snapshot(model.backbone)
    fit_transfer(model, splits, cfg, verbose=False)
    assert len(optimizers) == 2  # the frozen phase (head only), then everything
    assert {g["tag"] for g in optimizers[0].param_groups} <= {"decay", "no_decay"}
    assert sum(p.numel() for g in optimizers[0].param_groups for p in g["params"]) == sum(p.numel() for p in model.fc.parameters())
    lrs = {g["tag"]: g["lr"] for g in optimizers[1].param_groups}
    assert lrs["backbone_decay"] == pytest.approx(0.005) and lrs["head_decay"] == pytest.approx(0.05)
    changed = [k for k, v in before.items() if not torch.equal(v, model.backbone.state_dict()[k])]
    assert any(k.endswith("weight") for k in changed)


def test_finetune_frozen_norm_keeps_norm_layers(backbone_run, make_config) -> None:
    cfg = make_config(transfer={"backbone": str(backbone_run), "mode": "finetune", "freeze_epochs": 0, "norm": "frozen"},
                      train={"epochs": 1})  # fmt: skip
    splits = load_data(cfg)
    model = build_model(cfg, splits)
    norms = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    assert norms, "the test backbone should have batch norm"
    fit_transfer(model, splits, cfg, verbose=False)
    for key, value in norms.items():
        assert torch.equal(value, model.backbone.state_dict()[key]), key


def test_auto_picks_by_training_set_size(backbone_run, make_config, capsys) -> None:
    cfg = make_config(transfer={"backbone": str(backbone_run), "mode": "auto", "auto_threshold": 50})
    small = load_data(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, train_subset=30)))
    large = load_data(make_config(source="synthetic:classes=3,n=600,size=16,channels=1"))
    assert choose_mode(cfg, small)[0] == "feature-extract"
    mode, reason = choose_mode(cfg, large)
    assert mode == "finetune" and "per class" in reason and "docs/transfer.md" in reason and "\n" not in reason
    assert TransferConfig().auto_threshold >= 1


def test_transfer_needs_weights(make_config) -> None:
    cfg = make_config(model={"name": "efficientnet_lite0"}, transfer={"mode": "feature-extract"})
    with pytest.raises(CnnlabError, match="--pretrained"):
        choose_mode(cfg, load_data(make_config()))


def test_class_subset_selects_and_relabels(make_config) -> None:
    full = load_data(make_config(source="synthetic:classes=4,n=400,size=8"))
    part = select_classes(full, (3, 1))
    assert part.classes == (full.classes[3], full.classes[1])
    assert set(part.train.labels.tolist()) == {0, 1} and part.fingerprint != full.fingerprint
    assert len(part.test) == int(((full.test.labels == 3) | (full.test.labels == 1)).sum())
    with pytest.raises(CnnlabError, match="class_subset"):
        select_classes(full, (0, 9))


def test_cli_backbone_run_then_eval(backbone_run, tmp_path, capsys) -> None:
    run = tmp_path / "cli"
    code = main(["train", "--data", "synthetic:classes=3,n=300,size=16,channels=1,seed=1", "--backbone", str(backbone_run),
                 "--transfer", "auto", "--epochs", "2", "--batch-size", "32", "--class-subset", "0-1", "--out", str(run)])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err  # the CLI logs to stderr
    line = next(x for x in err.splitlines() if "transfer auto:" in x)
    assert "feature-extract" in line and "per class" in line
    assert main(["eval", str(run)]) == 0
    from cnnlab.infer.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(run)  # the same two classes again, not the source's three
    assert report.own_data and not report.warnings and report.probs.shape[1] == 2
    assert set(report.labels.tolist()) == {0, 1}
    assert json.loads((run / "summary.json").read_text())["test_acc"] == pytest.approx(report.metrics.accuracy)


def test_finetune_labels_its_two_phases_and_the_header_names_the_real_model(backbone_run, make_config, tmp_path, capsys) -> None:
    from cnnlab.run import header_line, run_training
    from cnnlab.train.runtime import Runtime

    cfg = make_config(transfer={"backbone": str(backbone_run), "mode": "finetune", "freeze_epochs": 2}, train={"epochs": 2})
    summary = run_training(cfg, tmp_path / "ft")
    lines = capsys.readouterr().out.splitlines()
    epochs = [line.split(" | ")[0].split() for line in lines if " | " in line]
    assert [" ".join(words) for words in epochs] == [
        "head (frozen backbone) epoch 1/2", "head (frozen backbone) epoch 2/2", "fine-tune epoch 1/2", "fine-tune epoch 2/2"]
    splits = load_data(cfg)
    header = header_line(cfg, build_model(cfg, splits), splits, Runtime.local(torch.device("cpu")))
    # The header and summary.json name the same model: the body of the backbone run's `simple`, not the default resnet20.
    assert header.startswith(f"{summary['model']} (") and "simple" in summary["model"] and "resnet20" not in header


def test_a_backbone_without_weights_says_it_trains_from_scratch(make_config) -> None:
    mode, reason = choose_mode(make_config(model={"name": "efficientnet_lite0"}), load_data(make_config()))
    assert mode == "full" and "efficientnet_lite0 without --pretrained" in reason and "from scratch" in reason

"""Recipe step 1 (`check_setup`): healthy setups pass, deliberately broken ones fail the right item."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.cli.main import main
from cnnlab.config import RunConfig, load_run_config
from cnnlab.data.sources import ImageSet, Splits
from cnnlab.models.init import init_classifier_bias, prior_entropy
from cnnlab.recipe.checks import CheckReport, check_setup
from cnnlab.run import build_model, load_data

DATA = "synthetic:classes=3,n=600,size=12,channels=1"
MODEL_ARGS = ["--model", "simple", "--model-opt", "spec=c16-p-c32-p", "--batch-size", "32", "--device", "cpu"]


def _cfg(**model) -> RunConfig:
    return load_run_config(None, {
        "data": {"source": DATA},
        "model": {"name": "simple", "options": {"spec": "c16-p-c32-p"}, **model},
        "train": {"batch_size": 32, "device": "cpu"},
    })  # fmt: skip


@pytest.fixture(scope="module")
def splits() -> Splits:
    return load_data(_cfg())


def _failed(report: CheckReport) -> set[str]:
    return {item.name for item in report.items if not item.passed}


# --------------------------------------------------------------------------- broken models


class Times255(nn.Module):
    """Feeds the model raw 0..255-scale values instead of normalised ones."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * 255.0)


class BatchCentred(nn.Module):
    """Subtracts the batch mean (over dim 0) in every mode: samples leak into each other."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x - x.mean(0, keepdim=True))


class StuckBatchNorm(nn.BatchNorm2d):
    """A BatchNorm that ignores eval(): it normalises with batch statistics forever."""

    def train(self, mode: bool = True) -> StuckBatchNorm:
        return super().train(True)


class WithUnused(nn.Module):
    """A model with a parameter the forward pass never uses."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.forgotten = nn.Parameter(torch.ones(3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class Constant(nn.Module):
    """Learned logits that do not depend on the input."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


# --------------------------------------------------------------------------- healthy


@pytest.mark.parametrize("norm", [None, "none"])
def test_healthy_setup_passes_every_item(splits: Splits, norm: str | None) -> None:
    cfg = _cfg(norm=norm)
    report = check_setup(cfg, splits=splits)
    assert report.passed, report.text()
    assert [i.name for i in report.items] == ["initial-loss", "gradients", "weight-decay", "batch-independence"]
    init = report.item("initial-loss")
    assert init.expected == pytest.approx(math.log(3), abs=2e-3)  # balanced classes: ln C
    assert abs(init.measured - init.expected) < 0.02  # cnnlab's small classifier init: close to chance
    assert report.item("batch-independence").measured == 0.0  # exactly independent in eval mode
    lines = report.lines()
    assert len(lines) == 5 and all(line.startswith("PASS  ") for line in lines[:4])
    assert lines[-1] == "check passed: 4/4 items"
    json.dumps(report.as_dict())  # plain data


def test_model_is_not_modified(splits: Splits) -> None:
    cfg = _cfg()
    model = build_model(cfg, splits)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_setup(cfg, splits=splits, model=model)
    after = model.state_dict()
    assert not model.training
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included


def test_dropout_is_off_during_the_checks(splits: Splits) -> None:
    plain = check_setup(_cfg(), splits=splits)
    dropped = check_setup(_cfg(dropout=0.9), splits=splits)  # same weights: dropout has no parameters
    assert dropped.item("initial-loss").measured == plain.item("initial-loss").measured
    assert dropped.item("weight-decay").measured == plain.item("weight-decay").measured


def test_expected_loss_is_the_prior_entropy_on_imbalanced_data(splits: Splits) -> None:
    labels = splits.train.labels
    keep = np.concatenate([np.flatnonzero(labels == 0)[:160], np.flatnonzero(labels == 1)[:40], np.flatnonzero(labels == 2)[:10]])
    train = splits.train.subset(keep)
    imbalanced = dataclasses.replace(splits, train=ImageSet(train.images, train.labels, train.classes))
    entropy = prior_entropy(train.class_counts())
    assert entropy < math.log(3) - 0.3  # the two expectations are far apart

    with_prior = check_setup(_cfg(), splits=imbalanced)
    assert with_prior.item("initial-loss").passed, with_prior.text()
    assert with_prior.item("initial-loss").expected == pytest.approx(entropy, abs=0.1)  # 4 of 7 batches sampled

    cfg = _cfg(prior_bias=False)
    uniform = check_setup(cfg, splits=imbalanced)
    assert uniform.item("initial-loss").passed and uniform.item("initial-loss").expected == pytest.approx(math.log(3))

    # A model that starts at the priors, judged as if it should start uniform: better than chance.
    primed = build_model(_cfg(), imbalanced)
    wrong = check_setup(cfg, splits=imbalanced, model=primed).item("initial-loss")
    assert not wrong.passed and wrong.measured < wrong.expected and "Better than chance" in wrong.message


# --------------------------------------------------------------------------- (a) inputs not normalised


def test_unnormalised_inputs_fail_the_initial_loss(splits: Splits) -> None:
    cfg = _cfg(norm="none")  # without a norm layer nothing rescues the input scale
    report = check_setup(cfg, splits=splits, model=Times255(build_model(cfg, splits)))
    item = report.item("initial-loss")
    assert not item.passed and not report.passed
    assert item.measured > item.expected + item.tolerance
    assert "inputs not normalised" in item.message
    assert "FAIL  initial-loss" in report.text() and "check FAILED: initial-loss" in report.lines()[-1]


def test_wrong_data_statistics_fail_the_initial_loss(splits: Splits) -> None:
    raw = dataclasses.replace(splits)
    raw.__dict__["stats"] = ((0.0,), (1 / 255,))  # "normalises" to 0..255: the classic forgotten /255
    assert not check_setup(_cfg(norm="none"), splits=raw).item("initial-loss").passed
    assert check_setup(_cfg(norm="none"), splits=splits).item("initial-loss").passed


# --------------------------------------------------------------------------- (b) batch mixing


@pytest.mark.parametrize("wrap", ["batch-mean", "stuck-batchnorm"])
def test_layers_that_mix_the_batch_fail_batch_independence(splits: Splits, wrap: str) -> None:
    cfg = _cfg()
    inner = build_model(cfg, splits)
    model = BatchCentred(inner) if wrap == "batch-mean" else nn.Sequential(StuckBatchNorm(1), inner)
    report = check_setup(cfg, splits=splits, model=model)
    item = report.item("batch-independence")
    assert not item.passed and item.measured > 1e-3, item.message
    assert "mixes the batch" in item.message
    assert report.item("initial-loss").passed  # the other checks are not fooled into failing


# --------------------------------------------------------------------------- gradients, weight decay


def test_unused_parameter_is_named(splits: Splits) -> None:
    cfg = _cfg()
    item = check_setup(cfg, splits=splits, model=WithUnused(build_model(cfg, splits))).item("gradients")
    assert not item.passed and item.measured == 1.0
    assert "no gradient: forgotten" in item.message


def test_zero_initialised_gates_do_not_count_as_disconnected(splits: Splits) -> None:
    cfg = _cfg()
    model = init_classifier_bias(build_model(cfg, splits), splits.train.class_counts() + 1, zero_weight=True)
    item = check_setup(cfg, splits=splits, model=model).item("gradients")
    # At step 0 a zero classifier weight blocks every gradient before it; that is by design.
    assert item.passed, item.message
    assert "zero-initialised head.fc.weight opened" in item.message


def test_model_ignoring_its_input_fails(splits: Splits) -> None:
    report = check_setup(_cfg(), splits=splits, model=Constant(3))
    item = report.item("batch-independence")
    assert not item.passed and "ignores its input" in item.message


def test_weight_decay_raises_the_loss_by_the_l2_penalty(splits: Splits) -> None:
    cfg = _cfg()
    model = build_model(cfg, splits)
    item = check_setup(cfg, splits=splits, model=model, weight_decay=1e-3).item("weight-decay")
    # Reference: wd/2 * ||w||^2 over conv/linear weights only (cnnlab never decays norms and biases).
    penalty = 1e-3 / 2 * sum(float(p.detach().double().pow(2).sum()) for p in model.parameters() if p.ndim >= 2)
    assert item.passed and item.measured == pytest.approx(penalty, rel=1e-4)
    assert "decays 3 weight tensors" in item.message


def test_weight_decay_with_nothing_to_decay_fails(splits: Splits) -> None:
    cfg = _cfg()
    model = build_model(cfg, splits)
    for p in model.parameters():
        p.requires_grad_(p.ndim < 2)  # freeze every conv/linear weight
    item = check_setup(cfg, splits=splits, model=model).item("weight-decay")
    assert not item.passed and item.measured == 0.0 and "nothing to act on" in item.message


# --------------------------------------------------------------------------- CLI


def test_cli_check_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--data", DATA, *MODEL_ARGS]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[:2] for line in lines[:4]] == [
        ["PASS", "initial-loss"], ["PASS", "gradients"], ["PASS", "weight-decay"], ["PASS", "batch-independence"]
    ]
    assert lines[-1] == "check passed: 4/4 items"


def test_cli_check_fails_with_a_bad_init(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    # Weights N(0, 1) everywhere and no norm layer: huge logits, a confidently wrong start.
    code = main(["check", "--data", DATA, *MODEL_ARGS, "--norm", "none", "--init", "normal:1.0", "--json", "--out", str(tmp_path)])
    assert code == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["passed"] is False
    assert {i["name"] for i in printed["items"] if not i["passed"]} >= {"initial-loss"}
    assert json.loads((tmp_path / "check.json").read_text()) == printed


def test_cli_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "batch-independence" in out and "--config" in out

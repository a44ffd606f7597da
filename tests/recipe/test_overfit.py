"""Recipe step 2 (`overfit_small`): memorise a tiny subset, judged against zeroed inputs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.cli.main import main
from cnnlab.config import OptimConfig, RunConfig, load_run_config
from cnnlab.data.sources import ImageSet, Splits
from cnnlab.recipe.overfit import OverfitReport, overfit_small
from cnnlab.run import build_model, load_data

DATA = "synthetic:classes=3,n=600,size=12,channels=1"
MODEL_ARGS = ["--model", "simple", "--model-opt", "spec=c16-p-c32-p", "--batch-size", "32", "--device", "cpu"]


def _cfg(**model) -> RunConfig:
    return load_run_config(None, {
        "data": {"source": DATA, "augment": "flip,crop:2"},  # overfit must switch augmentation off
        "model": {"name": "simple", "options": {"spec": "c16-p-c32-p"}, "dropout": 0.5, **model},  # and dropout
        "optim": {"weight_decay": 0.05},  # and weight decay
        "train": {"batch_size": 32, "device": "cpu", "label_smoothing": 0.2},  # and label smoothing
    })  # fmt: skip


@pytest.fixture(scope="module")
def splits() -> Splits:
    return load_data(_cfg())


@pytest.fixture(scope="module")
def healthy(splits: Splits, tmp_path_factory: pytest.TempPathFactory) -> tuple[OverfitReport, object]:
    out = tmp_path_factory.mktemp("overfit")
    return overfit_small(_cfg(), splits=splits, out_dir=out), out


class Constant(nn.Module):
    """Learned logits that do not depend on the input."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


# --------------------------------------------------------------------------- (e) healthy


def test_healthy_setup_memorises_quickly(healthy) -> None:
    report, _ = healthy
    assert report.passed and report.diagnosis == "memorised", report.text()
    assert report.reached_step is not None and report.reached_step <= 250  # fits the default budget of 300
    assert report.steps == report.reached_step == len(report.loss_curve) == len(report.zero_loss_curve)
    assert report.final_acc >= 0.99 and report.final_loss < 0.05
    assert report.images == 63 and report.batches == 2  # 2 x 32, stratified over 3 classes (21 each)
    # Zeroed inputs can only learn the class frequencies: the loss cannot go below the
    # label entropy of the (balanced) subset, ln 3, and the prior-bias init starts there.
    assert math.log(3) - 1e-4 <= report.zero_final_loss < math.log(3) + 0.01
    assert report.uses_input and report.input_sensitivity > 0.1
    assert report.optimizer == "adamw lr 0.003 (constant), weight decay 0"
    assert report.lines()[-1].startswith("PASS  overfit (memorised)")


def test_writes_json_and_plot(healthy) -> None:
    report, out = healthy
    data = json.loads((out / "overfit.json").read_text())
    assert data["passed"] is True and data["reached_step"] == report.reached_step
    assert data["loss_curve"] == pytest.approx(list(report.loss_curve))
    png = (out / "overfit.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert sorted(report.files) == sorted([str(out / "overfit.json"), str(out / "overfit.png")])


def test_deterministic_and_leaves_the_model_alone(splits: Splits, healthy) -> None:
    model = build_model(_cfg(), splits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    again = overfit_small(_cfg(), splits=splits, model=model, max_steps=30)
    assert again.loss_curve == healthy[0].loss_curve[:30]  # same seed, same initial weights, same curve
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- (c) model ignores its input


def test_model_ignoring_its_input_fails(splits: Splits) -> None:
    report = overfit_small(_cfg(), splits=splits, model=Constant(3), max_steps=60)
    assert not report.passed and not report.uses_input
    assert report.diagnosis == "ignores-input" and report.input_sensitivity == 0.0
    assert "ignores its input" in report.message
    assert report.final_loss == pytest.approx(report.zero_final_loss, abs=1e-3)  # no better than zeroed inputs


# --------------------------------------------------------------------------- (d) shuffled labels


def test_shuffled_labels_still_pass_on_a_tiny_subset(splits: Splits) -> None:
    """Memorising a tiny set says nothing about the labels: only the validation curves catch this."""
    labels = np.random.default_rng(1).permutation(splits.train.labels)
    assert (labels != splits.train.labels).mean() > 0.5
    shuffled = dataclasses.replace(splits, train=ImageSet(splits.train.images, labels, splits.classes))
    report = overfit_small(_cfg(), splits=shuffled)
    assert report.passed and report.diagnosis == "memorised", report.text()
    assert "cannot catch wrong labels" in report.message


# --------------------------------------------------------------------------- other failures


def test_learning_rate_far_too_low_is_not_called_an_input_problem(splits: Splits) -> None:
    report = overfit_small(_cfg(), splits=splits, optim=OptimConfig(name="adamw", lr=1e-7), max_steps=40)
    assert not report.passed and report.diagnosis == "not-learning"
    assert report.input_sensitivity > 0  # the model does look at its input
    assert "learning rate (1e-07) is far too low" in report.message


def test_diverging_run_says_lower_the_lr(splits: Splits) -> None:
    report = overfit_small(_cfg(norm="none"), splits=splits, optim=OptimConfig(name="sgd", lr=1e4), max_steps=40)
    assert not report.passed and report.diagnosis == "diverged" and "lower --lr" in report.message
    json.dumps(report.as_dict())  # NaN/inf are written as strings, not invalid JSON


# --------------------------------------------------------------------------- CLI


def test_cli_overfit_passes(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["overfit", "--data", DATA, *MODEL_ARGS, "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("subset      63 training images in 2 fixed batch(es); adamw lr 0.003")
    assert lines[-1].startswith("PASS  overfit (memorised)")
    assert (tmp_path / "overfit.json").is_file() and (tmp_path / "overfit.png").is_file()


def test_cli_overfit_uses_the_given_optimizer_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["overfit", "--data", DATA, *MODEL_ARGS, "--optimizer", "sgd", "--lr", "1e-6", "--steps", "20", "--json"])
    assert code == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["optimizer"] == "sgd lr 1e-06 (constant), weight decay 0"
    assert printed["diagnosis"] == "not-learning" and printed["steps"] == 20


def test_cli_overfit_takes_the_optimizer_from_a_config(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{source: '{DATA}'}}\noptim: {{name: adamw, lr: 1.0e-7}}\n")
    code = main(["overfit", "--config", str(config), *MODEL_ARGS, "--steps", "10", "--json"])
    assert code == 1
    assert json.loads(capsys.readouterr().out)["optimizer"] == "adamw lr 1e-07 (constant), weight decay 0"


def test_cli_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["overfit", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "zeroed inputs" in out and "shuffled" in out

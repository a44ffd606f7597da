"""A NaN/inf loss is a typed failure (TrainingDiverged) that the search and the lab catch by type."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from cnnlab.config import RunConfig, load_run_config
from cnnlab.errors import CnnlabError, TrainingDiverged
from cnnlab.lab.experiments import Arm, Experiment
from cnnlab.lab.runner import LabSettings, _run_arm
from cnnlab.recipe.search import SearchSpace, run_search
from cnnlab.run import build_model, load_data, run_training
from cnnlab.train.fit import fit

DATA = "synthetic:classes=3,n=300,size=12,channels=1"


def _cfg(lr: float = 0.05) -> RunConfig:
    return load_run_config(None, {
        "data": {"source": DATA}, "model": {"name": "simple", "options": {"spec": "c8-p"}},
        "optim": {"lr": lr}, "schedule": {"name": "constant"},
        "train": {"epochs": 3, "batch_size": 32, "checkpoint_minutes": 0, "label_smoothing": 0.0},
    })  # fmt: skip


class NaNInEvalAfterPoison(nn.Module):
    """A real model whose evaluation-mode output turns NaN once ``poisoned`` (training stays finite)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.poisoned = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out * float("nan") if self.poisoned and not self.training else out


def test_nonfinite_training_loss_is_training_diverged(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged) as caught:
        run_training(_cfg(lr=1e6), tmp_path / "run", verbose=False)
    exc = caught.value
    assert isinstance(exc, CnnlabError) and exc.split == "training"
    assert exc.step >= 1 and exc.lr == pytest.approx(1e6)
    assert str(exc).startswith(f"the training loss became NaN/inf in epoch {exc.epoch + 1}, step {exc.step} (lr 1e+06)")
    # the message names last.pt only when it exists (it does from the end of the first epoch on)
    last = tmp_path / "run" / "last.pt"
    assert exc.checkpoint == (last if exc.epoch > 0 else None) and last.is_file() == (exc.epoch > 0)
    assert ("last good checkpoint" in str(exc)) == (exc.epoch > 0)


def test_nonfinite_validation_loss_raises_with_its_epoch(tmp_path: Path) -> None:
    cfg = _cfg()
    splits = load_data(cfg)
    model = NaNInEvalAfterPoison(build_model(cfg, splits))
    poison = lambda record: setattr(model, "poisoned", True)  # noqa: E731 - from the second validation on
    with pytest.raises(TrainingDiverged) as caught:
        fit(model, splits, cfg, run_dir=tmp_path, on_epoch_end=poison, verbose=False)
    exc = caught.value
    steps = len(splits.train) // cfg.train.batch_size
    assert (exc.split, exc.epoch, exc.step) == ("validation", 1, 2 * steps)
    assert exc.checkpoint == tmp_path / "last.pt" and exc.checkpoint.is_file()
    assert "validation loss became NaN/inf in epoch 2" in str(exc) and str(exc.checkpoint) in str(exc)
    # the diverged epoch left no record: metrics stop at the last good epoch, like the checkpoint
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0]


def test_lab_records_a_diverged_arm_by_type(tmp_path: Path) -> None:
    exp = Experiment(name="diverge", section="-", question="does a huge lr diverge?",
                     base={"model": {"name": "simple", "options": {"spec": "c8-p"}}},
                     arms=(Arm("huge-lr", {"optim": {"lr": 1e6}}),), claims=())  # fmt: skip
    row = _run_arm(exp, "huge-lr", LabSettings(smoke=True, batch_size=32), 0, 1, tmp_path, False)
    assert row["diverged"] == 1.0 and row["test_acc"] == 25.0  # chance on the 4-class smoke data
    saved = json.loads((tmp_path / "runs" / "huge-lr-s0" / "diverged.json").read_text())
    assert saved["error"].startswith("the training loss became NaN/inf in epoch 1")


def test_search_prunes_a_diverged_trial_by_type(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace(lr=(1e5, 1e6), weight_decay=None)
    result = run_search(_cfg(), space, out_dir=tmp_path, n_trials=1, epochs=1)
    (trial,) = result.trials
    assert trial.state == "PRUNED" and trial.stop_reason == "diverged (NaN/inf loss)"

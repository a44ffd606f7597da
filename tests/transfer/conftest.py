"""A tiny trained cnnlab run to serve as an offline backbone (seconds to train, once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlab.config import RunConfig, load_run_config
from cnnlab.run import run_training

SOURCE = "synthetic:classes=3,n=300,size=16,channels=1"  # pre-training data
TARGET = "synthetic:classes=3,n=300,size=16,channels=1,seed=1"  # other images: the transfer task


def transfer_config(source: str = TARGET, **sections) -> RunConfig:
    """A fast transfer run config: tiny data, few epochs, CPU; ``sections`` override nested keys."""
    base = {
        "data": {"source": source},
        "model": {"name": "simple"},
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0},
        "train": {"epochs": 2, "batch_size": 32, "checkpoint_minutes": 0, "device": "cpu"},
        "transfer": {},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return load_run_config(None, base)


@pytest.fixture(scope="session")
def backbone_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of a small CNN trained on SOURCE (read-only for the tests)."""
    run = tmp_path_factory.mktemp("transfer") / "source"
    cfg = load_run_config(None, {
        "data": {"source": SOURCE},
        "model": {"name": "simple", "options": {"spec": "c16-p-c32-p"}},
        "optim": {"lr": 0.1},
        "train": {"epochs": 2, "batch_size": 32, "checkpoint_minutes": 0, "device": "cpu"},
    })  # fmt: skip
    run_training(cfg, run, verbose=False)
    return run / "best.pt"


@pytest.fixture(name="make_config")
def _make_config():  # noqa: ANN202 - the config builder, as a fixture (tests import nothing from conftest)
    return transfer_config

"""Shared test setup: a private cnnlab cache per test session, and one tiny trained run.

The tiny run is trained once per session (seconds on a CPU) and shared by every test that
only needs *some* finished run folder: inference, export, diagnosis, the run-folder
contract. Tests must not write into it; :func:`tiny_run_copy` gives a private copy.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: The tiny run's data: 3 learnable synthetic classes of 12x12 grayscale images.
TINY_DATA = "synthetic:classes=3,n=600,size=12,channels=1"
#: Its epochs: enough for > 80% test accuracy, few enough to train in seconds.
TINY_EPOCHS = 4


def _tiny_config(source: str = TINY_DATA, epochs: int = TINY_EPOCHS, **sections: dict[str, Any]):  # noqa: ANN202 - RunConfig
    """The tiny run's configuration; ``sections`` update its sections (e.g. ``train={"epochs": 2}``)."""
    from cnnlab.config import load_run_config

    base: dict[str, dict[str, Any]] = {
        "data": {"source": source, "augment": "flip"},  # augmented, so a repeat also checks the augmentation seeds
        "model": {"name": "simple", "options": {"spec": "c16-p-c32-p"}},
        "optim": {"lr": 0.1},
        "train": {"epochs": epochs, "batch_size": 32, "checkpoint_minutes": 0, "device": "cpu"},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return load_run_config(None, base)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Tests must neither read nor pollute the user's cache (decoded images, stats, features).
    os.environ["CNNLAB_CACHE"] = str(tmp_path_factory.mktemp("cnnlab-cache"))
    os.environ.pop("CNNLAB_DATA", None)


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Any]:
    """``tiny_config(source=TINY_DATA, epochs=TINY_EPOCHS, **sections) -> RunConfig``: the tiny run's settings."""
    return _tiny_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder (config.yaml, metrics.jsonl, curves.png, last.pt, best.pt, summary.json).

    A 3-class grayscale CNN (``tiny_config()``) trained for :data:`TINY_EPOCHS` epochs on the
    CPU. Read-only: use :func:`tiny_run_copy` to write next to it.
    """
    from cnnlab.run import run_training

    run = tmp_path_factory.mktemp("tiny") / "run"
    run_training(_tiny_config(), run, verbose=False)
    return run


@pytest.fixture()
def tiny_run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`tiny_run`, for tests that write into the run folder."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


class LogCapture(logging.Handler):
    """Collects cnnlab's warnings while in a ``with`` block (the CLI's logger does not propagate to caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> LogCapture:
        logging.getLogger("cnnlab").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("cnnlab").removeHandler(self)


@pytest.fixture()
def cnnlab_warnings() -> type[LogCapture]:
    """``with cnnlab_warnings() as logged: ...``, then ``logged.messages``: the warnings cnnlab logged."""
    return LogCapture

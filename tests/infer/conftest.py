"""Tiny trained runs shared by the inference tests (trained once per test session, seconds each)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cnnlab.config import RunConfig, load_run_config
from cnnlab.train.run import load_data, run_training

GRAY = "synthetic:classes=3,n=600,size=12,channels=1"
RGB = "synthetic:classes=7,n=700,size=12,channels=3"  # > 5 classes, so top-5 is reported


def tiny_config(source: str, epochs: int = 3) -> RunConfig:
    return load_run_config(None, {
        "data": {"source": source},
        "model": {"name": "simple", "options": {"spec": "c16-p-c32-p"}},
        "optim": {"lr": 0.1},
        "train": {"epochs": epochs, "batch_size": 32, "checkpoint_minutes": 0, "device": "cpu"},
    })  # fmt: skip


def _train(tmp_path_factory: pytest.TempPathFactory, source: str, name: str) -> Path:
    run = tmp_path_factory.mktemp("infer") / name
    run_training(tiny_config(source), run, verbose=False)
    return run


@pytest.fixture(scope="session")
def gray_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run (best.pt, last.pt, summary.json) of a 3-class grayscale model.

    Tests must not write into it; use :func:`run_copy` for that.
    """
    return _train(tmp_path_factory, GRAY, "gray")


@pytest.fixture(scope="session")
def rgb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of a 7-class RGB model."""
    return _train(tmp_path_factory, RGB, "rgb")


@pytest.fixture()
def run_copy(gray_run: Path, tmp_path: Path) -> Path:
    """A private copy of the grayscale run, for tests that write next to the checkpoint."""
    return Path(shutil.copytree(gray_run, tmp_path / "run"))


def _test_split(source: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    splits = load_data(tiny_config(source))
    return splits.test.images, splits.test.labels, splits.classes


@pytest.fixture(scope="session")
def gray_test() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images (uint8 N,C,H,W), labels and classes of the grayscale run's test split."""
    return _test_split(GRAY)


@pytest.fixture(scope="session")
def rgb_test() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The same for the RGB run."""
    return _test_split(RGB)


def _write_pngs(images: np.ndarray, labels: np.ndarray, folder: Path, classes: tuple[str, ...] | None = None) -> list[Path]:
    from PIL import Image

    paths = []
    for i, (img, label) in enumerate(zip(images, labels)):
        target = folder / classes[label] if classes else folder
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{i:04d}.png"
        Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def write_pngs():  # noqa: ANN201 - returns the helper
    """``write_pngs(images, labels, folder, classes=None) -> paths``: uint8 (N, C, H, W) images
    as PNG files, into class sub-folders when ``classes`` is given."""
    return _write_pngs

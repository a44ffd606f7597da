"""Trained runs for the inference tests: the session's shared tiny run (grayscale) and an RGB one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

RGB = "synthetic:classes=7,n=700,size=12,channels=3"  # > 5 classes, so top-5 is reported


@pytest.fixture(scope="session")
def gray_run(tiny_run: Path) -> Path:
    """A finished run (best.pt, last.pt, summary.json) of a 3-class grayscale model: the shared tiny run.

    Tests must not write into it; use :func:`run_copy` for that.
    """
    return tiny_run


@pytest.fixture(scope="session")
def rgb_run(tmp_path_factory: pytest.TempPathFactory, tiny_config: Callable[..., Any]) -> Path:
    """A finished run of a 7-class RGB model (the tiny run's settings on RGB data)."""
    from cnnlab.run import run_training

    run = tmp_path_factory.mktemp("infer") / "rgb"
    run_training(tiny_config(RGB, epochs=3), run, verbose=False)
    return run


@pytest.fixture()
def run_copy(tiny_run_copy: Path) -> Path:
    """A private copy of the grayscale run, for tests that write next to the checkpoint."""
    return tiny_run_copy


def _test_split(cfg: Any) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from cnnlab.run import load_data

    splits = load_data(cfg)
    return splits.test.images, splits.test.labels, splits.classes


@pytest.fixture(scope="session")
def gray_test(tiny_config: Callable[..., Any]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images (uint8 N,C,H,W), labels and classes of the grayscale run's test split."""
    return _test_split(tiny_config())


@pytest.fixture(scope="session")
def rgb_test(tiny_config: Callable[..., Any]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The same for the RGB run."""
    return _test_split(tiny_config(RGB))


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

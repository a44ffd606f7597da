"""A whole run (cnnlab.run): what it leaves in the run folder, and what it prints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnnlab.run import load_data, result_line, run_training
from cnnlab.runfolder import RunFolder


def test_the_test_predictions_are_saved_with_the_summary(tiny_run: Path, tiny_config: Callable[..., Any]) -> None:
    """The test split's logits and labels are in the folder, in split order, and give the
    summary's test accuracy: a report reads them instead of evaluating again."""
    folder = RunFolder(tiny_run)
    summary = folder.read_summary()
    saved = folder.read_predictions("test")
    assert summary is not None and saved is not None
    logits, labels = saved
    test = load_data(tiny_config()).test
    assert logits.shape == (len(test), len(test.classes)) and logits.dtype == np.float32
    np.testing.assert_array_equal(labels, test.labels)
    assert float((logits.argmax(1) == labels).mean()) == pytest.approx(summary["test_acc"], abs=1e-9)


def test_the_result_line_reports_the_test_accuracy(tiny_run: Path) -> None:
    summary = RunFolder(tiny_run).read_summary()
    assert summary is not None
    line = result_line(summary)
    assert line is not None and f"{summary['test_acc']:.2%}" in line and str(tiny_run) in line


def test_a_quiet_run_prints_nothing(tmp_path: Path, tiny_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Not even the test accuracy: a caller that asked for quiet prints what it wants from the summary."""
    summary = run_training(tiny_config(epochs=1), tmp_path / "run", verbose=False)
    assert capsys.readouterr().out == ""
    assert summary["test_acc"] is not None and RunFolder(tmp_path / "run").read_predictions("test") is not None
    assert result_line({**summary, "test_acc": None}) is None  # an untested run has no result line

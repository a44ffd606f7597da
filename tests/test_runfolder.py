"""The run folder: every file round-trips, absent files read as "not yet", bad files name themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnlab.config import RunConfig, load_run_config
from cnnlab.errors import CnnlabError
from cnnlab.runfolder import RunFolder


def _cfg() -> RunConfig:
    return load_run_config(None, {"data": {"source": "synthetic:classes=3"}, "model": {"name": "simple"},
                                  "optim": {"name": "adamw", "lr": 3e-3}, "train": {"epochs": 2}})  # fmt: skip


def test_an_empty_folder_has_nothing_yet(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    assert folder.read_metrics() == []
    assert folder.read_summary() is None
    assert folder.read_predictions("test") is None
    assert not folder.exists() and not folder.has_checkpoint() and not folder.is_finished()
    assert folder.last_pt == tmp_path / "run" / "last.pt" and folder.best_pt == tmp_path / "run" / "best.pt"


def test_config_round_trips_and_the_first_write_creates_the_folder(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "new" / "run")
    folder.write_config(_cfg())
    assert folder.read_config() == _cfg()
    assert folder.exists() and not folder.is_finished()
    # The file is the same YAML `cnnlab train --config` reads.
    assert load_run_config(folder.config_path) == _cfg()


def test_metrics_and_summary_round_trip(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    records = [{"epoch": 0, "train_loss": 1.5, "val_acc": None}, {"epoch": 1, "train_loss": 0.75, "val_acc": 0.5}]
    folder.write_metrics(records[:1])
    folder.write_metrics(records)  # the whole history each time: the file is replaced, not appended to
    assert folder.read_metrics() == records
    assert len(folder.metrics_path.read_text().splitlines()) == 2
    folder.write_summary({"test_acc": 0.5, "classes": 3})
    assert folder.read_summary() == {"test_acc": 0.5, "classes": 3}
    assert folder.is_finished()
    assert not list(tmp_path.glob(".*.tmp")), "an atomic write left its temporary file behind"


def test_predictions_round_trip_exactly(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    logits = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0])
    folder.write_predictions("test", logits, labels)
    assert (tmp_path / "predictions-test.npz").is_file()
    got_logits, got_labels = folder.read_predictions("test")
    np.testing.assert_array_equal(got_logits, logits)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_logits.dtype == np.float32
    assert folder.read_predictions("val") is None
    with pytest.raises(ValueError, match="expected logits"):
        folder.write_predictions("test", logits, labels[:4])
    with pytest.raises(ValueError, match="split name"):
        folder.predictions_path("../escape")


def test_checkpoint_presence(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.last_pt.write_bytes(b"")
    assert folder.has_checkpoint() and folder.exists()


@pytest.mark.parametrize(("name", "text", "read", "message"), [
    ("config.yaml", "data: [unclosed", "read_config", "not valid YAML"),
    ("config.yaml", "optim: {lr: -1}", "read_config", "optim.lr must be"),
    ("config.yaml", "modle: {}", "read_config", "Did you mean 'model'"),
    ("metrics.jsonl", '{"epoch": 0}\nnot json\n', "read_metrics", "not JSON lines"),
    ("summary.json", "{", "read_summary", "not JSON"),
    ("summary.json", "[1, 2]", "read_summary", "JSON object"),
    ("predictions-test.npz", "not an npz", "read_predictions", "not a cnnlab predictions file"),
])  # fmt: skip
def test_unreadable_files_are_errors_naming_the_file(tmp_path: Path, name: str, text: str, read: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    folder = RunFolder(tmp_path)
    args = ("test",) if read == "read_predictions" else ()
    with pytest.raises(CnnlabError, match=message) as info:
        getattr(folder, read)(*args)
    assert name in str(info.value)


def test_a_missing_config_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="config.yaml"):
        RunFolder(tmp_path).read_config()

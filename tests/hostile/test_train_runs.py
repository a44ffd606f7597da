"""Hostile input to `cnnlab train` and its run folders: a run never overwrites files it did
not write, never shares a folder with a second process, never ignores a flag, never trains
on one class, and every wrong checkpoint or path is one line, not a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.errors import CnnlabError
from cnnlab.runfolder import RunFolder

from hostile_cli import assert_unchanged, run_cli, snapshot  # tests/hostile/hostile_cli.py (this folder is on sys.path)

TINY_DATA = "synthetic:classes=3,n=600,size=12,channels=1"  # the shared tiny run's data (tests/conftest.py)

# One quick epoch of the tiny run's data and model (a few seconds on a CPU).
QUICK = ("--data", TINY_DATA, "--model", "simple", "--model-opt", "spec=c8-p", "--epochs", "1", "--batch-size", "32",
         "--device", "cpu", "--checkpoint-minutes", "0", "--quiet")  # fmt: skip


def _unfinished(run: Path) -> Path:
    """The run with its summary removed: a run that stopped after its last epoch, resumable."""
    for name in ("summary.json", "predictions-test.npz"):
        (run / name).unlink()
    return run


# ----------------------------------------------------------------------------- --out


def test_out_holding_a_finished_run_whose_last_pt_was_deleted_is_refused(tiny_run_copy: Path) -> None:
    (tiny_run_copy / "last.pt").unlink()
    before = snapshot(tiny_run_copy)
    names = sorted(p.name for p in tiny_run_copy.iterdir())
    result = run_cli("train", *QUICK, "--out", tiny_run_copy)
    assert result.code == 2 and "already holds a run" in result.error_line()
    assert_unchanged(before, tiny_run_copy)
    assert sorted(p.name for p in tiny_run_copy.iterdir()) == names  # refused before anything was written


def test_out_holding_a_users_files_of_run_file_names_is_refused(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("best.pt", "summary.json", "metrics.jsonl", "notes.txt"):
        (mine / name).write_text(f"my own {name}\n")
    before = snapshot(mine)
    result = run_cli("train", *QUICK, "--out", mine)
    line = result.error_line()
    assert result.code == 2 and "already holds a run" in line  # summary.json: it looks finished
    (mine / "summary.json").unlink()
    before = snapshot(mine)
    result = run_cli("train", *QUICK, "--out", mine)
    assert result.code == 2 and "is not empty" in result.error_line() and "best.pt" in result.error_line()
    assert_unchanged(before, mine)


def test_out_empty_is_refused_and_the_current_folder_is_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    result = run_cli("train", *QUICK, "--out", "")
    assert result.code == 2 and "--out is empty" in result.error_line()
    assert_unchanged(before, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    result = run_cli("train", *QUICK, "--out", ".")  # the current folder itself: not empty
    assert result.code == 2 and "is not empty" in result.error_line()


def test_a_folder_holding_only_a_lock_file_counts_as_empty(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / ".cnnlab.lock").write_text("")
    result = run_cli("train", *QUICK, "--out", run)
    assert result.code == 0, result.text
    assert RunFolder(run).is_finished()


@pytest.mark.parametrize("where", ["file", "under-file", "proc"])
def test_out_paths_that_cannot_be_a_folder_are_one_line(tmp_path: Path, where: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("data\n")
    out = {"file": afile, "under-file": afile / "run", "proc": Path("/proc/cnnlab-no-such-dir/run")}[where]
    before = snapshot(tmp_path)
    result = run_cli("train", *QUICK, "--out", out)
    line = result.error_line()
    assert result.code == (1 if where == "proc" else 2), result.text
    assert str(afile) in line or "/proc" in line
    assert_unchanged(before, tmp_path)


def test_an_unwritable_file_in_the_run_folder_is_one_line(tiny_run: Path, tmp_path: Path) -> None:
    """A run that cannot write one of its files (here best.pt is a folder) stops with one line."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "config.yaml", run / "config.yaml")  # a run stopped before its first checkpoint
    (run / "best.pt").mkdir()
    before = snapshot(run)
    result = run_cli("train", "--resume", run)
    line = result.error_line()
    assert result.code == 1 and "best.pt" in line and "cannot write" in line
    assert_unchanged(before, run)


# ----------------------------------------------------------------------------- the lock


def test_a_stale_temporary_of_a_killed_save_is_removed_on_the_next_start(tiny_run_copy: Path) -> None:
    """A SIGKILL during torch.save leaves .last.pt.XXXX.tmp; the next start (holding the lock) removes it.
    --device is one of the settings a resume may change."""
    run = _unfinished(tiny_run_copy)
    stale = run / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 4096)
    before = snapshot(run / "last.pt", run / "best.pt", run / "metrics.jsonl")
    result = run_cli("train", "--resume", run, "--device", "cpu", "--quiet")
    assert result.code == 0, result.text
    assert not stale.exists()
    assert RunFolder(run).is_finished()
    assert_unchanged(before, run / "last.pt", run / "best.pt", run / "metrics.jsonl")


@pytest.mark.slow
def test_a_second_process_cannot_resume_a_run_that_is_running(tiny_run: Path, tmp_path: Path) -> None:
    """Two real processes: the second gets one line and exit 1, and changes none of the first's files
    (not even its in-flight temporaries)."""
    run = tmp_path / "run"
    run.mkdir()
    config = (tiny_run / "config.yaml").read_text().replace("epochs: 4", "epochs: 500")
    assert "epochs: 500" in config
    (run / "config.yaml").write_text(config)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "--resume", str(run), "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").is_file():  # it holds the lock and has finished an epoch
            assert first.poll() is None, "the first run ended early"
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.2)
        first.send_signal(signal.SIGSTOP)  # its files stand still while the second one tries
        before = snapshot(run)
        second = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--resume", str(run)],
                                capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert "Traceback" not in second.stderr
        lines = [line for line in second.stderr.splitlines() if line.startswith("cnnlab: error:")]
        assert len(lines) == 1 and "in use by another cnnlab process" in lines[0]
        assert_unchanged(before, run)
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
        first.wait(timeout=60)


# ----------------------------------------------------------------------------- --resume


def test_resume_refuses_changed_settings_and_names_them(tiny_run_copy: Path) -> None:
    run = _unfinished(tiny_run_copy)
    before = snapshot(run)
    result = run_cli("train", "--resume", run, "--lr", "0.5", "--epochs", "9", "--data", "synthetic:classes=3")
    line = result.error_line()
    assert result.code == 2
    for flag in ("--lr", "--epochs", "--data"):
        assert flag in line
    assert "--device" in line  # what may change is said too
    result = run_cli("train", "--resume", run, "--out", run.parent / "elsewhere")
    assert result.code == 2 and "--out" in result.error_line()
    assert_unchanged(before, run)
    assert not (run.parent / "elsewhere").exists()


def test_resume_with_the_same_settings_is_not_a_change(tiny_run_copy: Path) -> None:
    """Flags that repeat the run's own values (in other spellings) are accepted."""
    from cnnlab.run import changed_settings, resume_config

    cfg = resume_config(_unfinished(tiny_run_copy))
    assert changed_settings(cfg, {"optim": {"lr": 0.1}, "train": {"epochs": 4}, "data": {"source": TINY_DATA}}) == {}
    assert set(changed_settings(cfg, {"train": {"epochs": 5, "device": "cuda"}})) == {"train.epochs", "train.device"}


def test_resume_from_best_pt_says_it_holds_weights_only(tiny_run_copy: Path) -> None:
    run = _unfinished(tiny_run_copy)
    before = snapshot(run)
    result = run_cli("train", "--resume", run / "best.pt")
    line = result.error_line()
    assert result.code == 2 and "weights only" in line and "last.pt" in line
    assert_unchanged(before, run)


def test_resume_of_a_run_whose_last_pt_was_deleted_does_not_restart_over_its_results(tiny_run_copy: Path) -> None:
    run = _unfinished(tiny_run_copy)
    (run / "last.pt").unlink()
    before = snapshot(run)
    result = run_cli("train", "--resume", run)
    assert result.code == 2 and "no last.pt" in result.error_line()
    assert_unchanged(before, run)


def test_resume_with_a_last_pt_of_another_model_is_one_line(tiny_run_copy: Path) -> None:
    run = _unfinished(tiny_run_copy)
    state = load_checkpoint(run / "last.pt", resumable=True)
    state["model"] = {k: v[..., :1] if v.ndim else v for k, v in state["model"].items()}  # other shapes
    save_checkpoint(run / "last.pt", state)
    before = snapshot(run)
    result = run_cli("train", "--resume", run)
    assert result.code == 1 and "does not fit" in result.error_line()
    assert_unchanged(before, run)


# ----------------------------------------------------------------------------- classes


def test_class_subset_of_one_class_is_refused(tmp_path: Path) -> None:
    result = run_cli("train", *QUICK, "--class-subset", "1", "--out", tmp_path / "run")
    assert result.code == 2 and "at least 2" in result.error_line()
    config = tmp_path / "one.yaml"
    config.write_text(f"data: {{source: '{TINY_DATA}', class_subset: [2]}}\n")
    result = run_cli("train", *QUICK, "--config", config, "--out", tmp_path / "run")
    assert result.code == 2 and "at least 2" in result.error_line()
    result = run_cli("train", *QUICK, "--class-subset", "4-2", "--out", tmp_path / "run")
    assert result.code == 2 and "--class-subset" in result.error_line()
    assert not (tmp_path / "run").exists()


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray((rng.random((8, 8)) * 60 + value).astype(np.uint8)).save(path)


def test_an_image_folder_with_one_class_is_refused(tmp_path: Path) -> None:
    for i in range(12):
        _png(tmp_path / "data" / "cats" / f"{i}.png", 10 * i)
    result = run_cli("train", *QUICK[2:], "--data", tmp_path / "data", "--out", tmp_path / "run")
    assert result.code in (1, 2) and "single class" in result.error_line()
    assert not (tmp_path / "run").exists()  # wrong data leaves no folder behind


def test_a_batch_larger_than_the_data_leaves_no_folder_that_blocks_the_fix(tmp_path: Path) -> None:
    result = run_cli("train", *QUICK, "--batch-size", "4096", "--out", tmp_path / "run")
    assert result.code == 2 and "--batch-size" in result.error_line()
    assert not (tmp_path / "run").exists()


def test_a_train_subset_smaller_than_the_classes_is_one_line(tmp_path: Path) -> None:
    result = run_cli("train", *QUICK, "--train-subset", "2", "--out", tmp_path / "run")
    assert result.code in (1, 2) and "train_subset" in result.error_line().replace("-", "_")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- what a run says


def test_train_lists_the_files_it_skipped(tmp_path: Path) -> None:
    for cls, base in (("cats", 20), ("dogs", 180)):
        for i in range(16):
            _png(tmp_path / "data" / cls / f"{i}.png", base + i)
    for i in range(5):
        (tmp_path / "data" / "dogs" / f"broken{i}.png").write_bytes(b"not a png")
    result = run_cli("train", *QUICK[2:], "--batch-size", "8", "--data", tmp_path / "data", "--out", tmp_path / "run")
    assert result.code == 0, result.text
    assert "skipped 5 file(s)" in result.err and "broken" in result.err and "and 2 more" in result.err
    assert "skipped.txt" in result.err
    listed = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert len(listed) == 5 and all("broken" in line for line in listed)


def test_a_backbone_run_names_the_model_it_trained(tiny_run: Path, tmp_path: Path) -> None:
    before = snapshot(tiny_run)
    result = run_cli("train", *QUICK[:2], "--epochs", "1", "--device", "cpu", "--checkpoint-minutes", "0",
                     "--backbone", tiny_run, "--out", tmp_path / "run")  # fmt: skip
    assert result.code == 0, result.text
    summary = RunFolder(tmp_path / "run").read_summary()
    assert summary is not None and summary["model"] == f"transfer(simple from {tiny_run})"
    assert f"transfer(simple from {tiny_run}) (" in result.err  # the header line
    assert_unchanged(before, tiny_run)


def test_divergence_ends_with_exit_1_and_one_line(tmp_path: Path) -> None:
    result = run_cli("train", "--data", "synthetic:n=200,size=16", "--model", "simple", "--epochs", "2", "--lr", "1e6",
                     "--device", "cpu", "--quiet", "--out", tmp_path / "run")  # fmt: skip
    line = result.error_line()
    assert result.code == 1 and "NaN/inf" in line
    assert not RunFolder(tmp_path / "run").is_finished()
    text = (tmp_path / "run" / "metrics.jsonl").read_text() if (tmp_path / "run" / "metrics.jsonl").exists() else ""
    assert "NaN" not in text and "Infinity" not in text


def test_a_non_finite_test_loss_is_a_divergence(tiny_run_copy: Path) -> None:
    """Best weights that blow up on the test split: exit 1, one line, no summary (no 'result')."""
    run = _unfinished(tiny_run_copy)
    state = load_checkpoint(run / "best.pt")
    state["model"] = {k: torch.full_like(v, float("inf")) if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(run / "best.pt", state)
    before = snapshot(run)
    result = run_cli("train", "--resume", run)
    line = result.error_line()
    assert result.code == 1 and "test loss became NaN/inf" in line
    assert not RunFolder(run).is_finished()
    assert_unchanged(before, run)


# ----------------------------------------------------------------------------- checkpoints


def _wrong_checkpoints(tmp_path: Path, good: Path) -> dict[str, Path]:
    files = {}
    (tmp_path / "afile.txt").write_bytes(b"abc")
    files["text"] = tmp_path / "afile.txt"
    (tmp_path / "empty.pt").write_bytes(b"")
    files["empty"] = tmp_path / "empty.pt"
    state = load_checkpoint(good)
    for name, obj in {
        "list": [1, 2, 3],
        "bare-state-dict": dict(state["model"]),
        "model-not-dict": {"model": 5},
        "no-model-args": {"model": state["model"], "data": state["data"]},
        "model-args-list": {**state, "model_args": ["simple"]},
        "bad-shape": {**state, "data": {**state["data"], "image_shape": [1, 12]}},
        "no-mean": {**state, "data": {k: v for k, v in state["data"].items() if k != "mean"}},
    }.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        files[name] = tmp_path / f"{name}.pt"
    return files


def test_files_that_load_safely_but_are_not_checkpoints_are_named(tiny_run: Path, tmp_path: Path) -> None:
    for name, path in _wrong_checkpoints(tmp_path, tiny_run / "best.pt").items():
        with pytest.raises(CnnlabError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value), name
        before = snapshot(tmp_path)
        result = run_cli("eval", path)
        assert result.code == 1 and str(path) in result.error_line(), (name, result.text)
        result = run_cli("train", *QUICK, "--backbone", path, "--out", tmp_path / "run")
        assert result.code in (1, 2) and str(path) in result.error_line(), (name, result.text)
        assert_unchanged(before, tmp_path)


def test_resume_needs_the_whole_training_state(tiny_run: Path, tmp_path: Path) -> None:
    state = load_checkpoint(tiny_run / "last.pt", resumable=True)
    for key in ("optimizer", "rng", "epoch_state", "epoch"):
        run = tmp_path / key
        run.mkdir()
        save_checkpoint(run / "last.pt", {k: v for k, v in state.items() if k != key})
        result = run_cli("train", "--resume", run)
        line = result.error_line()
        assert result.code == 2 and str(run / "last.pt") in line, result.text
        assert ("weights only" if key == "optimizer" else key) in line


def test_metrics_are_strict_json(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.write_metrics([{"epoch": 0, "val_loss": float("nan"), "train_loss": float("inf")}])
    text = folder.metrics_path.read_text()

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    assert [json.loads(line, parse_constant=refuse) for line in text.splitlines()] == [
        {"epoch": 0, "val_loss": None, "train_loss": None}
    ]

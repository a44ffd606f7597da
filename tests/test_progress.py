"""Progress and time: bars for every slow pass, the epoch line, --val-subset, the run's time estimate."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console

from cnnlab.checkpoint import load_checkpoint
from cnnlab.config import TrainConfig
from cnnlab.errors import UsageError
from cnnlab.run import build_model, header_line, load_data, run_training
from cnnlab.runfolder import RunFolder
from cnnlab.train.fit import validation_images, validation_indices
from cnnlab.train.loaders import eval_loader
from cnnlab.train.loop import evaluate
from cnnlab.train.progress import PassProgress, epoch_line, format_duration
from cnnlab.train.runtime import Runtime

# 3 classes, 300 validation images at val_split 0.5: room for a subset of them.
DATA = "synthetic:classes=3,n=600,size=12,channels=1"


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=100), buf


def test_pass_progress_draws_a_bar_once_the_pass_is_slow() -> None:
    console, buf = _console()
    with PassProgress("validating", 4, live=True, delay=0.0, console=console) as bar:
        for _ in range(4):
            bar.advance(stats="1,234 img/s")
    out = buf.getvalue()
    assert "validating" in out and "img/s" in out and bar.done == 4


def test_pass_progress_stays_quiet_for_short_passes_pipes_and_quiet_runs() -> None:
    for kwargs in ({"live": True, "delay": 60.0}, {"live": False, "delay": 0.0}, {"live": True, "delay": 0.0, "enabled": False}):
        console, buf = _console()
        with PassProgress("testing", 3, console=console, **kwargs) as bar:
            for _ in range(3):
                bar.advance()
        assert buf.getvalue() == "", kwargs
    with PassProgress("timing", 1, live=False) as bar:
        time.sleep(0.05)
    assert bar.seconds >= 0.05


def test_evaluate_advances_the_progress_once_per_batch(tiny_config: Callable[..., Any]) -> None:
    cfg = tiny_config(DATA, train={"eval_batch_size": 16})
    splits = load_data(cfg)
    loader = eval_loader(splits.val, splits, cfg, Runtime.local(torch.device("cpu")))
    with PassProgress("validating", len(loader), live=False) as bar:
        evaluate(build_model(cfg, splits), loader, Runtime.local(torch.device("cpu")), progress=bar)
    assert bar.done == len(loader) == -(-len(splits.val) // 16)


def test_epoch_line_names_the_phase_the_val_subset_and_the_validation_time() -> None:
    record = {"epoch": 0, "epochs": 5, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 0.9, "val_acc": 0.6,
              "lr": 0.1, "images_per_s": 1000.0, "time": 13.0, "val_time": 30.04, "val_images": 2000, "val_of": 6000}  # fmt: skip
    line = epoch_line(record, "fine-tune")
    assert line.startswith("fine-tune epoch   1/5 |")
    assert "val loss 0.9000 acc 60.00% on 2,000 of 6,000" in line and line.endswith("13.0s + val 30.0s")
    whole = epoch_line({**record, "val_images": 6000})
    assert whole.startswith("epoch   1/5") and " of " not in whole


@pytest.mark.parametrize(("seconds", "text"), [(42, "42 s"), (600, "10 min"), (12_000, "3 h 20 min"), (7200, "2 h")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_val_subset_is_stratified_and_a_function_of_the_seed(tiny_config: Callable[..., Any]) -> None:
    splits = load_data(tiny_config(DATA, data={"val_split": 0.5}))
    tc = TrainConfig(val_subset=60, seed=3)
    idx = validation_indices(splits, tc)
    assert idx is not None and len(idx) == 60
    np.testing.assert_array_equal(np.bincount(splits.val.labels[idx]), [20, 20, 20])  # the classes are balanced
    np.testing.assert_array_equal(idx, validation_indices(splits, TrainConfig(val_subset=60, seed=3)))
    assert not np.array_equal(idx, validation_indices(splits, TrainConfig(val_subset=60, seed=4)))
    assert validation_indices(splits, TrainConfig()) is None  # no subset: the whole split
    assert validation_indices(splits, TrainConfig(val_subset=10**6)) is None  # more than there are: all of them
    with pytest.raises(UsageError, match="val_subset"):
        TrainConfig(val_subset=0)


def test_a_val_subset_run_validates_on_the_subset_and_says_so(tiny_config: Callable[..., Any], tmp_path, capsys) -> None:
    cfg = tiny_config(DATA, epochs=2, data={"val_split": 0.5}, train={"val_subset": 60})
    splits = load_data(cfg)
    header = header_line(cfg, build_model(cfg, splits), splits, Runtime.local(torch.device("cpu")))
    assert f"{len(splits.val)} val (validating on 60 of them)" in header
    summary = run_training(cfg, tmp_path / "run")
    printed = capsys.readouterr().out
    assert f"on 60 of {len(splits.val)}" in printed and "+ val" in printed
    records = RunFolder(tmp_path / "run").read_metrics()
    assert [(r["val_images"], r["val_of"]) for r in records] == [(60, len(splits.val))] * 2
    # The recorded accuracy is that of the best weights on exactly those 60 images.
    best = RunFolder(tmp_path / "run").best_pt
    model = build_model(cfg, splits)
    model.load_state_dict(load_checkpoint(best)["model"])
    runtime = Runtime.local(torch.device("cpu"))
    result = evaluate(model, eval_loader(validation_images(splits, cfg.train), splits, cfg, runtime), runtime)
    assert result.n == 60
    assert result.acc == pytest.approx(records[summary["best_epoch"] - 1]["val_acc"])
    assert summary["test_acc"] is not None and summary["test_seconds"] >= 0  # the test split stays whole


def test_a_long_run_says_how_long_it_will_take_before_it_gets_far(tiny_config: Callable[..., Any], tmp_path, cnnlab_warnings: type) -> None:
    # 100,000 epochs of 135 steps take hours on any machine (even at 0.2 ms a step: 45 min);
    # the run is stopped after one.
    cfg = tiny_config(DATA, epochs=100_000, train={"batch_size": 4})
    with cnnlab_warnings() as logged:
        run_training(cfg, tmp_path / "long", verbose=False, on_epoch_end=lambda record: True, evaluate_test=False)
    warnings = [m for m in logged.messages if "this run will take about" in m]
    assert len(warnings) == 1 and " h" in warnings[0] and "img/s" in warnings[0] and "100000 more epoch(s)" in warnings[0]


def test_a_short_run_gives_no_time_warning(tiny_config: Callable[..., Any], tmp_path, cnnlab_warnings: type) -> None:
    with cnnlab_warnings() as logged:
        run_training(tiny_config(DATA, epochs=1), tmp_path / "short", verbose=False, evaluate_test=False)
    assert logged.messages == []


def test_val_subset_flag(tmp_path, capsys) -> None:
    from cnnlab.cli.main import main

    args = ["train", "--data", DATA, "--model", "simple", "--model-opt", "spec=c8-p", "--epochs", "1", "--batch-size", "32",
            "--device", "cpu", "--val-subset"]  # fmt: skip
    with pytest.raises(SystemExit) as refused:  # out of the config field's range: refused by argparse
        main([*args, "0", "--out", str(tmp_path / "zero")])
    assert refused.value.code == 2 and "--val-subset" in capsys.readouterr().err
    assert main([*args, "30", "--out", str(tmp_path / "run")]) == 0
    assert [r["val_images"] for r in RunFolder(tmp_path / "run").read_metrics()] == [30]
    assert RunFolder(tmp_path / "run").read_config().train.val_subset == 30

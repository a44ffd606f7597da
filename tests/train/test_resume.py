"""Exact resume: a real training process is killed (SIGKILL) or interrupted (SIGINT) and resumed.

The resumed run must end with bit-identical weights and identical metrics to a run that
was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnlab.checkpoint import load_checkpoint

ARGS = [
    "--data", "synthetic:classes=3,n=360,size=12,channels=1", "--model", "simple",
    "--model-opt", "spec=c8-p-c16-p-fc16", "--dropout", "0.2", "--augment", "flip,crop:2,cutout:4",
    "--epochs", "3", "--batch-size", "16", "--lr", "0.05", "--ema", "0.9", "--quiet",
]  # fmt: skip
METRIC_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


def _cnnlab(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _metrics(run: Path) -> list[dict]:
    return [{k: r[k] for k in METRIC_KEYS} for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def _wait_for(path: Path, proc: subprocess.Popen, lines: int = 1, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and len(path.read_text().splitlines()) >= lines:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before {path.name} had {lines} line(s): {proc.stderr.read()}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {path}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("reference") / "run"
    proc = _cnnlab("train", *ARGS, "--out", str(run))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return run


def _assert_same_run(run: Path, reference: Path) -> None:
    assert _metrics(run) == _metrics(reference)
    a, b = load_checkpoint(run / "last.pt")["model"], load_checkpoint(reference / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = json.loads((run / "summary.json").read_text()), json.loads((reference / "summary.json").read_text())
    assert (sa["test_acc"], sa["test_loss"], sa["best_epoch"]) == (sb["test_acc"], sb["test_loss"], sb["best_epoch"])


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint_minutes", ["0", "0.00001"], ids=["epoch-checkpoints", "every-step-checkpoints"])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, reference, checkpoint_minutes) -> None:
    run = tmp_path / "run"
    proc = _cnnlab("train", *ARGS, "--out", str(run), "--checkpoint-minutes", checkpoint_minutes)
    _wait_for(run / "metrics.jsonl", proc, lines=1)
    time.sleep(0.15)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists(), "the run finished before it could be killed"
    resumed = _cnnlab("train", "--resume", str(run))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    _assert_same_run(run, reference)


@pytest.mark.slow
def test_ctrl_c_saves_and_resumes_exactly(tmp_path, reference) -> None:
    run = tmp_path / "run"
    proc = _cnnlab("train", *ARGS, "--out", str(run), "--checkpoint-minutes", "0")
    _wait_for(run / "metrics.jsonl", proc, lines=1)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    err = proc.stderr.read()
    assert "resume with: cnnlab train --resume" in err
    state = load_checkpoint(run / "last.pt")
    assert state["epoch_state"]["batch"] > 0 or state["epoch"] >= 1
    resumed = _cnnlab("train", "--resume", str(run))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    _assert_same_run(run, reference)


def test_resuming_a_finished_run_is_refused(reference) -> None:
    proc = _cnnlab("train", "--resume", str(reference))
    assert proc.wait(timeout=120) == 2  # refused before any work (UsageError)
    assert "already finished" in proc.stderr.read()

"""DistributedDataParallel on 2 CPU processes (gloo), launched by torchrun as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

COMMON = [
    "--data", "synthetic:classes=3,n=600,size=12,channels=1", "--model", "simple",
    "--model-opt", "spec=c16-p-c32-p", "--augment", "flip", "--epochs", "6", "--lr", "0.1", "--quiet",
]  # fmt: skip


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    _run([*torchrun, "-m", "cnnlab", "train", *COMMON, "--batch-size", "16", "--out", str(ddp)])
    _run([sys.executable, "-m", "cnnlab", "train", *COMMON, "--batch-size", "32", "--out", str(single)])
    s_ddp = json.loads((ddp / "summary.json").read_text())
    s_one = json.loads((single / "summary.json").read_text())
    assert s_ddp["world_size"] == 2 and s_one["world_size"] == 1
    # Rank 0 alone writes: one record per epoch, not one per process.
    assert len((ddp / "metrics.jsonl").read_text().splitlines()) == 6
    # The same total batch and schedule: accuracy agrees within noise on this easy task.
    assert s_ddp["test_acc"] > 0.8 and s_one["test_acc"] > 0.8
    assert abs(s_ddp["test_acc"] - s_one["test_acc"]) < 0.1

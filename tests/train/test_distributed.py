"""DistributedDataParallel on 2 CPU processes (gloo), launched by torchrun as a user would.

2 processes x batch 16 must train the same model as 1 process x batch 32: the loader gives
rank r the items r, r+2, ... of each global batch of the shared permutation, so the two
ranks together see exactly the single process's batch, and DDP's averaged gradient is the
mean over those 32 images. Everything that would make the two runs differ for a reason
other than this split is switched off: no augmentation (its randomness is seeded per rank),
layer norm instead of batch norm (batch statistics over 16 are not those over 32, and
cnnlab does not sync them), no dropout (its masks are drawn per process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.checkpoint import load_checkpoint
from cnnlab.runfolder import RunFolder

EPOCHS = 3
COMMON = [
    "--data", "synthetic:classes=3,n=600,size=12,channels=1", "--model", "simple",
    "--model-opt", "spec=c16-p-c32-p", "--norm", "layer", "--dropout", "0", "--augment", "none",
    "--epochs", str(EPOCHS), "--lr", "0.1", "--seed", "3", "--device", "cpu", "--quiet",
]  # fmt: skip
GLOBAL_BATCH = 32

# The runs compute the same function and differ only in the order of float32 sums (two
# per-rank means averaged by the all-reduce vs one mean over 32; evaluation sums likewise).
# Measured on this setup: epoch losses agree to 5e-7 relative. A real mismatch is far
# outside 1e-4: a doubled learning rate (gradients summed, not averaged) moves them by 0.2
# after one epoch, and training on batches of 16 without the other rank's gradient by 0.02.
RTOL = 1e-4


def _run(cmd: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    ddp, single = RunFolder(tmp_path / "ddp"), RunFolder(tmp_path / "single")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    out = _run([*torchrun, "-m", "cnnlab", "train", *COMMON, "--batch-size", str(GLOBAL_BATCH // 2), "--out", str(ddp.path)])
    assert out.count("test accuracy") == 1, out  # rank 0 alone prints the result
    _run([sys.executable, "-m", "cnnlab", "train", *COMMON, "--batch-size", str(GLOBAL_BATCH), "--out", str(single.path)])
    s_ddp, s_one = ddp.read_summary(), single.read_summary()
    assert s_ddp["world_size"] == 2 and s_one["world_size"] == 1
    # Rank 0 alone writes: one record per epoch, not one per process.
    r_ddp, r_one = ddp.read_metrics(), single.read_metrics()
    assert len(r_ddp) == len(r_one) == EPOCHS
    for a, b in zip(r_ddp, r_one):
        for key in ("train_loss", "val_loss", "lr"):
            assert a[key] == pytest.approx(b[key], rel=RTOL), (a["epoch"], key)
    assert s_ddp["test_loss"] == pytest.approx(s_one["test_loss"], rel=RTOL)
    w_ddp, w_one = load_checkpoint(ddp.last_pt)["model"], load_checkpoint(single.last_pt)["model"]
    assert w_ddp.keys() == w_one.keys()
    for key, value in w_one.items():
        if value.is_floating_point():
            torch.testing.assert_close(w_ddp[key], value, rtol=RTOL, atol=RTOL * value.abs().max().item(), msg=key)
    assert s_one["test_acc"] > 0.6  # chance is 1/3: the two runs agree on a model that learned

"""Gradient accumulation (``--accumulate N``): N micro-batches of B train like one batch of B x N.

The loader gives each optimizer step one batch of B x N images (the same images, in the same
order and with the same augmentation as a batch-size B x N run), and the training step splits
it into N micro-batches whose losses are weighted by their share of the batch. So the two runs
compute the same updates and differ only in the order of float32 sums, as DDP's do
(tests/train/test_distributed.py makes the same argument). Everything that would make them
differ for another reason is off: layer norm instead of batch norm (statistics over B are
not those over B x N, by design), no dropout. Mixup, label smoothing and gradient clipping
stay on: they act on the whole batch and must survive the split.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.checkpoint import load_checkpoint
from cnnlab.errors import UsageError
from cnnlab.run import build_model, load_data, run_training
from cnnlab.runfolder import RunFolder
from cnnlab.train.fit import fit

DATA = "synthetic:classes=3,n=384,size=12,channels=1"
B, N = 8, 4  # micro-batch, and micro-batches per optimizer step: steps of 32 images
EPOCHS = 2
# As in test_distributed.py: the runs differ only in the order of float32 sums (measured here, 3 epochs:
# weights agree to 2e-7 relative, epoch losses to 5e-8). Batches of B without accumulation end 12x the
# largest weight away (relative): far outside this tolerance.
RTOL = 1e-4


def _cfg(tiny_config, batch_size: int, accumulate: int, **train):  # noqa: ANN202 - RunConfig
    return tiny_config(
        DATA, epochs=EPOCHS, data={"augment": "flip,crop:2"},
        model={"options": {"spec": "c8-p-c16-p"}, "norm": "layer", "dropout": 0.0},
        train={"batch_size": batch_size, "accumulate": accumulate, "mixup": 0.4, "grad_clip": 1.0, **train},
    )  # fmt: skip


def _fit(cfg, run_dir: Path | None = None, **kwargs):  # noqa: ANN001, ANN202
    splits = load_data(cfg)
    model = build_model(cfg, splits)
    history = fit(model, splits, cfg, run_dir=run_dir, verbose=False, **kwargs)
    return history, model.state_dict()


def _assert_close_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in b.items():
        if value.is_floating_point():
            torch.testing.assert_close(a[key], value, rtol=RTOL, atol=RTOL * value.abs().max().item(), msg=key)


def _far(a: dict, b: dict) -> bool:
    return any((a[k] - b[k]).abs().max() > 100 * RTOL * b[k].abs().max() for k in b if b[k].is_floating_point())


@pytest.mark.slow
def test_n_micro_batches_of_b_train_like_one_batch_of_b_times_n(tiny_config) -> None:
    accumulated, w_acc = _fit(_cfg(tiny_config, B, N))
    large, w_large = _fit(_cfg(tiny_config, B * N, 1))
    # the schedule counts optimizer steps (one per B x N images), with the same learning rates
    per_epoch = len(load_data(_cfg(tiny_config, B, N)).train) // (B * N)
    assert [r["step"] for r in accumulated.records] == [r["step"] for r in large.records] == [per_epoch * (e + 1) for e in range(EPOCHS)]
    for a, b in zip(accumulated.records, large.records):
        for key in ("train_loss", "train_acc", "val_loss", "lr"):
            assert a[key] == pytest.approx(b[key], rel=RTOL), (a["epoch"], key)
    _assert_close_weights(w_acc, w_large)
    # the test can fail: batches of B without accumulation train another model
    _, w_small = _fit(_cfg(tiny_config, B, 1))
    assert _far(w_small, w_large)
    assert large.records[-1]["val_acc"] > 0.5  # chance is 1/3: the runs agree on a model that learns


@pytest.mark.slow
def test_an_accumulating_run_resumes_exactly(tiny_config, tmp_path: Path) -> None:
    cfg = _cfg(tiny_config, B, N)
    reference, w_ref = _fit(cfg, tmp_path / "reference")
    _, _ = _fit(cfg, tmp_path / "run", on_epoch_end=lambda record: record["epoch"] + 1 >= 1)
    mid = load_checkpoint(tmp_path / "run" / "last.pt", resumable=True)
    assert mid["epoch"] == 1 and mid["step"] == len(load_data(cfg).train) // (B * N)
    resumed, w_resumed = _fit(cfg, tmp_path / "run", resume=mid)
    keys = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    assert [{k: r[k] for k in keys} for r in resumed.records] == [{k: r[k] for k in keys} for r in reference.records]
    assert all(torch.equal(w_resumed[k], w_ref[k]) for k in w_ref)


@pytest.mark.slow
def test_two_processes_accumulating_train_like_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    # 2 ranks x 2 micro-batches of 8 (DDP all-reduces once per step, after no_sync on the first) = 1 x 32
    common = ["--data", "synthetic:classes=3,n=600,size=12,channels=1", "--model", "simple",
              "--model-opt", "spec=c16-p-c32-p", "--norm", "layer", "--dropout", "0", "--augment", "none",
              "--epochs", "2", "--lr", "0.1", "--seed", "3", "--device", "cpu", "--quiet", "--checkpoint-minutes", "0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "cnnlab"]
    for cmd in ([*torchrun, "train", *common, "--batch-size", "8", "--accumulate", "2", "--out", str(tmp_path / "ddp")],
                [sys.executable, "-m", "cnnlab", "train", *common, "--batch-size", "32", "--out", str(tmp_path / "one")]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    ddp, one = RunFolder(tmp_path / "ddp"), RunFolder(tmp_path / "one")
    for a, b in zip(ddp.read_metrics(), one.read_metrics(), strict=True):
        assert (a["step"], a["lr"]) == (b["step"], b["lr"])
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=RTOL) and a["val_loss"] == pytest.approx(b["val_loss"], rel=RTOL)
    _assert_close_weights(load_checkpoint(ddp.last_pt)["model"], load_checkpoint(one.last_pt)["model"])


def test_a_step_needs_batch_size_times_accumulate_images(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config("synthetic:classes=3,n=60,size=8,channels=1", epochs=1, train={"batch_size": 16, "accumulate": 4})
    with pytest.raises(UsageError, match=r"fewer than one batch of 64; lower --batch-size x --accumulate 4"):
        run_training(cfg, tmp_path / "run", verbose=False)
    assert not (tmp_path / "run").exists()

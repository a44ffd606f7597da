"""``fit``: the single training entry point that the CLI, the recipe, transfer and the lab use.

``fit(model, splits, cfg)`` trains ``model`` on ``splits.train``, validates on
``splits.val`` after every epoch, and returns the :class:`History`. With ``run_dir`` it
also keeps the run folder up to date (metrics, curves, atomic checkpoints), and with
``resume`` it continues a checkpoint exactly. ``on_epoch_end(record)`` is the one
extension point: return True to stop (early stopping, pruning), or raise.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab import __version__
from cnnlab.config import RunConfig, to_dict
from cnnlab.data.loader import DeviceLoader
from cnnlab.data.sources import Splits
from cnnlab.errors import CnnlabError
from cnnlab.train import checkpoint as ckpt
from cnnlab.train.loop import EpochState, NonFiniteLoss, TrainStep, evaluate, train_one_epoch
from cnnlab.train.optim import build_optimizer
from cnnlab.train.progress import EpochProgress, epoch_line
from cnnlab.train.runtime import Runtime, all_reduce_sum, barrier, broadcast_flag, deterministic, resolve_runtime
from cnnlab.train.schedule import lr_factor

log = logging.getLogger(__name__)


@dataclass
class History:
    """What a training run did, epoch by epoch."""

    records: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None  # by validation accuracy (the last epoch when there is no validation split)
    best_val_acc: float | None = None
    best_val_loss: float | None = None
    stopped: str | None = None  # why training ended before the last epoch: early-stopping, callback, interrupted
    train_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def data_meta(splits: Splits) -> dict[str, Any]:
    """What a checkpoint stores about its data: enough to preprocess new images the same way."""
    mean, std = splits.stats
    return {
        "mean": list(mean), "std": list(std), "classes": list(splits.classes),
        "image_shape": list(splits.image_shape), "source": splits.name, "fingerprint": splits.fingerprint,
    }  # fmt: skip


def _class_weights(splits: Splits) -> torch.Tensor:
    counts = splits.train.class_counts().astype(np.float64)
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


class _StopFlag:
    """First Ctrl-C asks the loop to stop after the current step; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt: finishing the current step and saving a checkpoint (Ctrl-C again to abort)")

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def fit(
    model: nn.Module,
    splits: Splits,
    cfg: RunConfig,
    *,
    runtime: Runtime | None = None,
    run_dir: str | Path | None = None,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], bool | None] | None = None,
    backbone_lr_scale: float | None = None,
    loaders: tuple[Any, Any] | None = None,
    verbose: bool = True,
) -> History:
    """Train ``model`` on ``splits`` as ``cfg`` says.

    Args:
        model: a freshly built (or pretrained) model on the CPU.
        splits: train / val (/ test, unused here) image sets.
        cfg: the run configuration.
        runtime: device and precision (default: resolved from ``cfg.train``).
        run_dir: the run folder to write (metrics, curves, checkpoints); None writes nothing.
        resume: a checkpoint dict (from ``last.pt``) to continue exactly.
        on_epoch_end: called with each epoch's record; return True to stop.
        backbone_lr_scale: discriminative learning rates (the backbone gets ``lr * scale``).
        loaders: ``(train, val)`` batch sources to use instead of image loaders built from
            ``splits`` (val may be None); transfer learning passes cached features here.
        verbose: print one line per epoch (and a progress bar on a terminal).

    Returns:
        The history; ``model`` holds the final weights (the EMA weights when EMA is on).

    Raises:
        CnnlabError: a NaN/inf loss (with the epoch, step and learning rate), or bad settings.
    """
    from cnnlab.data.augment import build_augment
    from cnnlab.train.ema import EMA

    runtime = runtime or resolve_runtime(cfg.train)
    tc = cfg.train
    seed_everything(tc.seed)
    mean, std = splits.stats
    weights = None
    if tc.balanced_sampling:
        counts = splits.train.class_counts()
        weights = 1.0 / np.maximum(counts, 1)[splits.train.labels]
    loader_args = dict(mean=mean, std=std, device=runtime.device, rank=runtime.rank, world_size=runtime.world_size,
                       channels_last=runtime.channels_last)  # fmt: skip
    if loaders is not None:
        train_loader, val_loader = loaders
    else:
        train_loader = DeviceLoader(splits.train, batch_size=tc.batch_size, train=True, seed=tc.seed,
                                    augment=build_augment(cfg.data.augment, mean=mean), sample_weights=weights, **loader_args)  # fmt: skip
        val_loader = (
            DeviceLoader(splits.val, batch_size=tc.eval_batch_size, train=False, **loader_args) if len(splits.val) else None
        )

    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    raw_model = model
    optimizer = build_optimizer(raw_model, cfg.optim, backbone_lr_scale=backbone_lr_scale)
    ema = EMA(raw_model, tc.ema) if tc.ema else None
    if runtime.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[runtime.device] if runtime.device.type == "cuda" else None)
    if tc.compile:
        model = torch.compile(model)
    loss_fn = nn.CrossEntropyLoss(
        weight=_class_weights(splits).to(runtime.device) if tc.class_weights else None, label_smoothing=tc.label_smoothing
    )
    steps_per_epoch = len(train_loader)
    total_steps = tc.epochs * steps_per_epoch
    warmup = round(cfg.schedule.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        return cfg.optim.lr * lr_factor(step, total_steps, cfg.schedule, warmup)

    history = History()
    epoch, epoch_state, bad_epochs = 0, EpochState(), 0
    if resume is not None:
        raw_model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if ema is not None and resume.get("ema"):
            ema.load_state_dict(resume["ema"])
        epoch = int(resume["epoch"])
        epoch_state = EpochState(**resume["epoch_state"])
        h = resume["history"]
        history = History(**{k: v for k, v in h.items() if k in History.__dataclass_fields__})
        history.stopped = None
        bad_epochs = int(resume.get("bad_epochs", 0))
        ckpt.set_rng_state(resume["rng"])
    ts = TrainStep(optimizer, loss_fn, lr_at, runtime, grad_clip=tc.grad_clip, ema=ema, ema_target=raw_model,
                   step=epoch * steps_per_epoch + epoch_state.batch)  # fmt: skip

    writer = None
    if run_dir is not None and runtime.is_main:
        from cnnlab.train.writer import RunWriter

        writer = RunWriter(run_dir, cfg, start_epoch=epoch)
    meta = {"config": to_dict(cfg), "model_args": dict(getattr(raw_model, "model_args", {}) or {}),
            "data": data_meta(splits), "version": __version__}  # fmt: skip
    curves_title = f"{cfg.model.name} on {cfg.data.source}" + (
        f" (training loss includes label smoothing {tc.label_smoothing:g})" if tc.label_smoothing else "")
    eval_model = (lambda: ema.module) if ema is not None else (lambda: model)

    def save_last(state: EpochState, next_epoch: int) -> None:
        if writer is None:
            return
        ckpt.save_checkpoint(writer.dir / "last.pt", {
            **meta, "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "epoch": next_epoch,
            "epoch_state": state.as_dict(), "history": history.as_dict(), "bad_epochs": bad_epochs,
            "rng": ckpt.rng_state(), "loader": train_loader.state_dict(), "step": ts.step,
        })  # fmt: skip

    last_save = time.monotonic()
    interval = tc.checkpoint_minutes * 60

    def on_step(state: EpochState) -> None:
        nonlocal last_save
        if interval > 0 and time.monotonic() - last_save >= interval:
            save_last(state, epoch)
            last_save = time.monotonic()

    with _StopFlag() as stop, deterministic(tc.deterministic):
        ts.stop = lambda: stop.requested
        while epoch < tc.epochs:
            train_loader.set_epoch(epoch)
            progress = EpochProgress(epoch, tc.epochs, steps_per_epoch, enabled=verbose and runtime.is_main, start=epoch_state.batch)
            try:
                finished = train_one_epoch(model, train_loader, ts, epoch_state, on_step=on_step, progress=progress)
            except NonFiniteLoss as exc:
                last = f"; the last good checkpoint is {writer.dir / 'last.pt'}" if writer else ""
                raise CnnlabError(
                    f"the training loss became NaN/inf in epoch {epoch + 1}, step {exc.step} (lr {exc.lr:.3g}): "
                    f"the learning rate is probably too high; run `cnnlab lr-find` or lower --lr{last}"
                ) from None
            except torch.cuda.OutOfMemoryError:
                raise CnnlabError(
                    f"out of GPU memory with --batch-size {tc.batch_size} on {runtime.device}; "
                    f"try --batch-size {max(tc.batch_size // 2, 1)} (and --lr halved), or a smaller model"
                ) from None
            finally:
                progress.close()
            if broadcast_flag(not finished, runtime):
                save_last(epoch_state, epoch)
                barrier(runtime)
                history.stopped = "interrupted"
                log.warning("stopped in epoch %d; resume with: cnnlab train --resume %s", epoch + 1, run_dir or "RUNDIR")
                break
            loss_sum, correct, count, seconds = all_reduce_sum(
                [epoch_state.loss_sum, epoch_state.correct, epoch_state.count, epoch_state.seconds], runtime
            )
            seconds /= runtime.world_size
            record: dict[str, Any] = {
                "epoch": epoch, "epochs": tc.epochs, "train_loss": loss_sum / count, "train_acc": correct / count,
                "lr": lr_at(ts.step - 1), "time": seconds, "images_per_s": count / max(seconds, 1e-9),
                "val_loss": None, "val_acc": None,
            }  # fmt: skip
            if val_loader is not None:
                result = evaluate(eval_model(), val_loader, runtime)
                record.update(val_loss=result.loss, val_acc=result.acc, val_top5=result.top5)
            history.records.append(record)
            history.train_seconds += seconds
            improved = _update_best(history, record)
            if record["val_loss"] is not None:  # early stopping watches the validation loss
                if history.best_val_loss is None or record["val_loss"] < history.best_val_loss:
                    history.best_val_loss, bad_epochs = record["val_loss"], 0
                else:
                    bad_epochs += 1
            if verbose and runtime.is_main:
                print(epoch_line(record), flush=True)
            epoch += 1
            epoch_state = EpochState()
            if writer is not None and improved:
                ckpt.save_checkpoint(writer.dir / "best.pt", {
                    **meta, "model": (ema.module if ema is not None else raw_model).state_dict(),
                    "epoch": epoch - 1, "metrics": record,
                })  # fmt: skip
            stop_now = False
            if tc.early_stopping and bad_epochs >= tc.early_stopping:
                history.stopped = "early-stopping"
                stop_now = True
                log.info("early stopping: validation loss has not improved for %d epochs", bad_epochs)
            if on_epoch_end is not None and on_epoch_end(record):
                history.stopped = history.stopped or "callback"
                stop_now = True
            # The checkpoint first, then the files that describe it: metrics never get ahead of it.
            save_last(epoch_state, epoch)
            last_save = time.monotonic()
            if writer is not None:
                writer.write_epoch(history.records, title=curves_title)
            barrier(runtime)
            if stop_now:
                break
    if writer is not None:
        writer.close()
    if ema is not None:
        raw_model.load_state_dict(ema.module.state_dict())
    return history


def _update_best(history: History, record: dict[str, Any]) -> bool:
    """Record the epoch if it has the best validation accuracy so far (ties: lower loss)."""
    if record["val_acc"] is None:
        history.best_epoch = record["epoch"]
        return True
    key = (record["val_acc"], -record["val_loss"])
    if history.best_val_acc is None or key > (history.best_val_acc, -_best_loss(history)):
        history.best_epoch = record["epoch"]
        history.best_val_acc = record["val_acc"]
        return True
    return False


def _best_loss(history: History) -> float:
    return next(r["val_loss"] for r in history.records if r["epoch"] == history.best_epoch)

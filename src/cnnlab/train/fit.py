"""``fit``: the single training entry point that the CLI, the recipe, transfer and the lab use.

``fit(model, splits, cfg)`` trains ``model`` on ``splits.train``, validates on
``splits.val`` after every epoch, and returns the :class:`History`. With ``run_dir`` it
also keeps the run folder up to date (metrics, curves, atomic checkpoints), and with
``resume`` it continues a checkpoint exactly. ``on_epoch_end(record)`` is the one
extension point: return True to stop (early stopping, pruning), or raise.

Inside, a :class:`Trainer` is assembled once (model placed by
:func:`~cnnlab.train.runtime.prepare`, optimizer, EMA, :class:`TrainStep`, callbacks,
run writer), optionally restored from a checkpoint, and run epoch by epoch. Early
stopping and ``best.pt`` are ``on_epoch_end`` callables like a user's
(:mod:`cnnlab.train.callbacks`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab import __version__
from cnnlab import checkpoint as ckpt
from cnnlab.config import RunConfig, TrainConfig, to_dict
from cnnlab.data.imageset import ImageSet, Splits, stratified_subset
from cnnlab.data.store import EVAL_CROP, StoreSplit
from cnnlab.errors import CnnlabError, TrainingDiverged
from cnnlab.runfolder import RunFolder
from cnnlab.train.callbacks import BestCheckpoint, EarlyStopping, EpochCallback
from cnnlab.train.deadline import Deadline
from cnnlab.train.ema import EMA
from cnnlab.train.interrupt import StopFlag
from cnnlab.train.loaders import eval_loader, train_loader
from cnnlab.train.loop import BatchSource, EpochState, NonFiniteLoss, TrainStep, evaluate, train_one_epoch
from cnnlab.train.mix import Mix
from cnnlab.train.optim import build_optimizer
from cnnlab.train.progress import EpochProgress, PassProgress, epoch_line, format_duration
from cnnlab.train.runtime import Runtime, all_reduce_sum, barrier, broadcast_flag, deterministic, prepare, resolve_runtime
from cnnlab.train.schedule import lr_factor
from cnnlab.train.writer import RunWriter

log = logging.getLogger(__name__)

#: A run whose measured time is longer than this (s) says so, with the figures, as it starts.
LONG_RUN_SECONDS = 30 * 60
#: The time estimate is measured over this much training (s, after the first step's warm-up).
ESTIMATE_AFTER_SECONDS = 2.0
#: A validation pass (forward only) costs about this fraction of a training pass over as many images.
EVAL_COST = 1 / 3


#: An earlier epoch replaces a later one as the kept checkpoint only when its validation accuracy is higher by more
#: than this many standard errors of the best accuracy on the validation images (``sqrt(p (1 - p) / n)``).
KEEP_LATER_WITHIN_SE = 1.0


def accuracy_se(acc: float, n: int) -> float:
    """The standard error of an accuracy ``acc`` measured on ``n`` images (binomial)."""
    return math.sqrt(max(acc * (1 - acc), 0.0) / max(n, 1))


@dataclass
class History:
    """What a training run did, epoch by epoch.

    ``best_epoch`` is the epoch whose weights ``best.pt`` keeps: **the latest epoch whose validation accuracy is
    within one standard error of the highest so far** (the last epoch when there is no validation split). Taking
    the plain maximum over epochs keeps a lucky early checkpoint: with a few thousand validation images the
    accuracy of one epoch is noisy by ~0.3 points, so the maximum over 30 epochs is often an epoch the noise
    favoured while the learning rate was still high, and it tests worse than the annealed last epochs (measured:
    docs/training.md, "Which epoch is kept"). Within the noise, later wins; a run that overfits, whose last
    epochs fall clearly below its best, still keeps the best. ``best_val_acc`` is the kept epoch's accuracy,
    ``max_val_acc`` the highest any epoch reached.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_acc: float | None = None
    max_val_acc: float | None = None
    best_val_loss: float | None = None
    stopped: str | None = None  # why training ended before the last epoch: early-stopping, callback, interrupted
    train_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def add(self, record: dict[str, Any]) -> None:
        """Append an epoch record and update the kept epoch (see the class) and the bests."""
        self.records.append(record)
        self.train_seconds += record["time"]
        acc = record["val_acc"]
        if acc is None:
            self.best_epoch = record["epoch"]
        else:
            # a checkpoint written before max_val_acc existed holds only the best (then also the highest)
            top = self.max_val_acc if self.max_val_acc is not None else self.best_val_acc
            self.max_val_acc = acc if top is None else max(top, acc)
            n = int(record.get("val_images") or 0)
            margin = KEEP_LATER_WITHIN_SE * accuracy_se(self.max_val_acc, n) if n else 0.0
            if acc >= self.max_val_acc - margin:  # the first epoch, a new highest, or a later one within the noise
                self.best_epoch, self.best_val_acc = record["epoch"], acc
        if record["val_loss"] is not None and (self.best_val_loss is None or record["val_loss"] < self.best_val_loss):
            self.best_val_loss = record["val_loss"]

    def is_best(self, record: dict[str, Any]) -> bool:
        """Whether ``record``'s epoch is the one to keep, as things stand after it."""
        return self.best_epoch == record["epoch"]


def validation_indices(splits: Splits, tc: TrainConfig) -> np.ndarray | None:
    """The indices into ``splits.val`` of a ``--val-subset`` run's validation images; None: all of them.

    ``tc.val_subset`` images, stratified by class, chosen by the training seed (``tc.seed``):
    a repeated run validates on the same images, and so does a resumed one.
    """
    if tc.val_subset is None or tc.val_subset >= len(splits.val):
        return None
    return stratified_subset(splits.val.labels, tc.val_subset, tc.seed)


def validation_images(splits: Splits, tc: TrainConfig) -> ImageSet:
    """The validation images a run validates on (see :func:`validation_indices`)."""
    idx = validation_indices(splits, tc)
    return splits.val if idx is None else splits.val.subset(idx)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_label(cfg: RunConfig, model: nn.Module) -> str:
    """The name of the model a run trains, for summaries, logs and plot titles.

    ``cfg.model.name`` except for a ``--backbone RUN`` run, whose network is the body of
    that run's model with a new head: ``transfer(simple from runs/base)``.
    """
    if cfg.transfer.backbone:
        spec = getattr(model, "spec", None)
        return f"transfer({getattr(spec, 'name', 'checkpoint')} from {cfg.transfer.backbone})"
    return cfg.model.name


def data_meta(splits: Splits) -> dict[str, Any]:
    """What a checkpoint stores about its data: enough to preprocess new images the same way.

    A run streamed from a store also records ``loader: stream`` and ``eval_crop``: its held-out
    images were the centre ``eval_crop`` of the shorter side, resized to the input size
    (``cnnlab eval`` streams them the same way, ``cnnlab predict`` crops files so).
    """
    mean, std = splits.stats
    streamed = {"loader": "stream", "eval_crop": EVAL_CROP} if isinstance(splits.train, StoreSplit) else {}
    return {
        "mean": list(mean), "std": list(std), "classes": list(splits.classes),
        "image_shape": list(splits.image_shape), "source": splits.name, "fingerprint": splits.fingerprint, **streamed,
    }  # fmt: skip


def build_loss(tc: TrainConfig, splits: Splits, device: torch.device) -> nn.Module:
    """The training loss: cross-entropy with the run's label smoothing and, on request, class weights."""
    weight = None
    if tc.class_weights:
        counts = splits.train.class_counts().astype(np.float64)
        weight = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32).to(device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=tc.label_smoothing)


class Trainer:
    """One training run's parts, assembled once; :meth:`run` trains the remaining epochs.

    Arguments as :func:`fit`'s. Restore a checkpoint with :meth:`restore` before :meth:`run`.
    """

    def __init__(
        self, model: nn.Module, splits: Splits, cfg: RunConfig, runtime: Runtime, *, run_dir: str | Path | None = None,
        on_epoch_end: EpochCallback | None = None, lr_scales: Mapping[str, float] | None = None,
        loaders: tuple[BatchSource, BatchSource | None] | None = None, verbose: bool = True, phase: str | None = None,
        deadline: Deadline | None = None,
    ) -> None:  # fmt: skip
        tc = self.tc = cfg.train
        self.cfg, self.runtime, self.run_dir, self.verbose, self.phase = cfg, runtime, run_dir, verbose, phase
        seed_everything(tc.seed)
        self.val_of = len(splits.val)  # the whole validation split (a --val-subset run validates on fewer)
        self.train_loader, self.val_loader = loaders or (
            train_loader(splits, cfg, runtime), eval_loader(validation_images(splits, tc), splits, cfg, runtime))
        self.images_per_epoch = len(splits.train)
        self.raw_model = model
        self.model = prepare(model, runtime, compile=tc.compile)  # what the forward pass goes through
        self.optimizer = build_optimizer(model, cfg.optim, lr_scales=lr_scales)
        self.ema = EMA(model, tc.ema) if tc.ema else None
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = tc.steps or tc.epochs * self.steps_per_epoch  # train.steps: the last epoch ends part way
        self.deadline, self.resumed = deadline, False
        self._paces: list[tuple[float, float]] = []  # (epoch, validation) seconds of each epoch a re-plan timed
        self.warmup = round(cfg.schedule.warmup_epochs * self.steps_per_epoch)
        self.step = TrainStep(self.optimizer, build_loss(tc, splits, runtime.device), self.lr_at, runtime,
                              grad_clip=tc.grad_clip, ema=self.ema, ema_target=model,
                              mix=Mix(tc.mixup, tc.cutmix, tc.mix_prob, tc.seed), accumulate=tc.accumulate,
                              scaler=runtime.grad_scaler())  # fmt: skip
        self.history, self.epoch, self.epoch_state = History(), 0, EpochState()
        self.early_stopping = EarlyStopping(tc.early_stopping)
        self.user_callback = on_epoch_end
        self.meta = {"config": to_dict(cfg), "model_args": dict(getattr(model, "model_args", {}) or {}),
                     "data": data_meta(splits), "version": __version__}  # fmt: skip
        self.writer: RunWriter | None = None  # opened by run(), on the main process of a run with a folder
        self._last_save = time.monotonic()
        self._estimate_from: tuple[int, int, float] | None = None  # (epoch, global step, epoch seconds) where timing starts
        self._estimated = False  # the run's time is estimated once, from its first steps

    @property
    def epochs(self) -> int:
        """The epochs the run trains (the last one part way when the steps say so)."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def lr_at(self, step: int) -> float:
        """The learning rate of global step ``step`` (peak lr x schedule)."""
        return self.cfg.optim.lr * lr_factor(step, self.total_steps, self.cfg.schedule, self.warmup)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue the run a ``last.pt`` checkpoint describes, exactly where it stopped."""
        try:  # the schema was checked on loading; these fail only for a checkpoint of another model
            self.raw_model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.ema is not None and state.get("ema"):
                self.ema.load_state_dict(state["ema"])
            if self.step.scaler is not None and state.get("scaler"):  # fp16: the loss scale it had reached
                self.step.scaler.load_state_dict(state["scaler"])
            self.epoch_state = EpochState(**state["epoch_state"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CnnlabError(f"the checkpoint does not fit the model its config builds ({str(exc)[:160]}); "
                              "it was not written by this run: start a new run instead") from None  # fmt: skip
        self.epoch = int(state["epoch"])
        h = state["history"]
        self.history = History(**{k: v for k, v in h.items() if k in History.__dataclass_fields__})
        self.history.stopped = None
        self.early_stopping = EarlyStopping(self.tc.early_stopping, best_loss=self.history.best_val_loss,
                                            bad_epochs=int(state.get("bad_epochs", 0)))  # fmt: skip
        self.step.step = self.epoch * self.steps_per_epoch + self.epoch_state.batch
        self.resumed = True
        ckpt.set_rng_state(state["rng"])

    def run(self) -> History:
        """Train until the last epoch, a callback's stop, or Ctrl-C; return the history."""
        self._open_writer()
        callbacks = self._callbacks()
        with StopFlag() as stop, deterministic(self.tc.deterministic):
            self.step.stop = lambda: stop.requested
            while self.epoch < self.epochs:
                started = time.monotonic()
                if not self._train_epoch():
                    self._interrupted()
                    break
                record = self._epoch_record()
                self.history.add(record)
                if self.verbose and self.runtime.is_main:
                    print(epoch_line(record, self.phase), flush=True)
                self.epoch, self.epoch_state = self.epoch + 1, EpochState()
                # Every callback sees every epoch; the first one asking to stop names the reason.
                reasons = [reason for reason, callback in callbacks if callback(record)]
                self.history.stopped = self.history.stopped or (reasons[0] if reasons else None)
                replan = not reasons and self._may_replan()
                self._end_epoch()  # its checkpoint and curves are part of every epoch's cost: the re-plan times them
                if replan and self._replan(time.monotonic() - started, record):
                    self._save_last()  # from now on the checkpoint resumes the re-planned run,
                    if self.writer is not None:  # and only then does config.yaml say so
                        RunFolder(self.writer.dir).write_config(self.cfg)
                if reasons:
                    break
        self._close()
        return self.history

    def _open_writer(self) -> None:
        if self.run_dir is not None and self.runtime.is_main:
            self.writer = RunWriter(self.run_dir, self.cfg, start_epoch=self.epoch)

    def _callbacks(self) -> list[tuple[str, EpochCallback]]:
        """``(stop reason, callback)`` in the order they run after each epoch."""
        callbacks: list[tuple[str, EpochCallback]] = []
        if self.writer is not None:
            best_weights = self.ema.module if self.ema is not None else self.raw_model
            callbacks.append(("best-checkpoint", BestCheckpoint(self.writer.dir / "best.pt", self.meta,
                                                                best_weights.state_dict, self.history.is_best)))  # fmt: skip
        callbacks.append(("early-stopping", self.early_stopping))
        if self.user_callback is not None:
            callbacks.append(("callback", self.user_callback))
        return callbacks

    def _train_epoch(self) -> bool:
        """Train the current epoch from where it stands; False when Ctrl-C stopped it (on any rank)."""
        self.train_loader.set_epoch(self.epoch)
        end = min(self.steps_per_epoch, self.total_steps - self.epoch * self.steps_per_epoch)
        progress = EpochProgress(self.epoch, self.epochs, end, phase=self.phase,
                                 enabled=self.verbose and self.runtime.is_main, start=self.epoch_state.batch)  # fmt: skip
        try:
            finished = train_one_epoch(self.model, self.train_loader, self.step, self.epoch_state,
                                       on_step=self._on_step, progress=progress, end=end)  # fmt: skip
        except NonFiniteLoss as exc:
            raise self._diverged(exc.step, exc.lr, "training") from None
        except torch.cuda.OutOfMemoryError:
            bs = self.tc.batch_size
            raise CnnlabError(
                f"out of GPU memory with --batch-size {bs} on {self.runtime.device}; "
                f"try --batch-size {max(bs // 2, 1)} (and --lr halved), or a smaller model"
            ) from None
        finally:
            progress.close()
        return not broadcast_flag(not finished, self.runtime)

    def _epoch_record(self) -> dict[str, Any]:
        """The finished epoch's record (summed over processes), validated when there is a validation split."""
        s = self.epoch_state
        loss_sum, correct, count, seconds = all_reduce_sum([s.loss_sum, s.correct, s.count, s.seconds], self.runtime)
        seconds /= self.runtime.world_size
        record: dict[str, Any] = {
            "epoch": self.epoch, "epochs": self.epochs, "train_loss": loss_sum / count, "train_acc": correct / count,
            "lr": self.lr_at(self.step.step - 1), "step": self.step.step, "time": seconds, "images_per_s": count / max(seconds, 1e-9),
            "val_loss": None, "val_acc": None,
        }  # fmt: skip
        if self.val_loader is not None:
            model = self.ema.module if self.ema is not None else self.model
            with PassProgress("validating", len(self.val_loader), enabled=self.verbose and self.runtime.is_main) as bar:
                result = evaluate(model, self.val_loader, self.runtime, progress=bar)
            if not math.isfinite(result.loss):
                raise self._diverged(self.step.step, record["lr"], "validation")
            record.update(val_loss=result.loss, val_acc=result.acc, val_top5=result.top5, val_time=bar.seconds,
                          val_images=result.n, val_of=self.val_of)  # fmt: skip
        return record

    def _diverged(self, step: int, lr: float, split: str) -> TrainingDiverged:
        last = self.writer.dir / "last.pt" if self.writer is not None else None
        return TrainingDiverged(self.epoch, step, lr, split=split, checkpoint=last if last is not None and last.is_file() else None)

    def _on_step(self, state: EpochState) -> None:
        """The run's time estimate, and mid-epoch checkpoints every ``checkpoint_minutes`` (after each host sync)."""
        self._estimate_time(state)
        interval = self.tc.checkpoint_minutes * 60
        if interval > 0 and time.monotonic() - self._last_save >= interval:
            self._save_last()

    def _estimate_time(self, state: EpochState) -> None:
        """Once, from the first steps: warn when the run will take longer than :data:`LONG_RUN_SECONDS`.

        The first step is left out of the measurement (it pays for warm-up: allocation,
        autotuning, compilation); the rest is timed for :data:`ESTIMATE_AFTER_SECONDS`, so the
        figure is measured on this machine, never guessed from the model.
        """
        if self._estimated:
            return
        if self._estimate_from is None or self._estimate_from[0] != self.epoch:  # epoch seconds restart each epoch
            self._estimate_from = (self.epoch, self.step.step, state.seconds)
            return
        _, step0, seconds0 = self._estimate_from
        steps, seconds = self.step.step - step0, state.seconds - seconds0
        if steps < 1 or (seconds < ESTIMATE_AFTER_SECONDS and state.batch < self.steps_per_epoch):
            return
        self._estimated = True
        per_step = seconds / steps
        images_per_s = self.tc.batch_size * self.tc.accumulate * self.runtime.world_size / max(per_step, 1e-9)
        epochs_left = self.epochs - self.epoch
        val_images = self.val_of if self.tc.val_subset is None else min(self.tc.val_subset, self.val_of)
        total = (self.total_steps - self.step.step) * per_step + epochs_left * val_images * EVAL_COST / images_per_s
        if total > LONG_RUN_SECONDS and self.runtime.is_main:
            log.warning(
                "this run will take about %s: measured %s img/s over its first steps, for %d more epoch(s) of "
                "%s training images%s; for a quicker run: fewer --epochs, --train-subset N, --val-subset N, "
                "a smaller model, a GPU, or pretrained weights (--pretrained) where the model has them",
                format_duration(total), f"{images_per_s:,.1f}", epochs_left, f"{self.images_per_epoch:,}",
                f" and validation on {val_images:,}" if val_images else "",
            )  # fmt: skip

    def _may_replan(self) -> bool:
        """Whether the deadline may set the total now: after a fresh run's first epoch, while
        every step so far was warmup (whose rates do not depend on the total), on one process."""
        return (self.deadline is not None and not self.resumed and self.epoch >= 1 and not self.runtime.distributed
                and self.step.step <= self.warmup)  # fmt: skip

    def _replan(self, epoch_seconds: float, record: dict[str, Any]) -> bool:
        """Set the total steps from the pace of the epochs so far (:class:`Deadline`); the config records them.
        Returns whether the total changed.

        Called after every whole epoch while all steps were warmup, each time from the median
        of the epochs so far. One epoch is a poor clock on a machine whose speed drifts
        (measured, 10-minute recipes on 2 CPU cores: a first epoch of 27 s, then nineteen of
        28-35 s: planned from the first alone, the run overran by 16%; another's first epoch
        took 39 s, the rest 24-30 s: it ended 25% early). First epochs ran ~20% slower than
        the rest in 4 of 5 runs (warm-up) and faster in one: the median of a few epochs
        leaves such an outlier out, where a mean would keep a fifth of it.
        """
        assert self.deadline is not None  # _may_replan
        self._paces.append((epoch_seconds, float(record.get("val_time") or 0.0)))
        pace = statistics.median(e for e, _ in self._paces)
        val = statistics.median(v for _, v in self._paces)
        total = self.deadline.total_steps(time.time(), self.step.step, self.steps_per_epoch, pace, val)
        if total == self.total_steps:
            return False
        log.info("deadline: %d epoch(s) took %.1f s (median); the run trains %d steps (%.2f epochs) instead of %d",
                 len(self._paces), pace, total, total / self.steps_per_epoch, self.total_steps)  # fmt: skip
        self.total_steps = total
        self.cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(self.tc, steps=total))
        self.tc = self.cfg.train
        self.meta["config"] = to_dict(self.cfg)  # every checkpoint from now on resumes the re-planned run
        return True

    def _save_last(self) -> None:
        """Write ``last.pt``: everything needed to continue from the current step exactly."""
        if self.writer is not None:
            self._write_last()
        self._last_save = time.monotonic()

    def _write_last(self) -> None:
        ckpt.save_checkpoint(self.writer.dir / "last.pt", {
            **self.meta, "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None, "scaler": self._scaler_state(),
            "epoch": self.epoch, "epoch_state": self.epoch_state.as_dict(), "history": self.history.as_dict(),
            "bad_epochs": self.early_stopping.bad_epochs, "rng": ckpt.rng_state(),
            "loader": self.train_loader.state_dict(), "step": self.step.step,
        })  # fmt: skip

    def _scaler_state(self) -> dict[str, Any] | None:
        """fp16's gradient scaler (its loss scale and growth counter: plain numbers), None when it is off."""
        scaler = self.step.scaler
        return scaler.state_dict() if scaler is not None and scaler.is_enabled() else None

    def _end_epoch(self) -> None:
        # The checkpoint first, then the files that describe it: metrics never get ahead of it.
        self._save_last()
        if self.writer is not None:
            self.writer.write_epoch(self.history.records, title=self._curves_title())
        barrier(self.runtime)

    def _curves_title(self) -> str:
        smoothing = self.tc.label_smoothing
        return f"{model_label(self.cfg, self.raw_model)} on {self.cfg.data.source}" + (
            f" (training loss includes label smoothing {smoothing:g})" if smoothing else "")

    def _interrupted(self) -> None:
        self._save_last()
        barrier(self.runtime)
        self.history.stopped = "interrupted"
        log.warning("stopped in epoch %d; resume with: cnnlab train --resume %s", self.epoch + 1, self.run_dir or "RUNDIR")

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.ema is not None:  # the model leaves with the weights that were evaluated
            self.raw_model.load_state_dict(self.ema.module.state_dict())


def fit(
    model: nn.Module,
    splits: Splits,
    cfg: RunConfig,
    *,
    runtime: Runtime | None = None,
    run_dir: str | Path | None = None,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], bool | None] | None = None,
    lr_scales: Mapping[str, float] | None = None,
    loaders: tuple[BatchSource, BatchSource | None] | None = None,
    verbose: bool = True,
    phase: str | None = None,
    deadline: Deadline | None = None,
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
        lr_scales: learning-rate multipliers by the model's named parameter groups
            (``model.parameter_groups()``), e.g. ``{"backbone": 0.1}`` for discriminative
            fine-tuning; None trains every parameter at the schedule's rate.
        loaders: ``(train, val)`` batch sources to use instead of image loaders built from
            ``splits`` (val may be None), e.g. cached features.
        verbose: print one line per epoch (and a progress bar on a terminal).
        phase: names this training in a run that trains in phases (transfer learning:
            ``"head (frozen backbone)"``, ``"fine-tune"``); shown before each ``epoch i/n``.
        deadline: end by this time: after each epoch of the warmup the total steps are set from
            the epochs' median pace (:mod:`cnnlab.train.deadline`; one process, a fresh run, ``warmup_epochs >= 1``).

    Returns:
        The history; ``model`` holds the final weights (the EMA weights when EMA is on).

    Raises:
        TrainingDiverged: the training or validation loss became NaN/inf.
        CnnlabError: bad settings, or out of GPU memory.
    """
    runtime = runtime or resolve_runtime(cfg.train)
    trainer = Trainer(model, splits, cfg, runtime, run_dir=run_dir, on_epoch_end=on_epoch_end, lr_scales=lr_scales,
                      loaders=loaders, verbose=verbose, phase=phase, deadline=deadline)  # fmt: skip
    if resume is not None:
        trainer.restore(resume)
    return trainer.run()

"""One epoch of training, and evaluation: the two inner loops.

Both keep their running sums on the device and synchronise with the host only every
``sync_every`` steps (a ``.item()`` per step would stall a GPU). The epoch's progress
lives in an :class:`EpochState` that is updated after every completed step, so a
checkpoint taken between steps (or after a Ctrl-C, which only sets a flag) resumes the
epoch exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnnlab.train.mix import Mix, MixDraw, mixed_loss
from cnnlab.train.optim import set_lr
from cnnlab.train.progress import EpochProgress, PassProgress
from cnnlab.train.runtime import Runtime, all_reduce_sum


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite (``fit`` turns it into :class:`TrainingDiverged`)."""

    def __init__(self, step: int, lr: float) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step, self.lr = step, lr


class BatchSource(Protocol):
    """What the engine trains and validates on: a DeviceLoader, cached features, ...

    An epoch's batches are a pure function of ``(state, epoch, batch index)``, so an epoch
    can be continued from any batch (exact resume).
    """

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict[str, int]: ...


@dataclass
class EpochState:
    """Progress through the current epoch (what a mid-epoch checkpoint must hold)."""

    batch: int = 0  # the next batch to train on
    loss_sum: float = 0.0  # sum over seen images of the training loss
    correct: float = 0.0
    count: float = 0.0
    seconds: float = 0.0  # training time spent in this epoch so far

    def as_dict(self) -> dict[str, float]:
        return {"batch": self.batch, "loss_sum": self.loss_sum, "correct": self.correct, "count": self.count, "seconds": self.seconds}


@dataclass
class TrainStep:
    """The one training step: everything it needs besides the batch, and the step itself.

    Everything in cnnlab that updates weights (``fit``, lr-find, the overfit check, the
    lab's timing probe) calls it, so autocast, gradient clipping, the schedule and the
    EMA behave the same everywhere.
    """

    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    lr_at: Callable[[int], float]  # step -> learning rate (peak lr x schedule)
    runtime: Runtime
    grad_clip: float | None = None
    ema: object | None = None  # cnnlab.train.ema.EMA
    ema_target: nn.Module | None = None  # the unwrapped model the EMA averages
    sync_every: int = 20
    step: int = 0  # global optimisation step (drives the schedule)
    stop: Callable[[], bool] = field(default=lambda: False)  # polled after every step
    mix: Mix | None = None  # mixup / CutMix of each batch, drawn from (seed, step)
    # The labels the last step's accuracy counts against: the batch's own, or under mixing
    # each sample's dominant label (see cnnlab.train.mix.mixed_loss).
    labels: torch.Tensor | None = field(default=None, repr=False)
    # Gradient accumulation: each call's batch is split into this many micro-batches, whose
    # gradients add up to the gradient of the whole batch's mean loss before the one update.
    accumulate: int = 1
    # fp16 autocast's loss scaling (torch.amp.GradScaler); None, or one built with enabled=False,
    # steps as without it. Made here for fp16 when the caller gives none, so every user of the step has it.
    scaler: torch.amp.GradScaler | None = None

    def __post_init__(self) -> None:
        if self.scaler is None and self.runtime.amp_dtype == torch.float16:
            self.scaler = self.runtime.grad_scaler()

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on the batch ``(x, y)`` at the schedule's learning rate.

        With ``accumulate > 1`` the batch goes through the model in that many micro-batches
        (:meth:`_accumulate`); the update is the one the whole batch would give.

        Returns:
            ``(loss, logits)`` of the batch before the update, detached and still on the
            device: nothing here waits for the device (the caller decides when to sync).
        """
        set_lr(self.optimizer, self.lr_at(self.step))
        draw = self.mix.draw(self.step, x.shape[0], x.shape[-2], x.shape[-1]) if self.mix is not None else None
        if draw is not None:
            x = self.mix.apply(x, draw)
        if self.accumulate > 1 and x.shape[0] > 1:
            loss, logits = self._accumulate(model, x, y, draw)
        else:
            with self.runtime.autocast():
                logits = model(x)
                if draw is None:
                    loss, self.labels = self.loss_fn(logits.float(), y), y
                else:
                    loss, self.labels = mixed_loss(self.loss_fn, logits.float(), y, draw)
            self.optimizer.zero_grad(set_to_none=True)
            self._backward(loss)
        self._update(model)
        if self.ema is not None:
            self.ema.update(self.ema_target)
        self.step += 1
        return loss.detach(), logits.detach()

    def _backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def _update(self, model: nn.Module) -> None:
        """Clip (the true, unscaled gradient) and step; a scaler skips a step with inf/NaN gradients."""
        if self.grad_clip:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def _accumulate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draw: MixDraw | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward the batch in ``accumulate`` micro-batches; return its loss and logits.

        Micro-batch ``i`` of ``n_i`` images contributes ``loss_i * n_i / n``: the gradients add up
        to the gradient of the mean loss over all ``n`` images, as one batch of ``n`` gives (up to
        the order of float sums; batch norm sees micro-batch statistics, as it must). Under DDP
        the gradients are all-reduced once, after the last micro-batch (``no_sync`` before it).
        Mixing (mixup / CutMix) is drawn and applied to the whole batch first, as without accumulation.
        """
        n = x.shape[0]
        y_b = y.index_select(0, draw.perm.to(y.device, non_blocking=True)) if draw is not None else None
        k = min(self.accumulate, n)
        parts = list(zip(x.tensor_split(k), y.tensor_split(k), y_b.tensor_split(k) if y_b is not None else [None] * k))
        self.optimizer.zero_grad(set_to_none=True)
        losses, outputs, labels = [], [], []
        for i, (xi, yi, ybi) in enumerate(parts):
            with self.runtime.autocast():
                logits = model(xi)
                loss, seen = self._micro_loss(logits.float(), yi, ybi, draw)
            with _no_sync(model) if i < len(parts) - 1 else contextlib.nullcontext():
                self._backward(loss * (yi.shape[0] / n))
            losses.append(loss.detach() * (yi.shape[0] / n))
            outputs.append(logits.detach())
            labels.append(seen)
        self.labels = torch.cat(labels)
        return torch.stack(losses).sum(), torch.cat(outputs)

    def _micro_loss(
        self, logits: torch.Tensor, y: torch.Tensor, y_b: torch.Tensor | None, draw: MixDraw | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A micro-batch's loss and the labels its accuracy counts (as :func:`cnnlab.train.mix.mixed_loss`,
        whose pairing indexes the whole batch: here the partners' labels ``y_b`` come precomputed)."""
        if draw is None or y_b is None:
            return self.loss_fn(logits, y), y
        loss = draw.lam * self.loss_fn(logits, y) + (1.0 - draw.lam) * self.loss_fn(logits, y_b)
        return loss, (y if draw.lam >= 0.5 else y_b)


def _no_sync(model: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` (gradients stay local until the last micro-batch); a no-op otherwise."""
    inner = getattr(model, "_orig_mod", model)  # under torch.compile
    if isinstance(inner, DistributedDataParallel):
        return inner.no_sync()
    return contextlib.nullcontext()


def train_one_epoch(
    model: nn.Module,
    loader: BatchSource,
    ts: TrainStep,
    state: EpochState,
    *,
    on_step: Callable[[EpochState], None] | None = None,
    progress: EpochProgress | None = None,
    end: int | None = None,
) -> bool:
    """Train from ``state.batch`` to the end of the epoch (or until ``ts.stop()``).

    ``end``: the batch index the epoch ends before (None: all of the loader's batches); a
    run planned in steps (``train.steps``) ends its last epoch part way.

    Returns:
        True when the epoch finished, False when it stopped early on request.

    Raises:
        NonFiniteLoss: the loss became NaN/inf (the weights of that step are not kept
            in any checkpoint, because checkpoints are taken only after a sync).
    """
    model.train()
    device = ts.runtime.device
    loss_sum = torch.tensor(state.loss_sum, dtype=torch.float64, device=device)
    correct = torch.tensor(state.correct, dtype=torch.float64, device=device)
    count = state.count
    since_sync = 0
    tic = time.perf_counter()
    base_seconds = state.seconds
    images_at_start = count
    # A CPU step is slow enough that syncing after each costs nothing; on an accelerator a
    # .item() per step would stall the queue, so sums stay on the device for sync_every steps.
    sync_each_step = device.type == "cpu"

    def sync() -> None:
        state.loss_sum, state.correct = loss_sum.item(), correct.item()
        if not math.isfinite(state.loss_sum):
            raise NonFiniteLoss(ts.step, ts.optimizer.param_groups[0]["lr"])
        state.count = count
        state.seconds = base_seconds + time.perf_counter() - tic

    end = len(loader) if end is None else min(end, len(loader))
    for x, y in itertools.islice(loader.iter_from(state.batch), max(end - state.batch, 0)):  # no batch made past the end
        loss, logits = ts(model, x, y)
        n = y.shape[0]
        loss_sum += loss.double() * n
        correct += (logits.argmax(1) == ts.labels).sum()  # the dominant labels under mixup / CutMix
        count += n
        state.batch += 1
        since_sync += 1
        stop = ts.stop()
        if since_sync >= ts.sync_every or state.batch == end or stop or sync_each_step:
            sync()
            since_sync = 0
            if progress is not None:
                elapsed = max(state.seconds - base_seconds, 1e-9)
                progress.update(state.batch, state.loss_sum / state.count, state.correct / state.count, (count - images_at_start) / elapsed)
            if on_step is not None:
                on_step(state)
        if stop:
            return False
    sync()
    return True


@dataclass
class EvalResult:
    """Loss and accuracy over a split (summed over all processes)."""

    loss: float
    acc: float
    top5: float | None
    n: int
    logits: torch.Tensor | None = None  # (n, classes) on the CPU, when kept
    labels: torch.Tensor | None = None


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: BatchSource, runtime: Runtime, *, tta: bool = False, keep_outputs: bool = False,
    progress: PassProgress | None = None,
) -> EvalResult:  # fmt: skip
    """Mean cross-entropy, top-1 and top-5 accuracy of ``model`` on ``loader``.

    Args:
        tta: test-time augmentation: average the softmax of the image and its mirror image.
        keep_outputs: also return the logits (log-probabilities with ``tta``) and labels.
        progress: advanced after every batch (a bar on a terminal once the pass is slow).
    """
    was_training = model.training
    model.eval()
    device = runtime.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    correct5 = torch.zeros((), dtype=torch.float64, device=device)
    outputs, labels = [], []
    n = 0
    num_classes = None
    for x, y in loader:
        with runtime.autocast():
            logits = model(x).float()
            if tta:
                probs = (logits.softmax(1) + model(x.flip(3)).float().softmax(1)) / 2
                logits = probs.clamp_min(1e-12).log()
        num_classes = logits.shape[1]
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        if num_classes > 5:
            correct5 += (logits.topk(5, dim=1).indices == y[:, None]).any(1).sum()
        n += y.shape[0]
        if keep_outputs:
            outputs.append(logits.cpu())
            labels.append(y.cpu())
        if progress is not None:
            progress.advance()
    model.train(was_training)
    total_loss, total_correct, total_correct5, total_n = all_reduce_sum(
        [loss_sum.item(), correct.item(), correct5.item(), float(n)], runtime
    )
    total_n = max(total_n, 1.0)
    return EvalResult(
        loss=total_loss / total_n,
        acc=total_correct / total_n,
        top5=total_correct5 / total_n if num_classes and num_classes > 5 else None,
        n=int(total_n),
        logits=torch.cat(outputs) if keep_outputs and outputs else None,
        labels=torch.cat(labels) if keep_outputs and labels else None,
    )

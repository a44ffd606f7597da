"""How long a configuration's epochs take here, measured on a few of its own training steps.

The recipe's budget planner (:mod:`cnnlab.recipe.planner`) needs seconds per epoch of the
final model on the whole training split and of a search trial on its subset; the lab needs
the epochs each arm can train in its budget. All come from one measurement: a few real training steps of the configuration (its model, device, optimizer,
loss and loader, the batch's loading and augmentation included), as seconds per training
image, scaled to each epoch's images and evaluations.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from cnnlab import checkpoint as ckpt
from cnnlab.config import RunConfig
from cnnlab.data.imageset import Splits
from cnnlab.train.fit import build_loss
from cnnlab.train.loaders import train_loader
from cnnlab.train.loop import TrainStep
from cnnlab.train.optim import build_optimizer
from cnnlab.train.runtime import prepare, resolve_runtime
from cnnlab.run import build_model

# Evaluating an image is ~3x faster than training on it (no backward pass); epochs cost
# another ~5% in overheads (logging, checkpoints).
EVAL_SPEEDUP, EPOCH_OVERHEAD = 3.0, 1.05
# Training steps timed; the median of the second half is the step time. The first steps are
# warm-up: measured on 2 CPU cores, a small CNN's first 3 steps took 10-40x its steady step
# (kernel choices, allocations), and with 8 steps the median of the last 4 still read
# resnet9s's epoch 27% slower than its real epochs (68 s against 53.5 s); the second half
# of 24 steps is past the warm-up.
TIMED_STEPS = 24


@dataclass(frozen=True)
class Speed:
    """Measured seconds per training image of one configuration; epochs are derived from it."""

    train_image_seconds: float

    def epoch_seconds(self, train_images: int, val_images: int) -> float:
        """One epoch: training on ``train_images``, then evaluating the validation split."""
        return (self.train_image_seconds * train_images + self.eval_seconds(val_images)) * EPOCH_OVERHEAD

    def eval_seconds(self, images: int) -> float:
        """One evaluation pass over ``images`` (the test split's one-off cost)."""
        return self.train_image_seconds / EVAL_SPEEDUP * images

    def final_seconds(self, splits: Splits) -> float:
        """The one-off seconds at a run's end: the test evaluation, and with ``tta: auto`` (the
        recipe's final run) the validation split again plain and mirrored (3 passes)."""
        return self.eval_seconds(len(splits.test) + 3 * len(splits.val))


def measure_speed(cfg: RunConfig, splits: Splits, steps: int = TIMED_STEPS) -> Speed:
    """Time a few of ``cfg``'s own training steps on ``splits``.

    The global RNGs are restored afterwards, so the run that follows is unchanged.
    """
    runtime = resolve_runtime(cfg.train)
    rng = ckpt.rng_state()  # building the model and the loader's augmentation draw from the global RNGs
    try:
        loader = train_loader(splits, cfg, runtime)
        model = prepare(build_model(cfg, splits), runtime).train()
        step = TrainStep(build_optimizer(model, cfg.optim), build_loss(cfg.train, splits, runtime.device),
                         lambda _: cfg.optim.lr, runtime, grad_clip=cfg.train.grad_clip)  # fmt: skip
        batches = iter(loader)
        times = []
        for _ in range(min(steps, len(loader))):
            start = time.perf_counter()  # the batch's loading and augmentation are part of the step
            x, y = next(batches)
            step(model, x, y)[0].item()  # waits for the device, so the step is timed whole
            times.append(time.perf_counter() - start)
    finally:
        ckpt.set_rng_state(rng)
    return Speed(statistics.median(times[len(times) // 2 :]) / cfg.train.batch_size)


def measure_epoch_seconds(cfg: RunConfig, splits: Splits, steps: int = TIMED_STEPS) -> tuple[float, float]:
    """Seconds per epoch of ``cfg`` on ``splits`` (all its training images), and its run's one-off end seconds."""
    speed = measure_speed(cfg, splits, steps)
    return speed.epoch_seconds(len(splits.train), len(splits.val)), speed.final_seconds(splits)

"""One way to build a loader: a split, its normalisation statistics and a runtime.

:func:`build_loader` is the only place where a :class:`Runtime` (device, rank split,
memory format) and an augmentation spec meet a :class:`~cnnlab.data.loader.DeviceLoader`;
:func:`train_loader` and :func:`eval_loader` read the rest from a run's configuration,
so training, lr-find, the checks, the lab and evaluation all batch the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnnlab.config import RunConfig
from cnnlab.data.augment import build_augment
from cnnlab.data.imageset import ImageSet, Splits
from cnnlab.data.loader import DeviceLoader
from cnnlab.data.store import StoreSplit
from cnnlab.data.stream import StreamLoader
from cnnlab.train.runtime import Runtime

Stats = tuple[Sequence[float], Sequence[float]]  # per-channel (mean, std) in [0, 1] units


def build_loader(
    images: ImageSet | StoreSplit,
    stats: Stats,
    runtime: Runtime,
    *,
    batch_size: int,
    train: bool = False,
    seed: int = 0,
    augment: str | None = None,
    balanced: bool = False,
) -> DeviceLoader | StreamLoader:
    """Batches of ``images`` on the runtime's device, in its memory format, this rank's share.

    Args:
        images: the images and labels of one split (a store's split is streamed: :class:`StreamLoader`).
        stats: the training split's per-channel (mean, std) the batches are normalised with.
        runtime: where the batches are made (a distributed run splits each epoch by rank).
        batch_size: images per batch (per rank).
        train: shuffle by ``seed``, augment and drop the last partial batch; otherwise
            keep the order and every image.
        seed: seeds the permutation and the augmentation.
        augment: an augmentation spec (``cnnlab augment --help``), for training batches.
        balanced: draw training images with replacement, each class equally often.
    """
    mean, std = stats
    weights = None
    if train and balanced:
        counts = images.class_counts()
        weights = 1.0 / np.maximum(counts, 1)[images.labels]
    kind = StreamLoader if isinstance(images, StoreSplit) else DeviceLoader
    return kind(
        images, batch_size=batch_size, mean=mean, std=std, train=train, seed=seed,
        augment=build_augment(augment, mean=mean) if train and augment else None, sample_weights=weights,
        device=runtime.device, rank=runtime.rank, world_size=runtime.world_size, channels_last=runtime.channels_last,
    )  # fmt: skip


def train_loader(splits: Splits, cfg: RunConfig, runtime: Runtime) -> DeviceLoader | StreamLoader:
    """The training batches of a run: shuffled by its seed, augmented and sampled as ``cfg`` says.

    One batch per optimizer step: ``batch_size x accumulate`` images, which the training step
    splits into micro-batches of ``batch_size`` (:class:`cnnlab.train.loop.TrainStep`).
    """
    tc = cfg.train
    return build_loader(splits.train, splits.stats, runtime, batch_size=tc.batch_size * tc.accumulate, train=True,
                        seed=tc.seed, augment=cfg.data.augment, balanced=tc.balanced_sampling)  # fmt: skip


def eval_loader(images: ImageSet | StoreSplit, splits: Splits, cfg: RunConfig, runtime: Runtime) -> DeviceLoader | StreamLoader | None:
    """Ordered, un-augmented batches of ``images`` (a split of ``splits``); None when it is empty."""
    if len(images) == 0:
        return None
    return build_loader(images, splits.stats, runtime, batch_size=cfg.train.eval_batch_size)

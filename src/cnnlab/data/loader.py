"""Device-resident batches: the whole dataset is one uint8 tensor on the training device.

Per-sample data loaders (a ``Dataset`` returning one decoded, transformed image at a
time, collated by worker processes) spend far more time moving and transforming
single images than a small CNN spends learning from them. Small-image datasets fit in
memory (Fashion-MNIST is 47 MB as uint8), so :class:`DeviceLoader` keeps them on the
device once and, per batch, gathers the rows of a seeded permutation, converts them to
float, augments the whole batch with per-sample random parameters, and normalises with
the training split's per-channel mean/std.

Randomness is a pure function of ``(seed, epoch, rank, batch index)``: the permutation
is seeded by ``(seed, epoch)`` (the same on every rank, so ranks take disjoint slices
of it), and each batch's augmentation by ``(seed, epoch, rank, batch)``. Any batch of
any epoch can therefore be reproduced on its own, which is what makes resuming a run
in the middle of an epoch exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from cnnlab.config import DataConfig
from cnnlab.data.sources import ImageSet, load_splits
from cnnlab.errors import CnnlabError


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from several integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class EpochOrder:
    """Which images a rank visits in an epoch, in which order, in how many batches.

    The contract every batch source of a split shares (:class:`DeviceLoader`,
    :class:`cnnlab.data.stream.StreamLoader`): the order is a pure function of ``(seed,
    epoch)``, the same on every rank, and rank ``r`` takes the items ``r, r + world_size,
    ...`` of it, so the ranks' slices are disjoint. A subclass's constructor calls
    :meth:`_setup`, which checks and keeps the arguments they all take.
    """

    train: bool
    rank: int
    world_size: int
    seed: int
    epoch: int
    batch_size: int
    sample_weights: torch.Tensor | None
    n_images: int

    def _setup(self, n_images: int, classes: Sequence[str], channels: int, *, batch_size: int, mean: Sequence[float],
               std: Sequence[float], train: bool, augment, seed: int, rank: int, world_size: int,  # noqa: ANN001
               device: torch.device | str, sample_weights: np.ndarray | None, channels_last: bool,
               dtype: torch.dtype) -> None:  # fmt: skip
        """Check and keep the arguments every batch source takes, and the normalisation of its batches."""
        if batch_size < 1:
            raise CnnlabError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if len(mean) != channels or len(std) != channels:
            raise CnnlabError(f"mean/std have {len(mean)} channel(s) but the images have {channels}")
        self.device = torch.device(device)
        self.n_images = int(n_images)
        self.classes = classes
        self.batch_size = batch_size
        self.train = train
        self.augment = augment if train else None
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        self.dtype = dtype
        self.epoch = 0
        self.sample_weights = None if sample_weights is None else torch.as_tensor(sample_weights, dtype=torch.float64)
        if train and self.num_samples < batch_size:
            raise CnnlabError(
                f"the training split has {self.num_samples} image(s) per process, fewer than one batch "
                f"of {batch_size}; lower the batch size"
            )
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
        # x_norm = (x_u8 / 255 - mean) / std = x_u8 * scale + shift (one fused op without augmentation).
        self._scale_u8 = (1.0 / (255.0 * std_t)).to(self.device, dtype)
        self._scale = (1.0 / std_t).to(self.device, dtype)
        self._shift = (-mean_t / std_t).to(self.device, dtype)
        self._gen = torch.Generator(device=self.device)

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch."""
        if self.train:
            return self.n_images // self.world_size
        return len(range(self.rank, self.n_images, self.world_size))

    def __len__(self) -> int:
        if self.train:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """The image indices this rank visits in ``epoch``, in order (on the CPU)."""
        epoch = self.epoch if epoch is None else epoch
        n = self.n_images
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0x5EED))
        if self.sample_weights is not None:
            perm = torch.multinomial(self.sample_weights, n, replacement=True, generator=gen)
        else:
            perm = self._permutation(gen)
        per_rank = n // self.world_size
        return perm[self.rank : per_rank * self.world_size : self.world_size]

    def _permutation(self, gen: torch.Generator) -> torch.Tensor:
        """An epoch's permutation of the training images, drawn from ``gen`` (a batch source may visit them otherwise)."""
        return torch.randperm(self.n_images, generator=gen)


class DeviceLoader(EpochOrder):
    """Batches of normalised (and, for training, augmented) images from device memory.

    Args:
        data: the images (uint8 N,C,H,W) and labels of one split.
        batch_size: images per batch (per rank).
        mean, std: per-channel statistics in [0, 1] units (from the training split).
        train: shuffle, augment and drop the last partial batch; otherwise keep the
            order, skip augmentation and keep every image.
        augment: a callable ``(x, generator) -> x`` on float batches in [0, 1] units,
            e.g. from :func:`cnnlab.data.augment.build_augment`.
        seed: seeds the permutation and the augmentation.
        rank, world_size: this process's slice of each epoch (distributed training).
        device: where the images live and batches are made.
        sample_weights: per-image sampling weights for training (balanced sampling):
            each epoch draws ``len(data)`` images with replacement.
        channels_last: return batches in channels-last memory format.
        dtype: the float type of the batches.
    """

    def __init__(
        self,
        data: ImageSet,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = True,
        augment=None,  # noqa: ANN001 - any callable (x, generator) -> x
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        sample_weights: np.ndarray | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self._setup(len(data.labels), data.classes, data.image_shape[0], batch_size=batch_size, mean=mean, std=std,
                    train=train, augment=augment, seed=seed, rank=rank, world_size=world_size, device=device,
                    sample_weights=sample_weights, channels_last=channels_last, dtype=dtype)  # fmt: skip
        self.images = torch.from_numpy(np.array(data.images, dtype=np.uint8, copy=True)).to(self.device)
        self.labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64)).to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the current epoch from batch ``start_batch`` (exact mid-epoch resume)."""
        return self._iterate(start_batch, self.augment, self.seed)

    def iter_augmented(self, augment, *, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # noqa: ANN001
        """This epoch's batches, in the loader's order, each augmented by ``augment``.

        Each batch's randomness is seeded by ``(seed, epoch, rank, batch index)``, so the
        same call gives the same images: fixed augmented copies of an ordered split (cached
        feature views) without turning on shuffling or dropping the last batch.
        """
        return self._iterate(0, augment, seed)

    def _iterate(self, start_batch: int, augment, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # noqa: ANN001
        order = self.order().to(self.device)
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self._make_batch(idx, b, augment, seed), self.labels.index_select(0, idx)

    def _make_batch(self, idx: torch.Tensor, batch_index: int, augment, seed: int) -> torch.Tensor:  # noqa: ANN001
        raw = self.images.index_select(0, idx)
        if augment is None:
            x = torch.addcmul(self._shift, raw.to(self.dtype), self._scale_u8)
        else:
            self._gen.manual_seed(derive_seed(seed, self.epoch, self.rank, batch_index))
            x = raw.to(self.dtype).mul_(1.0 / 255.0)
            x = augment(x, self._gen)
            x = torch.addcmul(self._shift, x, self._scale)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def state_dict(self) -> dict[str, int]:
        """Everything needed to reproduce the loader's randomness (it is a pure function of these)."""
        return {"seed": self.seed, "epoch": self.epoch, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])


def sample_batch(
    source: str, n: int = 64, root: str | None = None, *, split: str = "train", seed: int = 0,
    allow_outside_root: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """A normalised float batch of ``n`` random images of a data source (for inspection).

    ``allow_outside_root`` lets a CSV source list files outside its folder (``DataConfig``).

    Returns:
        ``(x, y, classes)``: x float32 (n, C, H, W) standardised with the training
        split's statistics, y int64 (n,).
    """

    splits = load_splits(DataConfig(source=source, root=root, allow_outside_root=allow_outside_root))
    part = splits.split(split)
    if len(part) == 0:
        raise CnnlabError(f"the {split} split of {source} is empty")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(part), size=min(n, len(part)), replace=False)
    mean, std = splits.stats
    loader = DeviceLoader(part.subset(idx), batch_size=len(idx), mean=mean, std=std, train=False)
    x, y = next(iter(loader))
    return x, y, splits.classes

"""Batches decoded from a prepared store while training: data larger than memory.

:class:`StreamLoader` is :class:`~cnnlab.data.loader.DeviceLoader`'s counterpart for a
:class:`~cnnlab.data.store.StoreSplit`: the same batches-of-normalised-float-tensors
interface (``len``, ``set_epoch``, ``iter_from`` for exact resume, ``state_dict``), but the
images stay in the store's shards and each batch is read and decoded when it is needed:

- training: a random-resized crop of the *stored* image (at its own resolution and aspect
  ratio; area 8-100%, aspect 3/4-4/3, torchvision's ``RandomResizedCrop``) resized to the
  model's input size, a random horizontal flip, then the run's batched augmentations on
  the device (``data.augment``);
- evaluation: the shorter side resized to ``size / 0.875`` and the centre ``size`` x
  ``size`` crop (torchvision's reference recipe, 224 from 256).

Decoding runs in a pool of threads (Pillow releases the GIL while it decodes and resizes)
a few batches ahead of the training step. Randomness is a pure function of ``(seed,
epoch, rank, batch)``, as in ``DeviceLoader``: the epoch's order is the same permutation
of the split (seeded by ``(seed, epoch)``), each rank takes its disjoint slice of it, and
a batch's crops and flips are drawn from a generator seeded by ``(seed, epoch, rank,
batch)`` in the main thread, before any decoding, so thread timing cannot change them. A
run killed in the middle of an epoch therefore resumes with exactly the batches it would
have seen.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from cnnlab.data.loader import EpochOrder, derive_seed
from cnnlab.data.store import EVAL_CROP, StoreSplit
from cnnlab.errors import CnnlabError

CROP_SCALE = (0.08, 1.0)  # random-resized-crop: fraction of the image's area
CROP_RATIO = (3 / 4, 4 / 3)  # and aspect ratio (torchvision's defaults)
PREFETCH = 3  # batches decoded ahead of the one being trained on

Box = tuple[float, float, float, float]


def random_resized_box(rng: np.random.Generator, h: int, w: int) -> Box:
    """A random crop (left, top, right, bottom) of an ``h`` x ``w`` image, as torchvision's ``RandomResizedCrop`` draws it."""
    area = h * w
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return (left, top, left + cw, top + ch)
    ratio = w / h  # fall back to the centre crop of the nearest allowed aspect ratio
    if ratio < CROP_RATIO[0]:
        cw, ch = w, int(round(w / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        ch, cw = h, int(round(h * CROP_RATIO[1]))
    else:
        cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
    return (left, top, left + cw, top + ch)


def center_box(h: int, w: int, fraction: float = EVAL_CROP) -> Box:
    """The centre square of side ``fraction`` x the shorter side (resize-then-centre-crop as one box)."""
    side = fraction * min(h, w)
    left, top = (w - side) / 2, (h - side) / 2
    return (left, top, left + side, top + side)


def default_workers(world_size: int = 1) -> int:
    """Decoding threads per process: the CPU cores shared by the ranks of this machine, 1 to 16."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size) or 1)
    return max(1, min(16, (os.cpu_count() or 1) // max(1, local)))


class StreamLoader(EpochOrder):
    """Batches of normalised (and, for training, augmented) images decoded from a store.

    Arguments as :class:`~cnnlab.data.loader.DeviceLoader`'s, with ``data`` a
    :class:`~cnnlab.data.store.StoreSplit` (its ``size`` is the input size), plus
    ``workers``, the decoding threads (default :func:`default_workers`).
    """

    def __init__(
        self,
        data: StoreSplit,
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
        workers: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise CnnlabError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        c = data.channels
        if len(mean) != c or len(std) != c:
            raise CnnlabError(f"mean/std have {len(mean)} channel(s) but the images have {c}")
        self.data = data
        self.device = torch.device(device)
        self.labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
        self.n_images = int(self.labels.shape[0])
        self.classes = data.classes
        self.batch_size = batch_size
        self.train = train
        self.augment = augment if train else None
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        self.dtype = dtype
        self.epoch = 0
        self.workers = workers or default_workers(world_size)
        self.sample_weights = None if sample_weights is None else torch.as_tensor(sample_weights, dtype=torch.float64)
        if train and self.num_samples < batch_size:
            raise CnnlabError(
                f"the training split has {self.num_samples} image(s) per process, fewer than one batch "
                f"of {batch_size}; lower the batch size"
            )
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        self._scale_u8 = (1.0 / (255.0 * std_t)).to(self.device, dtype)
        self._scale = (1.0 / std_t).to(self.device, dtype)
        self._shift = (-mean_t / std_t).to(self.device, dtype)
        self._gen = torch.Generator(device=self.device)
        self._pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ the same contract as DeviceLoader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the current epoch from batch ``start_batch`` (exact mid-epoch resume)."""
        order = self.order()
        pending: deque[tuple[int, torch.Tensor, list[Future]]] = deque()
        batches = iter(range(start_batch, len(self)))

        def submit() -> None:
            b = next(batches, None)
            if b is not None:
                idx = order[b * self.batch_size : (b + 1) * self.batch_size]
                pending.append((b, idx, [self._executor().submit(self._decode, *job) for job in self.jobs(idx, b)]))

        for _ in range(PREFETCH):
            submit()
        try:
            while pending:
                b, idx, futures = pending.popleft()
                submit()
                raw = torch.from_numpy(np.stack([f.result() for f in futures]))
                yield self._make_batch(raw, b), self.labels.index_select(0, idx).to(self.device)
        finally:
            for _, _, futures in pending:
                for f in futures:
                    f.cancel()

    def iter_augmented(self, augment, *, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # noqa: ANN001
        raise CnnlabError("cached augmented feature views need the images in memory; use --loader memory or --feature-views 0")

    def state_dict(self) -> dict[str, int]:
        """Everything needed to reproduce the loader's randomness (it is a pure function of these)."""
        return {"seed": self.seed, "epoch": self.epoch, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])

    # ------------------------------------------------------------------ reading and decoding

    def jobs(self, idx: torch.Tensor, batch_index: int) -> list[tuple[int, Box, bool]]:
        """``(store index, crop box, flip)`` of each image of batch ``batch_index`` (its randomness drawn here)."""
        store, where = self.data.store, self.data.index[idx.numpy()]
        heights, widths = store.heights[where], store.widths[where]
        if not self.train:
            return [(int(i), center_box(int(h), int(w)), False) for i, h, w in zip(where, heights, widths)]
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch, self.rank, batch_index, 0xC0B))
        out = []
        for i, h, w in zip(where, heights, widths):
            box = random_resized_box(rng, int(h), int(w))
            out.append((int(i), box, bool(rng.random() < 0.5)))
        return out

    def _decode(self, i: int, box: Box, flip: bool) -> np.ndarray:
        return self.data.store.decode(i, box, flip, self.data.size, self.data.channels)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cnnlab-decode")
        return self._pool

    def close(self) -> None:
        """Stop the decoding threads (they also stop with the process)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _make_batch(self, raw: torch.Tensor, batch_index: int) -> torch.Tensor:
        raw = raw.to(self.device, non_blocking=True)
        if self.augment is None:
            x = torch.addcmul(self._shift, raw.to(self.dtype), self._scale_u8)
        else:
            self._gen.manual_seed(derive_seed(self.seed, self.epoch, self.rank, batch_index))
            x = raw.to(self.dtype).mul_(1.0 / 255.0)
            x = self.augment(x, self._gen)
            x = torch.addcmul(self._shift, x, self._scale)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

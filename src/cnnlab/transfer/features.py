"""Feature extraction with a disk cache, and a loader that serves cached features.

With a frozen backbone the features of an image never change, so computing them every
epoch wastes nearly all of the work. They are computed once per split (and per
augmented view), stored under ``cache_dir("features")`` and reused by every later epoch
and every later run with the same key: backbone + weights hash + preprocessing + data
fingerprint + split + view (+ augmentation spec and seed for augmented views).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from cnnlab.data.augment import build_augment
from cnnlab.data.imageset import ImageSet, Splits
from cnnlab.data.loader import DeviceLoader, derive_seed
from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_write_bytes, cache_dir
from cnnlab.train.loaders import build_loader
from cnnlab.train.progress import PassProgress
from cnnlab.train.runtime import Runtime

log = logging.getLogger(__name__)
FORMAT = 1  # bump when what is stored changes


def feature_key(identity: dict[str, Any], fingerprint: str, split: str, view: int, augment: str, seed: int) -> str:
    """The cache key of one split's features (``view`` 0 is the plain, non-augmented one)."""
    aug = [augment, seed] if view > 0 else None
    text = json.dumps([FORMAT, identity, fingerprint, split, view, aug], sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@torch.no_grad()
def extract(
    model: torch.nn.Module, images: ImageSet, mean: Any, std: Any, *, device: torch.device, batch_size: int = 256,
    augment: Any = None, seed: int = 0, channels_last: bool = False, label: str = "caching features",
    verbose: bool = True,
) -> torch.Tensor:  # fmt: skip
    """Features (N, F) float32 on the CPU of every image, in order, through ``model.features``.

    Args:
        augment: optional ``(x, generator) -> x`` on [0, 1] batches (an augmented view);
            each batch's randomness is seeded by ``(seed, batch index)``.
        label: what the progress bar says (shown on a terminal when the pass is slow).
        verbose: show the progress bar.
    """
    loader = build_loader(images, (mean, std), Runtime.local(device, channels_last=channels_last), batch_size=batch_size)
    batches = loader if augment is None else loader.iter_augmented(augment, seed=seed)
    was = model.training
    model.eval()
    out = []
    with PassProgress(label, len(loader), enabled=verbose) as bar:
        for x, _ in batches:
            out.append(model.features(x).float().cpu())
            bar.advance()
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)


def cached_features(
    model: Any, splits: Splits, split: str, *, device: torch.device, view: int = 0, augment: str = "", seed: int = 0,
    batch_size: int = 256, cache: bool = True, identity: dict[str, Any] | None = None, channels_last: bool = False,
    indices: np.ndarray | None = None, verbose: bool = True,
) -> tuple[torch.Tensor, bool]:  # fmt: skip
    """One split's features, from the disk cache when present.

    Args:
        indices: only these images of the split, in this order (e.g. a ``--val-subset``);
            None: all of them. They are cached under their own key.
        verbose: show a progress bar while features are computed (on a terminal).

    Returns:
        ``(features (N, F) float32 on the CPU, hit)``; ``hit`` is True when they came from the cache.
    """
    identity = identity if identity is not None else model.cache_identity()
    images = splits.split(split)
    part = split
    if indices is not None:
        images = images.subset(indices)
        part = f"{split}/{hashlib.blake2b(np.asarray(indices, np.int64).tobytes(), digest_size=8).hexdigest()}"
    path = cache_dir("features") / f"{feature_key(identity, splits.fingerprint, part, view, augment, seed)}.npy"
    if cache and path.is_file():
        try:
            return torch.from_numpy(np.load(path)), True
        except (OSError, ValueError):
            log.warning("feature cache %s is unreadable; computing the features again", path)
    mean, std = splits.stats
    aug = build_augment(augment, mean=mean) if view > 0 else None
    label = f"caching {split} features" + (f" (augmented view {view})" if view else "")
    feats = extract(model, images, mean, std, device=device, batch_size=batch_size, augment=aug,
                    seed=derive_seed(seed, view), channels_last=channels_last, label=label, verbose=verbose)  # fmt: skip
    if cache:
        buf = io.BytesIO()
        np.save(buf, feats.numpy())
        atomic_write_bytes(path, buf.getvalue())
    return feats, False


class FeatureLoader:
    """Batches of cached features (and labels), with :class:`DeviceLoader`'s interface.

    Args:
        views: (V, N, F) features: view 0 plain, views 1.. augmented copies.
        labels: (N,) class indices.
        batch_size: features per batch.
        train: shuffle (seeded by ``(seed, epoch)``), draw one random view per image per
            epoch, and drop the last partial batch; otherwise plain view, in order.
        seed: seeds the order and the choice of views.
        device: where the features live.
    """

    def __init__(self, views: torch.Tensor, labels: Any, *, batch_size: int, train: bool, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        self.device = torch.device(device)
        self.views = views.to(self.device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(self.device)
        self.batch_size, self.train, self.seed, self.epoch = batch_size, train, seed, 0
        if train and self.num_samples < batch_size:
            raise CnnlabError(f"the training split has {self.num_samples} image(s), fewer than one batch of {batch_size}; lower the batch size")  # fmt: skip

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the current epoch from batch ``start_batch``."""
        n = self.num_samples
        if self.train:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0xFEA7))
            order = torch.randperm(n, generator=gen)
            view = torch.randint(0, self.views.shape[0], (n,), generator=gen)
        else:
            order, view = torch.arange(n), torch.zeros(n, dtype=torch.int64)
        order, view = order.to(self.device), view.to(self.device)
        for b in range(start_batch, len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[sl]
            yield self.views[view[sl], idx], self.labels.index_select(0, idx)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

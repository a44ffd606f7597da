"""Image sets and splits: the uint8 arrays every source yields, and how they are divided.

:class:`ImageSet` is one split's images, labels and class names; :class:`RawData` is what a
source loader returns; :class:`Splits` is train / val / test plus what describes them. The
helpers here split and convert image sets; :mod:`cnnlab.data.sources` resolves a source
into them.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import numpy as np

from cnnlab.data.stats import channel_stats
from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_write_json, cache_dir

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageSet:
    """Images of one split.

    Attributes:
        images: uint8 array (N, C, H, W); may be a read-only memory map.
        labels: int64 array (N,) of class indices.
        classes: class names, indexed by label.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: np.ndarray) -> ImageSet:
        """The images at ``indices`` (sorted, so memory-mapped reads stay sequential)."""
        indices = np.sort(np.asarray(indices, dtype=np.int64))
        return ImageSet(np.ascontiguousarray(self.images[indices]), self.labels[indices], self.classes)

    def class_counts(self) -> np.ndarray:
        """Number of images of each class (length ``len(classes)``)."""
        return np.bincount(self.labels, minlength=len(self.classes))


@dataclass(frozen=True)
class RawData:
    """What a source loader returns, before the held-out splits are made."""

    train: ImageSet
    test: ImageSet | None
    val: ImageSet | None
    name: str  # a readable description of the source
    fingerprint: str  # changes whenever the images could have changed
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason) of images that could not be read


@dataclass(frozen=True)
class Splits:
    """Train, validation and test image sets of one source, plus what describes them."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    name: str
    fingerprint: str
    skipped: tuple[tuple[str, str], ...] = ()
    normalize: str = "standardize"  # standardize | unit | raw (see DataConfig.normalize)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    def split(self, name: str) -> ImageSet:
        """The image set called ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise CnnlabError(f"unknown split '{name}'; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    @functools.cached_property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The per-channel (mean, std) in [0, 1] units that batches are normalised with.

        ``standardize``: the training split's own statistics (cached on disk), so inputs
        have zero mean and unit variance per channel; ``unit``: (0, 1), pixels in [0, 1];
        ``raw``: (0, 1/255), the raw [0, 255] values.
        """
        c = self.image_shape[0]
        if self.normalize == "unit":
            return (0.0,) * c, (1.0,) * c
        if self.normalize == "raw":
            return (0.0,) * c, (1.0 / 255.0,) * c
        return _cached_stats(self.train, self.fingerprint)


def _cached_stats(train: ImageSet, fingerprint: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = cache_dir("stats") / f"{fingerprint}.json"
    # A cached file is only a hint: anything that is not one finite mean and one positive std
    # per channel (a damaged or hand-edited file) is recomputed, never trusted.
    try:
        cached = json.loads(path.read_text())
        mean = tuple(float(v) for v in cached["mean"])
        std = tuple(float(v) for v in cached["std"])
        if len(mean) == len(std) == train.image_shape[0] and all(map(math.isfinite, mean + std)) and min(std) > 0:
            return mean, std
    except (OSError, ValueError, KeyError, TypeError):
        pass
    mean, std = channel_stats(train.images)
    atomic_write_json(path, {"mean": list(mean), "std": list(std), "count": len(train)})
    return mean, std


# --------------------------------------------------------------------------- splitting


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held-out) with ``fraction`` of each class held out.

    Each class contributes ``round(fraction * count)`` images to the held-out part
    (at least one when the fraction is positive and the class has two or more images),
    chosen by a permutation seeded with ``seed``.
    """
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(idx.size)]
        n_held = int(round(fraction * idx.size))
        if fraction > 0 and n_held == 0 and idx.size >= 2:
            n_held = 1
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` images with the class proportions of ``labels`` (seeded)."""
    if n >= labels.size:
        return np.arange(labels.size)
    _, held = stratified_split(labels, n / labels.size, seed)
    return held



def convert_channels(images: ImageSet, channels: int) -> ImageSet:
    """Repeat grayscale to RGB, or take the luma (ITU-R 601) of RGB for grayscale."""
    c = images.image_shape[0]
    if c == channels:
        return images
    if channels == 3 and c == 1:
        arr = np.repeat(images.images, 3, axis=1)
    elif channels == 1 and c == 3:
        weights = np.array([299, 587, 114], dtype=np.uint32).reshape(1, 3, 1, 1)
        arr = ((images.images.astype(np.uint32) * weights).sum(axis=1, keepdims=True) + 500) // 1000
        arr = arr.astype(np.uint8)
    else:
        raise CnnlabError(f"cannot convert {c}-channel images to {channels} channels")
    return ImageSet(arr, images.labels, images.classes)

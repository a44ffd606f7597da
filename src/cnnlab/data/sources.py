"""Data sources: one call turns a :class:`DataConfig` into train / val / test image sets.

A source is a dataset name (``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``,
``digits``, ``synthetic[:k=v,...]``), an image folder in ImageFolder layout, or a CSV
file of ``path,label`` rows. Every source yields uint8 arrays of shape (N, C, H, W) with
int64 labels and class names. Sources without a validation (or test) split get one held
out from their training split: stratified and seeded, so a split is the same on every
machine and every run.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.config import DataConfig
from cnnlab.errors import CnnlabError

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
    from cnnlab.data.stats import channel_stats
    from cnnlab.io import atomic_write_json, cache_dir

    path = cache_dir("stats") / f"{fingerprint}.json"
    try:
        cached = json.loads(path.read_text())
        return tuple(cached["mean"]), tuple(cached["std"])
    except (OSError, ValueError, KeyError):
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


def _empty_like(ref: ImageSet) -> ImageSet:
    return ImageSet(np.zeros((0, *ref.image_shape), np.uint8), np.zeros(0, np.int64), ref.classes)


def make_splits(raw: RawData, cfg: DataConfig) -> Splits:
    """Hold out val/test where the source lacks them, and convert channels."""
    train, val, test = raw.train, raw.val, raw.test
    if test is None:
        if cfg.test_split > 0:
            keep, held = stratified_split(train.labels, cfg.test_split, cfg.split_seed + 1)
            train, test = train.subset(keep), train.subset(held)
        else:
            test = _empty_like(train)
    if val is None:
        if cfg.val_split > 0:
            # The fraction is of the original training split, whatever went to test.
            frac = min(cfg.val_split * len(raw.train) / max(len(train), 1), 0.99)
            keep, held = stratified_split(train.labels, frac, cfg.split_seed)
            train, val = train.subset(keep), train.subset(held)
        else:
            val = _empty_like(train)
    if cfg.channels is not None:
        train, val, test = (convert_channels(s, cfg.channels) for s in (train, val, test))
    key = json.dumps(
        [raw.fingerprint, cfg.val_split, cfg.test_split, cfg.split_seed, cfg.channels], sort_keys=True
    )
    fingerprint = hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
    return Splits(train, val, test, raw.name, fingerprint, raw.skipped)


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


# --------------------------------------------------------------------------- resolving a source


def _named_sources() -> dict[str, Callable[[DataConfig, dict[str, str]], RawData]]:
    from cnnlab.data import builtin

    return dict(builtin.SOURCES)


def parse_source(source: str) -> tuple[str, dict[str, str]]:
    """Split ``name:k=v,k=v`` into the name and its options."""
    name, _, rest = source.partition(":")
    options: dict[str, str] = {}
    if rest:
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise CnnlabError(f"bad option '{item}' in data source '{source}'; write name:key=value,key=value")
            options[key.strip()] = value.strip()
    return name.strip().lower(), options


def load_raw(cfg: DataConfig) -> RawData:
    """Load the source named by ``cfg.source`` without making the held-out splits."""
    named = _named_sources()
    name, options = parse_source(cfg.source)
    if name in named:
        return named[name](cfg, options)
    path = Path(cfg.source).expanduser()
    if path.is_dir():
        from cnnlab.data.images import load_image_folder

        return load_image_folder(path, cfg)
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".txt"):
        from cnnlab.data.images import load_csv

        return load_csv(path, cfg)
    close = difflib.get_close_matches(name, list(named), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise CnnlabError(
        f"data source '{cfg.source}' is neither a dataset name ({', '.join(named)}) "
        f"nor an existing image folder or CSV file.{hint}"
    )


def load_splits(cfg: DataConfig, *, train_subset: int | None = None, subset_seed: int = 0) -> Splits:
    """Load a source and return its train / val / test image sets.

    Args:
        cfg: the data configuration (source, root, split fractions, size, channels).
        train_subset: keep only this many training images, stratified by class
            (val and test are left whole so that results stay comparable).
        subset_seed: seeds the choice of the training subset.
    """
    splits = make_splits(load_raw(cfg), cfg)
    if cfg.normalize != "standardize":
        splits = dataclasses.replace(splits, normalize=cfg.normalize)
    if cfg.class_subset is not None:
        splits = select_classes(splits, cfg.class_subset)
    if train_subset is not None and train_subset < len(splits.train):
        if train_subset < len(splits.classes):
            raise CnnlabError(
                f"train_subset={train_subset} is smaller than the number of classes ({len(splits.classes)})"
            )
        idx = stratified_subset(splits.train.labels, train_subset, subset_seed)
        fp = hashlib.blake2b(f"{splits.fingerprint}/{train_subset}/{subset_seed}".encode(), digest_size=12)
        splits = dataclasses.replace(splits, train=splits.train.subset(idx), fingerprint=fp.hexdigest())
    return splits


def select_classes(splits: Splits, keep: tuple[int, ...]) -> Splits:
    """Keep only the classes ``keep`` (indices into ``splits.classes``) in every split,
    relabelled ``0..k-1`` in the order given (e.g. pre-train on some classes, transfer to others).

    Raises:
        CnnlabError: an index out of range, a repeated index, or an empty selection.
    """
    n = len(splits.classes)
    if not keep or len(set(keep)) != len(keep) or not all(0 <= int(k) < n for k in keep):
        raise CnnlabError(f"data.class_subset {list(keep)} must list distinct class indices in 0..{n - 1}")
    lookup = np.full(n, -1, dtype=np.int64)
    lookup[np.asarray(keep, dtype=np.int64)] = np.arange(len(keep))
    names = tuple(splits.classes[int(k)] for k in keep)

    def pick(part: ImageSet) -> ImageSet:
        idx = np.flatnonzero(lookup[part.labels] >= 0)
        return ImageSet(np.ascontiguousarray(part.images[idx]), lookup[part.labels[idx]], names)

    fp = hashlib.blake2b(f"{splits.fingerprint}/classes={list(keep)}".encode(), digest_size=12).hexdigest()
    return dataclasses.replace(splits, train=pick(splits.train), val=pick(splits.val), test=pick(splits.test), fingerprint=fp)


def load_split(cfg: DataConfig, split: str = "train") -> ImageSet:
    """Images, labels and class names of one split (``train``, ``val`` or ``test``)."""
    return load_splits(cfg).split(split)

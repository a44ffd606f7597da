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
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cnnlab.config import DataConfig, parse_source
from cnnlab.data.builtin import SOURCES
from cnnlab.data.images import load_csv, load_image_folder
from cnnlab.data.imageset import (
    SPLITS,
    ImageSet,
    RawData,
    Splits,
    convert_channels,
    stratified_split,
    stratified_subset,
)
from cnnlab.data.store import is_store, load_store_splits
from cnnlab.errors import CnnlabError

__all__ = [  # the image-set types are re-exported: most callers want them with load_splits
    "SPLITS", "ImageSet", "RawData", "Splits", "convert_channels", "load_raw", "load_split", "load_splits",
    "make_splits", "parse_source", "select_classes", "stratified_split", "stratified_subset",
]  # fmt: skip


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


# --------------------------------------------------------------------------- resolving a source


def _named_sources() -> dict[str, Callable[[DataConfig, dict[str, str]], RawData]]:
    return dict(SOURCES)


def load_raw(cfg: DataConfig) -> RawData:
    """Load the source named by ``cfg.source`` without making the held-out splits.

    The spec's grammar and a built-in dataset's options were checked when ``cfg`` was
    built (:func:`cnnlab.config.source_options`), before any work.
    """
    named = _named_sources()
    name, options = parse_source(cfg.source)
    if name in named:
        return named[name](cfg, options)
    path = Path(cfg.source).expanduser()
    if path.is_dir():
        return load_image_folder(path, cfg)
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".txt"):
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
    # A prepared store (`cnnlab data prepare`) is decoded into memory or streamed, as data.loader says.
    splits = load_store_splits(cfg) if is_store(cfg.source) else make_splits(load_raw(cfg), cfg)
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

"""Augmented views of a few images, for looking at what augmentation does (seed section 8)."""

from __future__ import annotations

import numpy as np
import torch

from cnnlab.data.augment import build_augment
from cnnlab.data.imageset import ImageSet
from cnnlab.errors import CnnlabError


def augmented_views(
    images: ImageSet, spec: str, *, n: int = 8, views: int = 5, seed: int = 0, mean: tuple[float, ...] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick ``n`` images (one class after another) and augment each ``views`` times.

    Returns:
        ``(originals, augmented, labels)``: uint8 (n, C, H, W), uint8 (n, views, C, H, W)
        and int64 (n,), produced by the same batched code path the loader uses.

    Raises:
        CnnlabError: ``images`` is empty.
        ValueError: ``n`` or ``views`` is below 1.
    """
    if n < 1 or views < 1:
        raise ValueError(f"n and views must be at least 1, got n={n}, views={views}")
    if len(images) == 0:
        raise CnnlabError("there are no images to show (the split is empty)")
    rng = np.random.default_rng(seed)
    k = len(images.classes)
    picks = []
    for i in range(n):  # cycle through the classes so the grid shows several
        pool = np.flatnonzero(images.labels == i % k)
        pool = pool if pool.size else np.arange(len(images))
        picks.append(int(rng.choice(pool)))
    originals = np.asarray(images.images[np.array(picks)])
    augment = build_augment(spec, mean=mean)
    x = torch.from_numpy(originals).float().div_(255).repeat_interleave(views, dim=0)
    if augment is not None:
        x = augment(x, torch.Generator().manual_seed(seed))
    out = (x.clamp_(0, 1) * 255).round_().to(torch.uint8).numpy()
    return originals, out.reshape(n, views, *originals.shape[1:]), images.labels[np.array(picks)]

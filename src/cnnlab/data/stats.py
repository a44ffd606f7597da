"""Exact per-channel mean and standard deviation of a uint8 image array (seed section 7).

The lecture's preprocessing subtracts each channel's mean and divides by its standard
deviation, both measured on the training split. For uint8 pixels the sums and sums of
squares are integers, computed exactly from a per-channel histogram of the 256 pixel
values accumulated chunk by chunk (no float round-off however large the dataset, and
memory-mapped arrays stream without being loaded whole). Only the final division
happens in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def channel_stats(images: np.ndarray | torch.Tensor, *, chunk: int = 2048) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation, in [0, 1] pixel units.

    Args:
        images: uint8 array or tensor of shape (N, C, H, W).
        chunk: images per streamed chunk (bounds the memory used).

    Returns:
        ``(mean, std)``, each a tuple of C floats, as used by ``Normalize``:
        ``x_std = (x / 255 - mean) / std``. The std divides by the number of values
        (``torch.std(..., correction=0)``); a constant channel gets std 1.0 so that
        normalising never divides by zero.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    n, c = int(images.shape[0]), int(images.shape[1])
    if n == 0:
        raise ValueError("cannot compute statistics of an empty image set")
    # A 256-bin histogram per channel gives the exact integer sums of x and x^2, and
    # bincount over uint8 is far faster than widening every pixel to int64.
    hist = np.zeros((c, 256), dtype=np.int64)
    for start in range(0, n, chunk):
        block = images[start : start + chunk]
        block = block.cpu().numpy() if isinstance(block, torch.Tensor) else np.asarray(block)
        for ch in range(c):
            hist[ch] += np.bincount(block[:, ch].ravel(), minlength=256)
    values = np.arange(256, dtype=np.int64)
    total = (hist * values).sum(axis=1)
    total_sq = (hist * values * values).sum(axis=1)
    count = n * int(images.shape[2]) * int(images.shape[3])
    means, stds = [], []
    for s1, s2 in zip(total.tolist(), total_sq.tolist()):
        mean = s1 / count
        # Var = E[x^2] - E[x]^2, computed from exact integers: (count*s2 - s1^2) / count^2.
        var = (count * s2 - s1 * s1) / (count * count)
        std = math.sqrt(var) if var > 0 else 255.0
        means.append(mean / 255.0)
        stds.append(std / 255.0)
    return tuple(means), tuple(stds)

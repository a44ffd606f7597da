"""A generated dataset for quick runs and tests: class-dependent shapes and colours.

Class ``k`` draws shape ``k % 6`` (disk, square, triangle, cross, ring, bar) in colour
``k % 7`` of a fixed palette (a grey level for 1-channel images), at a random position and size,
with a random brightness, on a noisy background. A small CNN learns it in seconds, so
tests and smoke runs can check that training works; any (size, channels, classes)
combination works. Everything follows from the seed.
"""

from __future__ import annotations

import numpy as np

_SHAPES = 6
# Foreground colours: distinct hues for RGB images, distinct levels for grayscale ones.
_PALETTE = np.array(
    [[230, 60, 50], [60, 200, 80], [70, 110, 240], [240, 220, 60], [200, 80, 220], [80, 220, 230], [250, 250, 250]],
    dtype=np.float32,
)
_GRAY_LEVELS = np.array([100, 200, 125, 225, 150, 250, 175], dtype=np.float32)


def _shape_masks(kind: int, yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean masks (n, H, W) of shape ``kind`` centred at (cy, cx) with radius r (pixels)."""
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    r = r[:, None, None]
    if kind == 0:  # disk
        return dy**2 + dx**2 <= r**2
    if kind == 1:  # square
        return (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
    if kind == 2:  # upward triangle
        return (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if kind == 3:  # cross
        arm = r * 0.3
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    if kind == 4:  # ring
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (r * 0.55) ** 2)
    return (np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)  # horizontal bar


def generate(n: int, classes: int, size: int, channels: int, noise: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` balanced images.

    Returns:
        ``(images, labels)``: uint8 (n, channels, size, size) and int64 (n,).
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % classes
    labels = labels[rng.permutation(n)]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, channels, size, size), dtype=np.uint8)
    background = rng.uniform(10, 70, size=n).astype(np.float32)
    for k in range(classes):
        idx = np.flatnonzero(labels == k)
        if idx.size == 0:
            continue
        m = idx.size
        r = rng.uniform(0.18, 0.32, size=m).astype(np.float32) * size
        cy = rng.uniform(r, size - r).astype(np.float32)
        cx = rng.uniform(r, size - r).astype(np.float32)
        mask = _shape_masks(k % _SHAPES, yy, xx, cy, cx, r)
        colour = _PALETTE[k % len(_PALETTE)] if channels == 3 else _GRAY_LEVELS[k % len(_GRAY_LEVELS)][None]
        # Per-image brightness of the shape so that no single pixel value identifies a class.
        gain = rng.uniform(0.85, 1.0, size=(m, 1, 1, 1)).astype(np.float32)
        fg = colour.reshape(1, channels, 1, 1) * gain
        bg = background[idx].reshape(m, 1, 1, 1)
        img = np.where(mask[:, None], fg, bg) + rng.normal(0, noise, size=(m, channels, size, size)).astype(np.float32)
        images[idx] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return images, labels

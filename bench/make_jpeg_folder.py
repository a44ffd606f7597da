"""Write a deterministic image folder of JPEGs for the streaming benchmarks.

    python bench/make_jpeg_folder.py --n 2000 --out OUT [--classes 10] [--min-side 300] [--max-side 500]

``OUT/<class>/<index>.jpg``: each image has its own random width and height in
``[min-side, max-side]`` and a class-dependent picture (a coloured disc of the class's hue
on a noisy gradient), so a model can learn the classes. The same arguments give the same
bytes on every machine (NumPy's seeded generator, Pillow's JPEG encoder at quality 90).
The images are benchmark input: never commit them.
"""

from __future__ import annotations

import argparse
import colorsys
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def make_image(index: int, label: int, classes: int, lo: int, hi: int, seed: int) -> Image.Image:
    """One picture of class ``label``: a disc of the class's hue on a noisy gradient."""
    rng = np.random.default_rng([seed, index])
    w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    slope = rng.uniform(-0.2, 0.2, size=(3, 2)).astype(np.float32)
    img = base[:, None, None] + slope[:, 0, None, None] * xx + slope[:, 1, None, None] * yy
    img += rng.normal(0, 12, size=(3, h, w)).astype(np.float32)
    r, g, b = colorsys.hsv_to_rgb(label / classes, 0.9, 0.95)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    radius = rng.uniform(0.15, 0.35) * min(w, h)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
    for c, v in enumerate((r, g, b)):
        img[c][disc] = 255 * v + rng.normal(0, 8)
    arr = np.clip(img, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(arr, "RGB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--out", required=True, help="the folder to create (must not hold images already)")
    parser.add_argument("--classes", type=int, default=10, help="class folders (default 10)")
    parser.add_argument("--min-side", type=int, default=300, help="smallest width/height in px (default 300)")
    parser.add_argument("--max-side", type=int, default=500, help="largest width/height in px (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pictures (default 0)")
    args = parser.parse_args(argv)
    if args.n < args.classes or args.classes < 2 or not 8 <= args.min_side <= args.max_side:
        parser.error("need --n >= --classes >= 2 and 8 <= --min-side <= --max-side")
    out = Path(args.out)
    if out.exists() and any(out.rglob("*.jpg")):
        parser.error(f"{out} already holds JPEG files; choose a new --out")
    names = [f"class{c:02d}" for c in range(args.classes)]
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i in range(args.n):
        label = i % args.classes
        make_image(i, label, args.classes, args.min_side, args.max_side, args.seed).save(
            out / names[label] / f"{i:07d}.jpg", quality=90
        )
    print(f"wrote {args.n} JPEGs in {args.classes} classes to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

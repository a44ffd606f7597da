"""Loader + augmentation throughput: cnnlab's DeviceLoader vs a torchvision DataLoader.

Side by side, in one run, on Fashion-MNIST: images/s of

* cnnlab: the whole training split as one uint8 tensor, batches gathered from a seeded
  permutation, augmented in batches (flip + crop:4 + cutout:8) and normalised;
* torchvision: ``datasets.FashionMNIST`` + ``DataLoader`` + the equivalent per-sample
  ``transforms.v2`` pipeline (RandomHorizontalFlip, RandomCrop(28, padding=4), ToImage,
  ToDtype, Normalize, RandomErasing as cutout), with 0 and 2 worker processes.

Each configuration is timed ``--repeats`` times; the median is reported, and the ratio
of cnnlab to the best torchvision configuration printed. Run it alone (no other load).

    python bench/bench_loader.py [--images 20000] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cnnlab.config import DataConfig
from cnnlab.data.augment import build_augment
from cnnlab.data.loader import DeviceLoader
from cnnlab.data.sources import load_splits

BATCH = 256


def time_cnnlab(splits, n_images: int) -> float:
    mean, std = splits.stats
    loader = DeviceLoader(
        splits.train, batch_size=BATCH, mean=mean, std=std, augment=build_augment("flip,crop:4,cutout:8"), seed=0
    )
    seen, epoch = 0, 0
    start = time.perf_counter()
    while seen < n_images:
        loader.set_epoch(epoch)
        for x, _ in loader:
            seen += x.shape[0]
            if seen >= n_images:
                break
        epoch += 1
    return seen / (time.perf_counter() - start)


def _torchvision_root(tmp: Path, fashion_dir: Path) -> Path:
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in fashion_dir.glob("*-ubyte.gz"):
        with gzip.open(gz, "rb") as src, open(raw / gz.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    return tmp


def time_torchvision(root: Path, mean: float, std: float, workers: int, n_images: int) -> float:
    from torchvision import datasets
    from torchvision.transforms import v2

    transform = v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomCrop(28, padding=4),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize((mean,), (std,)),
        v2.RandomErasing(p=1.0, scale=(64 / 784, 64 / 784), ratio=(1.0, 1.0), value=0),
    ])  # fmt: skip
    dataset = datasets.FashionMNIST(str(root), train=True, transform=transform, download=False)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0
    )
    seen = 0
    start = time.perf_counter()
    for x, _ in loader:
        seen += x.shape[0]
        if seen >= n_images:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000, help="images per timed run (default 20000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    splits = load_splits(DataConfig(source="fashion-mnist", val_split=0.0))
    fashion_dir = Path(splits.name.split("(", 1)[1].rstrip(")"))
    mean, std = splits.stats
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = _torchvision_root(Path(tmp), fashion_dir)
        configs = {
            "cnnlab DeviceLoader": lambda: time_cnnlab(splits, args.images * 10),
            "torchvision DataLoader, 0 workers": lambda: time_torchvision(root, mean[0], std[0], 0, args.images),
            "torchvision DataLoader, 2 workers": lambda: time_torchvision(root, mean[0], std[0], 2, args.images),
        }
        for name, fn in configs.items():
            fn()  # warm-up (first-touch, worker start, caches)
            runs = [fn() for _ in range(args.repeats)]
            results[name] = statistics.median(runs)
            print(f"{name:36s} {results[name]:>12,.0f} images/s  (runs: {', '.join(f'{r:,.0f}' for r in runs)})")
    best_tv = max(v for k, v in results.items() if k.startswith("torchvision"))
    ratio = results["cnnlab DeviceLoader"] / best_tv
    print(f"ratio cnnlab / best torchvision: {ratio:.1f}x  (target >= 20x)")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    if args.json:
        Path(args.json).write_text(json.dumps({"images_per_s": results, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()

"""Accuracy per minute of candidate networks on Fashion-MNIST: the table behind the default model.

Two parts; run them alone on an idle machine:

* ``speed``: training images/s of each candidate (forward, backward, SGD step on one
  pre-made batch of 128, channels-last, float32), median of 3 timings of 8 steps after
  3 warm-up steps. Cheap (~2 minutes for all).
* ``accuracy``: each candidate trained by ``run_training`` (the same code as ``cnnlab
  train``: validation every epoch, checkpoints, the test evaluation) for each
  ``--epochs`` value, with the settings below; prints wall time and test accuracy. With
  ``--jobs 2`` two runs share the machine, one thread each: the accuracies are the same
  as alone (training does not depend on timing) but the wall times are not, so the table
  then gives minutes from the ``speed`` part's throughput instead (``est. min``).

Shared settings: SGD Nesterov, peak lr ``--lr`` (0.1), one-cycle, weight decay 5e-4,
batch 128, label smoothing 0.1, ``--augment`` (flip), seed 0, validation split 10%.

    python bench/bench_models.py --part speed
    python bench/bench_models.py --part accuracy --epochs 6 --only resnet9-w16-flat,demo
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# name -> (model, options)
CANDIDATES: dict[str, tuple[str, dict[str, object]]] = {
    "demo": ("simple", {"spec": "c32-p-c96-p-c192-p-fc256"}),
    "demo-flat": ("simple", {"spec": "c32-p-c96-p-c192-p-fc256", "head": "flatten"}),
    "peer-flat": ("simple", {"spec": "c32-c32-p-c64-c64-p-fc256", "head": "flatten"}),
    "resnet9-w16": ("resnet9", {"width": 16}),
    "resnet9-w16-flat": ("resnet9", {"width": 16, "head": "flatten"}),
    "resnet9-w24": ("resnet9", {"width": 24}),
    "resnet9-w32": ("resnet9", {"width": 32}),
    "resnet20": ("resnet20", {}),
    "resnet20-dp": ("resnet20", {"drop_path": 0.1}),
}
TRAIN_IMAGES = 54_000  # Fashion-MNIST's 60,000 less the 10% validation split


def speed(names: list[str], batch_size: int = 128) -> dict[str, float]:
    from cnnlab.models import create_model

    x = torch.randn(batch_size, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,))
    out = {}
    for name in names:
        model_name, opts = CANDIDATES[name]
        torch.manual_seed(0)
        model = create_model(model_name, num_classes=10, in_chans=1, input_size=28, **opts).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

        def step() -> None:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(8):
                step()
            rates.append(8 * batch_size / (time.perf_counter() - start))
        out[name] = statistics.median(rates)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:18s} {params / 1e6:5.2f}M params  {out[name]:7.0f} img/s  "
              f"~{TRAIN_IMAGES / out[name]:5.1f} s per training epoch", flush=True)  # fmt: skip
    return out


def train_one(name: str, epochs: int, lr: float, augment: str, seed: int, threads: int | None) -> dict[str, object]:
    if threads:
        torch.set_num_threads(threads)
    from cnnlab.config import RunConfig, from_dict
    from cnnlab.run import run_training

    model_name, opts = CANDIDATES[name]
    cfg = from_dict(RunConfig, {
        "data": {"source": "fashion-mnist", "augment": augment},
        "model": {"name": model_name, "options": dict(opts)},
        "optim": {"lr": lr},
        "train": {"epochs": epochs, "seed": seed, "label_smoothing": 0.1},
    })  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = run_training(cfg, Path(tmp) / "run", verbose=False)
        wall = time.perf_counter() - start
    return {"name": name, "epochs": epochs, "wall_s": wall, "test_acc": summary["test_acc"],
            "best_val_acc": summary["best_val_acc"]}  # fmt: skip


def accuracy(names: list[str], epochs: list[int], lr: float, augment: str, seed: int, jobs: int,
             rates: dict[str, float] | None) -> list[dict[str, object]]:  # fmt: skip
    work = [(n, e) for e in epochs for n in names]
    rows = []
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(train_one, n, e, lr, augment, seed, threads) for n, e in work]
        for fut in futures:
            row = fut.result()
            if rates:
                row["est_min"] = row["epochs"] * TRAIN_IMAGES / rates[row["name"]] / 60 * 1.12  # + eval ~12%
            rows.append(row)
            est = f"  est. {row['est_min']:.1f} min" if "est_min" in row else ""
            print(f"{row['name']:18s} {row['epochs']:3d} epochs  {row['wall_s'] / 60:5.1f} min wall{est}  "
                  f"test {row['test_acc']:.4f}  best val {row['best_val_acc']:.4f}", flush=True)  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["speed", "accuracy", "all"], default="all")
    p.add_argument("--only", default=",".join(CANDIDATES), help="comma-separated candidate names")
    p.add_argument("--epochs", default="6", help="comma-separated epoch counts")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--augment", default="flip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    names = [n for n in a.only.split(",") if n]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        sys.exit(f"unknown candidate(s) {unknown}; known: {', '.join(CANDIDATES)}")
    result: dict[str, object] = {}
    rates = speed(names) if a.part in ("speed", "all") else None
    result["speed"] = rates
    if a.part in ("accuracy", "all"):
        result["accuracy"] = accuracy(names, [int(e) for e in a.epochs.split(",")], a.lr, a.augment, a.seed, a.jobs,
                                      rates if a.jobs > 1 else None)  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

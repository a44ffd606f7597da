"""Cached feature extraction vs training the head through the frozen backbone every epoch.

Both sides train the same new linear head on the same frozen, pretrained backbone
(EfficientNet-Lite0 ImageNet weights by default), with the same seed, optimizer,
schedule and batches of the same training images:

* ``cached``: the features of the training and validation images are computed once
  (``cnnlab.transfer.features``) and every epoch trains the head on them;
* ``through``: every epoch runs the images through the frozen backbone (no gradients
  into it, norm layers in eval mode) and trains the head on the result.

Prints the wall time per epoch of each (training + validation; median over the epochs
after the first, both measured in this one run), their ratio, the one-time extraction
cost, and the test accuracy of both heads (identical features, so they should agree
within noise).

    python bench/bench_transfer.py [--n 2000] [--image-size 64] [--epochs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cnnlab.config import load_run_config
from cnnlab.train.fit import fit
from cnnlab.train.loop import evaluate
from cnnlab.run import build_model, load_data
from cnnlab.train.runtime import resolve_runtime
from cnnlab.transfer.finetune import feature_loaders


def _config(args: argparse.Namespace):  # noqa: ANN202 - RunConfig
    return load_run_config(overrides={
        "data": {"source": args.data, "image_size": args.image_size, "val_split": 0.05},
        "model": {"name": args.model, "pretrained": True},
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
        "train": {"epochs": args.epochs, "batch_size": 64, "train_subset": args.n, "seed": 0, "device": "cpu"},
        "transfer": {"mode": "feature-extract", "cache": False},
    })  # fmt: skip


def _timed_fit(model, splits, cfg, runtime, loaders=None) -> list[float]:  # noqa: ANN001
    """Train; return the wall seconds of each epoch (training + validation)."""
    stamps = [time.perf_counter()]
    fit(model, splits, cfg, runtime=runtime, loaders=loaders, verbose=False,
        on_epoch_end=lambda record: stamps.append(time.perf_counter()) and False)  # fmt: skip
    return [b - a for a, b in zip(stamps, stamps[1:])]


def _test_acc(model, splits, cfg, runtime, n_test: int) -> float:  # noqa: ANN001
    from cnnlab.data.loader import DeviceLoader

    mean, std = splits.stats
    test = splits.test.subset(torch.arange(min(n_test, len(splits.test))).numpy())
    loader = DeviceLoader(test, batch_size=256, mean=mean, std=std, train=False, device=runtime.device)
    return evaluate(model, loader, runtime).acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--n", type=int, default=2000, help="training images")
    parser.add_argument("--image-size", type=int, default=64, help="backbone input side in px")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n-test", type=int, default=2000, help="test images evaluated (first N of the test split)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    cfg = _config(args)
    runtime = resolve_runtime(cfg.train)
    splits = load_data(cfg)
    results = {"n_train": len(splits.train), "n_val": len(splits.val), "image_size": args.image_size, "epochs": args.epochs,
               "threads": torch.get_num_threads(), "model": args.model}  # fmt: skip

    cached = build_model(cfg, splits)
    cached.freeze_backbone()
    tic = time.perf_counter()
    loaders = feature_loaders(cached, splits, cfg, runtime)
    results["extract_s"] = time.perf_counter() - tic
    results["cached_epoch_s"] = _timed_fit(cached, splits, cfg, runtime, loaders)
    results["cached_test_acc"] = _test_acc(cached, splits, cfg, runtime, args.n_test)

    through = build_model(cfg, splits)  # same seed: the same initial head
    through.freeze_backbone()
    results["through_epoch_s"] = _timed_fit(through, splits, cfg, runtime)
    results["through_test_acc"] = _test_acc(through, splits, cfg, runtime, args.n_test)

    med = lambda xs: statistics.median(xs[1:] if len(xs) > 1 else xs)  # noqa: E731 - skip the warm-up epoch
    results["ratio"] = med(results["through_epoch_s"]) / med(results["cached_epoch_s"])
    total_cached = results["extract_s"] + sum(results["cached_epoch_s"])
    results["ratio_incl_extraction"] = sum(results["through_epoch_s"]) / total_cached
    print(f"{args.model} at {args.image_size} px, {results['n_train']} train / {results['n_val']} val images, "
          f"{args.epochs} epochs, {results['threads']} threads")  # fmt: skip
    print(f"  through the frozen backbone: {med(results['through_epoch_s']):.3f} s/epoch, test acc {results['through_test_acc']:.2%}")
    print(f"  cached features:             {med(results['cached_epoch_s']):.4f} s/epoch, test acc {results['cached_test_acc']:.2%} "
          f"(+ {results['extract_s']:.1f} s once to extract)")  # fmt: skip
    print(f"  time per epoch ratio: {results['ratio']:.0f}x (median of epochs 2..{args.epochs}); "
          f"whole run incl. extraction: {results['ratio_incl_extraction']:.1f}x")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()

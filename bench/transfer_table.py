"""The transfer-learning experiment of docs/transfer.md: scratch vs feature-extract vs finetune.

Fashion-MNIST with 100, 1,000 and 10,000 labelled training images (``--train-subset``,
stratified), two sources of pretrained weights:

* ``imagenet``: EfficientNet-Lite0 with ImageNet weights (offline package), Fashion-MNIST's
  10 classes upsampled on the device to ``--image-size`` px and repeated to RGB;
* ``fmnist0-4``: a cnnlab ``simple`` CNN pre-trained on Fashion-MNIST classes 0-4, transferred
  to classes 5-9 (``--class-subset``) at the native 28 px.

"scratch" is a cnnlab ``simple`` CNN trained from random weights on the same images (the
fair alternative on this CPU: EfficientNet-Lite0 from scratch at 64 px would cost hours).
Every run is a real ``run_training`` (validation on a 5% hold-out each epoch, best
weights tested on the whole official test split of the classes used). Budgets are small
so the whole table runs in well under an hour on 2 CPU cores.

    python bench/transfer_table.py [--out runs/transfer-table] [--sizes 100,1000,10000] [--only imagenet|fmnist0-4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from cnnlab.config import load_run_config
from cnnlab.run import run_training

SCRATCH = {"name": "simple", "options": {"spec": "c32-p-c64-p-c128-p-fc128"}}
EPOCHS = {  # (scratch, feature-extract, finetune) epochs per training-set size
    100: (40, 40, 15),
    1000: (20, 40, 6),
    10000: (8, 40, 3),
}


def _cfg(data: dict[str, Any], model: dict[str, Any], n: int, epochs: int, transfer: dict[str, Any], lr: float) -> Any:
    return load_run_config(overrides={
        "data": {"source": "fashion-mnist", "val_split": 0.05, **data},
        "model": model,
        "optim": {"name": "adamw", "lr": lr, "weight_decay": 0.05 if not transfer else 1e-4},
        "train": {"epochs": epochs, "batch_size": 32 if n <= 100 else 128, "train_subset": n, "seed": 0,
                  "checkpoint_minutes": 0, "device": "cpu"},
        "transfer": transfer,
    })  # fmt: skip


def runs_for(source: str, n: int, pretrain: str | None, image_size: int) -> dict[str, Any]:
    """The three configurations of one row."""
    e_scratch, e_fe, e_ft = EPOCHS[n]
    if source == "imagenet":
        data, backbone_model, tr = {}, {"name": "efficientnet_lite0", "pretrained": True}, {}
        data_t = {"image_size": image_size}
    else:
        data = {"class_subset": [5, 6, 7, 8, 9]}
        backbone_model, tr, data_t = {}, {"backbone": pretrain}, {}
    return {
        "scratch": _cfg(data, SCRATCH, n, e_scratch, {}, 3e-3),
        "feature-extract": _cfg({**data, **data_t}, backbone_model, n, e_fe, {**tr, "mode": "feature-extract"}, 3e-3),
        "finetune": _cfg({**data, **data_t}, backbone_model, n, e_ft, {**tr, "mode": "finetune", "freeze_epochs": 3}, 1e-3),
    }


def pretrain_fmnist(out: Path) -> str:
    """Train the cnnlab backbone on Fashion-MNIST classes 0-4 (once); return its best.pt."""
    best = out / "pretrain-fmnist0-4" / "best.pt"
    if not best.is_file():
        cfg = _cfg({"class_subset": [0, 1, 2, 3, 4]}, SCRATCH, 10**9, 6, {}, 3e-3)
        run_training(cfg, out / "pretrain-fmnist0-4", verbose=False)
    return str(best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/transfer-table")
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--only", choices=("imagenet", "fmnist0-4"))
    parser.add_argument("--image-size", type=int, default=64, help="EfficientNet-Lite0 input side in px")
    args = parser.parse_args()
    out = Path(args.out)
    results_path = out / "results.jsonl"
    done = set()
    if results_path.is_file():
        done = {(r["source"], r["n"], r["method"]) for r in map(json.loads, results_path.read_text().splitlines())}
    sources = [args.only] if args.only else ["imagenet", "fmnist0-4"]
    for source in sources:
        pretrain = pretrain_fmnist(out) if source == "fmnist0-4" else None
        for n in (int(s) for s in args.sizes.split(",")):
            for method, cfg in runs_for(source, n, pretrain, args.image_size).items():
                if (source, n, method) in done:
                    continue
                tic = time.perf_counter()
                s = run_training(cfg, out / f"{source}-{n}-{method}", verbose=False)
                row = {"source": source, "n": n, "method": method, "test_acc": s["test_acc"], "wall_s": time.perf_counter() - tic,
                       "epochs": cfg.train.epochs, "best_val_acc": s["best_val_acc"]}  # fmt: skip
                print(json.dumps(row), flush=True)
                out.mkdir(parents=True, exist_ok=True)
                with results_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
    print_table(results_path)


def print_table(path: Path) -> None:
    """The markdown table of docs/transfer.md from results.jsonl."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by = {(r["source"], r["n"], r["method"]): r for r in rows}
    print("| pretrained on | train images | scratch | feature-extract | finetune |")
    print("|---|---:|---:|---:|---:|")
    for source in ("imagenet", "fmnist0-4"):
        for n in sorted({r["n"] for r in rows if r["source"] == source}):
            cells = []
            for m in ("scratch", "feature-extract", "finetune"):
                r = by.get((source, n, m))
                cells.append(f"{r['test_acc']:.1%} ({r['wall_s']:.0f} s)" if r else "—")
            print(f"| {source} | {n:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

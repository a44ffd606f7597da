"""Training speed: pipeline efficiency, and cnnlab against a typical PyTorch script.

Two measurements on Fashion-MNIST, side by side in one run (run it alone, on an idle
machine):

* ``efficiency``: images/s of real training epochs through cnnlab's engine (device
  loader + batched augmentation + step + metrics) divided by images/s of the bare model
  step (forward, backward, optimizer) on one pre-made batch. 1.0 means the data path is
  free. Median of ``--repeats``.
* ``baseline``: the same model, epochs, batch size, augmentation (flip), optimizer and one-cycle schedule,
  trained (a) by ``cnnlab train`` (``run_training``: validation every epoch, checkpoints,
  metrics, the test evaluation) and (b) by a script written the way a typical PyTorch
  user writes it: ``torchvision.datasets.FashionMNIST`` + ``DataLoader`` (2 workers) +
  per-sample ``transforms.v2`` + a plain loop. Wall-time ratio and both test accuracies.
* ``time-to-accuracy`` (not part of ``all``: it takes ~10 minutes): one run of cnnlab's
  demo configuration for ``--tta-epochs`` epochs, evaluating the test split after every
  epoch (off the clock); prints the minutes of training (validation included) at which
  test accuracy first reached 92% and 93%. With a one-cycle schedule the last epochs
  gain the most, so a shorter run is not the same as stopping this one early: the
  figure is "minutes into a run of this length".

    python bench/bench_train.py [--part efficiency|baseline|time-to-accuracy|all] [--epochs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import _torchvision_root  # noqa: E402

from cnnlab.config import RunConfig, from_dict  # noqa: E402
from cnnlab.data.augment import build_augment  # noqa: E402
from cnnlab.data.loader import DeviceLoader  # noqa: E402
from cnnlab.train.loop import EpochState, TrainStep, train_one_epoch  # noqa: E402
from cnnlab.train.optim import build_optimizer  # noqa: E402
from cnnlab.run import build_model, load_data, run_training  # noqa: E402
from cnnlab.train.runtime import resolve_runtime  # noqa: E402

# cnnlab's demo configuration (see the Makefile's `demo` target).
SPEC = "c32-p-c96-p-c192-p-fc256"
AUGMENT = "flip"


def run_config(epochs: int, batch_size: int, seed: int = 0, **train: object) -> RunConfig:
    return from_dict(RunConfig, {
        "data": {"source": "fashion-mnist", "augment": AUGMENT},
        "model": {"name": "simple", "options": {"spec": SPEC}},
        "train": {"epochs": epochs, "batch_size": batch_size, "seed": seed, **train},
    })  # fmt: skip


def efficiency(batch_size: int, n_images: int, repeats: int) -> dict[str, float]:
    cfg = run_config(1, batch_size, train_subset=n_images)
    runtime = resolve_runtime(cfg.train)
    splits = load_data(cfg)
    model = build_model(cfg, splits).to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    loss_fn = torch.nn.CrossEntropyLoss()
    mean, std = splits.stats
    loader = DeviceLoader(splits.train, batch_size=batch_size, train=True, seed=0, mean=mean, std=std,
                          augment=build_augment(AUGMENT, mean=mean), device=runtime.device,
                          channels_last=runtime.channels_last)  # fmt: skip
    x, y = next(iter(loader))
    steps = len(loader)

    def bare() -> float:
        model.train()
        start = time.perf_counter()
        for _ in range(steps):
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        loss.item()
        return steps * batch_size / (time.perf_counter() - start)

    epoch = 0

    def real() -> float:
        nonlocal epoch
        loader.set_epoch(epoch)
        epoch += 1
        ts = TrainStep(optimizer, loss_fn, lambda step: 0.01, runtime)
        state = EpochState()
        start = time.perf_counter()
        train_one_epoch(model, loader, ts, state)
        return state.count / (time.perf_counter() - start)

    bare(), real()  # warm-up
    bare_runs, real_runs = [], []
    for _ in range(repeats):  # interleaved, so drifting machine load hits both alike
        bare_runs.append(bare())
        real_runs.append(real())
    b, r = statistics.median(bare_runs), statistics.median(real_runs)
    print(f"bare model step            {b:>9,.0f} images/s  (runs: {', '.join(f'{v:,.0f}' for v in bare_runs)})")
    print(f"cnnlab training epoch      {r:>9,.0f} images/s  (runs: {', '.join(f'{v:,.0f}' for v in real_runs)})")
    print(f"pipeline efficiency: {r / b:.3f}  (target >= 0.95)")
    return {"bare_images_per_s": b, "epoch_images_per_s": r, "efficiency": r / b}


def typical_pytorch(root: Path, mean: float, std: float, epochs: int, batch_size: int, seed: int) -> dict[str, float]:
    """What a typical PyTorch user writes (kept deliberately ordinary)."""
    from torchvision import datasets
    from torchvision.transforms import v2

    from cnnlab.models import create_model

    torch.manual_seed(seed)
    train_tf = v2.Compose([
        v2.RandomHorizontalFlip(), v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize((mean,), (std,)),
    ])  # fmt: skip
    test_tf = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize((mean,), (std,))])
    train_set = datasets.FashionMNIST(str(root), train=True, transform=train_tf)
    test_set = datasets.FashionMNIST(str(root), train=False, transform=test_tf)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=2, drop_last=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=512, num_workers=2)
    model = create_model("simple", num_classes=10, in_chans=1, spec=SPEC)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=epochs, steps_per_epoch=len(train_loader))
    for epoch in range(epochs):
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for x, y in train_loader:
            out = model(x)
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
        print(f"  baseline epoch {epoch + 1}: loss {loss_sum / total:.4f} acc {correct / total:.4f}", flush=True)
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x).argmax(1) == y).sum().item()
    return {"test_acc": correct / len(test_set)}


def baseline(epochs: int, batch_size: int, seed: int) -> dict[str, float]:
    cfg = run_config(epochs, batch_size, seed)
    splits = load_data(cfg)
    fashion_dir = Path(splits.name.split("(", 1)[1].rstrip(")"))
    mean, std = splits.stats
    with tempfile.TemporaryDirectory() as tmp:
        root = _torchvision_root(Path(tmp) / "tv", fashion_dir)
        start = time.perf_counter()
        base = typical_pytorch(root, mean[0], std[0], epochs, batch_size, seed)
        base_wall = time.perf_counter() - start
        print(f"typical PyTorch script: {base_wall:7.1f} s   test accuracy {base['test_acc']:.4f}", flush=True)
        start = time.perf_counter()
        summary = run_training(cfg, Path(tmp) / "run", verbose=False)
        ours_wall = time.perf_counter() - start
    ours_acc = summary["test_acc"]
    print(f"cnnlab train:           {ours_wall:7.1f} s   test accuracy {ours_acc:.4f}  (also validates every epoch)")
    print(f"wall-time ratio typical / cnnlab: {base_wall / ours_wall:.2f}x  (target >= 1.5x)")
    return {"baseline_s": base_wall, "baseline_test_acc": base["test_acc"], "cnnlab_s": ours_wall,
            "cnnlab_test_acc": ours_acc, "ratio": base_wall / ours_wall}  # fmt: skip


def time_to_accuracy(epochs: int, batch_size: int, seed: int, targets: tuple[float, ...] = (0.92, 0.93)) -> dict[str, object]:
    from cnnlab.train.fit import fit
    from cnnlab.train.loop import evaluate

    cfg = run_config(epochs, batch_size, seed, label_smoothing=0.1)
    runtime = resolve_runtime(cfg.train)
    splits = load_data(cfg)
    model = build_model(cfg, splits)
    mean, std = splits.stats
    test_loader = DeviceLoader(splits.test, batch_size=cfg.train.eval_batch_size, train=False, mean=mean, std=std,
                               device=runtime.device, channels_last=runtime.channels_last)  # fmt: skip
    trace: list[tuple[float, float]] = []
    off_clock = 0.0
    start = time.perf_counter()

    def on_epoch_end(record: dict) -> None:
        nonlocal off_clock
        tic = time.perf_counter()
        minutes = (tic - start - off_clock) / 60  # training + validation so far, test evaluations excluded
        acc = evaluate(model, test_loader, runtime).acc
        off_clock += time.perf_counter() - tic
        trace.append((minutes, acc))
        print(f"  epoch {record['epoch'] + 1:>2}: {minutes:5.2f} min, test accuracy {acc:.4f}", flush=True)

    fit(model, splits, cfg, runtime=runtime, on_epoch_end=on_epoch_end, verbose=False)
    reached = {}
    for target in targets:
        hit = next((m for m, a in trace if a >= target), None)
        reached[f"{target:.0%}"] = hit
        print(f"time to {target:.0%} test accuracy: " + (f"{hit:.2f} min" if hit is not None else f"not reached in {epochs} epochs"))
    return {"epochs": epochs, "trace": trace, "minutes_to": reached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("efficiency", "baseline", "time-to-accuracy", "all"), default="all")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=12800, help="images per efficiency repeat (default 12800)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the baseline comparison (default 3)")
    parser.add_argument("--tta-epochs", type=int, default=12, help="epochs of the time-to-accuracy run (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, model simple:{SPEC}, batch {args.batch_size}")  # fmt: skip
    results: dict[str, object] = {}
    if args.part in ("efficiency", "all"):
        results["efficiency"] = efficiency(args.batch_size, args.images, args.repeats)
    if args.part in ("baseline", "all"):
        results["baseline"] = baseline(args.epochs, args.batch_size, args.seed)
    if args.part == "time-to-accuracy":
        results["time_to_accuracy"] = time_to_accuracy(args.tta_epochs, args.batch_size, args.seed)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Which epoch's weights to keep: the highest validation accuracy, the last epoch, or cnnlab's rule.

Trains cnnlab's default configuration on Fashion-MNIST (``cnnlab train --data fashion-mnist``,
optionally at another peak lr) for each seed, and after every epoch also tests the weights on
the test split (a measurement only: nothing is chosen on it). Then, per seed, the test accuracy
of the epoch each rule keeps:

* ``max``: the epoch of highest validation accuracy (cnnlab's rule before; most tools' ``best``);
* ``rule``: cnnlab's rule, the latest epoch within one standard error of the highest validation
  accuracy (``cnnlab.train.fit.History``);
* ``last``: the last epoch.

It prints one line per epoch (validation and test accuracy) and a table per seed, and with
``--json`` writes every record. Run it alone: it trains ``len(seeds)`` full runs.

    python bench/bench_kept_epoch.py [--seeds 1,2] [--lr 0.23] [--epochs N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_budget import default_config  # noqa: E402

from cnnlab.run import build_model, load_data  # noqa: E402
from cnnlab.train.fit import History, fit  # noqa: E402
from cnnlab.train.loaders import eval_loader  # noqa: E402
from cnnlab.train.loop import evaluate  # noqa: E402
from cnnlab.train.runtime import resolve_runtime  # noqa: E402


def one_run(seed: int, lr: float | None, epochs: int | None) -> list[dict[str, Any]]:
    """Every epoch's record of one training run, with ``test_acc`` added."""
    flags = ["--seed", str(seed)] + (["--lr", str(lr)] if lr is not None else []) + (["--epochs", str(epochs)] if epochs else [])
    cfg = default_config(flags)  # parsed by cnnlab's own CLI: the run `cnnlab train --data fashion-mnist FLAGS` is
    splits = load_data(cfg)
    runtime = resolve_runtime(cfg.train)
    model = build_model(cfg, splits)
    test = eval_loader(splits.test, splits, cfg, runtime)
    records: list[dict[str, Any]] = []

    def on_epoch_end(record: dict[str, Any]) -> bool:
        assert test is not None
        result = evaluate(model, test, runtime)
        records.append({**record, "test_acc": result.acc})
        print(f"seed {seed} epoch {record['epoch'] + 1:3d}  val {record['val_acc']:.2%}  test {result.acc:.2%}", flush=True)
        return False

    fit(model, splits, cfg, runtime=runtime, on_epoch_end=on_epoch_end, verbose=False)
    return records


def kept(records: list[dict[str, Any]]) -> dict[str, int]:
    """The epoch (from 0) each rule keeps."""
    history = History()
    for record in records:
        history.add(record)
    top = max(r["val_acc"] for r in records)
    assert history.best_epoch is not None
    return {"max": next(r["epoch"] for r in records if r["val_acc"] == top), "rule": history.best_epoch,
            "last": records[-1]["epoch"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2", help="comma-separated training seeds (default 1,2)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the default config's)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the default config's)")
    parser.add_argument("--json", default=None, help="write every record here")
    args = parser.parse_args()
    runs = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        runs[seed] = one_run(seed, args.lr, args.epochs)
        if args.json:
            Path(args.json).write_text(json.dumps({str(k): v for k, v in runs.items()}, default=str), encoding="utf-8")
    print(f"\n{'seed':>4s}  {'rule':>4s}  {'epoch':>5s}  {'val':>7s}  {'test':>7s}")
    tests: dict[str, list[float]] = {}
    for seed, records in runs.items():
        for rule, epoch in kept(records).items():
            r = records[epoch]
            tests.setdefault(rule, []).append(r["test_acc"])
            print(f"{seed:>4d}  {rule:>4s}  {epoch + 1:>5d}  {r['val_acc']:>7.2%}  {r['test_acc']:>7.2%}")
    print("\nmean test accuracy: " + ", ".join(f"{rule} {statistics.fmean(v):.2%}" for rule, v in tests.items()))


if __name__ == "__main__":
    main()

"""The recipe against plain Optuna random search, on Fashion-MNIST, by compute spent.

* ``recipe``: ``cnnlab recipe`` with a wall-time budget B: checks, LR finder, coarse
  search on a training subset, refine rounds with diagnosis, final training, test once.
* ``random``: what many users do instead: Optuna random search over wide ranges (lr
  1e-4..1, weight decay 1e-6..1e-2, dropout 0..0.5), every trial a full training run of
  ``--baseline-epochs`` epochs on all the training data, no pruning, for ``--ratio`` x B of
  wall time; the trial with the best validation accuracy is the result, its test accuracy
  the figure (steps 1-3 and 5-7 left out).

The goal: the recipe equal or better with at most 25% of the compute (``--ratio 4``).
Both use the same model, batch size, augmentation and schedule. Run it alone (2 cores).

    python bench/bench_recipe.py [--budget 10m] [--ratio 4] [--out runs/bench-recipe] [--json out.json]
    python bench/bench_recipe.py --only recipe --budget 60m
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cnnlab.cli.common import parse_duration
from cnnlab.config import load_run_config
from cnnlab.infer.evaluate import evaluate_checkpoint
from cnnlab.recipe.recipe import RecipeOptions, run_recipe
from cnnlab.recipe.search import SearchSpace, run_search

SPEC = "c32-p-c96-p-c192-p-fc256"  # the demo model: 0.25M parameters, with head dropout


def _config(args: argparse.Namespace):  # noqa: ANN202 - RunConfig
    return load_run_config(None, {
        "data": {"source": "fashion-mnist", "augment": "flip"},
        "model": {"name": "simple", "options": {"spec": SPEC}},
        "train": {"epochs": args.baseline_epochs, "batch_size": 128, "label_smoothing": 0.1, "seed": 0, "device": "cpu"},
    })  # fmt: skip


def bench_recipe(args: argparse.Namespace, budget: float) -> dict:
    start = time.perf_counter()
    result = run_recipe(_config(args), Path(args.out) / f"recipe-{int(budget)}s", RecipeOptions(budget_seconds=budget), verbose=False)
    return {"test_acc": result.test_acc, "seconds": time.perf_counter() - start, "report": str(result.report),
            "chosen": result.state.steps.get("chosen")}  # fmt: skip


def bench_random(args: argparse.Namespace, seconds: float) -> dict:
    start = time.perf_counter()
    space = SearchSpace(lr=(1e-4, 1.0), weight_decay=(1e-6, 1e-2), dropout=(0.0, 0.5))
    result = run_search(_config(args), space, stage="coarse", out_dir=Path(args.out) / "random", study_name="random",
                        timeout=seconds, epochs=args.baseline_epochs, sampler="random", pruner="none")  # fmt: skip
    best = result.as_dict()["best"]
    test = evaluate_checkpoint(best["run_dir"], device="cpu")  # the chosen trial, tested once (trials never see test)
    done = [t for t in result.as_dict()["trials"] if t.get("state") == "COMPLETE"]
    return {"test_acc": test.metrics.accuracy, "best_val_acc": best["value"], "trials": len(done),
            "seconds": time.perf_counter() - start, "params": best["params"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="10m", help="the recipe's budget (default 10m)")
    parser.add_argument("--ratio", type=float, default=4.0, help="random search gets this many times the recipe's time (default 4)")
    parser.add_argument("--baseline-epochs", type=int, default=3, help="epochs of each random-search trial (default 3)")
    parser.add_argument("--only", choices=("recipe", "random"), help="run one side only")
    parser.add_argument("--out", default="runs/bench-recipe")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    budget = parse_duration(args.budget)
    out: dict = {"budget_s": budget, "ratio": args.ratio}
    if args.only in (None, "recipe"):
        out["recipe"] = bench_recipe(args, budget)
        print(f"recipe   ({budget / 60:.0f} min budget): test {out['recipe']['test_acc']:.2%} in {out['recipe']['seconds'] / 60:.1f} min")
    if args.only in (None, "random"):
        out["random"] = bench_random(args, budget * args.ratio)
        r = out["random"]
        print(f"random search ({budget * args.ratio / 60:.0f} min, {r['trials']} trials x {args.baseline_epochs} epochs): "
              f"test {r['test_acc']:.2%} in {r['seconds'] / 60:.1f} min")  # fmt: skip
    if "recipe" in out and "random" in out:
        diff = out["recipe"]["test_acc"] - out["random"]["test_acc"]
        ratio = out["recipe"]["seconds"] / out["random"]["seconds"]
        print(f"recipe - random: {diff:+.2%} test accuracy with {ratio:.0%} of the compute")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()

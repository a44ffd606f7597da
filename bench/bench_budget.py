"""Test accuracy per wall-time budget on Fashion-MNIST: cnnlab's recipe against its baselines.

For each budget (minutes) and seed, every method gets the same wall time, start-up
included, and reports its test accuracy. The methods:

* ``peer``: ``bench/peer_script.py``, what a typical PyTorch user writes (torchvision
  ``FashionMNIST`` + ``DataLoader`` with 2 workers + per-sample ``transforms.v2``, a small
  VGG-style net in plain ``torch.nn``, Adam with one-cycle at max_lr 3e-3). It is an
  informed peer: it times its first 30 batches and trains as many epochs as let the whole
  run, test pass included, end within the budget.
* ``default``: ``cnnlab train --data fashion-mnist`` with whatever cnnlab's defaults are
  when the bench runs, for N epochs, N = floor((budget - test pass - 15 s start-up) /
  epoch seconds), the seconds measured here first with the recipe's own
  ``measure_speed`` on the default configuration.
* ``timed``: ``cnnlab train --data fashion-mnist --time B``: the same defaults, trained to
  the budget by cnnlab's own clock (steps planned from a timing, re-planned from the warmup
  epochs' pace; docs/training.md). The fairest "default for the same time": ``default``'s one
  timing before training misses the pace by 10-30% either way.
* ``random``: plain Optuna random search (``RandomSampler(seed)``) over lr log-uniform in
  [0.01, 1] and weight decay log-uniform in [1e-5, 1e-2]; every trial a ``cnnlab train``
  of the default configuration on the whole training split, for the epochs that make 4
  trials fill the budget; trials start only while the next one fits. The objective is a
  trial's best validation accuracy; the row's test accuracy is the best trial's (each
  trial tests itself at its end: fine for a baseline). By default only at budgets of 30
  minutes and more; naming it in ``--methods`` runs it at every budget.
* ``recipe``: ``cnnlab recipe --data fashion-mnist --budget B --seed S`` (the seed is the
  training seed, which also seeds the recipe's samplers); its test accuracy from
  ``final/summary.json``, or the ensemble's from ``recipe.json`` when the recipe averaged
  several final models. Its budget must be at least 1 minute.

Each method runs in its own subprocess (nothing leaks between them, and wall time includes
Python's start-up), with every file written into one temporary folder, deleted at the end
(``--keep`` keeps it). Seeds are ``--seeds`` below 30 minutes and ``--seeds-long`` from 30
on. Printed: one row per (method, budget, seed) as it finishes (wall seconds, test accuracy,
whether the wall time stayed within the budget + 5%), then a summary per (method, budget):
mean and min-max of test accuracy, mean wall time, and whether the recipe beat the method
(mean difference in accuracy points, and on how many seeds it won). ``--json`` writes every
row (and the summary), rewritten after each row.

Run it alone on an idle machine: every method is timed against the wall clock, so any other
load changes both the epochs the methods fit in and what they reach. The full grid (5, 10,
30 and 60 minutes, 3 seeds below 30 minutes) takes about 8 hours.

    python bench/bench_budget.py [--budgets 5,10,30,60] [--seeds 0,1,2] [--seeds-long 0]
        [--methods peer,default,timed,random,recipe] [--train-subset N] [--json out.json] [--keep]
    python bench/bench_budget.py --budgets 1 --seeds 0 --methods peer,default --train-subset 2000   # a smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import _torchvision_root  # noqa: E402

from cnnlab.cli.main import build_parser  # noqa: E402
from cnnlab.cli.train import run_overrides  # noqa: E402
from cnnlab.config import RunConfig, load_run_config  # noqa: E402
from cnnlab.timing import measure_speed  # noqa: E402
from cnnlab.run import load_data  # noqa: E402

METHODS = ("peer", "default", "timed", "random", "recipe")
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_script.py"
DATA = "fashion-mnist"
LONG_MINUTES = 30.0  # budgets from here on use --seeds-long, and random search runs by default
STARTUP_S = 15.0  # a cnnlab subprocess's seconds before its first epoch (imports, data, model)
TOLERANCE = 0.05  # a run is within budget when its wall time is at most the budget + 5%
RANDOM_TRIALS = 4  # random search: the trials that fill the budget set each trial's epochs
LR_RANGE = (0.01, 1.0)  # random search: peak lr, log-uniform
WD_RANGE = (1e-5, 1e-2)  # random search: weight decay, log-uniform
RECIPE_MIN_MINUTES = 1.0  # `cnnlab recipe` refuses shorter budgets


@dataclass
class Row:
    """One method's run at one budget and seed."""

    method: str
    budget_min: float
    seed: int
    wall_s: float
    test_acc: float | None
    within_budget: bool
    detail: dict[str, Any] = field(default_factory=dict)  # epochs, trials, the error of a failed run


@dataclass(frozen=True)
class EpochCost:
    """The default configuration's measured seconds per epoch and of its test evaluation."""

    epoch_s: float
    test_s: float

    def epochs_in(self, seconds: float) -> int:
        """The whole epochs of a ``cnnlab train`` subprocess that fit in ``seconds`` (at least 1)."""
        return max(1, math.floor((seconds - self.test_s - STARTUP_S) / self.epoch_s))

    def run_seconds(self, epochs: int) -> float:
        """The expected wall time of a ``cnnlab train`` subprocess of ``epochs`` epochs."""
        return STARTUP_S + self.test_s + epochs * self.epoch_s


# --------------------------------------------------------------------------- subprocesses


def _child(cmd: list[str], log: Path, cwd: Path, timeout_s: float) -> tuple[int, float, str]:
    """Run ``cmd`` with its output in ``log``; its exit code, wall seconds and output."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        try:
            rc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout_s, check=False).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = -9
    wall = time.perf_counter() - start
    text = log.read_text(encoding="utf-8", errors="replace")
    if rc == -9:
        text += f"\n(killed after {timeout_s:.0f} s)"
    return rc, wall, text


def _error(rc: int, text: str) -> str:
    """A failed subprocess in one line: its exit code and last output line."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f"exit {rc}: {lines[-1].strip() if lines else 'no output'}"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _json_line(line: str) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "test_acc" in data else None


def _timeout(budget_s: float) -> float:
    """A hung subprocess is killed after twice its budget and 10 minutes."""
    return 2 * budget_s + 600


class Bench:
    """The methods, run as subprocesses in one temporary folder."""

    def __init__(self, tmp: Path, train_subset: int | None) -> None:
        self.tmp = tmp
        self.subset_flags = ["--train-subset", str(train_subset)] if train_subset else []
        self.cnnlab = [sys.executable, "-m", "cnnlab"]
        self.cost: EpochCost | None = None
        self.tv_root: Path | None = None

    def prepare(self, methods: list[str]) -> None:
        """Measure the default configuration's epoch and make torchvision's data folder."""
        cfg = default_config(self.subset_flags)
        splits = load_data(cfg)  # also warms cnnlab's decode cache, so no method pays for it
        if {"default", "random"} & set(methods):
            speed = measure_speed(cfg, splits)
            epoch_s, test_s = speed.epoch_seconds(len(splits.train), len(splits.val)), speed.eval_seconds(len(splits.test))
            self.cost = EpochCost(epoch_s, test_s)
            print(f"default configuration: model {cfg.model.name}, {len(splits.train)} training images, "
                  f"{epoch_s:.1f} s per epoch, {test_s:.1f} s test pass (measured)", flush=True)  # fmt: skip
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the subprocesses get the device's memory
        if "peer" in methods:
            fashion_dir = Path(splits.name.split("(", 1)[1].rstrip(")"))  # "fashion-mnist (DIR)"
            self.tv_root = _torchvision_root(self.tmp / "torchvision", fashion_dir)

    def folder(self, method: str, budget_min: float, seed: int, *rest: str) -> Path:
        """``TMP/<method>-<budget>m-s<seed>[-<rest>]``: where one run writes."""
        return self.tmp / "-".join([method, f"{budget_min:g}m", f"s{seed}", *rest])

    def run(self, method: str, budget_min: float, seed: int) -> Row:
        budget_s = budget_min * 60
        wall, acc, detail = getattr(self, f"_{method}")(budget_s, budget_min, seed)
        return Row(method, budget_min, seed, wall, acc, wall <= budget_s * (1 + TOLERANCE), detail)

    def _peer(self, budget_s: float, budget_min: float, seed: int) -> tuple[float, float | None, dict]:
        cmd = [sys.executable, str(PEER_SCRIPT), "--minutes", f"{budget_min:g}", "--seed", str(seed),
               "--data-root", str(self.tv_root), *self.subset_flags]  # fmt: skip
        rc, wall, text = _child(cmd, self.folder("peer", budget_min, seed, "log.txt"), self.tmp, _timeout(budget_s))
        result = next((_json_line(line) for line in reversed(text.splitlines()) if line.startswith("{")), None)
        if rc != 0 or result is None:
            return wall, None, {"error": _error(rc, text)}
        return wall, float(result["test_acc"]), {"epochs": result["epochs"]}

    def _train(self, out: Path, epochs: int, seed: int, budget_s: float, *extra: str) -> tuple[int, float, dict | None, str]:
        """One ``cnnlab train`` of the default configuration: exit code, wall seconds, summary.json, output."""
        cmd = [*self.cnnlab, "train", "--data", DATA, "--epochs", str(epochs), "--seed", str(seed), "--out", str(out),
               "--quiet", *self.subset_flags, *extra]  # fmt: skip
        rc, wall, text = _child(cmd, out.with_name(out.name + "-log.txt"), self.tmp, _timeout(budget_s))
        return rc, wall, _read_json(out / "summary.json") if rc == 0 else None, text

    def _default(self, budget_s: float, budget_min: float, seed: int) -> tuple[float, float | None, dict]:
        assert self.cost is not None
        epochs = self.cost.epochs_in(budget_s)
        rc, wall, summary, text = self._train(self.folder("default", budget_min, seed), epochs, seed, budget_s)
        if summary is None or summary.get("test_acc") is None:
            return wall, None, {"epochs": epochs, "error": _error(rc, text)}
        return wall, float(summary["test_acc"]), {"epochs": epochs}

    def _timed(self, budget_s: float, budget_min: float, seed: int) -> tuple[float, float | None, dict]:
        out = self.folder("timed", budget_min, seed)
        cmd = [*self.cnnlab, "train", "--data", DATA, "--time", f"{budget_s:g}s", "--seed", str(seed), "--out", str(out),
               "--quiet", *self.subset_flags]  # fmt: skip
        rc, wall, text = _child(cmd, out.with_name(out.name + "-log.txt"), self.tmp, _timeout(budget_s))
        summary = _read_json(out / "summary.json") if rc == 0 else None
        if summary is None or summary.get("test_acc") is None:
            return wall, None, {"error": _error(rc, text)}
        return wall, float(summary["test_acc"]), {"epochs": summary.get("epochs_run")}

    def _random(self, budget_s: float, budget_min: float, seed: int) -> tuple[float, float | None, dict]:
        import optuna  # lazy: only this method needs it
        from optuna.trial import TrialState

        assert self.cost is not None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        epochs = self.cost.epochs_in(budget_s / RANDOM_TRIALS)
        start = time.perf_counter()
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
        trials: list[dict[str, Any]] = []
        while True:
            # The next trial is expected to last as long as the longest so far (the plan before the first).
            expected = max((t["wall_s"] for t in trials), default=self.cost.run_seconds(epochs))
            if trials and time.perf_counter() - start + expected > budget_s:
                break
            trial = study.ask()
            lr = trial.suggest_float("lr", *LR_RANGE, log=True)
            wd = trial.suggest_float("weight_decay", *WD_RANGE, log=True)
            out = self.folder("random", budget_min, seed, f"trial{trial.number}")
            rc, wall, summary, text = self._train(out, epochs, seed, budget_s, "--lr", f"{lr:.6g}", "--wd", f"{wd:.6g}")
            val = summary.get("best_val_acc") if summary else None
            record = {"lr": lr, "weight_decay": wd, "wall_s": wall, "best_val_acc": val,
                      "test_acc": summary.get("test_acc") if summary else None}  # fmt: skip
            if val is None:  # diverged (lr up to 1.0) or failed: no value for the study
                study.tell(trial, state=TrialState.FAIL)
                record["error"] = _error(rc, text)
            else:
                study.tell(trial, float(val))
            trials.append(record)
        wall = time.perf_counter() - start
        detail = {"epochs_per_trial": epochs, "trials": trials}
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        if not done:
            return wall, None, {**detail, "error": "no trial finished"}
        best = trials[study.best_trial.number]
        detail["best"] = {"lr": best["lr"], "weight_decay": best["weight_decay"], "best_val_acc": best["best_val_acc"]}
        return wall, best["test_acc"], detail

    def _recipe(self, budget_s: float, budget_min: float, seed: int) -> tuple[float, float | None, dict]:
        out = self.folder("recipe", budget_min, seed)
        cmd = [*self.cnnlab, "recipe", "--data", DATA, "--budget", f"{budget_s:g}s", "--seed", str(seed),
               "--out", str(out), "--quiet", *self.subset_flags]  # fmt: skip
        rc, wall, text = _child(cmd, out.with_name(out.name + "-log.txt"), self.tmp, _timeout(budget_s))
        summary = _read_json(out / "final" / "summary.json") or {}
        steps = (_read_json(out / "recipe.json") or {}).get("steps", {})
        acc = summary.get("test_acc")
        if acc is None:  # recipe.json's record of the final step says the same, when the summary is unreadable
            acc = (steps.get("final") or {}).get("test_acc")
        detail: dict[str, Any] = {"epochs": summary.get("epochs_run")}
        ensemble = steps.get("ensemble") or {}
        if ensemble:  # more final models were trained: the recipe's result is their average when it was used
            detail["ensemble"] = {k: ensemble.get(k) for k in ("used", "val_acc", "test_acc", "members")}
            detail["single_test_acc"] = acc
            if ensemble.get("used"):
                acc = ensemble.get("test_acc")
        if acc is None or rc != 0:  # a final model tested before a later failure (the report) still counts
            detail["error"] = _error(rc, text)
        return wall, None if acc is None else float(acc), detail


def default_config(subset_flags: list[str]) -> RunConfig:
    """The configuration `cnnlab train --data fashion-mnist` runs, parsed by cnnlab's own CLI."""
    args = build_parser().parse_args(["train", "--data", DATA, *subset_flags])
    return load_run_config(None, run_overrides(args))


# --------------------------------------------------------------------------- tables


def _pct(acc: float | None) -> str:
    return "failed" if acc is None else f"{acc:.2%}"


def print_row(row: Row) -> None:
    d = row.detail
    parts = [f"{key.replace('_', ' ')} {d[key]}" for key in ("epochs", "epochs_per_trial") if d.get(key) is not None]
    if "trials" in d:
        failed = sum("error" in t for t in d["trials"])
        parts.append(f"{len(d['trials'])} trials" + (f" ({failed} failed)" if failed else ""))
    if "error" in d:
        parts.append(d["error"])
    extra = ", ".join(parts)
    print(f"{row.method:8s} {row.budget_min:>6g} {row.seed:>4d} {row.wall_s:>8.1f} {_pct(row.test_acc):>9s} "
          f"{'yes' if row.within_budget else 'NO':>9s}  {extra}", flush=True)  # fmt: skip


def summarise(rows: list[Row]) -> list[dict[str, Any]]:
    """One entry per (method, budget): accuracy mean and range, wall time, and the recipe's comparison."""
    out = []
    keys = list(dict.fromkeys((r.budget_min, r.method) for r in rows))
    for budget, method in keys:
        group = [r for r in rows if r.method == method and r.budget_min == budget]
        accs = [r.test_acc for r in group if r.test_acc is not None]
        entry: dict[str, Any] = {
            "method": method, "budget_min": budget, "runs": len(group), "finished": len(accs),
            "mean_acc": statistics.fmean(accs) if accs else None, "min_acc": min(accs, default=None),
            "max_acc": max(accs, default=None), "mean_wall_s": statistics.fmean(r.wall_s for r in group),
            "within_budget": sum(r.within_budget for r in group), "recipe_beat": None,
        }  # fmt: skip
        recipe = {r.seed: r.test_acc for r in rows if r.method == "recipe" and r.budget_min == budget and r.test_acc is not None}
        if method != "recipe" and recipe and accs:
            mine = {r.seed: r.test_acc for r in group if r.test_acc is not None}
            paired = [s for s in mine if s in recipe]
            diff = statistics.fmean(recipe.values()) - statistics.fmean(accs)
            entry["recipe_beat"] = {"beat": diff > 0, "mean_diff_points": 100 * diff,
                                    "seeds_won": sum(recipe[s] > mine[s] for s in paired), "seeds_paired": len(paired)}  # fmt: skip
        out.append(entry)
    return out


def print_summary(summary: list[dict[str, Any]]) -> None:
    print("\nsummary (test accuracy over seeds; 'recipe beat it': the recipe's mean minus this method's)")
    print(f"{'method':8s} {'budget':>6s} {'runs':>4s} {'mean':>7s} {'min-max':>15s} {'wall s':>8s} {'in budget':>9s}  recipe beat it")
    for e in summary:
        spread = f"{e['min_acc']:.2%}-{e['max_acc']:.2%}" if e["finished"] else "-"
        mean = f"{e['mean_acc']:.2%}" if e["finished"] else "failed"
        beat = e["recipe_beat"]
        verdict = "" if beat is None else (f"{'yes' if beat['beat'] else 'no'} ({beat['mean_diff_points']:+.2f} pts, "
                                           f"won {beat['seeds_won']}/{beat['seeds_paired']} seeds)")  # fmt: skip
        print(f"{e['method']:8s} {e['budget_min']:>6g} {e['runs']:>4d} {mean:>7s} {spread:>15s} {e['mean_wall_s']:>8.1f} "
              f"{e['within_budget']:>4d}/{e['runs']:<4d}  {verdict}")  # fmt: skip


# --------------------------------------------------------------------------- command line


def _numbers(kind: type, what: str, positive: bool = False):  # noqa: ANN202 - an argparse type
    def parse(text: str) -> list:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects comma-separated {what}, got '{text}'") from None
        if not values or any(not math.isfinite(v) or v < 0 or (positive and v == 0) for v in values):
            raise argparse.ArgumentTypeError(f"expects comma-separated {'positive ' if positive else ''}{what}, got '{text}'")
        return values

    return parse


def _machine() -> dict[str, Any]:
    return {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=_numbers(float, "minutes", positive=True), default=[5.0, 10.0, 30.0, 60.0],
                        help="wall-time budgets in minutes (default 5,10,30,60)")  # fmt: skip
    parser.add_argument("--seeds", type=_numbers(int, "integer seeds"), default=[0, 1, 2],
                        help=f"seeds of budgets under {LONG_MINUTES:g} minutes (default 0,1,2)")  # fmt: skip
    parser.add_argument("--seeds-long", type=_numbers(int, "integer seeds"), default=[0],
                        help=f"seeds of budgets of {LONG_MINUTES:g} minutes and more (default 0)")  # fmt: skip
    parser.add_argument("--methods", help=f"comma-separated, of {','.join(METHODS)} (default: all; random only "
                        f"at budgets of {LONG_MINUTES:g} minutes and more unless named here)")  # fmt: skip
    parser.add_argument("--train-subset", type=int, metavar="N", help="every method trains on N training images (default: all)")
    parser.add_argument("--json", metavar="FILE", help="also write every row and the summary to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args()

    methods = [m.strip() for m in (args.methods or ",".join(METHODS)).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {', '.join(unknown) or 'empty list'}; choose from {','.join(METHODS)}")
    if args.train_subset is not None and args.train_subset < 1:
        parser.error(f"--train-subset must be a positive number of images, got {args.train_subset}")
    if "recipe" in methods and min(args.budgets) < RECIPE_MIN_MINUTES:
        parser.error(f"the recipe needs a budget of at least {RECIPE_MIN_MINUTES:g} minute, got {min(args.budgets):g}")
    random_everywhere = args.methods is not None

    tmp = Path(tempfile.mkdtemp(prefix="bench-budget-"))
    print(f"machine: {_machine()}; temporary folder {tmp}", flush=True)
    bench = Bench(tmp, args.train_subset)
    rows: list[Row] = []
    try:
        bench.prepare(methods)
        print(f"\n{'method':8s} {'budget':>6s} {'seed':>4s} {'wall s':>8s} {'test acc':>9s} {'in budget':>9s}  detail")
        for budget in args.budgets:
            for seed in args.seeds_long if budget >= LONG_MINUTES else args.seeds:
                for method in methods:
                    if method == "random" and not random_everywhere and budget < LONG_MINUTES:
                        continue
                    rows.append(bench.run(method, budget, seed))
                    print_row(rows[-1])
                    if args.json:
                        _write_json(args.json, rows)
        summary = summarise(rows)
        print_summary(summary)
        if args.json:
            _write_json(args.json, rows)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _write_json(path: str, rows: list[Row]) -> None:
    data = {"machine": _machine(), "rows": [asdict(r) for r in rows], "summary": summarise(rows)}
    Path(path).write_text(json.dumps(data, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()

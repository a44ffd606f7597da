"""`cnnlab recipe`: the lecture's seven steps end to end, with a report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

EPILOG = """\
steps (each also a command of its own):
  1 check      loss at initialisation ~ ln(C), finite gradients, weight decay, batch independence
  2 overfit    a tiny sample must be learnt to ~100% (and beat zeroed inputs)
  3 lr-find    LR range test; its suggestion centres the search
  4 search     coarse: short trials on a training subset over wide ranges (Optuna, pruned)
  5 search     refine: ranges narrowed around the best coarse trials, longer trials
  6 diagnose   read the best trial's curves; move the ranges (LR, regularisation) accordingly
  7 loop 5-6 until the budget is spent or validation accuracy stops improving;
    then train the final model on all the training data and test it once
    (with flip TTA only if it raises validation accuracy)

the budget plan (after step 2) times the model and serves the final model first: it gets
every whole epoch the time left allows, up to 30; only the time beyond goes to steps 3-7.
At short budgets (a few minutes on a CPU) the search is skipped and the final model trains
the starting configuration (the defaults, or your flags) for the whole budget.

examples:
  cnnlab recipe --data fashion-mnist --budget 5m
  cnnlab recipe --data fashion-mnist --model simple --model-opt spec=c32-p-c96-p-c192-p-fc256 --budget 10m
  cnnlab recipe --data cifar10 --model resnet20 --augment standard --budget 2h --out runs/recipe-c10
  cnnlab recipe --resume runs/recipe-c10          # continue after a crash or Ctrl-C
  cnnlab recipe --report runs/recipe-c10          # only rewrite its report.html
  cnnlab train --config runs/recipe-c10/best.yaml # train the chosen configuration again

The recipe folder holds recipe.json (the steps done), best.yaml, final/ (the final run)
and report.html (one self-contained page with every step's evidence)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from cnnlab.cli.common import add_quiet, config_number, number
    from cnnlab.cli.dashboard import add_dashboard_flag
    from cnnlab.cli.train import add_run_args
    from cnnlab.config import TrainConfig
    from cnnlab.recipe.planner import MAX_MEMBERS

    parser = subparsers.add_parser(
        "recipe",
        help="run the 7-step hyperparameter recipe end to end (check, overfit, lr-find, search, diagnose, final model, report)",
        description="Run the lecture's hyperparameter procedure end to end within a budget and write a report. "
        "Training settings are those of `cnnlab train` (flags and/or --config); the search tunes the learning "
        "rate, weight decay and dropout (when the model has it) around them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="YAML", help="a run config to start from (data/model/optim/schedule/train)")
    parser.add_argument("--out", metavar="DIR", help="the recipe folder (default runs/recipe-<model>-<data>-<time>)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", metavar="DIR", help="continue the recipe in this folder from its last finished step")
    again.add_argument("--report", metavar="DIR",
                       help="only rewrite DIR/report.html from the recipe's files (a finished or stopped recipe), e.g. after an upgrade")
    r = parser.add_argument_group("recipe")
    r.add_argument("--budget", default="30m", metavar="TIME", help="wall time for everything, e.g. 10m, 1h")
    r.add_argument("--trials", type=number(integer=True, lo=1), metavar="N", help="at most N trials per search stage (default: as many as the budget allows)")
    r.add_argument("--coarse-epochs", type=config_number(TrainConfig, "epochs"), default=2, metavar="N", help="epochs per coarse trial")
    r.add_argument("--refine-epochs", type=config_number(TrainConfig, "epochs"), default=4, metavar="N", help="epochs per refine trial")
    r.add_argument("--search-subset", type=number(integer=True, lo=0), default=10000, metavar="N", help="training images per search trial, stratified (0 = all)")
    r.add_argument("--final-epochs", type=config_number(TrainConfig, "epochs"), metavar="N", help="epochs of the final training (default: the whole epochs the budget left allows at the final model's measured speed, at most 30)")
    r.add_argument("--ensemble", type=number(integer=True, lo=1, hi=100), metavar="N",
                   help="at most N final models from different seeds, averaged, when the budget holds more epochs than one "
                        f"model can use (1 = always one model; default: the plan shares the time among up to {MAX_MEMBERS}, "
                        f"and more, up to {2 * MAX_MEMBERS}, if those end early and the time left holds one)")
    r.add_argument("--rounds", type=number(integer=True, lo=1, hi=100), default=3, metavar="N", help="refine/diagnose rounds at most")
    r.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    r.add_argument("--pruner", choices=("asha", "hyperband", "median", "none"), default="asha")
    r.add_argument("--workers", type=number(integer=True, lo=1, hi=256), default=1, metavar="N", help="local worker processes per search")
    r.add_argument("--storage", metavar="URL",
                   help="Optuna storage, e.g. postgresql://user@host/db (default: a journal file in the folder; env "
                   "CNNLAB_STORAGE). recipe.json keeps it with the password masked: give it again with --resume")  # fmt: skip
    r.add_argument("--keep-going", action="store_true", help="search even when the check or the overfit test fails")
    add_dashboard_flag(r, "recipe")
    add_quiet(r, "each step's result and the report's path")
    add_run_args(parser)
    parser.epilog = EPILOG
    parser.set_defaults(func=_recipe)


def _recipe(args: argparse.Namespace) -> int:
    from cnnlab.cli.dashboard import live_dashboard
    from cnnlab.recipe.recipe import run_recipe
    from cnnlab.uptime import process_started

    if args.report:
        from cnnlab.recipe.recipe import rewrite_report

        print(f"report: {rewrite_report(args.report)}")
        return 0
    if args.resume:
        cfg, options, out = None, None, Path(args.resume)
    else:
        cfg, options, out = _new_recipe(args)
    try:
        with live_dashboard(args.dashboard, "recipe", lambda: _dashboard_source(args, out, options)):
            result = run_recipe(cfg, out, options, resume=bool(args.resume), verbose=not args.quiet,
                                storage=args.storage if args.resume else None,
                                started=process_started() if getattr(args, "program", False) else None)  # fmt: skip
    except KeyboardInterrupt:
        # One line, with the command that continues: every finished step (and trial) is saved.
        if (out / "recipe.json").is_file():
            hint = f"finished steps are saved: continue with `cnnlab recipe --resume {out}`"
        else:
            hint = "nothing was saved yet: run the same command again"
        print(f"cnnlab: interrupted; {hint}", file=sys.stderr, flush=True)
        return 130
    if result.report:
        print(f"report: {result.report}")
    if result.stopped:
        return 1
    if result.test_acc is not None:
        print(f"test accuracy {result.test_acc:.2%} with {result.best_config} ({result.state.spent_seconds / 60:.1f} min)")
    return 0


def _new_recipe(args: argparse.Namespace) -> tuple[Any, Any, Path]:
    """The run config, the recipe options and the folder of a new recipe, from the flags."""
    from cnnlab.cli.common import parse_duration
    from cnnlab.cli.train import run_overrides
    from cnnlab.config import load_run_config
    from cnnlab.recipe.recipe import RecipeOptions
    from cnnlab.run import default_run_dir

    cfg = load_run_config(args.config, run_overrides(args))
    options = RecipeOptions(
        budget_seconds=parse_duration(args.budget), coarse_trials=args.trials, refine_trials=args.trials,
        coarse_epochs=args.coarse_epochs, refine_epochs=args.refine_epochs, search_subset=args.search_subset or None,
        final_epochs=args.final_epochs, max_rounds=args.rounds, ensemble=args.ensemble, sampler=args.sampler, pruner=args.pruner,
        workers=args.workers, storage=args.storage or os.environ.get("CNNLAB_STORAGE"), stop_on_failure=not args.keep_going, seed=cfg.train.seed,
    )  # fmt: skip
    out = Path(args.out) if args.out else default_run_dir(cfg).with_name("recipe-" + default_run_dir(cfg).name)
    return cfg, options, out


def _dashboard_source(args: argparse.Namespace, out: Path, options: Any) -> Any:
    """The studies --dashboard shows: a new recipe's storage, else where recipe.json (or --storage) says."""
    from cnnlab.recipe.dashboard import find_source, recipe_source

    if args.resume:
        return find_source(str(out), storage=args.storage)
    return recipe_source(out, options.storage)

"""`cnnlab check` and `cnnlab overfit`: steps 1 and 2 of the hyperparameter recipe."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import number
from cnnlab.cli.train import add_run_args, run_overrides

CHECK_EPILOG = """\
checks (regularisation off: no dropout, no weight decay, no label smoothing):
  initial-loss        the mean loss over a few training batches at initialisation is within
                      10% of chance: the cross-entropy of the class priors the classifier
                      bias starts at (ln C for C balanced classes; ln C with --no-prior-bias)
  gradients           one backward pass gives every trainable parameter a finite, non-zero
                      gradient (offending parameters are named)
  weight-decay        turning weight decay on (the config's, or 5e-4) raises the total loss
                      loss + wd/2 * ||w||^2 over the decayed weights (not norms or biases)
  batch-independence  in eval mode, the loss of image i has no gradient w.r.t. image j != i
                      (at most 1e-6 of its own); fails for layers that mix the batch

Takes --config YAML and the `cnnlab train` flags that shape what it checks (data, model,
--wd, --batch-size, --seed, --device), so it checks the run you are about to start; give
the rest of that run's settings in the YAML. Exit code 0 when every check passes, 1 otherwise.

examples:
  cnnlab check --data fashion-mnist --model resnet20
  cnnlab check --config run.yaml --out runs/check    # also writes runs/check/check.json
  cnnlab check --data ~/photos --model simple --model-opt spec=c32-p-c64-p --json
"""

OVERFIT_EPILOG = """\
rule:
  Train on a fixed, stratified subset of --batches x --batch-size training images, with no
  augmentation, dropout, weight decay or label smoothing, at a constant learning rate
  (AdamW lr 3e-3 unless --optimizer/--lr or the config's optim section say otherwise).
  Pass: one pass over the subset reaches >= 99% accuracy and mean loss < 0.05 within --steps.
  The same training on zeroed inputs (the input-independent baseline) must end at least
  twice as high; otherwise the model ignores its input.

  Passing does not prove the labels are right: any labels, even shuffled ones, can be
  memorised. Wrong labels show in validation curves that stay at chance.

Exit code 0 on pass, 1 on fail.

examples:
  cnnlab overfit --data fashion-mnist --model resnet20
  cnnlab overfit --config run.yaml --batches 1 --steps 500 --out runs/overfit
  cnnlab overfit --data cifar10 --model vgg11 --optimizer sgd --lr 0.05

Takes --config YAML and the `cnnlab train` flags overfitting uses (data, model, optimizer,
--batch-size, --seed, --device, precision); no schedule, augmentation or regularisation flags.
"""

#: The run flags (dests) that shape the model and its data, which every recipe step uses.
MODEL_FLAGS = frozenset({"model", "norm", "act", "dropout", "init", "model_opt", "no_prior_bias", "pretrained",
                         "backbone", "class_subset"})  # fmt: skip
#: check: the initial loss of a few un-augmented batches, gradients, and the config's weight decay.
CHECK_FLAGS = MODEL_FLAGS | {"weight_decay", "batch_size", "seed", "device"}
#: overfit: a constant-lr optimizer (weight decay off) on a fixed subset, in the run's precision.
OVERFIT_FLAGS = MODEL_FLAGS | {"optimizer", "lr", "momentum", "no_nesterov", "batch_size", "seed", "device", "amp",
                               "channels_last"}  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cnnlab check` and `cnnlab overfit`."""
    fmt = argparse.RawDescriptionHelpFormatter
    check = subparsers.add_parser(
        "check", help="recipe step 1: sanity-check a setup at initialisation (loss, gradients, batch independence)",
        description="Check a training setup before training: the initial loss matches chance, every parameter "
        "gets a gradient, weight decay raises the loss, and the images of a batch do not influence each other.",
        formatter_class=fmt,
    )  # fmt: skip
    _add_common(check, "check.json")
    check.add_argument("--batches", type=number(integer=True, lo=1, hi=1000), default=4, metavar="N", help="training batches the initial loss averages")
    add_run_args(check, only=CHECK_FLAGS)
    check.epilog = CHECK_EPILOG
    check.set_defaults(func=_check)

    overfit = subparsers.add_parser(
        "overfit", help="recipe step 2: memorise a tiny subset, compared with zeroed inputs",
        description="Overfit a few batches with regularisation off: a correct model and pipeline reach ~100% "
        "training accuracy quickly, and clearly beat the same training on zeroed inputs.",
        formatter_class=fmt,
    )  # fmt: skip
    _add_common(overfit, "overfit.json and overfit.png")
    overfit.add_argument("--batches", type=number(integer=True, lo=1, hi=1000), default=2, metavar="N", help="the subset holds N x batch-size images")
    overfit.add_argument("--steps", type=number(integer=True, lo=1, hi=1_000_000), default=300, metavar="N", help="step budget")
    add_run_args(overfit, only=OVERFIT_FLAGS)
    overfit.epilog = OVERFIT_EPILOG
    overfit.set_defaults(func=_overfit)


def _add_common(parser: argparse.ArgumentParser, writes: str) -> None:
    """--config, --out and --json, shared by both commands."""
    parser.add_argument("--config", metavar="YAML", help="a run config (data/model/optim/schedule/train sections)")
    parser.add_argument("--out", metavar="DIR", help=f"folder for {writes}")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of text")


def _print(report, as_json: bool) -> None:  # noqa: ANN001 - CheckReport | OverfitReport
    """The report as text lines, or as JSON."""
    if as_json:
        import json

        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.text(), flush=True)


def _check(args: argparse.Namespace) -> int:
    from cnnlab.config import load_run_config
    from cnnlab.recipe.checks import check_setup

    cfg = load_run_config(args.config, run_overrides(args))
    report = check_setup(cfg, batches=args.batches, out_dir=args.out)
    _print(report, args.json)
    return 0 if report.passed else 1


def _overfit(args: argparse.Namespace) -> int:
    from cnnlab.config import load_run_config, load_yaml
    from cnnlab.recipe.overfit import overfit_small

    cfg = load_run_config(args.config, run_overrides(args))
    # The run's own optimizer only when the user chose one; otherwise the step's robust default.
    given = (args.optimizer, args.lr, args.momentum)
    chosen = any(v is not None for v in given) or bool(args.config and "optim" in load_yaml(args.config))
    report = overfit_small(cfg, batches=args.batches, max_steps=args.steps, out_dir=args.out,
                           optim=cfg.optim if chosen else None)  # fmt: skip
    _print(report, args.json)
    return 0 if report.passed else 1

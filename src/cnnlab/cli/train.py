"""`cnnlab train`: train a model, from flags and/or a YAML config (flags win)."""

from __future__ import annotations

import argparse
from typing import Any

from cnnlab.cli.common import add_data_args, data_overrides


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """Flags for every field of a RunConfig (None = not given, so YAML/defaults stay)."""
    from cnnlab import config as c
    from cnnlab.cli.common import config_number as num  # each flag checked against its config field's range
    from cnnlab.data.augment_help import AUGMENT_HELP

    add_data_args(parser)
    parser.add_argument("--augment", metavar="SPEC", help="batched augmentation, e.g. flip,crop:4,cutout:8 or standard (see below)")
    m = parser.add_argument_group("model")
    m.add_argument("--model", metavar="NAME", help="a registered model (`cnnlab models`), default resnet20")
    m.add_argument("--norm", metavar="NORM", help=f"{' | '.join(c.choices(c.NormName))}; group:G sets the group count")
    m.add_argument("--act", type=str.lower, choices=c.choices(c.Activation))
    m.add_argument("--dropout", type=num(c.ModelConfig, "dropout"), metavar="P", help="dropout probability in the head")
    m.add_argument("--init", metavar="INIT", help=f"{' | '.join(c.choices(c.InitName))}; normal:STD sets the std")
    m.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE", help="any other model option, e.g. spec=c32-p-c64-p (repeatable)")
    m.add_argument("--no-prior-bias", action="store_true", help="do not set the classifier bias from the class priors")
    o = parser.add_argument_group("optimizer and schedule")
    o.add_argument("--optimizer", choices=c.choices(c.OptimizerName))
    o.add_argument("--lr", type=num(c.OptimConfig, "lr"), help="peak learning rate (default 0.1)")
    o.add_argument("--momentum", type=num(c.OptimConfig, "momentum"))
    o.add_argument("--no-nesterov", action="store_true")
    o.add_argument("--wd", "--weight-decay", dest="weight_decay", type=num(c.OptimConfig, "weight_decay"), help="weight decay (not on norm parameters or biases)")
    o.add_argument("--schedule", choices=c.choices(c.ScheduleName))
    o.add_argument("--warmup", type=num(c.ScheduleConfig, "warmup_epochs"), metavar="EPOCHS", help="linear warmup epochs")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=num(c.TrainConfig, "epochs"))
    t.add_argument("--batch-size", type=num(c.TrainConfig, "batch_size"))
    t.add_argument("--seed", type=num(c.TrainConfig, "seed"))
    t.add_argument("--label-smoothing", type=num(c.TrainConfig, "label_smoothing"))
    t.add_argument("--grad-clip", type=num(c.TrainConfig, "grad_clip"), metavar="NORM")
    t.add_argument("--ema", type=num(c.TrainConfig, "ema"), metavar="DECAY", help="evaluate an exponential moving average of the weights, e.g. 0.999")
    t.add_argument("--early-stopping", type=num(c.TrainConfig, "early_stopping"), metavar="EPOCHS", help="stop after this many epochs without a lower validation loss")
    t.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    t.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    t.add_argument("--balanced-sampling", action="store_true", help="sample training images inversely to class frequency")
    t.add_argument("--train-subset", type=num(c.TrainConfig, "train_subset"), metavar="N", help="train on a stratified subset of N images")
    t.add_argument("--device", help="auto (default) | cpu | cuda | cuda:N")
    t.add_argument("--amp", choices=c.choices(c.AmpMode), help="mixed precision (auto: bf16 on CUDA)")
    t.add_argument("--channels-last", choices=c.choices(c.ChannelsLast))
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--tta", action="store_true", help="flip test-time augmentation in the final test evaluation")
    t.add_argument("--checkpoint-minutes", type=num(c.TrainConfig, "checkpoint_minutes"), help="also checkpoint mid-epoch this often (default 10)")
    x = parser.add_argument_group("transfer learning (docs/transfer.md)")
    x.add_argument("--pretrained", action="store_true", help="load the backbone's pretrained weights (--model timm:NAME, torchvision:NAME, efficientnet_lite0)")
    x.add_argument("--transfer", choices=c.choices(c.TransferMode), help="freeze the backbone and train a new head on cached features, fine-tune it, or pick by training-set size")
    x.add_argument("--backbone", metavar="RUN", help="a cnnlab run folder or checkpoint whose body becomes the backbone")
    x.add_argument("--feature-views", type=num(c.TransferConfig, "feature_views"), metavar="K", help="feature-extract: also cache K augmented copies of the training features (needs --augment)")
    x.add_argument("--freeze-epochs", type=num(c.TransferConfig, "freeze_epochs"), metavar="N", help="finetune: epochs with the backbone frozen first (default 1)")
    x.add_argument("--backbone-lr-ratio", type=num(c.TransferConfig, "backbone_lr_ratio"), metavar="R", help="finetune: backbone lr = lr * R (default 0.1)")
    x.add_argument("--finetune-norm", choices=c.choices(c.TransferNorm), help="finetune: norm layers learn (train, default) or stay fixed in eval mode (frozen)")
    x.add_argument("--class-subset", metavar="LIST", help="keep only these class indices, relabelled in order: 0-4 or 5,6,7")
    parser.epilog = AUGMENT_HELP


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def parse_class_list(text: str | None) -> list[int] | None:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"5,7,9"`` -> [5, 7, 9]; None stays None.

    Raises:
        UsageError: not a list of indices, a descending range, or fewer than 2 classes
            (a one-class model is always right: it would report 100% and learn nothing).
    """
    from cnnlab.errors import UsageError

    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            if dash and not 0 <= int(hi) - int(lo) <= 100_000:  # more would be a typo that fills the memory
                raise ValueError(part)
            out.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    except ValueError:
        raise UsageError(f"--class-subset expects indices like 0-4 or 5,6,7, got '{text}'") from None
    if len(set(out)) < 2:
        raise UsageError(f"--class-subset {text} keeps {len(set(out))} class(es); a classifier needs at least 2")
    return out


def parse_model_options(items: list[str]) -> dict[str, Any]:
    """``--model-opt KEY=VALUE`` flags as a dict (values parsed as YAML scalars: 8 is an int).

    Raises:
        UsageError: an item that is not KEY=VALUE, or a value that is not a YAML scalar or list.
    """
    import yaml

    from cnnlab.errors import UsageError

    options = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--model-opt expects KEY=VALUE, got '{item}'")
        try:
            options[key.strip()] = _parse_value(value)
        except yaml.YAMLError:
            raise UsageError(f"--model-opt {key.strip()}: cannot read the value '{value}' (write a number, a word or [a, list])") from None
    return options


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Nested overrides for ``load_run_config`` from the parsed flags."""
    options = parse_model_options(args.model_opt)
    flag = lambda v: True if v else None  # noqa: E731 - store_true flags override only when given
    return {
        "data": {**data_overrides(args), "augment": args.augment, "class_subset": parse_class_list(args.class_subset)},
        "model": {"name": args.model, "norm": args.norm, "act": args.act, "dropout": args.dropout, "init": args.init,
                  "options": options or None, "prior_bias": False if args.no_prior_bias else None,
                  "pretrained": flag(args.pretrained)},
        "transfer": {"mode": args.transfer, "backbone": args.backbone, "feature_views": args.feature_views,
                     "freeze_epochs": args.freeze_epochs, "backbone_lr_ratio": args.backbone_lr_ratio,
                     "norm": args.finetune_norm},
        "optim": {"name": args.optimizer, "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay,
                  "nesterov": False if args.no_nesterov else None},
        "schedule": {"name": args.schedule, "warmup_epochs": args.warmup},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
                  "label_smoothing": args.label_smoothing, "grad_clip": args.grad_clip, "ema": args.ema,
                  "early_stopping": args.early_stopping, "deterministic": flag(args.deterministic),
                  "class_weights": flag(args.class_weights), "balanced_sampling": flag(args.balanced_sampling),
                  "train_subset": args.train_subset, "device": args.device, "amp": args.amp,
                  "channels_last": args.channels_last, "compile": flag(args.compile), "tta": flag(args.tta),
                  "checkpoint_minutes": args.checkpoint_minutes},
    }  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model (run folder with metrics, curves, checkpoints and test accuracy)",
        description="Train a CNN. Settings come from --config YAML and/or flags (flags win); the resolved "
        "config is written to the run folder, so `cnnlab train --config RUN/config.yaml` repeats a run. "
        "A killed or interrupted run continues exactly with --resume RUN.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="YAML", help="a run config (data/model/optim/schedule/train sections)")
    parser.add_argument("--out", metavar="DIR", help="the run folder, new or empty (default runs/<model>-<data>-<time>)")
    parser.add_argument("--resume", metavar="RUN", help="continue the run in this folder exactly where it stopped, "
                        "with its own settings (other flags are refused, except --device and --checkpoint-minutes)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    add_run_args(parser)
    parser.set_defaults(func=_train)


# The flag that sets a config field, where it is not --<field> (for the messages of --resume).
_FLAGS = {
    "data.source": "--data", "data.root": "--data-root", "data.download": "--no-download",
    "model.name": "--model", "model.options": "--model-opt", "model.prior_bias": "--no-prior-bias",
    "transfer.mode": "--transfer", "transfer.norm": "--finetune-norm", "optim.name": "--optimizer",
    "optim.weight_decay": "--wd", "optim.nesterov": "--no-nesterov", "schedule.name": "--schedule",
    "schedule.warmup_epochs": "--warmup",
}  # fmt: skip


def flag_name(key: str) -> str:
    """The flag of a dotted config field: ``optim.lr`` -> ``--lr``, ``model.options.spec`` -> ``--model-opt spec=``."""
    for prefix, flag in _FLAGS.items():
        if key == prefix:
            return flag
        if key.startswith(prefix + "."):
            return f"{flag} {key[len(prefix) + 1 :]}="
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def _resume_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The settings ``--resume`` is asked to change, checked against the run's own.

    A resumed run continues with the settings it started with; a flag (or ``--config``)
    that would change one is refused rather than silently ignored, except the few of
    ``RESUME_CHANGEABLE`` (device, checkpoint interval), which do not change the result.

    Raises:
        UsageError: ``--out`` names another folder, or a setting would change.
    """
    from pathlib import Path

    from cnnlab.config import load_yaml, merge
    from cnnlab.errors import UsageError
    from cnnlab.run import RESUME_CHANGEABLE, changed_settings, resume_config, resume_folder

    folder = resume_folder(args.resume)
    if args.out is not None and Path(args.out).absolute() != folder.path.absolute():
        raise UsageError(f"--resume continues the run in {folder.path}; it cannot write to --out {args.out} (drop --out)")
    overrides = merge(load_yaml(args.config) if args.config else {}, run_overrides(args))
    if not any(value not in (None, {}) for section in overrides.values() for value in (section or {}).values()):
        return {}  # nothing given: no need to read the run's settings twice
    changed = changed_settings(resume_config(args.resume), overrides)
    refused = {key: values for key, values in changed.items() if key not in RESUME_CHANGEABLE}
    if refused:
        listed = "; ".join(f"{flag_name(key)} ({key}: run {old!r}, given {new!r})" for key, (old, new) in refused.items())
        raise UsageError(
            f"--resume continues {folder.path} with its own settings, and these differ: {listed}. Drop them "
            f"(only {', '.join(flag_name(k) for k in RESUME_CHANGEABLE)} may change), or start a new run with "
            f"--config {folder.config_path} and the new settings (more --epochs is a new run: the schedule spans them all)"
        )
    return {key: new for key, (_, new) in changed.items()}


def _train(args: argparse.Namespace) -> int:
    from cnnlab.config import load_run_config
    from cnnlab.run import result_line, run_training

    if args.resume is not None:
        summary = run_training(resume=args.resume, changes=_resume_changes(args), verbose=not args.quiet)
    else:
        cfg = load_run_config(args.config, run_overrides(args))
        summary = run_training(cfg, args.out, verbose=not args.quiet)
    # --quiet drops the per-epoch lines, not the result (docs/training.md).
    if args.quiet and (line := result_line(summary)):
        print(line, flush=True)
    return 0

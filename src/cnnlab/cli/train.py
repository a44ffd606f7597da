"""`cnnlab train`: train a model, from flags and/or a YAML config (flags win)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from cnnlab.cli.common import add_data_args, add_quiet, data_overrides

if TYPE_CHECKING:
    from cnnlab.config import RunConfig
    from cnnlab.data.imageset import Splits
    from cnnlab.train.deadline import Deadline

log = logging.getLogger(__name__)


class _Flags:
    """Adds the run flags a command uses (``only``; all when None) to one group of its parser."""

    def __init__(self, parser: argparse.ArgumentParser, group: Any, only: frozenset[str] | None) -> None:
        self.parser, self.group, self.only = parser, group, only

    def __call__(self, *flags: str, field: tuple[type, str] | None = None, **kwargs: Any) -> None:
        """Add one flag; ``field`` (section, name): the config field it sets, whose range and default it states."""
        from cnnlab.cli.common import config_number, states

        dest = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
        if self.only is not None and dest not in self.only:
            if hasattr(self.parser, "not_taken"):  # its error then says why, rather than "did you mean"
                for flag in flags:
                    self.parser.not_taken[flag] = f"a `cnnlab train` flag that {self.parser.prog.split()[-1]} does not use"
            return
        if field is not None and "type" not in kwargs and kwargs.get("action") is None:
            try:  # a numeric field: checked against its range, which --help states
                kwargs["type"] = config_number(*field)
            except KeyError:
                pass
        action = self.group.add_argument(*flags, **kwargs)
        if field is not None:
            states(action, *field)

    add_argument = __call__  # the argparse spelling works too


def add_run_args(parser: argparse.ArgumentParser, *, only: frozenset[str] | None = None) -> None:
    """Flags for the fields of a RunConfig (None = not given, so YAML/defaults stay).

    Args:
        parser: the command's parser.
        only: the dests of the run flags this command uses (the data flags always); a
            command is offered, and accepts, no flag it would ignore. None: every flag.
    """
    from cnnlab import config as c
    from cnnlab.data.augment_help import AUGMENT_HELP

    add_data_args(parser)
    own = "(default: the model's own)"
    _Flags(parser, parser, only)("--augment", field=(c.DataConfig, "augment"), metavar="SPEC", help="batched augmentation, e.g. flip,crop:4,cutout:8 or standard (see below)")
    _Flags(parser, parser, only)("--loader", field=(c.DataConfig, "loader"), choices=c.choices(c.LoaderMode),
                                 help="a store as --data (`cnnlab data prepare`): decode it into memory, stream it batch by batch, "
                                      "or auto: in memory when it fits half the free device memory (`cnnlab data info STORE` says which)")  # fmt: skip
    _Flags(parser, parser, only)("--decode", field=(c.DataConfig, "decode"), choices=c.choices(c.DecodeMode),
                                 help="a streamed JPEG store: decode the training crops on the CPU threads, or on the device "
                                      "(torchcodec/torchvision decode_jpeg: nvJPEG on a GPU, which frees the CPU cores; docs/data.md)")  # fmt: skip
    m = _Flags(parser, parser.add_argument_group("model"), only)
    m("--model", field=(c.ModelConfig, "name"), metavar="NAME",
      help="a registered model (`cnnlab models`), or your own code: FILE.py:FACTORY or MODULE:FACTORY, where "
           "FACTORY(num_classes, in_chans, **options) returns an nn.Module (docs/models.md, 'Your own model')")  # fmt: skip
    m("--norm", metavar="NORM", help=f"{' | '.join(c.choices(c.NormName))}; group:G sets the group count {own}")
    m("--act", type=str.lower, choices=c.choices(c.Activation), help=own)
    m("--dropout", field=(c.ModelConfig, "dropout"), metavar="P", help=f"dropout probability in the head {own}")
    m("--init", metavar="INIT", help=f"{' | '.join(c.choices(c.InitName))}; normal:STD sets the std {own}")
    m("--model-opt", action="append", default=[], metavar="KEY=VALUE", help="any other model option, e.g. spec=c32-p-c64-p (repeatable)")
    m("--no-prior-bias", action="store_true", help="do not set the classifier bias from the class priors")
    o = _Flags(parser, parser.add_argument_group("optimizer and schedule"), only)
    o("--optimizer", field=(c.OptimConfig, "name"), choices=c.choices(c.OptimizerName))
    o("--lr", field=(c.OptimConfig, "lr"), help="peak learning rate")
    o("--momentum", field=(c.OptimConfig, "momentum"), help="sgd only")
    o("--no-nesterov", action="store_true", help="sgd: plain momentum instead of Nesterov's")
    o("--wd", "--weight-decay", dest="weight_decay", field=(c.OptimConfig, "weight_decay"), help="weight decay (not on norm parameters or biases)")
    o("--schedule", field=(c.ScheduleConfig, "name"), choices=c.choices(c.ScheduleName))
    o("--warmup", field=(c.ScheduleConfig, "warmup_epochs"), metavar="EPOCHS", help="linear warmup epochs")
    t = _Flags(parser, parser.add_argument_group("training"), only)
    t("--epochs", field=(c.TrainConfig, "epochs"))
    t("--steps", field=(c.TrainConfig, "steps"), metavar="N",
      help="train N optimizer steps instead of whole --epochs (the last epoch ends part way; the schedule spans the N)")
    t("--batch-size", field=(c.TrainConfig, "batch_size"), help="images per forward pass and process (with --accumulate: "
      "per micro-batch)")
    t("--accumulate", field=(c.TrainConfig, "accumulate"), metavar="N",
      help="gradient accumulation: one optimizer step per N micro-batches of --batch-size, the same update as one "
           "batch N times larger (--lr is for that batch) in the memory of one micro-batch")  # fmt: skip
    t("--seed", field=(c.TrainConfig, "seed"))
    t("--label-smoothing", field=(c.TrainConfig, "label_smoothing"))
    t("--mixup", field=(c.TrainConfig, "mixup"), metavar="ALPHA", help="mix image pairs and their labels, weight ~ Beta(ALPHA, ALPHA), e.g. 0.2; 0 is off")
    t("--cutmix", field=(c.TrainConfig, "cutmix"), metavar="ALPHA", help="paste a box from another image, area ~ Beta(ALPHA, ALPHA), labels by area, e.g. 1.0; 0 is off")
    t("--mix-prob", field=(c.TrainConfig, "mix_prob"), metavar="P", help="probability that a batch is mixed when --mixup/--cutmix is on")
    t("--grad-clip", field=(c.TrainConfig, "grad_clip"), metavar="NORM", help="clip the gradient norm (default: no clipping)")
    t("--ema", field=(c.TrainConfig, "ema"), metavar="DECAY", help="evaluate an exponential moving average of the weights, e.g. 0.999 (default: off)")
    t("--early-stopping", field=(c.TrainConfig, "early_stopping"), metavar="EPOCHS", help="stop after this many epochs without a lower validation loss (default: off)")
    t("--deterministic", action="store_true", help="deterministic algorithms only")
    t("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    t("--balanced-sampling", action="store_true", help="sample training images inversely to class frequency")
    t("--train-subset", field=(c.TrainConfig, "train_subset"), metavar="N", help="train on a stratified subset of N images (default: all)")
    t("--val-subset", field=(c.TrainConfig, "val_subset"), metavar="N",
      help="validate each epoch on a stratified subset of N validation images, chosen by --seed: quicker short runs; "
           "the test split stays whole (default: all)")  # fmt: skip
    t("--device", field=(c.TrainConfig, "device"), help="auto (CUDA when available) | cpu | cuda | cuda:N")
    t("--amp", field=(c.TrainConfig, "amp"), choices=c.choices(c.AmpMode),
      help="mixed precision: auto is bf16 on CUDA, off on a CPU; fp16 (CUDA only, for GPUs without bf16) scales the "
           "loss with a gradient scaler kept in the checkpoints")  # fmt: skip
    t("--channels-last", field=(c.TrainConfig, "channels_last"), choices=c.choices(c.ChannelsLast))
    t("--compile", action="store_true", help="torch.compile the model")
    t("--tta", field=(c.TrainConfig, "tta"), nargs="?", const="on", type=str.lower, choices=c.choices(c.TtaMode),
      help="flip test-time augmentation in the final test evaluation; bare --tta is on; auto: used only if it raises "
           "the validation accuracy of the best weights")  # fmt: skip
    t("--checkpoint-minutes", field=(c.TrainConfig, "checkpoint_minutes"), help="also checkpoint mid-epoch this often")
    x = _Flags(parser, parser.add_argument_group("transfer learning (docs/transfer.md)"), only)
    x("--pretrained", action="store_true", help="load the backbone's pretrained weights (--model timm:NAME, torchvision:NAME, efficientnet_lite0)")
    x("--transfer", field=(c.TransferConfig, "mode"), choices=c.choices(c.TransferMode), help="freeze the backbone and train a new head on cached features, fine-tune it, or pick by training-set size (default: train every layer at one lr)")
    x("--backbone", metavar="RUN", help="a cnnlab run folder or checkpoint whose body becomes the backbone")
    x("--feature-views", field=(c.TransferConfig, "feature_views"), metavar="K", help="feature-extract: also cache K augmented copies of the training features (needs --augment)")
    x("--freeze-epochs", field=(c.TransferConfig, "freeze_epochs"), metavar="N", help="finetune: epochs with the backbone frozen first")
    x("--backbone-lr-ratio", field=(c.TransferConfig, "backbone_lr_ratio"), metavar="R", help="finetune: backbone lr = lr * R")
    x("--finetune-norm", field=(c.TransferConfig, "norm"), choices=c.choices(c.TransferNorm), help="finetune: norm layers learn (train) or stay fixed in eval mode (frozen)")
    x("--class-subset", metavar="LIST", help="keep only these class indices, relabelled in order: 0-4 or 5,6,7")
    k = _Flags(parser, parser.add_argument_group("experiment tracking (docs/training.md, needs pip install 'cnnlab[mlflow]')"), only)
    k("--track", metavar="mlflow[:URI]",
      help="also log the run to MLflow: the config as params, each epoch's metrics, the folder's pictures and summary "
           "as artifacts; URI e.g. http://127.0.0.1:5000 or sqlite:///runs/mlflow.db (default: env MLFLOW_TRACKING_URI). "
           "The run folder stays the record: a tracking failure only warns")  # fmt: skip
    k("--track-register", metavar="NAME",
      help="with --track: register the tested best weights as a new version of the MLflow model NAME "
           "(a search trial, not tested, is never registered)")  # fmt: skip
    if only is None or "augment" in only:
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
    """Nested overrides for ``load_run_config`` from the parsed flags.

    A flag the command does not offer (``add_run_args(only=...)``) is not in ``args``: it
    reads as not given.
    """
    g = lambda name: getattr(args, name, None)  # noqa: E731 - a flag this command does not take is None
    flag = lambda name: True if g(name) else None  # noqa: E731 - store_true flags override only when given
    off = lambda name: False if g(name) else None  # noqa: E731 - a --no-X flag turns X off only when given
    options = parse_model_options(g("model_opt") or [])
    return {
        "data": {**data_overrides(args), "augment": g("augment"), "loader": g("loader"), "decode": g("decode"),
                 "class_subset": parse_class_list(g("class_subset"))},
        "model": {"name": g("model"), "norm": g("norm"), "act": g("act"), "dropout": g("dropout"), "init": g("init"),
                  "options": options or None, "prior_bias": off("no_prior_bias"), "pretrained": flag("pretrained")},
        "transfer": {"mode": g("transfer"), "backbone": g("backbone"), "feature_views": g("feature_views"),
                     "freeze_epochs": g("freeze_epochs"), "backbone_lr_ratio": g("backbone_lr_ratio"),
                     "norm": g("finetune_norm")},
        "optim": {"name": g("optimizer"), "lr": g("lr"), "momentum": g("momentum"), "weight_decay": g("weight_decay"),
                  "nesterov": off("no_nesterov")},
        "schedule": {"name": g("schedule"), "warmup_epochs": g("warmup")},
        "train": {"epochs": g("epochs"), "steps": g("steps"), "batch_size": g("batch_size"), "accumulate": g("accumulate"),
                  "seed": g("seed"),
                  "label_smoothing": g("label_smoothing"), "mixup": g("mixup"), "cutmix": g("cutmix"),
                  "mix_prob": g("mix_prob"), "grad_clip": g("grad_clip"), "ema": g("ema"),
                  "early_stopping": g("early_stopping"), "deterministic": flag("deterministic"),
                  "class_weights": flag("class_weights"), "balanced_sampling": flag("balanced_sampling"),
                  "train_subset": g("train_subset"), "val_subset": g("val_subset"), "device": g("device"), "amp": g("amp"),
                  "channels_last": g("channels_last"), "compile": flag("compile"), "tta": g("tta"),
                  "checkpoint_minutes": g("checkpoint_minutes"), "track": g("track"),
                  "track_register": g("track_register")},
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
                        "with its own settings (other flags are refused, except --device, --checkpoint-minutes, --track "
                        "and --track-register)")
    parser.add_argument("--trust-code", action="store_true",
                        help="--resume a run of your own model code (--model FILE.py:FACTORY) with the copy of that code "
                             "the run folder keeps (RUN/code/), checked against the sha256 its checkpoint records; "
                             "without it, --resume needs the same --model FILE.py:FACTORY again")  # fmt: skip
    from cnnlab.recipe.planner import SATURATION_EPOCHS

    parser.add_argument("--time", metavar="DURATION",
                        help="train for this wall-clock time, e.g. 90s, 5m, 1h, counted from the command's start, "
                             "the test pass included: the steps are planned from a short timing of the run's own "
                             "steps and, when the first epoch is all warmup (onecycle's rise planned over 4+ epochs, "
                             "or --warmup 1+), re-planned after each warmup epoch from the epochs' pace; --epochs (or the --config's "
                             f"train.epochs) is then a cap, else {SATURATION_EPOCHS} (where more epochs stop paying, "
                             "as in `cnnlab recipe`); config.yaml records the steps trained; a --time too short for "
                             "one step is refused with the least that fits; one process only (not under torchrun)")  # fmt: skip
    add_quiet(parser, "the test result line")
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
    ``RESUME_CHANGEABLE`` (device, checkpoint interval, tracking), which do not change the result.

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
    from cnnlab.train.runtime import launch_rank

    started = _started(args)
    seconds = _time_flag(args)
    if args.resume is not None:
        from cnnlab.models.user import allow_user_code, is_user_model

        if seconds is not None:
            log.info("--time with --resume: the run continues its recorded plan (config.yaml's train.steps); no new plan")
        named = args.model if args.model is not None and is_user_model(args.model) else None
        with allow_user_code(named, trust_copies=args.trust_code):  # a checkpoint alone never runs code
            summary = run_training(resume=args.resume, changes=_resume_changes(args), verbose=not args.quiet)
    else:
        cfg = load_run_config(args.config, run_overrides(args))
        deadline, splits = None, None
        if seconds is not None:
            cfg, deadline, splits = plan_timed_run(cfg, started, seconds, _epoch_cap(args, cfg), duration=args.time)
        summary = run_training(cfg, args.out, verbose=not args.quiet, deadline=deadline, splits=splits)
    # --quiet drops the per-epoch lines, not the result (docs/training.md); under torchrun rank 0 alone prints it.
    if args.quiet and launch_rank() == 0 and (line := result_line(summary)):
        print(line, flush=True)
    return 0


# --------------------------------------------------------------------------- --time

#: ``--time``'s margin when no epoch corrects the plan (the first epoch is not all warmup, so the
#: run keeps the steps its timing planned): the timing of a few steps misses an epoch's pace by
#: 10-15% either way on a machine whose speed drifts (docs/benchmarks.md).
UNCORRECTED_MARGIN = 0.15


def _started(args: argparse.Namespace) -> float:
    """When ``--time`` starts counting (``time.time()``): the process's start when run as a program
    (Python's start-up and the imports count too, :mod:`cnnlab.uptime`), else now."""
    import time

    from cnnlab.uptime import process_started

    now = time.time()
    return now - (time.monotonic() - process_started()) if getattr(args, "program", False) else now


def _time_flag(args: argparse.Namespace) -> float | None:
    """``--time`` in seconds (None when not given), refused where it cannot hold.

    Raises:
        UsageError: not a duration, under torchrun, or with ``--steps``.
    """
    import os

    from cnnlab.cli.common import parse_duration
    from cnnlab.errors import UsageError

    seconds = parse_duration(args.time, flag="--time")
    if seconds is None:
        return None
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # the Trainer re-plans on one process only
        raise UsageError("--time plans and re-plans one process's run, not a torchrun run; give --epochs or --steps instead")
    if args.steps is not None:
        raise UsageError("--time plans the run's steps itself; drop --steps (or --time)")
    return seconds


def _epoch_cap(args: argparse.Namespace, cfg: RunConfig) -> int:
    """``--time``'s cap on the epochs: ``--epochs`` or the ``--config``'s ``train.epochs``, else the recipe's saturation epochs."""
    from cnnlab.config import load_yaml
    from cnnlab.recipe.planner import SATURATION_EPOCHS

    given = args.epochs is not None or (args.config is not None and "epochs" in (load_yaml(args.config).get("train") or {}))
    return int(cfg.train.epochs) if given else SATURATION_EPOCHS


def plan_timed_run(cfg: RunConfig, started: float, seconds: float, max_epochs: int, *,
                   duration: str | None = None) -> tuple[RunConfig, Deadline | None, Splits]:  # fmt: skip
    """``cnnlab train --time``: the run's steps, to end ``seconds`` after ``started``, and its deadline.

    A short timing of the run's own steps (:func:`cnnlab.timing.measure_speed`) plans whole
    epochs and a part of one, up to ``max_epochs``, counting each epoch's validation, the
    test pass (and flip TTA's passes). When that
    plan makes the first epoch all warmup (:func:`cnnlab.train.deadline.deadline_schedule`:
    onecycle's rise over ``1 / pct_start`` epochs or more), the run re-plans its steps after
    each warmup epoch from the epochs' median pace, exactly, as the recipe's final run does. Otherwise the
    timing's plan stands, keeping :data:`UNCORRECTED_MARGIN` free for the timing's error.

    Args:
        cfg: the run's ``RunConfig``; its ``train.steps`` is replaced.
        started: ``time.time()`` when the time began.
        seconds: the time the run has, from ``started``, the test pass included.
        max_epochs: at most this many epochs; recorded as ``train.epochs``, so the config,
            run again with ``--time``, keeps the cap.
        duration: ``--time`` as typed, for the message.

    Returns:
        The config with ``train.steps`` (and the warmup that allows the re-plan) set, which
        the run's ``config.yaml`` records, the ``Deadline`` that re-plans it (None: none), and
        the data, loaded for the timing (the run trains on it: not loaded twice).

    Raises:
        UsageError: a transfer run (not timed: it caches features and may train a frozen
            phase before its epochs), or not one step fits
            (the message names the least ``--time`` that does).
    """
    import dataclasses
    import math
    import time

    from cnnlab.errors import UsageError
    from cnnlab.run import is_transfer_run, load_data
    from cnnlab.timing import EPOCH_OVERHEAD, measure_speed
    from cnnlab.train.deadline import Deadline, deadline_schedule
    from cnnlab.train.fit import validation_images
    from cnnlab.train.loaders import train_loader
    from cnnlab.train.runtime import resolve_runtime

    flag = f"--time {duration or f'{seconds:g}s'}"
    if is_transfer_run(cfg):
        raise UsageError(f"{flag}: a transfer run (--transfer, --pretrained, --backbone or a backbone --model) is not "
                         "timed (its feature caching and frozen phase come before its epochs); give --epochs instead")  # fmt: skip
    tc = cfg.train
    splits = load_data(cfg)
    steps_per_epoch = len(train_loader(splits, cfg, resolve_runtime(tc)))
    speed = measure_speed(cfg, splits)
    val_images = len(validation_images(splits, tc))
    val_seconds = speed.eval_seconds(val_images) * EPOCH_OVERHEAD
    epoch_seconds = speed.epoch_seconds(len(splits.train), val_images)
    # the test pass, twice with flip TTA; tta auto first validates plain and flipped (3 passes) and may flip the test
    end_seconds = speed.eval_seconds(len(splits.test) * (1 if tc.tta == "off" else 2) + (3 * val_images if tc.tta == "auto" else 0))
    now = time.time()

    def plan(margin: float) -> int:
        deadline = Deadline(started + seconds, end_seconds=end_seconds, max_epochs=max_epochs, margin=margin)
        return deadline.total_steps(now, 0, steps_per_epoch, epoch_seconds, val_seconds)

    steps = plan(Deadline.margin)
    schedule = deadline_schedule(cfg.schedule, steps / steps_per_epoch)
    if schedule is None:
        steps = plan(UNCORRECTED_MARGIN)
    if steps < 1:
        step_seconds = (epoch_seconds - val_seconds) / steps_per_epoch
        need = math.ceil(now - started + end_seconds + (val_seconds + step_seconds) / (1 - UNCORRECTED_MARGIN))
        raise UsageError(f"{flag} is too short for one step of this run: its timing, loading, one step, a validation and "
                         f"the test pass need about {need} s; give --time {need}s or more (or a smaller --val-subset)")  # fmt: skip
    how = ("re-planned after each warmup epoch from the epochs' pace" if schedule is not None
           else "kept: no warmup of a whole epoch to re-plan in")  # fmt: skip
    log.info("%s: timed %.1f s per epoch of %d steps; planned %d steps (%.2f epochs, at most %d), %s",
             flag, epoch_seconds, steps_per_epoch, steps, steps / steps_per_epoch, max_epochs, how)  # fmt: skip
    if steps < steps_per_epoch:
        log.warning("%s fits %d of an epoch's %d steps: the run trains part of one epoch", flag, steps, steps_per_epoch)
    cfg = dataclasses.replace(cfg, schedule=schedule or cfg.schedule,
                              train=dataclasses.replace(tc, steps=steps, epochs=max_epochs))  # fmt: skip
    deadline = Deadline(started + seconds, end_seconds=end_seconds, max_epochs=max_epochs) if schedule is not None else None
    return cfg, deadline, splits

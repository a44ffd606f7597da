"""A whole training run: data → model → ``fit`` → test evaluation → run folder.

This is what ``cnnlab train`` does, as a function the recipe and the lab call too. It sits
above the engine (:mod:`cnnlab.train`) and the transfer modes (:mod:`cnnlab.transfer`):
it picks a model from the config (a registered model or a transfer model), trains it with
the one that fits, evaluates the best weights on the test split once and leaves
``config.yaml``, ``summary.json`` and the test predictions in the run folder
(:class:`~cnnlab.runfolder.RunFolder`), so reports read results and never re-evaluate.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cnnlab.checkpoint import load_checkpoint
from cnnlab.config import RunConfig, from_dict, merge, to_dict
from cnnlab.data.sources import Splits, load_splits
from cnnlab.data.store import is_store
from cnnlab.errors import CnnlabError, TrainingDiverged, UsageError
from cnnlab.io import folder_lock
from cnnlab.models import create_model
from cnnlab.models.backbones import is_backbone_name
from cnnlab.models.init import init_classifier_bias
from cnnlab.models.transfer import build_transfer_model
from cnnlab.models.user import display_name, prior_bias_target, resumed_user_code, user_code_copy
from cnnlab.runfolder import RunFolder
from cnnlab.train.deadline import Deadline
from cnnlab.train.fit import History, fit, model_label, seed_everything, validation_images
from cnnlab.train.loaders import eval_loader
from cnnlab.train.loop import EvalResult, evaluate
from cnnlab.train.progress import PassProgress
from cnnlab.train.runtime import Runtime, launch_rank, resolve_runtime
from cnnlab.train.track import MlflowTracker, check_tracking
from cnnlab.transfer.finetune import fit_transfer

log = logging.getLogger(__name__)

TEST = "test"  # the split whose predictions finish_run saves
VAL = "val"  # saved too when flip TTA was chosen on it (train.tta: auto), with the choice the test used


def default_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    """``runs/<model>-<data>-<YYYYmmdd-HHMMSS>``."""
    data = Path(cfg.data.source.split(":")[0]).name or "data"
    # a --backbone run does not train cfg.model.name; user code is named by file and factory, without its path
    model = "transfer" if cfg.transfer.backbone else display_name(cfg.model.name)
    return Path(root) / f"{model.replace(':', '-')}-{data}-{datetime.now():%Y%m%d-%H%M%S}"


def load_data(cfg: RunConfig) -> Splits:
    """The splits a run trains on (the training subset applied)."""
    if cfg.data.loader == "stream" and not is_store(cfg.data.source):
        raise UsageError(f"--loader stream reads a prepared store, and {cfg.data.source} is not one; write it once with "
                         f"`cnnlab data prepare {cfg.data.source} --out STORE` and train with --data STORE")  # fmt: skip
    return load_splits(cfg.data, train_subset=cfg.train.train_subset, subset_seed=cfg.train.seed)


def is_transfer_run(cfg: RunConfig) -> bool:
    """Whether the config asks for a transfer model (a pretrained or checkpoint backbone)."""
    t = cfg.transfer
    return t.mode is not None or t.backbone is not None or is_backbone_name(cfg.model.name) or cfg.model.pretrained


def build_model(cfg: RunConfig, splits: Splits) -> torch.nn.Module:
    """Create the configured model for these splits (classes, channels, input size).

    Raises:
        CnnlabError: unknown model or option, or a transfer backbone that cannot be had.
    """
    c, h, _ = splits.image_shape
    seed_everything(cfg.train.seed)  # the initial weights follow from the seed
    if is_transfer_run(cfg):
        mean, std = splits.stats
        model = build_transfer_model(
            cfg.model.name, num_classes=len(splits.classes), in_chans=c, data_mean=mean, data_std=std,
            pretrained=cfg.model.pretrained, backbone_checkpoint=cfg.transfer.backbone,
            image_size=cfg.data.image_size, dropout=cfg.model.dropout or 0.0,
        )  # fmt: skip
    else:
        model = create_model(
            cfg.model.name, num_classes=len(splits.classes), in_chans=c, input_size=h, **cfg.model.factory_options()
        )
    if cfg.model.prior_bias and (target := prior_bias_target(model)) is not None:
        init_classifier_bias(target, splits.train.class_counts() + 1)
    return model


# Settings that `--resume` may change: where the run computes, how often it saves and where it
# is tracked do not change what it computes. Everything else (the data, the model, the learning
# rate, the number of epochs, which the schedule spans) would make the resumed run a different one.
RESUME_CHANGEABLE = ("train.device", "train.checkpoint_minutes", "train.track", "train.track_register")

# How many skipped data files a run names in its log (the full list goes to skipped.txt).
SKIPPED_SHOWN = 3


def resume_folder(resume: str | Path) -> RunFolder:
    """The run folder that ``--resume RUN`` (a folder or a checkpoint file in it) names.

    Raises:
        UsageError: the path is empty or does not exist.
    """
    if not str(resume).strip():
        raise UsageError("--resume needs a run folder, got an empty path")
    resume = Path(resume)
    if not resume.exists():
        raise UsageError(f"--resume {resume}: no such run folder or checkpoint")
    return RunFolder(resume if resume.is_dir() else resume.parent)


def _resume_state(resume: str | Path) -> tuple[RunConfig, Path, dict[str, Any] | None]:
    """The config, run folder and checkpoint (None before the first one) of a run to continue.

    Raises:
        UsageError: a finished run, a folder that is not a run, a run whose ``last.pt`` was
            deleted after it had results, or a checkpoint that cannot be resumed.
    """
    resume = Path(resume)
    folder = resume_folder(resume)
    last = resume / RunFolder.LAST if resume.is_dir() else resume
    if folder.is_finished():
        raise UsageError(f"the run in {folder.path} already finished; start a new one with another --out")
    if last.is_file():
        try:
            state = load_checkpoint(last, resumable=True)
        except CnnlabError as exc:  # the wrong file given: refused before any work
            raise UsageError(str(exc)) from None
        return from_dict(RunConfig, state["config"]), folder.path, state
    if resume.is_file():  # a checkpoint given by name that is not resumable
        raise UsageError(f"{resume} cannot be resumed; resume from the run folder {folder.path}")
    if folder.config_path.is_file():
        if folder.read_metrics():  # it had epochs, so it had a last.pt: restarting would overwrite its results
            raise UsageError(
                f"{folder.path} has results but no {RunFolder.LAST} (was it deleted?), so it cannot continue; "
                f"start a new run with `cnnlab train --config {folder.config_path} --out NEW_FOLDER`"
            )
        log.info("%s has no checkpoint yet; starting the run again from its config.yaml", folder.path)
        return folder.read_config(), folder.path, None
    raise UsageError(f"{resume} is not a run folder (no last.pt or config.yaml)")


def resume_config(resume: str | Path) -> RunConfig:
    """The configuration of the run that ``--resume`` would continue (reads, writes nothing).

    Raises:
        UsageError: as :func:`run_training` refuses the same ``resume``.
    """
    return _resume_state(resume)[0]


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 0.1, ...}``: the dotted paths of a nested dict's values."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def changed_settings(cfg: RunConfig, overrides: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The settings that ``overrides`` (nested, ``None`` = not given) would change in ``cfg``.

    Both sides go through the same validation, so ``--lr 0.1`` against a stored ``0.1``, or
    ``--act RELU`` against ``relu``, is no change.

    Returns:
        ``{"optim.lr": (old, new), ...}`` in config order.

    Raises:
        CnnlabError: the overrides are not a valid configuration.
    """
    old = to_dict(cfg)
    new = to_dict(from_dict(RunConfig, merge(old, overrides)))
    before, after = _leaves(old), _leaves(new)
    return {key: (before.get(key), value) for key, value in after.items() if before.get(key) != value}


def _apply_changes(cfg: RunConfig, changes: Mapping[str, Any] | None) -> RunConfig:
    """``cfg`` with the few settings a resumed run may change (:data:`RESUME_CHANGEABLE`)."""
    if not changes:
        return cfg
    refused = sorted(set(changes) - set(RESUME_CHANGEABLE))
    if refused:
        raise UsageError(f"a resumed run keeps its settings; only {', '.join(RESUME_CHANGEABLE)} may change, not {', '.join(refused)}")
    train = {key.split(".", 1)[1]: value for key, value in changes.items()}
    return from_dict(RunConfig, merge(to_dict(cfg), {"train": train}))


def new_run_folder(cfg: RunConfig, run_dir: str | Path | None) -> RunFolder:
    """The folder a new run writes, checked to be new or empty (nothing is created yet).

    Raises:
        UsageError: an empty path, or a folder :meth:`RunFolder.check_new` refuses.
    """
    if run_dir is not None and not str(run_dir).strip():
        raise UsageError("--out is empty; name a new folder, or leave --out out for runs/<model>-<data>-<time>")
    folder = RunFolder(run_dir if run_dir is not None else default_run_dir(cfg))
    folder.check_new()
    return folder


def check_classes(splits: Splits) -> None:
    """Refuse data a classifier cannot be trained or judged on: fewer than 2 classes.

    One class gives a model that is always right (100% accuracy, nothing learned), which
    would be reported as a result.

    Raises:
        UsageError: fewer than 2 classes in the data, or in its training split.
    """
    n = len(splits.classes)
    if n < 2:
        names = ", ".join(map(str, splits.classes)) or "none"
        raise UsageError(f"{splits.name} has {n} class(es) ({names}); a classifier needs at least 2: "
                         "widen --class-subset or check the data source")  # fmt: skip
    present = int(np.unique(splits.train.labels).size) if len(splits.train) else 0
    if present < 2:
        raise UsageError(f"the training split of {splits.name} holds images of {present} class(es); "
                         "a classifier needs at least 2: use a larger --train-subset or other data")  # fmt: skip


def _report_skipped(folder: RunFolder, splits: Splits) -> None:
    """Name the data files the run could not use, and keep the whole list in the run folder."""
    skipped = splits.skipped
    if not skipped:
        return
    folder.write_skipped(skipped)
    shown = "; ".join(f"{path} ({reason})" for path, reason in skipped[:SKIPPED_SHOWN])
    more = f" and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
    log.warning("skipped %d file(s) of %s that could not be used: %s%s; the full list is in %s",
                len(skipped), splits.name, shown, more, folder.skipped_path)  # fmt: skip


@contextlib.contextmanager
def _filesystem_errors(folder: RunFolder) -> Iterator[None]:
    """Turn an OSError while the run reads and writes files into one line that names the file."""
    try:
        yield
    except BrokenPipeError:  # the CLI's reader left (`| head`): not a file problem
        raise
    except OSError as exc:
        name = exc.filename or folder.path
        where = f"the run folder {folder.path}" if str(name).startswith(str(folder.path)) else str(name)
        raise CnnlabError(f"cannot write {where}: {name}: {exc.strerror or exc}; check that it is a writable folder "
                          "with free space") from None  # fmt: skip


def _is_main(runtime: Runtime | None) -> bool:
    # Before the runtime exists (it needs the config, which a resumed run reads under the
    # lock), torchrun's RANK says which process writes the folder.
    return runtime.is_main if runtime is not None else launch_rank() == 0


def run_training(
    cfg: RunConfig | None = None,
    run_dir: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    changes: Mapping[str, Any] | None = None,
    runtime: Runtime | None = None,
    on_epoch_end: Callable[[dict[str, Any]], bool | None] | None = None,
    verbose: bool = True,
    evaluate_test: bool = True,
    deadline: Deadline | None = None,
    splits: Splits | None = None,
) -> dict[str, Any]:
    """Train, validate and test; write the run folder; return the summary.

    The process holds the run folder's lock (:func:`cnnlab.io.folder_lock`) for the whole
    run, so a second process cannot train into the same folder; taking it also removes the
    temporaries a killed save left behind. A new run starts only in a new or empty folder.

    Args:
        cfg: the run configuration (ignored when resuming: the run's own is used).
        run_dir: the run folder (default ``runs/<model>-<data>-<time>``); new or empty.
        resume: a run folder (or its last.pt) to continue exactly where it stopped.
        changes: when resuming, ``{"train.device": ...}``: the settings of
            :data:`RESUME_CHANGEABLE` to change; any other is refused.
        runtime: device/precision (default: from the config).
        on_epoch_end: see :func:`cnnlab.train.fit.fit`.
        verbose: print epoch lines and the test result.
        evaluate_test: evaluate the best weights on the test split at the end (a search
            trial does not: it is chosen by validation accuracy, the test split stays unseen).
        deadline: a new run's total steps are set after its warmup epochs to end by then
            (:mod:`cnnlab.train.deadline`; not for transfer runs or a resume).
        splits: a new run's data, when the caller loaded it already (``load_data(cfg)``).

    Returns:
        The contents of ``summary.json``.

    Raises:
        UsageError: refused before any work: a run folder that is not new or empty, a
            finished or foreign run to resume, a changed setting, data with < 2 classes.
        CnnlabError: another process holds the run folder, data that changed since the
            run started, or any error of the run itself (TrainingDiverged included).
        KeyboardInterrupt: the run was interrupted (after saving a checkpoint).
    """
    main = _is_main(runtime)
    if resume is not None:
        folder = resume_folder(resume)
        with _filesystem_errors(folder), folder_lock(folder.path, "run") if main else contextlib.nullcontext():
            cfg, _, state = _resume_state(resume)
            cfg = _apply_changes(cfg, changes)
            if main:
                check_tracking(cfg, folder)  # no URI or no mlflow: refused before the data is loaded
            with resumed_user_code(cfg.model.name, state["model_args"] if state else None, folder.path):
                runtime, splits, model = _prepare(cfg, runtime)  # user code: only as --model or --trust-code allow
            if state is not None and state["data"]["fingerprint"] != splits.fingerprint:
                raise CnnlabError(f"the data of {cfg.data.source} changed since the run in {folder.path} started; "
                                  "it cannot resume exactly")  # fmt: skip
            if main:
                _report_skipped(folder, splits)
            return _train(cfg, folder, splits, model, state, runtime, on_epoch_end, verbose, evaluate_test)
    if cfg is None:
        raise ValueError("run_training needs a config or a run to resume")
    folder = new_run_folder(cfg, run_dir) if main else RunFolder(run_dir if run_dir is not None else default_run_dir(cfg))
    if main:
        check_tracking(cfg)  # no URI or no mlflow: refused before any work
    # Data and model before the folder exists: wrong data, a wrong --backbone or a batch larger
    # than the data leave nothing behind, so the corrected command can use the same --out.
    runtime, splits, model = _prepare(cfg, runtime, splits)
    with _filesystem_errors(folder), folder_lock(folder.path, "run") if main else contextlib.nullcontext():
        if main:
            folder.check_new()  # again, under the lock: another process may have started a run here meanwhile
            folder.write_config(cfg)  # from now on the folder can be resumed, even before a checkpoint
            if (code := user_code_copy(model)) is not None:  # the code a user model was built from (--trust-code)
                folder.write_code(*code)
            _report_skipped(folder, splits)
        return _train(cfg, folder, splits, model, None, runtime, on_epoch_end, verbose, evaluate_test, deadline)


def _prepare(cfg: RunConfig, runtime: Runtime | None,
             splits: Splits | None = None) -> tuple[Runtime, Splits, torch.nn.Module]:  # fmt: skip
    """The runtime, the data (refused when it cannot train a classifier) and the model of a run.

    Raises:
        UsageError: fewer than 2 classes, or fewer training images than one batch.
    """
    subset = cfg.data.class_subset
    if subset is not None and len(subset) < 2:  # said before the data is even loaded
        raise UsageError(f"--class-subset {','.join(map(str, subset)) or '(empty)'} keeps {len(subset)} class(es); "
                         "a classifier needs at least 2")  # fmt: skip
    runtime = runtime or resolve_runtime(cfg.train)
    splits = load_data(cfg) if splits is None else splits
    check_classes(splits)
    per_process = -(-len(splits.train) // runtime.world_size)
    step_batch = cfg.train.batch_size * cfg.train.accumulate  # the images of one optimizer step
    if per_process < step_batch:  # the loader would refuse it too, but only once the run folder exists
        accumulate = f" x --accumulate {cfg.train.accumulate}" if cfg.train.accumulate > 1 else ""
        raise UsageError(f"the training split has {per_process} image(s) per process, fewer than one batch of "
                         f"{step_batch}; lower --batch-size{accumulate}")  # fmt: skip
    model = build_model(cfg, splits)
    if runtime.is_main:
        log.info("%s", header_line(cfg, model, splits, runtime))
    return runtime, splits, model


def _count(n: int) -> str:
    """``4,947`` or ``0.27M`` or ``11.2M``: a parameter count that never reads 0.00M."""
    return f"{n:,}" if n < 100_000 else f"{n / 1e6:.2f}M" if n < 10_000_000 else f"{n / 1e6:.1f}M"


def header_line(cfg: RunConfig, model: torch.nn.Module, splits: Splits, runtime: Runtime) -> str:
    """The line a run starts with: the model it trains (the name ``summary.json`` gives it), the data, the device.

    A run that validates on a subset (``--val-subset``) says so here, and in every epoch line.
    """
    n_params = sum(p.numel() for p in model.parameters())
    n_val = len(validation_images(splits, cfg.train))
    val = f"{len(splits.val):,} val" if n_val == len(splits.val) else f"{len(splits.val):,} val (validating on {n_val:,} of them)"
    return (f"{model_label(cfg, model)} ({_count(n_params)} parameters) on {splits.name}: {len(splits.train):,} train / "
            f"{val} / {len(splits.test):,} test images, device {runtime.device}")  # fmt: skip


def _train(
    cfg: RunConfig, folder: RunFolder, splits: Splits, model: torch.nn.Module, state: dict[str, Any] | None,
    runtime: Runtime, on_epoch_end: Callable[[dict[str, Any]], bool | None] | None, verbose: bool, evaluate_test: bool,
    deadline: Deadline | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Fit the model (from ``state`` when resuming) and finish the run (the folder is locked).

    With ``train.track`` the main process also logs the run to the tracker
    (:mod:`cnnlab.train.track`): each epoch before the caller's ``on_epoch_end``, the results
    and the folder's pictures at the end; a tracker that fails only warns.
    """
    start = time.perf_counter()
    tracker = MlflowTracker.start(cfg, folder) if runtime.is_main else None
    if tracker is not None:
        on_epoch_end = tracker.chain(on_epoch_end)
    fit_fn = fit_transfer if is_transfer_run(cfg) else functools.partial(fit, deadline=deadline)
    try:
        history = fit_fn(model, splits, cfg, runtime=runtime, run_dir=folder.path, resume=state, on_epoch_end=on_epoch_end,
                         verbose=verbose)  # fmt: skip
        if history.stopped == "interrupted":
            raise KeyboardInterrupt
        summary = finish_run(model, splits, cfg, history, folder.path, runtime, wall_seconds=time.perf_counter() - start,
                             evaluate_test=evaluate_test, verbose=verbose)  # fmt: skip
    except BaseException as exc:  # the tracker's run ends KILLED (resumable) or FAILED; the error goes on
        if tracker is not None:
            tracker.end(exc)
        raise
    if tracker is not None:
        tracker.finish(summary, model, splits.image_shape)
    return summary


def finish_run(
    model: torch.nn.Module, splits: Splits, cfg: RunConfig, history: History, run_dir: Path, runtime: Runtime, *,
    wall_seconds: float, evaluate_test: bool = True, verbose: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate the best weights on the test split (once, unless told not to) and write the results.

    The main process writes ``summary.json`` and, when the test split was evaluated,
    ``predictions-test.npz`` (its logits, or log-probabilities with TTA, and labels in
    split order), so reports read the test results instead of evaluating again. With
    ``train.tta: auto`` the best weights are first validated with and without flip TTA
    (:func:`choose_tta`), and the test uses TTA only if it helped there; that validation
    pass, as the test used it, is saved too (``predictions-val.npz``: a recipe's ensemble
    is chosen on it).

    Args:
        model: the trained model; it is given the weights of ``best.pt`` when there is one.
        splits: the run's data.
        cfg: the run's configuration.
        history: what ``fit`` returned.
        run_dir: the run folder.
        runtime: device and processes (every process takes part in the evaluation).
        wall_seconds: the run's time from model to end of training, for the summary.
        evaluate_test: evaluate the test split (see :func:`run_training`).
        verbose: print the test accuracy.

    Returns:
        The contents of ``summary.json``.
    """
    folder = RunFolder(run_dir)
    if folder.best_pt.is_file():
        model.load_state_dict(load_checkpoint(folder.best_pt, map_location=runtime.device)["model"])
    test, test_seconds, val_outputs = None, None, None
    loader = eval_loader(splits.test, splits, cfg, runtime) if evaluate_test else None
    tta: dict[str, Any] = {"mode": cfg.train.tta, "used": False}
    if loader is not None:
        model.to(runtime.device)
        tta, val = choose_tta(model, splits, cfg, runtime, verbose=verbose)
        val_outputs = _split_outputs(val, runtime, len(splits.classes)) if val is not None else None
        with PassProgress("testing", len(loader), enabled=verbose and runtime.is_main) as bar:
            test = evaluate(model, loader, runtime, tta=tta["used"], keep_outputs=True, progress=bar)
        test_seconds = bar.seconds
        if not math.isfinite(test.loss):  # the best weights blow up on new images: a divergence, not a result
            record = next((r for r in history.records if r["epoch"] == history.best_epoch), history.records[-1] if history.records else {})
            raise TrainingDiverged(int(record.get("epoch", 0)), int(record.get("step", 0)), float(record.get("lr", cfg.optim.lr)), split="test")
        logits, labels = _split_outputs(test, runtime, len(splits.classes))
    records = history.records
    summary = {
        "model": model_label(cfg, model), "data": splits.name, "classes": len(splits.classes),
        "params": int(sum(p.numel() for p in model.parameters())),
        # best_epoch counts from 1, as every printout does (metrics.jsonl's "epoch" counts from 0).
        "epochs_run": len(records), "best_epoch": summary_epoch(history.best_epoch), "best_val_acc": history.best_val_acc,
        "max_val_acc": history.max_val_acc,  # the kept epoch is the latest within noise of this (History)
        "test_acc": test.acc if test else None, "test_loss": test.loss if test else None,
        "test_top5": test.top5 if test else None, "tta": tta, "test_seconds": test_seconds,
        "stopped": history.stopped, "train_seconds": history.train_seconds, "wall_seconds": wall_seconds,
        "images_per_s": float(np.median([r["images_per_s"] for r in records])) if records else None,
        "device": str(runtime.device), "world_size": runtime.world_size, "run_dir": str(run_dir),
    }  # fmt: skip
    if runtime.is_main:
        if test:
            folder.write_predictions(TEST, logits, labels)
        if val_outputs is not None:  # the validation images TTA was chosen on, as the test used them (an ensemble chooses on these)
            folder.write_predictions(VAL, *val_outputs)
        folder.write_summary(summary)
        line = result_line(summary)
        if verbose and line:
            print(line, flush=True)
    return summary


def choose_tta(model: torch.nn.Module, splits: Splits, cfg: RunConfig, runtime: Runtime, *,
               verbose: bool = True) -> tuple[dict[str, Any], EvalResult | None]:  # fmt: skip
    """Whether the test evaluation uses flip TTA, as ``summary.json`` records it under ``"tta"``.

    ``off`` and ``on`` say so themselves. ``auto`` evaluates ``model`` (the best weights) on
    the validation images the run validated on, without and with flip TTA (the same loader,
    so the same images), and uses TTA only if it raised the accuracy strictly: flipping helps
    on mirror-invariant data and hurts where left and right differ (digits, text). Every
    process takes part; the accuracies are all-reduced counts of correct images (whole
    numbers, exact in float64 whatever the order of the sum), so every process decides alike.

    Returns:
        ``{"mode", "used"}``; with ``auto`` also ``"val_acc"`` and ``"val_acc_tta"``, or a
        ``"reason"`` when there are no validation images to choose on. Second, with ``auto``,
        the validation pass the choice kept (its outputs, for ``predictions-val.npz``); else None.
    """
    mode = cfg.train.tta
    if mode != "auto":
        return {"mode": mode, "used": mode == "on"}, None
    loader = eval_loader(validation_images(splits, cfg.train), splits, cfg, runtime)
    if loader is None:
        if runtime.is_main:
            log.info("flip TTA: no validation split to choose it on, so not used for the test")
        return {"mode": mode, "used": False, "reason": "no validation split"}, None
    with PassProgress("validating for flip TTA", 2 * len(loader), enabled=verbose and runtime.is_main) as bar:
        plain = evaluate(model, loader, runtime, keep_outputs=True, progress=bar)
        flipped = evaluate(model, loader, runtime, tta=True, keep_outputs=True, progress=bar)
    used = flipped.acc > plain.acc
    if runtime.is_main:
        log.info("flip TTA: validation %.2f%% -> %.2f%%, %s", 100 * plain.acc, 100 * flipped.acc,
                 "used for the test" if used else "not used for the test")  # fmt: skip
    return {"mode": mode, "used": used, "val_acc": plain.acc, "val_acc_tta": flipped.acc}, flipped if used else plain


def summary_epoch(epoch: int | None) -> int | None:
    """An epoch as ``summary.json`` and every printout count it: from 1 (the engine counts from 0)."""
    return None if epoch is None else int(epoch) + 1


def result_line(summary: dict[str, Any]) -> str | None:
    """The one line that reports a finished run's test result (None when it was not tested).

    ``finish_run`` prints it when verbose; a quiet caller (``cnnlab train --quiet``) can
    print it from the summary itself.
    """
    if summary.get("test_acc") is None:
        return None
    tta = " (flip TTA)" if tta_used(summary) else ""
    return (f"test accuracy {summary['test_acc']:.2%}{tta} (loss {summary['test_loss']:.4f}) with the weights of epoch "
            f"{summary.get('best_epoch') or 1}; run folder {summary['run_dir']}")  # fmt: skip


def tta_used(summary: Mapping[str, Any]) -> bool:
    """Whether a run's test evaluation used flip TTA (older summaries hold ``"tta": true/false``)."""
    tta = summary.get("tta")
    return bool(tta.get("used")) if isinstance(tta, Mapping) else bool(tta)


def _split_outputs(result: EvalResult, runtime: Runtime, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole split's logits (N, classes) and labels (N,), in split order, on every process.

    The eval loader gives rank ``r`` of ``W`` the images ``r, r + W, r + 2W, ...``, so the
    gathered parts interleave back into split order.
    """
    logits = result.logits.numpy() if result.logits is not None else np.zeros((0, num_classes), np.float32)
    labels = result.labels.numpy() if result.labels is not None else np.zeros(0, np.int64)
    if runtime.world_size == 1:
        return logits, labels
    parts: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(parts, (logits, labels))
    n = sum(len(part_labels) for _, part_labels in parts)
    all_logits = np.empty((n, num_classes), dtype=logits.dtype)
    all_labels = np.empty(n, dtype=labels.dtype)
    for rank, (part_logits, part_labels) in enumerate(parts):
        all_logits[rank :: runtime.world_size] = part_logits
        all_labels[rank :: runtime.world_size] = part_labels
    return all_logits, all_labels

"""A whole training run: data → model → ``fit`` → test evaluation → run folder.

This is what ``cnnlab train`` does, as a function the recipe and the lab call too. It sits
above the engine (:mod:`cnnlab.train`) and the transfer modes (:mod:`cnnlab.transfer`):
it picks a model from the config (a registered model or a transfer model), trains it with
the one that fits, evaluates the best weights on the test split once and leaves
``config.yaml``, ``summary.json`` and the test predictions in the run folder
(:class:`~cnnlab.runfolder.RunFolder`), so reports read results and never re-evaluate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cnnlab.checkpoint import load_checkpoint
from cnnlab.config import RunConfig, from_dict
from cnnlab.data.sources import Splits, load_splits
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.backbones import is_backbone_name
from cnnlab.models.init import init_classifier_bias
from cnnlab.models.transfer import build_transfer_model
from cnnlab.runfolder import RunFolder
from cnnlab.train.fit import History, fit, seed_everything
from cnnlab.train.loaders import eval_loader
from cnnlab.train.loop import EvalResult, evaluate
from cnnlab.train.runtime import Runtime, resolve_runtime
from cnnlab.transfer.finetune import fit_transfer

log = logging.getLogger(__name__)

TEST = "test"  # the split whose predictions finish_run saves


def default_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    """``runs/<model>-<data>-<YYYYmmdd-HHMMSS>``."""
    data = Path(cfg.data.source.split(":")[0]).name or "data"
    return Path(root) / f"{cfg.model.name}-{data}-{datetime.now():%Y%m%d-%H%M%S}"


def load_data(cfg: RunConfig) -> Splits:
    """The splits a run trains on (the training subset applied)."""
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
    if cfg.model.prior_bias:
        init_classifier_bias(model, splits.train.class_counts() + 1)
    return model


def _resume_state(resume: str | Path) -> tuple[RunConfig, Path, dict[str, Any] | None]:
    """The config, run folder and checkpoint (None before the first one) of a run to continue."""
    resume = Path(resume)
    last = resume / RunFolder.LAST if resume.is_dir() else resume
    folder = RunFolder(last.parent)
    if folder.is_finished():
        raise CnnlabError(f"the run in {folder.path} already finished; start a new one with another --out")
    if last.is_file():
        state = load_checkpoint(last)
        return from_dict(RunConfig, state["config"]), folder.path, state
    if folder.config_path.is_file():  # stopped before its first checkpoint: start it again
        log.info("%s has no checkpoint yet; starting the run again from its config.yaml", folder.path)
        return folder.read_config(), folder.path, None
    raise CnnlabError(f"{resume} is not a run folder (no last.pt or config.yaml)")


def run_training(
    cfg: RunConfig | None = None,
    run_dir: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    runtime: Runtime | None = None,
    on_epoch_end: Callable[[dict[str, Any]], bool | None] | None = None,
    verbose: bool = True,
    evaluate_test: bool = True,
) -> dict[str, Any]:
    """Train, validate and test; write the run folder; return the summary.

    Args:
        cfg: the run configuration (ignored when resuming: the run's own is used).
        run_dir: the run folder (default ``runs/<model>-<data>-<time>``).
        resume: a run folder (or its last.pt) to continue exactly where it stopped.
        runtime: device/precision (default: from the config).
        on_epoch_end: see :func:`cnnlab.train.fit.fit`.
        verbose: print epoch lines and the test result.
        evaluate_test: evaluate the best weights on the test split at the end (a search
            trial does not: it is chosen by validation accuracy, the test split stays unseen).

    Returns:
        The contents of ``summary.json``.

    Raises:
        CnnlabError: a finished or foreign run folder, data that changed since the run
            started, or any error of the run itself.
        KeyboardInterrupt: the run was interrupted (after saving a checkpoint).
    """
    state = None
    if resume is not None:
        cfg, run_dir, state = _resume_state(resume)
    if cfg is None:
        raise ValueError("run_training needs a config or a run to resume")
    folder = RunFolder(run_dir if run_dir is not None else default_run_dir(cfg))
    if state is None and folder.has_checkpoint():
        raise CnnlabError(f"{folder.path} already holds a run; continue it with --resume {folder.path} or choose another --out")
    runtime = runtime or resolve_runtime(cfg.train)
    if state is None and runtime.is_main:  # from now on the folder can be resumed, even before a checkpoint
        folder.write_config(cfg)
    splits = load_data(cfg)
    if state is not None and state["data"]["fingerprint"] != splits.fingerprint:
        raise CnnlabError(f"the data of {cfg.data.source} changed since the run in {folder.path} started; it cannot resume exactly")
    model = build_model(cfg, splits)
    if runtime.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        log.info("%s (%.2fM parameters) on %s: %d train / %d val / %d test images, device %s",
                 cfg.model.name, n_params / 1e6, splits.name, len(splits.train), len(splits.val), len(splits.test), runtime.device)  # fmt: skip
    start = time.perf_counter()
    fit_fn = fit_transfer if is_transfer_run(cfg) else fit
    history = fit_fn(model, splits, cfg, runtime=runtime, run_dir=folder.path, resume=state, on_epoch_end=on_epoch_end,
                     verbose=verbose)  # fmt: skip
    if history.stopped == "interrupted":
        raise KeyboardInterrupt
    return finish_run(model, splits, cfg, history, folder.path, runtime, wall_seconds=time.perf_counter() - start,
                      evaluate_test=evaluate_test, verbose=verbose)  # fmt: skip


def finish_run(
    model: torch.nn.Module, splits: Splits, cfg: RunConfig, history: History, run_dir: Path, runtime: Runtime, *,
    wall_seconds: float, evaluate_test: bool = True, verbose: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate the best weights on the test split (once, unless told not to) and write the results.

    The main process writes ``summary.json`` and, when the test split was evaluated,
    ``predictions-test.npz`` (its logits, or log-probabilities with TTA, and labels in
    split order), so reports read the test results instead of evaluating again.

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
    test = None
    loader = eval_loader(splits.test, splits, cfg, runtime) if evaluate_test else None
    if loader is not None:
        model.to(runtime.device)
        test = evaluate(model, loader, runtime, tta=cfg.train.tta, keep_outputs=True)
        logits, labels = _split_outputs(test, runtime, len(splits.classes))
    records = history.records
    summary = {
        "model": cfg.model.name, "data": splits.name, "classes": len(splits.classes),
        "params": int(sum(p.numel() for p in model.parameters())),
        "epochs_run": len(records), "best_epoch": history.best_epoch, "best_val_acc": history.best_val_acc,
        "test_acc": test.acc if test else None, "test_loss": test.loss if test else None,
        "test_top5": test.top5 if test else None, "tta": cfg.train.tta,
        "stopped": history.stopped, "train_seconds": history.train_seconds, "wall_seconds": wall_seconds,
        "images_per_s": float(np.median([r["images_per_s"] for r in records])) if records else None,
        "device": str(runtime.device), "world_size": runtime.world_size, "run_dir": str(run_dir),
    }  # fmt: skip
    if runtime.is_main:
        if test:
            folder.write_predictions(TEST, logits, labels)
        folder.write_summary(summary)
        line = result_line(summary)
        if verbose and line:
            print(line, flush=True)
    return summary


def result_line(summary: dict[str, Any]) -> str | None:
    """The one line that reports a finished run's test result (None when it was not tested).

    ``finish_run`` prints it when verbose; a quiet caller (``cnnlab train --quiet``) can
    print it from the summary itself.
    """
    if summary.get("test_acc") is None:
        return None
    return (f"test accuracy {summary['test_acc']:.2%} (loss {summary['test_loss']:.4f}) with the weights of epoch "
            f"{(summary.get('best_epoch') or 0) + 1}; run folder {summary['run_dir']}")  # fmt: skip


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

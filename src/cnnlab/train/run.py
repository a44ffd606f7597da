"""A whole training run: data → model → ``fit`` → test evaluation → run folder.

This is what ``cnnlab train`` does, as a function the recipe and the lab call too.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.config import RunConfig, from_dict
from cnnlab.data.loader import DeviceLoader
from cnnlab.data.sources import Splits, load_splits
from cnnlab.errors import CnnlabError
from cnnlab.train import checkpoint as ckpt
from cnnlab.train.fit import History, fit, seed_everything
from cnnlab.train.loop import evaluate
from cnnlab.train.runtime import Runtime, resolve_runtime

log = logging.getLogger(__name__)


def default_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    """``runs/<model>-<data>-<YYYYmmdd-HHMMSS>``."""
    data = Path(cfg.data.source.split(":")[0]).name or "data"
    return Path(root) / f"{cfg.model.name}-{data}-{datetime.now():%Y%m%d-%H%M%S}"


def load_data(cfg: RunConfig) -> Splits:
    """The splits a run trains on (the training subset applied)."""
    return load_splits(cfg.data, train_subset=cfg.train.train_subset, subset_seed=cfg.train.seed)


def build_model(cfg: RunConfig, splits: Splits) -> torch.nn.Module:
    """Create the configured model for these splits (classes, channels, input size)."""
    from cnnlab.models import create_model
    from cnnlab.models.init import init_classifier_bias

    c, h, _ = splits.image_shape
    seed_everything(cfg.train.seed)  # the initial weights follow from the seed
    if _is_transfer(cfg):
        from cnnlab.transfer.model import build_transfer_model

        model = build_transfer_model(cfg, splits)
    else:
        model = create_model(
            cfg.model.name, num_classes=len(splits.classes), in_chans=c, input_size=h, **cfg.model.factory_options()
        )
    if cfg.model.prior_bias:
        init_classifier_bias(model, splits.train.class_counts() + 1)
    return model


def _is_transfer(cfg: RunConfig) -> bool:
    from cnnlab.transfer.backbones import is_transfer_run  # light: imports no backbone library

    return is_transfer_run(cfg)


def model_from_args(model_args: dict[str, Any]) -> torch.nn.Module:
    """An untrained model built from a checkpoint's ``model_args`` (registered or transfer)."""
    from cnnlab.models import create_model

    args = dict(model_args)
    name = args.pop("name")
    if name == "transfer":  # a pretrained backbone + new head: rebuilt offline, weights from the state dict
        from cnnlab.transfer.model import transfer_model_from_args

        return transfer_model_from_args({"name": name, **args})
    return create_model(name, **args)


def model_from_checkpoint(state: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights."""
    model = model_from_args(state["model_args"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        name = state["model_args"].get("name")
        raise CnnlabError(f"the checkpoint's weights do not fit its model '{name}': {str(exc)[:200]}") from None
    return model


def run_training(
    cfg: RunConfig | None = None,
    run_dir: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    runtime: Runtime | None = None,
    on_epoch_end=None,  # noqa: ANN001 - see fit()
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
        verbose: print epoch lines.
        evaluate_test: evaluate the best weights on the test split at the end (a search
            trial does not: it is chosen by validation accuracy, the test split stays unseen).

    Returns:
        The contents of ``summary.json``.
    """
    state = None
    if resume is not None:
        resume = Path(resume)
        last = resume / "last.pt" if resume.is_dir() else resume
        run_dir = last.parent
        if (run_dir / "summary.json").is_file():
            raise CnnlabError(f"the run in {run_dir} already finished; start a new one with another --out")
        if last.is_file():
            state = ckpt.load_checkpoint(last)
            cfg = from_dict(RunConfig, state["config"])
        elif (run_dir / "config.yaml").is_file():  # stopped before its first checkpoint: start it again
            from cnnlab.config import load_run_config

            cfg = load_run_config(run_dir / "config.yaml")
            log.info("%s has no checkpoint yet; starting the run again from its config.yaml", run_dir)
        else:
            raise CnnlabError(f"{resume} is not a run folder (no last.pt or config.yaml)")
    if cfg is None:
        raise ValueError("run_training needs a config or a run to resume")
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    if state is None and (run_dir / "last.pt").exists():
        raise CnnlabError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    runtime = runtime or resolve_runtime(cfg.train)
    if state is None and runtime.is_main:  # from now on the folder can be resumed, even before a checkpoint
        from cnnlab.config import dump_yaml
        from cnnlab.io import atomic_write_text

        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    splits = load_data(cfg)
    if state is not None and state["data"]["fingerprint"] != splits.fingerprint:
        raise CnnlabError(f"the data of {cfg.data.source} changed since the run in {run_dir} started; it cannot resume exactly")
    model = build_model(cfg, splits)
    if runtime.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        log.info("%s (%.2fM parameters) on %s: %d train / %d val / %d test images, device %s",
                 cfg.model.name, n_params / 1e6, splits.name, len(splits.train), len(splits.val), len(splits.test), runtime.device)  # fmt: skip
    start = time.perf_counter()
    fit_fn = fit
    if _is_transfer(cfg):
        from cnnlab.transfer.finetune import fit_transfer as fit_fn
    history = fit_fn(model, splits, cfg, runtime=runtime, run_dir=run_dir, resume=state, on_epoch_end=on_epoch_end, verbose=verbose)
    if history.stopped == "interrupted":
        raise KeyboardInterrupt
    summary = finish_run(model, splits, cfg, history, run_dir, runtime, wall_seconds=time.perf_counter() - start,
                         evaluate_test=evaluate_test)
    return summary


def finish_run(
    model: torch.nn.Module, splits: Splits, cfg: RunConfig, history: History, run_dir: Path, runtime: Runtime, *,
    wall_seconds: float, evaluate_test: bool = True,
) -> dict[str, Any]:
    """Evaluate the best weights on the test split (once, unless told not to) and write summary.json."""
    best = run_dir / "best.pt"
    if best.is_file():
        model.load_state_dict(ckpt.load_checkpoint(best, map_location=runtime.device)["model"])
    mean, std = splits.stats
    test = None
    if evaluate_test and len(splits.test):
        loader = DeviceLoader(splits.test, batch_size=cfg.train.eval_batch_size, mean=mean, std=std, train=False,
                              device=runtime.device, rank=runtime.rank, world_size=runtime.world_size,
                              channels_last=runtime.channels_last)  # fmt: skip
        model.to(runtime.device)
        test = evaluate(model, loader, runtime, tta=cfg.train.tta)
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
        from cnnlab.io import atomic_write_json

        atomic_write_json(run_dir / "summary.json", summary)
        if test:
            print(f"test accuracy {test.acc:.2%} (loss {test.loss:.4f}) with the weights of epoch "
                  f"{(history.best_epoch or 0) + 1}; run folder {run_dir}", flush=True)  # fmt: skip
    return summary

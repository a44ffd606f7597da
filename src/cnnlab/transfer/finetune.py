"""The transfer modes: feature extraction, fastai-style fine-tuning, and the automatic choice.

* ``feature-extract``: backbone frozen (no gradients, eval mode), features of the
  training set (plus ``feature_views`` augmented copies) and of the validation set
  computed once and cached; ``fit`` trains the new head on them.
* ``finetune``: ``freeze_epochs`` epochs of the above (the new head learns first, so its
  random gradients do not wreck the pretrained weights), then everything unfrozen for
  ``train.epochs`` epochs with the backbone at ``lr * backbone_lr_ratio``.
* ``auto``: feature-extract below ``auto_threshold`` training images per class, else
  finetune (the threshold comes from the experiment in docs/transfer.md).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from cnnlab.config import RunConfig
from cnnlab.data.augment import build_augment
from cnnlab.data.sources import Splits
from cnnlab.errors import CnnlabError
from cnnlab.models.transfer import TransferModel
from cnnlab.train.fit import History, fit, validation_indices
from cnnlab.train.runtime import Runtime, resolve_runtime
from cnnlab.transfer.features import FeatureLoader, cached_features

log = logging.getLogger(__name__)

# What the epoch lines call the two phases: the new head on a frozen backbone, then everything.
HEAD_PHASE = "head (frozen backbone)"
FINETUNE_PHASE = "fine-tune"


def choose_mode(cfg: RunConfig, splits: Splits) -> tuple[str, str]:
    """The mode to run and a one-line reason.

    Returns:
        ``(mode, reason)``; mode is ``feature-extract``, ``finetune`` or ``full`` (no
        transfer: every layer trains at one learning rate, e.g. a backbone without weights).
    """
    t = cfg.transfer
    pretrained = cfg.model.pretrained or t.backbone is not None
    if t.mode is None:
        if not pretrained:
            return "full", (f"{cfg.model.name} without --pretrained: no pretrained weights, so every layer trains from "
                            "scratch (slow for a large model; add --pretrained for its pretrained weights)")  # fmt: skip
        mode = "auto"
    else:
        mode = t.mode
        if not pretrained:
            raise CnnlabError(f"--transfer {mode} needs pretrained weights: add --pretrained, or --backbone RUN/best.pt")
    if mode != "auto":
        return mode, f"transfer: {mode} (as asked)"
    per_class = len(splits.train) / max(len(splits.classes), 1)
    small = per_class < t.auto_threshold
    picked = "feature-extract" if small else "finetune"
    rule = "small data: freeze the backbone" if small else "enough data: fine-tune the backbone"
    reason = (f"transfer auto: {len(splits.train):,} training images ({per_class:,.0f} per class) "
              f"{'<' if small else '>='} {t.auto_threshold} per class -> {picked} ({rule}; threshold measured in docs/transfer.md)")  # fmt: skip
    return picked, reason


def feature_loaders(
    model: TransferModel, splits: Splits, cfg: RunConfig, runtime: Runtime, *, verbose: bool = True,
) -> tuple[FeatureLoader, FeatureLoader | None]:  # fmt: skip
    """Loaders of cached features for the training split (plain + augmented views) and validation.

    ``verbose`` shows a progress bar (on a terminal) while features are computed.
    """
    t, tc = cfg.transfer, cfg.train
    if t.feature_views and build_augment(cfg.data.augment) is None:  # "" or "none"
        raise CnnlabError("--feature-views needs an augmentation to vary the views; add e.g. --augment flip,crop:4")
    common = dict(device=runtime.device, augment=cfg.data.augment, seed=tc.seed, batch_size=tc.eval_batch_size,
                  cache=t.cache, identity=model.cache_identity(), channels_last=runtime.channels_last,
                  verbose=verbose and runtime.is_main)  # fmt: skip
    views, hits = [], 0
    for v in range(t.feature_views + 1):
        feats, hit = cached_features(model, splits, "train", view=v, **common)
        views.append(feats)
        hits += hit
    if runtime.is_main:
        log.info("features of %d training image(s) x %d view(s): %d from the cache", len(splits.train), len(views), hits)
    # one batch per optimizer step, split into --accumulate micro-batches by the training step
    train = FeatureLoader(torch.stack(views), splits.train.labels, batch_size=tc.batch_size * tc.accumulate, train=True,
                          seed=tc.seed, device=runtime.device)  # fmt: skip
    val = None
    if len(splits.val):
        idx = validation_indices(splits, tc)  # a --val-subset run extracts (and caches) only its subset
        feats, _ = cached_features(model, splits, "val", indices=idx, **common)
        labels = splits.val.labels if idx is None else splits.val.labels[idx]
        val = FeatureLoader(feats[None], labels, batch_size=tc.eval_batch_size, train=False, device=runtime.device)
    return train, val


def fit_transfer(
    model: TransferModel, splits: Splits, cfg: RunConfig, *, runtime: Runtime | None = None,
    run_dir: str | Path | None = None, resume: dict[str, Any] | None = None, on_epoch_end: Any = None,
    verbose: bool = True,
) -> History:  # fmt: skip
    """Train a transfer model in the mode ``cfg.transfer`` asks for (``fit``'s arguments).

    A finetune run writes its frozen phase to ``run_dir/frozen`` and the main phase to
    ``run_dir``; resuming continues the main phase (the frozen phase is done by then).
    """
    runtime = runtime or resolve_runtime(cfg.train)
    mode, reason = choose_mode(cfg, splits)
    if runtime.is_main:  # the decision is reported with the run's header (both hidden by --quiet)
        log.info("%s", reason)
    if mode == "full":
        return fit(model, splits, cfg, runtime=runtime, run_dir=run_dir, resume=resume, on_epoch_end=on_epoch_end, verbose=verbose)
    model.to(runtime.device)
    if mode == "feature-extract":
        model.freeze_backbone()
        loaders = feature_loaders(model, splits, cfg, runtime, verbose=verbose)
        return fit(model, splits, cfg, runtime=runtime, run_dir=run_dir, resume=resume, on_epoch_end=on_epoch_end,
                   loaders=loaders, verbose=verbose, phase=HEAD_PHASE)  # fmt: skip
    t = cfg.transfer
    if resume is None and t.freeze_epochs > 0:
        model.freeze_backbone()
        head_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=t.freeze_epochs, early_stopping=None, ema=None))
        fit(model, splits, head_cfg, runtime=runtime, run_dir=Path(run_dir) / "frozen" if run_dir is not None else None,
            loaders=feature_loaders(model, splits, cfg, runtime, verbose=verbose), verbose=verbose, phase=HEAD_PHASE)  # fmt: skip
    model.unfreeze_backbone(t.norm)
    return fit(model, splits, cfg, runtime=runtime, run_dir=run_dir, resume=resume, on_epoch_end=on_epoch_end,
               lr_scales={"backbone": t.backbone_lr_ratio}, verbose=verbose, phase=FINETUNE_PHASE)  # fmt: skip

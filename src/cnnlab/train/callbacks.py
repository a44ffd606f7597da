"""The engine's own ``on_epoch_end`` callables: early stopping and the best checkpoint.

They have the signature of a user's callback, ``callback(record) -> stop?``, and ``fit``
calls them in order after every epoch: :class:`BestCheckpoint`, :class:`EarlyStopping`,
then the user's. Each keeps only its own state; what a checkpoint must hold to resume
them exactly (``bad_epochs``) is read back by ``fit``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnlab import checkpoint as ckpt

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any]], bool | None]  # an epoch record -> True to stop


class EarlyStopping:
    """Stop once the validation loss has not improved for ``patience`` epochs.

    Args:
        patience: epochs without a new lowest validation loss before stopping; None
            only counts them (the count is part of every checkpoint, so a run resumed
            with early stopping turned on continues the same count).
        best_loss: the lowest validation loss so far (when resuming).
        bad_epochs: epochs since it was reached (when resuming).
    """

    def __init__(self, patience: int | None, *, best_loss: float | None = None, bad_epochs: int = 0) -> None:
        self.patience = patience
        self.best_loss = best_loss
        self.bad_epochs = bad_epochs

    def __call__(self, record: dict[str, Any]) -> bool:
        """Count the epoch; True when the patience has run out."""
        loss = record.get("val_loss")
        if loss is None:  # no validation split: nothing to watch
            return False
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
        if self.patience and self.bad_epochs >= self.patience:
            log.info("early stopping: validation loss has not improved for %d epochs", self.bad_epochs)
            return True
        return False


class BestCheckpoint:
    """Write ``best.pt`` whenever an epoch becomes the best one (by validation accuracy).

    Args:
        path: where the checkpoint goes (``run_dir/best.pt``).
        meta: what every checkpoint of the run stores (config, model args, data, version).
        weights: the state dict to save (the EMA weights when EMA is on).
        is_best: whether a record is the best epoch so far (``History.add`` decided it).
    """

    def __init__(
        self, path: str | Path, meta: dict[str, Any], weights: Callable[[], dict[str, Any]],
        is_best: Callable[[dict[str, Any]], bool],
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.meta, self.weights, self.is_best = meta, weights, is_best

    def __call__(self, record: dict[str, Any]) -> bool:
        """Save when ``record`` is the best epoch; never asks to stop."""
        if self.is_best(record):
            ckpt.save_checkpoint(self.path, {**self.meta, "model": self.weights(), "epoch": record["epoch"], "metrics": record})
        return False

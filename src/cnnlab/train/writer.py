"""Writes a run folder while training: config, per-epoch metrics, curves and TensorBoard events.

The files and their names belong to :class:`cnnlab.runfolder.RunFolder`, the one module
that reads and writes a run folder; this writer adds what only a running training
produces: ``curves.png`` redrawn each epoch and TensorBoard event files. Only the main
process of a distributed run writes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cnnlab.config import RunConfig
from cnnlab.report.plots import training_curves
from cnnlab.runfolder import RunFolder

log = logging.getLogger(__name__)


class RunWriter:
    """Writes a run folder; every file is replaced atomically.

    Args:
        run_dir: the run folder (created when missing).
        cfg: the run's configuration, written at once as ``config.yaml``.
        start_epoch: the epoch a resumed run continues from (TensorBoard drops later events).
        tensorboard: also write TensorBoard events, when tensorboard is installed.
    """

    def __init__(self, run_dir: str | Path, cfg: RunConfig, *, start_epoch: int = 0, tensorboard: bool = True) -> None:
        self.folder = RunFolder(run_dir)
        self.dir = self.folder.path
        self.dir.mkdir(parents=True, exist_ok=True)
        self.folder.write_config(cfg)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                # purge_step drops events a resumed run is about to write again.
                self._tb = SummaryWriter(str(self.dir), purge_step=start_epoch or None)

    def write_epoch(self, history: list[dict[str, Any]], title: str | None = None) -> None:
        """Rewrite metrics.jsonl and curves.png from the whole history, log the last epoch."""
        self.folder.write_metrics(history)
        training_curves(history, self.folder.curves_png, title=title)
        if self._tb is not None and history:
            r = history[-1]
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
                if r.get(key) is not None:
                    self._tb.add_scalar(key.replace("_", "/", 1), r[key], r["epoch"] + 1)
            self._tb.flush()

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` (the run counts as finished from now on)."""
        self.folder.write_summary(summary)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

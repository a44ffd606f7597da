"""The run folder: the interface between training and everything that reads results.

    config.yaml     the resolved configuration (feed it back with --config)
    metrics.jsonl   one JSON record per epoch
    curves.png      train/val loss and accuracy
    events.*        TensorBoard event files, when tensorboard is installed
    last.pt         the latest checkpoint (resumable)
    best.pt         the weights with the best validation accuracy
    summary.json    the final result, test accuracy included

Only the main process of a distributed run writes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cnnlab.config import RunConfig, dump_yaml
from cnnlab.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


class RunWriter:
    """Writes a run folder; every file is replaced atomically."""

    def __init__(self, run_dir: str | Path, cfg: RunConfig, *, start_epoch: int = 0, tensorboard: bool = True) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / "config.yaml", dump_yaml(cfg))
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
        from cnnlab.report.plots import training_curves

        atomic_write_text(self.dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        training_curves(history, self.dir / "curves.png", title=title)
        if self._tb is not None and history:
            r = history[-1]
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
                if r.get(key) is not None:
                    self._tb.add_scalar(key.replace("_", "/", 1), r[key], r["epoch"] + 1)
            self._tb.flush()

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.dir / "summary.json", summary)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch records of a run folder (empty when it has none yet)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

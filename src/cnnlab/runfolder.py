"""The run folder: the one module that reads and writes what a training run leaves on disk.

A run folder is the interface between training and everything that reads results
(reports, the lab, the recipe, ``cnnlab diagnose``)::

    config.yaml              the resolved configuration (feed it back with --config)
    metrics.jsonl            one JSON record per epoch
    curves.png               train/val loss and accuracy (drawn by the run writer)
    events.*                 TensorBoard event files, when tensorboard is installed
    last.pt                  the latest checkpoint (resumable)
    best.pt                  the weights with the best validation accuracy
    summary.json             the final result, test accuracy included; its presence means "finished"
    predictions-<split>.npz  logits and labels of one split: the test, and the validation a TTA choice was made on
    skipped.txt              the data files the run could not use (path and reason), when there were any
    code/<file>.py           a copy of the user code the model was built from (--model file.py:factory)
    tracking.json            the experiment tracker's run this run logs to (--track), so --resume continues it
    .cnnlab.lock             held by the process writing the folder (cnnlab.io.folder_lock)

A new run starts only in a new or empty folder (:meth:`RunFolder.check_new`): a run folder
is never shared with a user's own files or with another run's, so nothing in it is ever
overwritten by a second run.

Every write replaces its file atomically (:mod:`cnnlab.io`), so a reader never sees a torn
file, even while the run is still writing. Checkpoints themselves are written by
:mod:`cnnlab.checkpoint`; this module only names their paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.config import RunConfig, dump_yaml, from_dict, load_yaml
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.io import LOCK_NAME, atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, json_dumps


class RunFolder:
    """Reads and writes the files of one run folder.

    Args:
        path: the folder; it need not exist yet (the first write creates it).
    """

    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"
    CURVES = "curves.png"
    LAST = "last.pt"
    BEST = "best.pt"
    SKIPPED = "skipped.txt"
    CODE = "code"  # copies of the user code a model was built from (cnnlab.models.user)
    TRACKING = "tracking.json"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def curves_png(self) -> Path:
        return self.path / self.CURVES

    @property
    def last_pt(self) -> Path:
        return self.path / self.LAST

    @property
    def best_pt(self) -> Path:
        return self.path / self.BEST

    @property
    def skipped_path(self) -> Path:
        return self.path / self.SKIPPED

    @property
    def tracking_path(self) -> Path:
        return self.path / self.TRACKING

    def predictions_path(self, split: str) -> Path:
        """The file holding one split's saved logits and labels (``predictions-<split>.npz``)."""
        if not split or not all(ch.isalnum() or ch in "-_" for ch in split):
            raise ValueError(f"a split name is letters, digits, '-' or '_', got {split!r}")
        return self.path / f"predictions-{split}.npz"

    # ------------------------------------------------------------------ state

    def exists(self) -> bool:
        """Whether a run was started here (its config or a checkpoint is on disk)."""
        return self.config_path.is_file() or self.last_pt.is_file()

    def has_checkpoint(self) -> bool:
        """Whether the run can resume from a checkpoint (``last.pt``)."""
        return self.last_pt.is_file()

    def is_finished(self) -> bool:
        """Whether the run finished (it wrote ``summary.json``)."""
        return self.summary_path.is_file()

    def check_new(self) -> None:
        """Refuse to start a new run here unless the folder is new or empty.

        Only reads: nothing is created or written. A folder holding nothing but the lock
        file (``.cnnlab.lock``, left by a run that failed before writing anything) counts
        as empty. Anything else is refused, because a run writes ``config.yaml``,
        ``metrics.jsonl``, ``best.pt``, ``summary.json`` ... over whatever has those names:
        a finished run whose ``last.pt`` was deleted, a run still resumable, a user's files.

        Raises:
            UsageError: the path is a file, lies under a file or an unwritable folder, or
                the folder holds a run or other files (the message says which and what to do).
        """
        path = self.path
        try:
            if path.exists() and not path.is_dir():
                raise UsageError(f"--out {path} is a file, not a folder; a run needs a new or empty folder")
            ancestor = next(a for a in (path, *path.absolute().parents) if a.exists())
            if not ancestor.is_dir():
                raise UsageError(f"cannot create the run folder {path}: {ancestor} is a file, not a folder; choose another --out")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise UsageError(f"cannot create the run folder {path}: {ancestor} is not writable; choose another --out")
            entries = sorted(e.name for e in path.iterdir() if e.name != LOCK_NAME) if ancestor == path else []
        except OSError as exc:
            raise UsageError(f"cannot use {path} as a run folder: {exc.strerror or exc}; choose another --out") from None
        if not entries:
            return
        if self.is_finished():
            raise UsageError(f"{path} already holds a run, finished (summary.json); choose another --out for a new run")
        if self.exists():
            raise UsageError(f"{path} already holds a run that has not finished; continue it with "
                             f"`cnnlab train --resume {path}`, or choose another --out")  # fmt: skip
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise UsageError(f"{path} is not empty (it holds {shown}); a new run needs a new or empty folder, "
                         "so nothing in it is overwritten: choose another --out")  # fmt: skip

    # ------------------------------------------------------------------ config

    def write_config(self, cfg: RunConfig) -> None:
        """Write the resolved configuration as ``config.yaml``."""
        atomic_write_text(self.config_path, dump_yaml(cfg))

    def read_config(self) -> RunConfig:
        """The run's configuration.

        Raises:
            CnnlabError: ``config.yaml`` is missing, not YAML, or not a valid run config
                (the message names the file).
        """
        data = load_yaml(self.config_path)  # names the file when missing or malformed
        try:
            return from_dict(RunConfig, data)
        except CnnlabError as exc:
            raise CnnlabError(f"{self.config_path} is not a valid run config: {exc}") from None

    # ------------------------------------------------------------------ metrics

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` with ``records`` (the whole history, one line per epoch)."""
        # Strict JSON: a NaN/inf value (a diverged epoch) is written as null, which every reader accepts.
        atomic_write_text(self.metrics_path, "".join(json_dumps(r) + "\n" for r in records))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The epoch records, oldest first; ``[]`` when the run has none yet.

        Raises:
            CnnlabError: ``metrics.jsonl`` exists but is not JSON lines.
        """
        try:
            text = self.metrics_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CnnlabError(f"cannot read {self.metrics_path}: {exc.strerror or exc}") from None
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise CnnlabError(f"{self.metrics_path} is not JSON lines ({exc}); was it written by cnnlab?") from None
        if not all(isinstance(r, dict) for r in records):
            raise CnnlabError(f"{self.metrics_path} must hold one JSON object per line; was it written by cnnlab?")
        return records

    # ------------------------------------------------------------------ user code

    def write_code(self, name: str, source: bytes) -> Path:
        """Keep a copy of the user code the run's model was built from, as ``code/<name>``.

        The bytes are those that ran (``cnnlab.models.user``), so ``--trust-code`` can check them
        against the sha256 the checkpoints record.
        """
        if not name or Path(name).name != name:
            raise ValueError(f"a code copy's name is a plain file name, got {name!r}")
        path = self.path / self.CODE / name
        atomic_write_bytes(path, source)
        return path

    # ------------------------------------------------------------------ skipped files

    def write_skipped(self, skipped: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> None:
        """Write the data files the run could not use, one ``path<TAB>reason`` line each."""
        def text(value: object) -> str:
            # One line per file whatever its name holds (newlines, undecodable bytes).
            return " ".join(str(value).encode("utf-8", "backslashreplace").decode("utf-8").split("\n"))

        atomic_write_text(self.skipped_path, "".join(f"{text(path)}\t{text(reason)}\n" for path, reason in skipped))

    # ------------------------------------------------------------------ experiment tracking

    def write_tracking(self, info: dict[str, Any]) -> None:
        """Record the tracker's run (``{"tracker", "uri", "experiment_id", "run_id"}``) as ``tracking.json``."""
        atomic_write_json(self.tracking_path, info)

    def read_tracking(self) -> dict[str, Any] | None:
        """The tracker's run this run logs to, or ``None`` when it was not tracked yet.

        Read by the tracker, to continue the same tracker run on ``--resume``.

        Raises:
            CnnlabError: ``tracking.json`` exists but is not a JSON object.
        """
        return _read_json_object(self.tracking_path)

    # ------------------------------------------------------------------ summary

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write the final result as ``summary.json``; from now on the run counts as finished."""
        atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any] | None:
        """The final result, or ``None`` while the run has not finished.

        Raises:
            CnnlabError: ``summary.json`` exists but is not a JSON object.
        """
        return _read_json_object(self.summary_path)

    # ------------------------------------------------------------------ predictions

    def write_predictions(self, split: str, logits: np.ndarray, labels: np.ndarray) -> None:
        """Save one split's logits ``(N, classes)`` and labels ``(N,)`` as ``predictions-<split>.npz``."""
        logits, labels = np.asarray(logits), np.asarray(labels)
        if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels):
            raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
        with atomic_path(self.predictions_path(split)) as tmp, open(tmp, "wb") as fh:
            # A file object, because np.savez would append ".npz" to the temporary name.
            np.savez(fh, logits=logits, labels=labels)

    def read_predictions(self, split: str) -> tuple[np.ndarray, np.ndarray] | None:
        """One split's saved ``(logits, labels)``, or ``None`` when they were not saved.

        Raises:
            CnnlabError: the file exists but is not a predictions file.
        """
        path = self.predictions_path(split)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                return npz["logits"], npz["labels"]
        except (OSError, ValueError, KeyError) as exc:
            raise CnnlabError(f"{path} is not a cnnlab predictions file ({exc}); delete it to write it again") from None


def _read_json_object(path: Path) -> dict[str, Any] | None:
    """A run-folder JSON file that holds one object; None when it does not exist.

    Raises:
        CnnlabError: it cannot be read, is not JSON, or holds something other than an object.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CnnlabError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CnnlabError(f"{path} is not JSON ({exc}); was it written by cnnlab?") from None
    if not isinstance(data, dict):
        raise CnnlabError(f"{path} must hold a JSON object")
    return data

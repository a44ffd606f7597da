"""Output paths of the commands that use saved models, checked before any work is done.

`cnnlab export -o`, `cnnlab eval --out` and `cnnlab data show -o` write where the user
says. A typo there must not destroy anything, nor fail with a traceback after minutes of
work, so every output path is checked first, and refused (``UsageError``, exit 2) when:

- it is empty, or a folder where a file is wanted (or the other way round);
- a folder on its way is a regular file, or the nearest existing folder is not writable;
- it names a file of a run folder (``config.yaml``, ``best.pt``, ``summary.json``, ...,
  the names :class:`~cnnlab.runfolder.RunFolder` uses) inside a run folder, its own or
  another's: those files belong to the run that wrote them, so this is refused even with
  ``--force``;
- it is in another run's folder under the name of that run's own export or evaluation
  (``best.onnx``, ``eval.json``, ...), which it would pass for (also with ``--force``);
- the file exists and ``force`` was not given.

The checks are repeated by the write itself (an ``OSError`` there becomes a one-line
``CnnlabError``), since the file system can change between the check and the write.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cnnlab.errors import CnnlabError, UsageError
from cnnlab.io import LOCK_NAME
from cnnlab.runfolder import RunFolder

# What `cnnlab eval` writes into a folder (see cnnlab.infer.evaluate.write_report).
EVAL_FILES: tuple[str, ...] = ("eval.json", "confusion.png", "top_losses.png", "reliability.png")
# The files a run folder's own training wrote: RunFolder's names, its lock, TensorBoard's events.
_RUN_FILES = frozenset({RunFolder.CONFIG, RunFolder.METRICS, RunFolder.SUMMARY, RunFolder.CURVES,
                        RunFolder.LAST, RunFolder.BEST, RunFolder.SKIPPED, LOCK_NAME})  # fmt: skip
_RUN_PATTERNS = (re.compile(r"predictions-[A-Za-z0-9_-]+\.npz"), re.compile(r"events\.out\.tfevents\..*"))
# The default names of a run's exports and evaluations (next to its checkpoint): another
# run's model written under one of these names would pass for that run's own.
_DERIVED_PATTERNS = (re.compile(r"(best|last)\.(onnx|torchscript\.pt|safetensors)"),)


def is_run_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a cnnlab run (its config, a checkpoint, metrics or summary)."""
    run = RunFolder(folder)
    return any(p.is_file() for p in (run.config_path, run.last_pt, run.best_pt, run.summary_path, run.metrics_path))


def is_run_file_name(name: str) -> bool:
    """Whether ``name`` is the name of a file that training writes into a run folder."""
    return name in _RUN_FILES or any(p.fullmatch(name) for p in _RUN_PATTERNS)


def _is_derived_name(name: str) -> bool:
    return name in EVAL_FILES or any(p.fullmatch(name) for p in _DERIVED_PATTERNS)


def same_folder(a: Path, b: Path) -> bool:
    """Whether two paths name the same folder (False when either cannot be resolved)."""
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def writable_folder_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be created or written into (None: it can, as far as can be told).

    Walks up to the nearest existing path: a regular file or broken link on the way, or
    no write permission there, would make the write fail after the work was done.
    """
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling link: mkdir would fail on it
            return f"{probe} is a broken symbolic link"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"no permission to write in {probe}"
    return None


def check_writable_folder(folder: str | Path, flag: str) -> None:
    """Refuse a folder that cannot be created or written (see :func:`writable_folder_problem`).

    Args:
        folder: the folder that will hold the output (it need not exist yet).
        flag: the option that named it (``-o``, ``--out``), for the message.

    Raises:
        UsageError: the folder (or a parent) is a regular file, or is not writable.
    """
    problem = writable_folder_problem(folder)
    if problem:
        raise UsageError(f"{flag} {folder}: {problem}; choose another {flag}")


def check_output_file(
    path: str | Path, *, flag: str, force: bool = False, own_run: str | Path | None = None, kind: str = "file"
) -> Path:
    """Check the file an output will be written to; return it.

    Args:
        path: the file the user asked for.
        flag: the option that named it (``-o``), for the messages.
        force: allow replacing an existing file (never a run folder's own files).
        own_run: the run folder the written file belongs to (the checkpoint's folder), if any:
            into another run's folder even the default names of exports and evaluations
            are refused, since they would pass for that run's own.
        kind: what is written, for the messages ("ONNX export", "PNG").

    Raises:
        UsageError: see the module docstring.
    """
    if not str(path).strip():
        raise UsageError(f"{flag} is empty; give the {kind}'s file name")
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{flag} {target} is a folder; give a file name for the {kind}")
    folder = target.parent
    problem = writable_folder_problem(folder)
    if problem:
        raise UsageError(f"{flag} {target}: {problem}; choose another {flag}")
    name = target.name
    if folder.is_dir() and is_run_folder(folder):
        own = own_run is not None and same_folder(folder, Path(own_run))
        if is_run_file_name(name):
            whose = "its own run" if own else "the run"
            raise UsageError(f"{flag} {target}: {name} is a file of {whose} in {folder}; writing a {kind} under "
                             f"that name would destroy the run (not even --force allows it); choose another name")  # fmt: skip
        if not own and _is_derived_name(name):
            raise UsageError(f"{flag} {target}: {folder} is another run's folder and {name} would pass for that "
                             "run's own; choose another name or folder")  # fmt: skip
    if (target.exists() or target.is_symlink()) and not force:
        raise UsageError(f"{flag} {target} already exists; pass --force to replace it, or choose another {flag}")
    return target


# The formats a picture may be saved in (matplotlib picks the format by the suffix).
PICTURE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def check_picture_path(path: str | Path, default_name: str, *, flag: str, force: bool = False) -> Path:
    """Check the file a picture (a PNG grid, say) will be saved to; return it.

    An existing folder gets ``default_name`` in it; the suffix must be a picture format
    (a missing one means PNG); the rest is :func:`check_output_file`.

    Raises:
        UsageError: an unknown picture format, or a path refused by :func:`check_output_file`.
    """
    if not str(path).strip():
        raise UsageError(f"{flag} is empty; give the picture's file name")
    target = Path(path)
    if target.is_dir() or str(path).endswith(("/", os.sep)):
        target = target / default_name
    if target.suffix and target.suffix.lower() not in PICTURE_SUFFIXES:
        raise UsageError(f"{flag} {target}: a picture is saved as {', '.join(PICTURE_SUFFIXES)} (by the suffix), "
                         f"not {target.suffix}; give a file name ending in .png")  # fmt: skip
    return check_output_file(target, flag=flag, force=force, kind="picture")


def check_output_dir(
    folder: str | Path, names: tuple[str, ...], *, flag: str, force: bool = False, own_run: str | Path | None = None
) -> Path:
    """Check a folder that will receive the files ``names``; return it.

    A run folder is accepted only when it is ``own_run`` (the caller decides whether its
    result belongs there); ``names`` that exist are replaced only with ``force``.

    Raises:
        UsageError: the folder is a file (or below one), not writable, another run's folder,
            or it holds one of ``names`` and ``force`` is not given.
    """
    if not str(folder).strip():
        raise UsageError(f"{flag} is empty; give a folder (. for the current one)")
    folder = Path(folder)
    check_writable_folder(folder, flag)
    if folder.is_dir() and is_run_folder(folder) and not (own_run is not None and same_folder(folder, Path(own_run))):
        raise UsageError(f"{flag} {folder} is the folder of another run; its results belong to that run, "
                         f"so choose another {flag}")  # fmt: skip
    existing = [n for n in names if (folder / n).exists()]
    if existing and not force:
        raise UsageError(f"{flag} {folder} already holds {', '.join(existing)} of an earlier result; "
                         f"pass --force to replace them, or choose another {flag}")  # fmt: skip
    return folder


def write_error(path: str | Path, exc: OSError) -> CnnlabError:
    """A one-line error for an ``OSError`` met while writing ``path`` (after the checks passed)."""
    return CnnlabError(f"cannot write {path}: {exc.strerror or exc}")

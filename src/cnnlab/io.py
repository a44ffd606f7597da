"""Small file-system helpers shared by every part: the cache folder, atomic writes,
strict JSON, and the lock a process holds on the folder it writes.

Atomic means a reader (or a process killed half-way) sees either the old file or the
complete new one, never a torn file: write a temporary file in the same folder, fsync
it, then ``os.replace`` it over the target and fsync the folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from cnnlab.errors import CnnlabError

# The lock file a process holds in a run, recipe or lab folder while it writes there.
LOCK_NAME = ".cnnlab.lock"


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under cnnlab's cache.

    The cache root is ``$CNNLAB_CACHE`` when set, else ``$XDG_CACHE_HOME/cnnlab``,
    else ``~/.cache/cnnlab``. Everything in it can be deleted at any time.

    Raises:
        CnnlabError: the folder cannot be created or written; the message names the
            environment variable that chose it.
    """
    root = os.environ.get("CNNLAB_CACHE")
    chosen_by = "CNNLAB_CACHE"
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        chosen_by = "XDG_CACHE_HOME" if xdg else "the home folder"
        root = os.path.join(xdg or os.path.join(os.path.expanduser("~"), ".cache"), "cnnlab")
    path = Path(root, *parts)
    # A cache that cannot be written fails much later, deep in a decode or a download; say so
    # here, naming what chose the place. (os.access also sees read-only mounts, even as root.)
    try:
        path.mkdir(parents=True, exist_ok=True)
        problem = None if os.access(path, os.W_OK | os.X_OK) else "not writable"
    except (FileExistsError, NotADirectoryError):
        problem = "a file is in the way"
    except OSError as exc:
        problem = exc.strerror or str(exc)
    if problem is not None:
        raise CnnlabError(
            f"cannot use the cache folder {path} (set by {chosen_by}): {problem}; "
            f"set CNNLAB_CACHE to a writable folder"
        )
    return path


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/file system.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target``.

    The caller writes the temporary file (by any means, e.g. ``torch.save``); it is
    fsynced and renamed over ``target`` only if the block exits without an exception.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN/inf float replaced by None, so that it is valid JSON.

    ``json.dumps`` writes ``NaN`` and ``Infinity`` by default, which strict JSON readers
    (browsers, ``jq``, other languages) reject; a missing value reads as ``null`` there.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj`` (non-finite floats written as null)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON (NaN/inf as null) to ``target`` atomically."""
    atomic_write_text(target, json_dumps(obj, indent=2, sort_keys=False) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` left in ``folder`` when its
    process was killed mid-write (``.NAME.XXXX.tmp``); return what was removed.

    Only safe while holding the folder's lock (:func:`folder_lock`): otherwise another
    process may be writing one of them right now.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str = "run") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) for the block.

    One process at a time may write a run, recipe or lab folder: a second one (a second
    ``--resume`` of the same run, say) gets a CnnlabError at once instead of both writing
    the same checkpoints. The lock is an OS file lock (``filelock``), so it is released
    when the process dies, even by SIGKILL: a stale lock file never blocks a resume.
    Temporaries left by a killed writer are removed once the lock is held.

    Args:
        folder: the folder to lock.
        what: what the folder holds, for the message ("run", "recipe", "lab", "search").

    Raises:
        CnnlabError: another process holds the lock.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnlabError(f"cannot create the {what} folder {folder}: {exc.strerror}; choose another --out") from None
    # thread_local=False: the same lock object may be released from another thread (Ctrl-C handling).
    lock = FileLock(folder / LOCK_NAME, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CnnlabError(
            f"the {what} folder {folder} is in use by another cnnlab process; wait for it to finish "
            f"(or stop it) before starting or resuming this {what}"
        ) from None
    except OSError as exc:
        raise CnnlabError(f"cannot lock the {what} folder {folder}: {exc.strerror}; is it writable?") from None
    try:
        remove_stale_temporaries(folder)
        yield folder
    finally:
        lock.release()

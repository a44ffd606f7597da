"""Image folders and CSV files: decode once, in parallel, into a uint8 cache.

Decoding JPEGs and PNGs is the slow part of training on an image folder, so it is done
once: every file is read, EXIF-rotated, converted to one colour mode (grayscale when
every image is grayscale, RGB otherwise), resized (shorter side to ``image_size``, then
centre-cropped to a square) and stored in a memory-mapped ``.npy`` under cnnlab's cache
(:mod:`cnnlab.data.decode` does one file, :mod:`cnnlab.data.listing` finds the files).
The cache key is a hash of the files' contents, names, labels and the decoding
settings, so a changed, added or removed file (or a new size) makes a new cache, and
a moved or copied folder reuses the old one.

Files that cannot be used (corrupt, truncated, not an image, unreadable) are skipped
and reported at the end with the reason; an empty class, a single class or a folder
without images is an error. A cache that does not match its own description (a
truncated ``images.npy``, an unreadable ``meta.json``, a missing file) is rebuilt with
one logged line. A size whose cache would not fit on the cache's disk, or in memory, is
refused before any decoding, with the figures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.config import DataConfig
from cnnlab.data.decode import GRAY_MODES, IMAGE_SUFFIXES, decode_image, probe, readable
from cnnlab.data.imageset import ImageSet, RawData
from cnnlab.data.listing import Item, list_csv, list_folder
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.io import cache_dir

__all__ = ["IMAGE_SUFFIXES", "decode_image", "load_csv", "load_image_folder", "parallel_map"]

CACHE_VERSION = 2  # 2: float and 32-bit images are scaled by their range (see cnnlab.data.decode)
DEFAULT_MAX_SIZE = 64  # px; folders of larger images are resized to this unless data.image_size says otherwise
_PARALLEL_MIN_FILES = 256  # below this, worker start-up costs more than it saves

log = logging.getLogger(__name__)


def parallel_map(fn: Callable, items: Sequence, description: str) -> Iterable:
    """Map ``fn`` over ``items`` in worker processes (in order), with a progress bar on a terminal."""
    workers = min(os.cpu_count() or 1, 8)
    show = sys.stderr.isatty()
    if len(items) < _PARALLEL_MIN_FILES or workers == 1:
        results: Iterable = map(fn, items)
        pool = None
    else:
        # spawn: never fork a process that may hold torch's thread pools.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(fn, items, chunksize=max(1, min(64, len(items) // (workers * 8))))
    try:
        if show:
            from rich.progress import Progress  # lazy: only a shown progress bar needs rich

            with Progress(transient=True) as progress:
                task = progress.add_task(description, total=len(items))
                for r in results:
                    progress.advance(task)
                    yield r
        else:
            yield from results
    finally:
        if pool is not None:
            pool.shutdown()


# --------------------------------------------------------------------------- the cache


def _build_or_load(items: list[Item], classes: tuple[str, ...], source: Path, cfg: DataConfig, name: str) -> RawData:
    shown = readable(str(source))
    if not items:
        raise CnnlabError(f"no image files found in {shown}")
    start = time.perf_counter()
    probes = list(parallel_map(probe, [p for p, _, _ in items], f"reading {readable(source.name)}"))
    skipped = [(p, err) for (p, _, _), (_, _, _, err) in zip(items, probes) if err]
    good = [(item, pr) for item, pr in zip(items, probes) if not pr[3]]
    if not good:
        raise CnnlabError(
            f"no readable images in {shown} ({len(skipped)} file(s) skipped, e.g. {readable(skipped[0][0])}: {skipped[0][1]})"
        )
    channels = cfg.channels or (1 if all(pr[1] in GRAY_MODES for _, pr in good) else 3)
    size = cfg.image_size or min(DEFAULT_MAX_SIZE, int(np.median([pr[2] for _, pr in good])))
    key = hashlib.blake2b(digest_size=16)
    key.update(json.dumps([CACHE_VERSION, size, channels, classes]).encode())
    for (path, label, split), pr in good:
        # surrogateescape: a file name that is not UTF-8 hashes as its own bytes.
        key.update(f"|{os.path.relpath(path, source)}|{label}|{split}|{pr[0]}".encode("utf-8", "surrogateescape"))
    folder = cache_dir("images") / key.hexdigest()
    flat = all(split == -1 for (_, _, split), _ in good)
    in_memory = not flat or cfg.val_split > 0 or cfg.test_split > 0  # held-out splits are copied out of the map
    cached = _open_cache(folder, len(good), classes, size, channels)
    if isinstance(cached, str):
        if folder.exists():
            log.warning("the decode cache %s is damaged (%s); rebuilding it", folder, cached)
            _discard(folder)
        _check_room(len(good), channels, size, cfg, folder.parent, memory=in_memory)
        _write_cache(folder, [item for item, _ in good], classes, size, channels, source)
        cached = _open_cache(folder, len(good), classes, size, channels)
        if isinstance(cached, str):
            raise CnnlabError(f"the decode cache {folder} is unusable right after writing it ({cached}); is the disk full?")
    else:
        _check_room(len(good), channels, size, cfg, None, memory=in_memory)
    meta, images, labels, splits = cached
    skipped += [(str(p), str(r)) for p, r in meta["skipped"]]
    _check_classes(labels[splits <= 0], classes, shown)

    def part(index: int) -> ImageSet | None:
        idx = np.flatnonzero(splits == index)
        return ImageSet(np.ascontiguousarray(images[idx]), labels[idx], classes) if idx.size else None

    if (splits == -1).all():
        train, val, test = ImageSet(images, labels, classes), None, None
    else:
        train, val, test = part(0), part(1), part(2)
        if train is None:
            raise CnnlabError(f"{shown} has no readable training images")
    elapsed = time.perf_counter() - start
    log.info("%d images from %s (%dx%d px, %d channel(s)) in %.1fs", len(labels), shown, size, size, channels, elapsed)
    shown_skipped = tuple((readable(p), readable(r)) for p, r in skipped)
    return RawData(train, test, val, f"{readable(name)} ({size}px)", key.hexdigest(), shown_skipped)


def _open_cache(folder: Path, n_good: int, classes: tuple[str, ...], size: int, channels: int) -> tuple | str:
    """The cache's ``(meta, images, labels, splits)``, or why it cannot be used ("absent", or
    what is damaged)."""
    if not folder.exists():
        return "absent"
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            return "meta.json is not a JSON object"
        expected = {"version": CACHE_VERSION, "classes": list(classes), "size": size, "channels": channels}
        wrong = [k for k, v in expected.items() if meta.get(k) != v]
        if wrong:
            return f"meta.json has the wrong {', '.join(wrong)}"
        skipped = meta.get("skipped")
        if not isinstance(skipped, list) or not all(isinstance(s, list) and len(s) == 2 for s in skipped):
            return "meta.json has no valid list of skipped files"
        images = np.load(folder / "images.npy", mmap_mode="r")
        labels = np.load(folder / "labels.npy")
        splits = np.load(folder / "splits.npy")
    except (OSError, ValueError, EOFError) as exc:  # a missing, truncated or garbled file
        return readable(f"{type(exc).__name__}: {exc}")
    n = n_good - len(skipped)
    if images.dtype != np.uint8 or images.shape != (n, channels, size, size):
        return f"images.npy holds {images.dtype} {images.shape}, expected uint8 {(n, channels, size, size)}"
    if labels.shape != (n,) or labels.dtype.kind not in "iu" or (n and not 0 <= labels.min() <= labels.max() < len(classes)):
        return "labels.npy does not match the images"
    if splits.shape != (n,) or splits.dtype.kind not in "iu" or (n and not -1 <= splits.min() <= splits.max() <= 2):
        return "splits.npy does not match the images"
    return meta, images, labels.astype(np.int64, copy=False), splits


def _discard(folder: Path) -> None:
    """Remove a damaged cache folder: renamed aside first, so no reader sees it half-deleted."""
    aside = folder.parent / f".tmp-damaged-{uuid.uuid4().hex}"
    try:
        os.replace(folder, aside)
    except OSError:  # another process removed or replaced it first
        return
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def _check_room(n: int, channels: int, size: int, cfg: DataConfig, cache_root: Path | None, *, memory: bool) -> None:
    """Refuse a decode cache that would not fit on its disk (when ``cache_root`` is given:
    it has to be written) or in memory (when ``memory``: the splits are copied out of it)."""
    need = n * channels * size * size
    what = f"{n} images of {channels}x{size}x{size} px take {_human(need)}"
    fix = "choose a smaller --image-size" if cfg.image_size else "use fewer images"
    refuse = UsageError if cfg.image_size else CnnlabError
    if cache_root is not None:
        try:
            free = shutil.disk_usage(cache_root).free
        except OSError:
            free = None
        if free is not None and need > free:
            raise refuse(f"{what}, more than the {_human(free)} free in the cache {cache_root}; {fix} (or point CNNLAB_CACHE at a larger disk)")
        # Each decoding worker holds a few resized copies of one image at a time.
        workers = min(os.cpu_count() or 1, 8) if n >= _PARALLEL_MIN_FILES else 1
        peak = 4 * channels * size * size * workers
        avail = available_memory()
        if avail is not None and peak > avail:
            raise refuse(f"decoding at {size}x{size} px needs about {_human(peak)} of memory, more than the {_human(avail)} available; {fix}")
    avail = available_memory() if memory else None
    if avail is not None and need > avail:
        raise refuse(f"{what}, more than the {_human(avail)} of memory available; {fix}")


def _check_classes(labels: np.ndarray, classes: tuple[str, ...], shown: str) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise CnnlabError(f"class(es) {', '.join(empty)} in {shown} have no readable images; add images or remove them")


def _write_cache(folder: Path, items: list[Item], classes: tuple[str, ...], size: int, channels: int, source: Path) -> None:
    """Decode every item into a temporary folder, then rename it into place (atomic)."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    except OSError as exc:
        raise CnnlabError(f"cannot write the decode cache in {folder.parent}: {exc.strerror}; set CNNLAB_CACHE to a writable folder") from None
    try:
        _decode_into(tmp, items, classes, size, channels, source)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first: theirs is identical
            if not (folder / "meta.json").is_file():
                raise
    except OSError as exc:  # a full disk, a cache folder removed under us
        raise CnnlabError(
            f"cannot write the decode cache in {folder.parent}: {exc.strerror or exc}; free some space "
            f"or point CNNLAB_CACHE at another disk"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _decode_into(tmp: Path, items: list[Item], classes: tuple[str, ...], size: int, channels: int, source: Path) -> None:
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(items), channels, size, size))
    keep: list[int] = []
    skipped: list[tuple[str, str]] = []
    jobs = [(path, size, channels) for path, _, _ in items]
    for i, (arr, err) in enumerate(parallel_map(decode_image, jobs, f"decoding {readable(source.name)}")):
        if err is not None:
            skipped.append((items[i][0], err))
            continue
        images[len(keep)] = arr
        keep.append(i)
    images.flush()
    del images
    if len(keep) < len(items):  # drop the unused tail rows of skipped files
        full = np.load(tmp / "images.npy", mmap_mode="r")
        np.save(tmp / "images.part.npy", full[: len(keep)])
        del full
        os.replace(tmp / "images.part.npy", tmp / "images.npy")
    np.save(tmp / "labels.npy", np.array([items[i][1] for i in keep], dtype=np.int64))
    np.save(tmp / "splits.npy", np.array([items[i][2] for i in keep], dtype=np.int8))
    meta: dict[str, Any] = {"version": CACHE_VERSION, "classes": list(classes), "size": size, "channels": channels,
                            "source": str(source), "files": [items[i][0] for i in keep], "skipped": skipped}  # fmt: skip
    # ASCII JSON: a non-UTF-8 file name is stored as its escaped surrogates and read back unchanged.
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="ascii")


def load_image_folder(root: Path, cfg: DataConfig) -> RawData:
    """Load an ImageFolder-style directory through the decode cache."""
    items, classes = list_folder(root)
    return _build_or_load(items, classes, root, cfg, str(root))


def load_csv(path: Path, cfg: DataConfig) -> RawData:
    """Load the images listed in a ``path,label[,split]`` CSV through the decode cache.

    Raises:
        UsageError: the CSV is malformed or lists files outside its folder (see
            :func:`cnnlab.data.listing.list_csv`).
    """
    items, classes, repeated = list_csv(path, allow_outside_root=cfg.allow_outside_root)
    missing = [(p, "file not found") for p, _, _ in items if not os.path.isfile(p)]
    present = [it for it in items if os.path.isfile(it[0])]
    if not present:
        raise CnnlabError(
            f"none of the {len(items)} files listed in {readable(str(path))} exists (e.g. {readable(items[0][0])}); "
            f"relative paths are read from the CSV's folder"
        )
    raw = _build_or_load(present, classes, path.parent, cfg, str(path))
    extra = tuple((readable(p), r) for p, r in (*repeated, *missing))
    return RawData(raw.train, raw.test, raw.val, raw.name, raw.fingerprint, extra + raw.skipped)

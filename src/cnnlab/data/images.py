"""Image folders and CSV files: decode once, in parallel, into a uint8 cache.

Decoding JPEGs and PNGs is the slow part of training on an image folder, so it is done
once: every file is read, EXIF-rotated, converted to one colour mode (grayscale when
every image is grayscale, RGB otherwise), resized (shorter side to ``image_size``, then
centre-cropped to a square) and stored in a memory-mapped ``.npy`` under cnnlab's cache.
The cache key is a hash of the files' contents, names, labels and the decoding
settings, so a changed, added or removed file (or a new size) makes a new cache, and
a moved or copied folder reuses the old one.

Files that cannot be used (corrupt, truncated, not an image, unreadable) are skipped
and reported at the end with the reason; an empty class, a single class or a folder
without images is an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from cnnlab.config import DataConfig
from cnnlab.data.imageset import SPLITS, ImageSet, RawData
from cnnlab.errors import CnnlabError
from cnnlab.io import cache_dir

CACHE_VERSION = 1
DEFAULT_MAX_SIZE = 64  # px; folders of larger images are resized to this unless data.image_size says otherwise
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_PARALLEL_MIN_FILES = 256  # below this, worker start-up costs more than it saves

log = logging.getLogger(__name__)

Item = tuple[str, int, int]  # (path, label, split index or -1 when the source has no split)


# --------------------------------------------------------------------------- listing


def _is_candidate(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".")


def list_folder(root: Path) -> tuple[list[Item], tuple[str, ...]]:
    """List ``root/<class>/**`` files, or ``root/{train,val,test}/<class>/**`` when present."""
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if "train" in split_dirs:
        classes = tuple(sorted(d.name for d in split_dirs["train"].iterdir() if d.is_dir()))
        layout = [(split_dirs[s], SPLITS.index(s)) for s in SPLITS if s in split_dirs]
    else:
        classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
        layout = [(root, -1)]
    if not classes:
        where = root / "train" if "train" in split_dirs else root
        raise CnnlabError(f"no class folders in {where}; expected the layout {where}/<class>/<image files>")
    if len(classes) < 2:
        raise CnnlabError(f"{root} has a single class ('{classes[0]}'); a classifier needs at least two class folders")
    items: list[Item] = []
    for base, split in layout:
        present = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise CnnlabError(f"{base} has class folders not in train/: {', '.join(unknown)}")
        for label, name in enumerate(classes):
            folder = base / name
            if not folder.is_dir():
                continue
            files = sorted(p for p in folder.rglob("*") if _is_candidate(p))
            if not files and split in (-1, 0):
                raise CnnlabError(f"class folder {folder} is empty; add images or remove the folder")
            items += [(str(p), label, split) for p in files]
    return items, classes


def list_csv(path: Path) -> tuple[list[Item], tuple[str, ...]]:
    """Read ``path,label[,split]`` rows (header optional); paths are relative to the CSV's folder."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CnnlabError(f"cannot read CSV {path}: {exc}") from None
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    rows = [r for r in csv.reader(text.splitlines(), dialect) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise CnnlabError(f"CSV {path} has no rows; expected lines of path,label")
    records = []
    for i, row in enumerate(rows, 1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise CnnlabError(f"CSV {path}, row {i}: expected path,label[,split], got {row!r}")
        split_name = row[2].strip().lower() if len(row) > 2 and row[2].strip() else ""
        if split_name and split_name not in SPLITS:
            raise CnnlabError(f"CSV {path}, row {i}: split must be one of {', '.join(SPLITS)}, got '{row[2]}'")
        file = Path(row[0].strip())
        records.append((str(file if file.is_absolute() else path.parent / file), row[1].strip(), split_name))
    classes = tuple(sorted({label for _, label, _ in records}))
    if len(classes) < 2:
        raise CnnlabError(f"CSV {path} has a single label ('{classes[0]}'); a classifier needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    has_splits = any(s for _, _, s in records)
    items = [(p, index[label], SPLITS.index(s or "train") if has_splits else -1) for p, label, s in records]
    return items, classes


# --------------------------------------------------------------------------- per-file work (runs in workers)


def _probe(path: str) -> tuple[str | None, str, int, str | None]:
    """Hash a file and read its image header: (content hash, mode, shorter side, error)."""
    from PIL import Image, UnidentifiedImageError  # lazy: only folders of image files need PIL

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, "", 0, f"unreadable: {exc.strerror or exc}"
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            return digest, im.mode, min(im.size), None
    except UnidentifiedImageError:
        return digest, "", 0, "not an image (unknown format)"
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file"
        return digest, "", 0, f"corrupt or truncated image: {exc}"


def _to_8bit(im):  # noqa: ANN001, ANN202 - PIL types stay local to the workers
    """Scale 16/32-bit integer and float grayscale to 8-bit (PIL's convert would clip)."""
    from PIL import Image  # lazy: only folders of image files need PIL

    arr = np.asarray(im)
    if im.mode == "F":
        arr = np.clip(arr, 0, 255)
    else:
        arr = arr.astype(np.float64) / (257.0 if arr.max(initial=0) <= 65535 else 16843009.0)
    return Image.fromarray(np.rint(arr).astype(np.uint8), "L")


def _convert(im, channels: int):  # noqa: ANN001, ANN202
    """Convert any PIL mode to L or RGB; transparency is composited onto white."""
    from PIL import Image  # lazy: only folders of image files need PIL

    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("L" if channels == 1 else "RGB")


def decode_image(args: tuple[str, int, int]) -> tuple[np.ndarray | None, str | None]:
    """Decode one file to a uint8 (C, size, size) array, or return the reason it failed."""
    from PIL import Image, ImageOps  # lazy: only folders of image files need PIL

    path, size, channels = args
    try:
        with Image.open(path) as im:
            # Lets the JPEG decoder downscale by 1/2..1/8 while decoding (much faster).
            im.draft("L" if channels == 1 else "RGB", (size, size))
            im = ImageOps.exif_transpose(im)
            im = _convert(im, channels)
            w, h = im.size
            scale = size / min(w, h)
            new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt data surfaces as many exception types
        return None, f"corrupt or truncated image: {exc}"
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), None


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
    if not items:
        raise CnnlabError(f"no image files found in {source}")
    start = time.perf_counter()
    probes = list(parallel_map(_probe, [p for p, _, _ in items], f"reading {source.name}"))
    skipped = [(p, err) for (p, _, _), (_, _, _, err) in zip(items, probes) if err]
    good = [(item, probe) for item, probe in zip(items, probes) if not probe[3]]
    if not good:
        raise CnnlabError(f"no readable images in {source} ({len(skipped)} file(s) skipped, e.g. {skipped[0][0]}: {skipped[0][1]})")
    channels = cfg.channels or (1 if all(probe[1] in _GRAY_MODES for _, probe in good) else 3)
    size = cfg.image_size or min(DEFAULT_MAX_SIZE, int(np.median([probe[2] for _, probe in good])))
    key = hashlib.blake2b(digest_size=16)
    key.update(json.dumps([CACHE_VERSION, size, channels, classes]).encode())
    for (path, label, split), probe in good:
        key.update(f"|{os.path.relpath(path, source)}|{label}|{split}|{probe[0]}".encode())
    folder = cache_dir("images") / key.hexdigest()
    if not (folder / "meta.json").is_file():
        _write_cache(folder, [item for item, _ in good], classes, size, channels, source)
    meta = json.loads((folder / "meta.json").read_text())
    skipped += [tuple(s) for s in meta["skipped"]]
    images = np.load(folder / "images.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy")
    splits = np.load(folder / "splits.npy")
    _check_classes(labels[splits <= 0], classes, source)

    def part(index: int) -> ImageSet | None:
        idx = np.flatnonzero(splits == index)
        return ImageSet(np.ascontiguousarray(images[idx]), labels[idx], classes) if idx.size else None

    if (splits == -1).all():
        train, val, test = ImageSet(images, labels, classes), None, None
    else:
        train, val, test = part(0), part(1), part(2)
        if train is None:
            raise CnnlabError(f"{source} has no readable training images")
    elapsed = time.perf_counter() - start
    log.info("%d images from %s (%dx%d px, %d channel(s)) in %.1fs", len(labels), source, size, size, channels, elapsed)
    return RawData(train, test, val, f"{name} ({size}px)", key.hexdigest(), tuple(skipped))


def _check_classes(labels: np.ndarray, classes: tuple[str, ...], source: Path) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise CnnlabError(f"class(es) {', '.join(empty)} in {source} have no readable images; add images or remove them")


def _write_cache(folder: Path, items: list[Item], classes: tuple[str, ...], size: int, channels: int, source: Path) -> None:
    """Decode every item into a temporary folder, then rename it into place (atomic)."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(items), channels, size, size))
        keep: list[int] = []
        skipped: list[tuple[str, str]] = []
        jobs = [(path, size, channels) for path, _, _ in items]
        for i, (arr, err) in enumerate(parallel_map(decode_image, jobs, f"decoding {source.name}")):
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
        meta = {"version": CACHE_VERSION, "classes": list(classes), "size": size, "channels": channels,
                "source": str(source), "files": [items[i][0] for i in keep], "skipped": skipped}  # fmt: skip
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first: theirs is identical
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_image_folder(root: Path, cfg: DataConfig) -> RawData:
    """Load an ImageFolder-style directory through the decode cache."""
    items, classes = list_folder(root)
    return _build_or_load(items, classes, root, cfg, str(root))


def load_csv(path: Path, cfg: DataConfig) -> RawData:
    """Load the images listed in a ``path,label[,split]`` CSV through the decode cache."""
    items, classes = list_csv(path)
    missing = [(p, "file not found") for p, _, _ in items if not os.path.isfile(p)]
    present = [it for it in items if os.path.isfile(it[0])]
    raw = _build_or_load(present, classes, path.parent, cfg, str(path))
    return RawData(raw.train, raw.test, raw.val, raw.name, raw.fingerprint, tuple(missing) + raw.skipped)

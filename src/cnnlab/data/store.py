"""A prepared image store: a folder (or a built-in dataset) written once into litdata chunks.

``cnnlab data prepare SRC --out STORE`` reads every image once, keeps it at its own aspect
ratio (its longer side at most ``--max-side`` px, or native), and writes it, encoded as
JPEG, PNG or raw pixels, into the chunk files of Lightning's ``litdata``
(``BinaryWriter``: binary chunks with an offset table and an ``index.json``, so any sample
is one seek away; ``StreamingDataset`` reads them by index, from a local folder or a cloud
URL). Training then reads the images it needs batch by batch (:mod:`cnnlab.data.stream`)
instead of holding the decoded split in memory, so the data can be larger than memory.

Layout of a store::

    STORE/prepare.json        what is being written (settings, files, the plan's hash)
    STORE/parts/part-00000/   one part per 1024 planned files: litdata chunks + index.json,
                              and part.json (label, split, size, pixel sums of each image,
                              the files that could not be read)
    STORE/cnnlab-store.json   written last, atomically: the store is complete

Parts are written to a temporary folder and renamed into place, so an interrupted prepare
leaves only whole parts, and running the same command again continues after them (the
files are hashed again; a changed folder is refused instead of mixed in). Files that cannot
be read are skipped and reported as the decode cache does (:mod:`cnnlab.data.images`).

The order of the samples, their splits and their class labels are fixed at prepare time;
which samples a split holds (the stratified held-out val/test of a folder without them,
``--train-subset``), the input size and the loader (memory or stream) are chosen when the
store is loaded (:func:`load_store_splits`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.config import DataConfig
# The decode cache's rules, shared: mode conversion (16-bit, palettes, alpha), probing, parallel reading.
from cnnlab.data.decode import GRAY_MODES, _convert, probe, readable
from cnnlab.data.images import _human, available_memory, parallel_map
from cnnlab.data.imageset import ImageSet, Splits, stratified_split
from cnnlab.data.listing import list_csv, list_folder
from cnnlab.data.remote import MARKER, RemoteStore, is_remote
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.io import atomic_write_json

__all__ = [
    "MARKER", "ImageFormat", "Store", "StoreSplit", "StoreSplits", "choose_loader", "is_store", "load_store_splits",
    "open_store", "prepare_store",
]  # fmt: skip

log = logging.getLogger(__name__)

STORE_VERSION = 1
# MARKER, cnnlab-store.json (from cnnlab.data.remote), is written last: its presence says the store is complete.
PLAN = "prepare.json"
PART_SIZE = 1024  # planned files per part: the unit an interrupted prepare keeps
CHUNK_BYTES = 1 << 26  # litdata chunk size limit (64 MiB)
ImageFormat = str  # "jpeg" | "png" | "raw"
FORMATS = ("jpeg", "png", "raw")
JPEG_QUALITY = 90
#: The in-memory loader is chosen (``data.loader: auto``) when the decoded splits take at
#: most this fraction of the free memory of the device that trains (host memory on a CPU).
MEMORY_FRACTION = 0.5
#: The input size when ``data.image_size`` is not given: the stored images' median shorter
#: side, at most this (the ImageNet models' 224 px).
DEFAULT_MAX_INPUT = 224
EVAL_CROP = 224 / 256  # evaluation: resize the shorter side to size / EVAL_CROP, crop the centre (torchvision's recipe)


def is_store(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` names a store folder (complete or being prepared) or the URL of one (``s3://``)."""
    if is_remote(source):
        return True
    try:
        path = Path(source).expanduser()
        return (path / MARKER).is_file() or (path / PLAN).is_file()
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------- encoding one image (worker processes)


def _encode(args: tuple[Any, int | None, str, int]) -> tuple[bytes | None, int, int, list[float], list[float], str | None]:
    """Read one file (or take one uint8 C,H,W array) and encode it for the store.

    Returns ``(data, height, width, per-channel sums, per-channel sums of squares, error)``;
    the sums are of the stored pixels in 0..255 units, so exact channel statistics of any
    subset of the store follow without decoding it again.
    """
    from PIL import Image, ImageOps  # lazy: only preparing a store needs PIL here


    item, max_side, fmt, channels = args
    mode = "L" if channels == 1 else "RGB"
    try:
        if isinstance(item, np.ndarray):
            arr = item[0] if item.shape[0] == 1 else item.transpose(1, 2, 0)
            im = Image.fromarray(np.ascontiguousarray(arr)).convert(mode)
            original = None
        else:
            with open(item, "rb") as fh:
                original = fh.read()
            im = Image.open(io.BytesIO(original))
            keep = fmt == "jpeg" and max_side is None and im.format == "JPEG" and im.mode == mode
            if keep and im.getexif().get(0x0112, 1) not in (1, None):  # a rotated JPEG is re-encoded upright
                keep = False
            if max_side is not None and max(im.size) > max_side:
                im.draft(mode, (max(1, im.size[0] * max_side // max(im.size)), max(1, im.size[1] * max_side // max(im.size))))
            im = ImageOps.exif_transpose(im)
            im = _convert(im, channels)
            if not keep:
                original = None
        w, h = im.size
        if min(w, h) < 1:
            return None, 0, 0, [], [], f"image has no pixels ({w}x{h})"
        if max_side is not None and max(w, h) > max_side:
            scale = max_side / max(w, h)
            w, h = max(1, round(w * scale)), max(1, round(h * scale))
            im = im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0)
            original = None
        pixels = np.asarray(im, dtype=np.uint8).reshape(h, w, -1)
        if original is not None:
            data = original
        elif fmt == "raw":
            data = pixels.tobytes()
        else:
            buf = io.BytesIO()
            if fmt == "png":
                im.save(buf, "PNG", compress_level=1)
            else:
                im.save(buf, "JPEG", quality=JPEG_QUALITY)
            data = buf.getvalue()
        flat = pixels.reshape(-1, pixels.shape[2]).astype(np.float64)
        return data, h, w, flat.sum(0).tolist(), np.square(flat).sum(0).tolist(), None
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt data surfaces as many exception types
        return None, 0, 0, [], [], f"corrupt or truncated image: {readable(str(exc))}"


# --------------------------------------------------------------------------- writing a store


@dataclass(frozen=True)
class PrepareItem:
    """One image to store: a file path (or an in-memory uint8 C,H,W array), its label and split (-1: none)."""

    source: str | np.ndarray
    label: int
    split: int
    key: str  # what identifies its content in the plan's hash (the file's content hash)
    name: str  # what reports show (the file, or split/index of an array)


def plan_folder(source: Path) -> tuple[list[PrepareItem], tuple[str, ...], int, list[tuple[str, str]]]:
    """The items, classes and channels of an image folder or CSV file; files that cannot be read are returned apart."""

    repeated: list[tuple[str, str]] = []
    if source.is_dir():
        items, classes = list_folder(source)
        root = source
    elif source.is_file() and source.suffix.lower() in (".csv", ".tsv", ".txt"):
        items, classes, repeated = list_csv(source)
        root = source.parent
    else:
        raise UsageError(f"{readable(str(source))} is neither an image folder nor a CSV file; give one of them, or a built-in dataset name")
    if not items:
        raise CnnlabError(f"no image files found in {readable(str(source))}")
    probes = list(parallel_map(probe, [p for p, _, _ in items], f"reading {readable(source.name)}"))
    skipped = [(readable(p), err) for (p, _, _), (_, _, _, err) in zip(items, probes) if err] + repeated
    good = [(it, pr) for it, pr in zip(items, probes) if not pr[3]]
    if not good:
        raise CnnlabError(f"no readable images in {readable(str(source))} ({len(skipped)} file(s) skipped)")
    channels = 1 if all(pr[1] in GRAY_MODES for _, pr in good) else 3
    plan = [PrepareItem(p, label, split, f"{os.path.relpath(p, root)}|{pr[0]}", readable(p))
            for (p, label, split), pr in good]  # fmt: skip
    return plan, classes, channels, skipped


def plan_arrays(splits: Sequence[tuple[int, ImageSet]]) -> tuple[list[PrepareItem], tuple[str, ...], int]:
    """The items of in-memory image sets (a built-in dataset): ``(split index or -1, images)`` each."""
    items: list[PrepareItem] = []
    for split, part in splits:
        for i in range(len(part)):
            items.append(PrepareItem(np.asarray(part.images[i]), int(part.labels[i]), split, "", f"{split}/{i}"))
    return items, splits[0][1].classes, splits[0][1].image_shape[0]


def _plan_hash(items: Sequence[PrepareItem], classes: Sequence[str], settings: dict[str, Any], fingerprint: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([STORE_VERSION, list(classes), settings, fingerprint], sort_keys=True).encode())
    for it in items:
        digest.update(f"|{it.key}|{it.label}|{it.split}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def prepare_store(
    items: Sequence[PrepareItem], classes: Sequence[str], channels: int, out: str | os.PathLike[str], *,
    max_side: int | None = 256, fmt: ImageFormat = "jpeg", source: str = "", fingerprint: str = "",
    skipped: Sequence[tuple[str, str]] = (), part_size: int = PART_SIZE,
) -> dict[str, Any]:  # fmt: skip
    """Write ``items`` into the store ``out`` (continuing an interrupted prepare of the same items).

    Args:
        items: the images in store order (see :func:`plan_folder`, :func:`plan_arrays`).
        classes: the class names, indexed by label.
        channels: 1 (grayscale) or 3 (RGB) stored channels.
        out: the store folder: new, empty, or an unfinished prepare of the same items.
        max_side: the longer side of a stored image, at most (None: native size).
        fmt: how the pixels are stored: ``jpeg`` (quality 90; native-size JPEG files are
            copied as they are), ``png`` (lossless) or ``raw`` (uncompressed uint8).
        source: what the store was made from (shown by ``cnnlab data info``).
        fingerprint: the source's own fingerprint (arrays have no file hashes).
        skipped: files already known to be unusable (reported with the ones found here).
        part_size: planned files per part.

    Returns:
        The store's description (the contents of ``cnnlab-store.json``).

    Raises:
        UsageError: ``out`` holds something else (a file, another folder, another prepare).
        CnnlabError: no readable image, or a class left without readable images.
    """

    if fmt not in FORMATS:
        raise UsageError(f"unknown store format '{fmt}'; choose one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    settings = _settings(channels, max_side, fmt, part_size)
    plan_hash = _plan_hash(items, classes, settings, fingerprint)
    _claim(out, plan_hash)
    if (out / MARKER).is_file():
        return json.loads((out / MARKER).read_text(encoding="utf-8"))
    parts = out / "parts"
    parts.mkdir(exist_ok=True)
    for stale in parts.glob(".tmp-*"):  # a part an interrupted prepare was writing
        shutil.rmtree(stale, ignore_errors=True)
    n_parts = -(-len(items) // part_size)
    todo = [k for k in range(n_parts) if not (parts / f"part-{k:05d}" / "part.json").is_file()]
    if len(todo) < n_parts:
        log.info("continuing the prepare of %s: %d of %d part(s) already written", out, n_parts - len(todo), n_parts)
    jobs = [(items[i].source, max_side, fmt, channels) for k in todo for i in range(k * part_size, min((k + 1) * part_size, len(items)))]
    results = iter(parallel_map(_encode, jobs, f"preparing {readable(out.name)}"))
    try:
        for k in todo:
            _write_part(parts, k, items[k * part_size : (k + 1) * part_size], results)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
    return _finish(out, classes, channels, settings, plan_hash, source, skipped)


def _settings(channels: int, max_side: int | None, fmt: ImageFormat, part_size: int) -> dict[str, Any]:
    return {"max_side": max_side, "format": fmt, "channels": channels, "part_size": part_size}


def prepare_remote(url: str, items: Sequence[PrepareItem], classes: Sequence[str], channels: int, *,
                   max_side: int | None = 256, fmt: ImageFormat = "jpeg", fingerprint: str = "",
                   part_size: int = PART_SIZE, **kwargs: Any) -> tuple[dict[str, Any], int]:  # fmt: skip
    """:func:`prepare_store` for a URL: written in the URL's cache folder, then uploaded; ``(cnnlab-store.json, bytes sent)``.

    The cache folder then holds the whole store, so training on this machine fetches nothing.
    An interrupted prepare or upload continues when the same command is run again.

    Raises:
        CnnlabError: the URL already holds a store of other images or settings.
    """
    remote = RemoteStore(url)
    plan = _plan_hash(items, classes, _settings(channels, max_side, fmt, part_size), fingerprint)
    theirs = remote.remote_marker()
    if theirs is not None and theirs.get("fingerprint") != plan:
        raise CnnlabError(f"{url} already holds another store; delete it first or choose another URL")
    folder = remote.local
    if _plan_of(folder) != plan and any(folder.iterdir()):  # only a cache (of another store, or another prepare): start afresh
        shutil.rmtree(folder)
    meta = prepare_store(items, classes, channels, folder, max_side=max_side, fmt=fmt, fingerprint=fingerprint,
                         part_size=part_size, **kwargs)  # fmt: skip
    return meta, remote.upload(folder)


def _plan_of(folder: Path) -> str | None:
    """The plan hash of the prepare that owns ``folder`` (None: none, or unreadable)."""
    try:
        return json.loads((folder / PLAN).read_text(encoding="utf-8")).get("plan")
    except (OSError, ValueError, AttributeError):
        return None


def _claim(out: Path, plan_hash: str) -> None:
    """Make ``out`` this prepare's folder, or check that it already is."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {readable(str(out))} is a file; give a new folder for the store")
    plan_file = out / PLAN
    if plan_file.is_file():
        if _plan_of(out) != plan_hash:
            raise UsageError(f"{readable(str(out))} holds a store of other images or settings; "
                             "give a new --out (or remove that folder)")  # fmt: skip
        return
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out {readable(str(out))} is not empty; give a new folder for the store")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_file, {"version": STORE_VERSION, "plan": plan_hash})


def _write_part(parts: Path, k: int, items: Sequence[PrepareItem], results: Any) -> None:
    from litdata.streaming.writer import BinaryWriter  # lazy: the optional `stream` extra

    tmp = parts / f".tmp-part-{k:05d}"
    shutil.rmtree(tmp, ignore_errors=True)
    meta: dict[str, list[Any]] = {"labels": [], "splits": [], "heights": [], "widths": [], "sums": [], "sumsq": [],
                                  "names": [], "skipped": []}  # fmt: skip
    writer = BinaryWriter(cache_dir=str(tmp), chunk_bytes=CHUNK_BYTES)
    for item in items:
        data, h, w, sums, sumsq, err = next(results)
        if data is None:
            meta["skipped"].append([item.name, err])
            continue
        writer.add_item(len(meta["labels"]), {"image": data})
        for key, value in (("labels", item.label), ("splits", item.split), ("heights", h), ("widths", w),
                           ("sums", sums), ("sumsq", sumsq), ("names", item.name)):  # fmt: skip
            meta[key].append(value)
    if meta["labels"]:
        writer.done()
        writer.merge()
    (tmp / "part.json").write_text(json.dumps(meta), encoding="utf-8")
    os.replace(tmp, parts / f"part-{k:05d}")


def _finish(out: Path, classes: Sequence[str], channels: int, settings: dict[str, Any], plan_hash: str, source: str,
            skipped: Sequence[tuple[str, str]]) -> dict[str, Any]:  # fmt: skip
    store = Store(out, {"classes": list(classes), "channels": channels, "parts": None})
    if len(store) == 0:
        raise CnnlabError(f"no readable images for the store {readable(str(out))} ({len(store.skipped) + len(skipped)} file(s) skipped)")
    counts = np.bincount(store.labels[store.splits <= 0], minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise CnnlabError(f"class(es) {', '.join(empty)} have no readable training images; add images or remove them")
    split_counts = {name: int((store.splits == s).sum()) for s, name in ((-1, "all"), (0, "train"), (1, "val"), (2, "test"))}
    meta = {
        "version": STORE_VERSION, "engine": "litdata", "classes": list(classes), "channels": channels, **settings,
        "count": len(store), "splits": split_counts, "parts": len(store.parts), "source": source,
        "fingerprint": plan_hash, "median_side": int(np.median(np.minimum(store.heights, store.widths))),
        "bytes": sum(f.stat().st_size for f in (out / "parts").rglob("*.bin")),
        "skipped": [list(s) for s in skipped] + [list(s) for s in store.skipped],
    }  # fmt: skip
    atomic_write_json(out / MARKER, meta)
    return meta


# --------------------------------------------------------------------------- reading a store


class Store:
    """A complete store: per-sample labels, splits, sizes and pixel sums; random access to the stored bytes."""

    def __init__(self, path: Path, meta: dict[str, Any], remote: RemoteStore | None = None) -> None:
        self.path, self.meta, self.remote = path, meta, remote
        self.classes = tuple(meta["classes"])
        self.channels = int(meta["channels"])
        self.parts = sorted(p for p in (path / "parts").iterdir() if p.name.startswith("part-"))
        if meta.get("parts") is not None and len(self.parts) != meta["parts"]:
            raise CnnlabError(f"the store {readable(str(path))} has {len(self.parts)} of its {meta['parts']} parts; prepare it again")
        cols: dict[str, list[Any]] = {k: [] for k in ("labels", "splits", "heights", "widths", "sums", "sumsq", "names")}
        self.skipped: list[tuple[str, str]] = []
        counts = []
        for part in self.parts:
            try:
                pm = json.loads((part / "part.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CnnlabError(f"the store {readable(str(path))} is damaged ({part.name}: {exc}); prepare it again") from None
            for k in cols:
                cols[k] += pm[k]
            counts.append(len(pm["labels"]))
            self.skipped += [(str(a), str(b)) for a, b in pm["skipped"]]
        self.labels = np.asarray(cols["labels"], dtype=np.int64)
        self.splits = np.asarray(cols["splits"], dtype=np.int8)
        self.heights = np.asarray(cols["heights"], dtype=np.int64)
        self.widths = np.asarray(cols["widths"], dtype=np.int64)
        c = self.channels
        self.sums = np.asarray(cols["sums"], dtype=np.float64).reshape(-1, c)
        self.sumsq = np.asarray(cols["sumsq"], dtype=np.float64).reshape(-1, c)
        self.names = cols["names"]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._readers: list[Any] = [None] * len(self.parts)
        self._direct: list[_PartBytes | bool | None] = [None] * len(self.parts)  # False: read through litdata
        self._lock = threading.Lock()
        if remote is not None:
            remote.on_evict = self._forget

    def _forget(self, k: int) -> None:
        """Part ``k``'s chunks left the cache: open them again when they are back."""
        self._direct[k] = None
        self._readers[k] = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def format(self) -> str:
        return str(self.meta.get("format", "jpeg"))

    def _part_reader(self, k: int) -> Any:
        reader = self._readers[k]
        if reader is None:
            from litdata import StreamingDataset  # lazy: the optional `stream` extra

            with self._lock:
                reader = self._readers[k]
                if reader is None:
                    reader = self._readers[k] = StreamingDataset(str(self.parts[k]))
        return reader

    def read(self, i: int) -> bytes:
        """The stored bytes of sample ``i`` (an index into the whole store)."""
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        j = int(i - self.offsets[k])
        if self.remote is None:
            return self._read(k, j)
        self.remote.ensure(k)
        try:
            return self._read(k, j)
        except FileNotFoundError:  # another process sharing the cache evicted the part: fetch it again
            self._forget(k)
            self.remote.ensure(k, verify=True)
            return self._read(k, j)

    def _read(self, k: int, j: int) -> bytes:
        direct = self._direct[k]
        if direct is None:
            with self._lock:
                direct = self._direct[k]
                if direct is None:
                    opened = _PartBytes.open(self.parts[k])
                    if opened is None and self.remote is not None and not _chunks_present(self.parts[k]):
                        raise FileNotFoundError(f"chunks of {self.parts[k].name}")  # evicted meanwhile: read() fetches them
                    direct = self._direct[k] = opened or False
        if direct is False:
            return self._part_reader(k)[j]["image"]
        return direct[j]  # type: ignore[index]

    def stats(self, index: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (mean, std) in [0, 1] units of the stored pixels of the samples ``index``."""
        pixels = float((self.heights[index] * self.widths[index]).sum())
        mean = self.sums[index].sum(0) / pixels / 255.0
        var = np.maximum(self.sumsq[index].sum(0) / pixels / 255.0**2 - mean**2, 0.0)
        std = np.sqrt(var)
        return tuple(float(m) for m in mean), tuple(float(s) if s > 0 else 1.0 for s in std)

    def decode(self, i: int, box: tuple[float, float, float, float], flip: bool, size: int, channels: int) -> np.ndarray:
        """Sample ``i``'s ``box`` (left, top, right, bottom in stored pixels) resized to ``size`` x ``size``, uint8 (C, H, W)."""
        from PIL import Image  # lazy: PIL is only needed once images are decoded

        data = self.read(i)
        mode = "L" if channels == 1 else "RGB"
        h, w = int(self.heights[i]), int(self.widths[i])
        if self.format == "raw":
            arr = np.frombuffer(data, dtype=np.uint8).reshape(h, w, self.channels)
            im = Image.fromarray(arr[:, :, 0] if self.channels == 1 else arr)
        else:
            im = Image.open(io.BytesIO(data))
            draft_reduced(im, size / max(1.0, min(box[2] - box[0], box[3] - box[1])))
        if im.mode != mode:
            im = im.convert(mode)
        return resize_over_box(im, box, (w, h), size, flip)

    def decode_crop(self, i: int, box: tuple[int, int, int, int], flip: bool, out: Any) -> None:
        """Sample ``i``'s integer ``box`` cropped, resized to ``out``'s size, flipped if asked, written into ``out``.

        The training path (torchvision's ``RandomResizedCrop`` order: crop, then bilinear
        resize with antialiasing, then flip). ``out`` is a uint8 (C, size, size) tensor; C is
        1 or 3 (converted from the stored channels when they differ).

        Why not :meth:`decode` (measured on 2 cores, 256-px JPEGs, per image, one thread):
        Pillow decodes in 0.45 ms and resizes over a box in 0.45-0.8 ms; simplejpeg (the
        same libjpeg-turbo, releasing the GIL) decodes in 0.16-0.3 ms and torch's uint8
        antialiased bilinear resize (torchvision's own tensor path; identical to Pillow's
        crop-then-resize on smooth images) takes 0.25 ms. A JPEG whose crop is at least
        twice the output is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling).
        """
        import torch  # lazy: the store is also opened where torch is not needed yet

        channels, size = int(out.shape[0]), int(out.shape[-1])
        left, top, right, bottom = box
        arr = None
        if self.format == "jpeg":
            arr, scale = _decode_jpeg(self.read(i), channels, size / max(1, min(right - left, bottom - top)),
                                      int(self.heights[i]), int(self.widths[i]))  # fmt: skip
            if arr is not None and scale != 1.0:  # the box falls between the reduced pixels: Pillow resizes over it
                from PIL import Image

                sx, sy = arr.shape[1] / int(self.widths[i]), arr.shape[0] / int(self.heights[i])
                im = Image.fromarray(arr[:, :, 0] if channels == 1 else arr)
                im = im.resize((size, size), Image.Resampling.BILINEAR, box=(left * sx, top * sy, right * sx, bottom * sy))
                arr = np.array(im, dtype=np.uint8).reshape(size, size, channels)
                left, top, right, bottom = 0, 0, size, size
        if arr is None:
            arr = self._pixels(i, channels)
        crop = torch.from_numpy(arr[top:bottom, left:right]).permute(2, 0, 1).unsqueeze(0)
        if crop.shape[-2:] != (size, size):
            crop = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.copy_(crop[0].flip(-1) if flip else crop[0])

    def _pixels(self, i: int, channels: int) -> np.ndarray:
        """Sample ``i`` decoded whole by Pillow (PNG, raw, or JPEG without simplejpeg), uint8 (H, W, channels)."""
        data = self.read(i)
        if self.format == "raw":
            h, w = int(self.heights[i]), int(self.widths[i])
            arr = np.frombuffer(data, dtype=np.uint8).reshape(h, w, self.channels)
            if channels == self.channels:
                return arr.copy()  # writable: torch refuses to wrap read-only memory silently
            from PIL import Image

            im = Image.fromarray(arr[:, :, 0] if self.channels == 1 else arr)
        else:
            from PIL import Image

            im = Image.open(io.BytesIO(data))
        mode = "L" if channels == 1 else "RGB"
        arr = np.array(im if im.mode == mode else im.convert(mode), dtype=np.uint8)
        return arr[:, :, None] if arr.ndim == 2 else arr


def draft_reduced(im: Any, need: float) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale when ``need`` (output px per image px) leaves it at least the output size."""
    if need < 0.5 and getattr(im, "format", None) == "JPEG":
        im.draft(im.mode, (max(1, int(im.size[0] * need + 1)), max(1, int(im.size[1] * need + 1))))


def resize_over_box(im: Any, box: tuple[float, float, float, float], full: tuple[int, int], size: int,
                    flip: bool = False) -> np.ndarray:  # fmt: skip
    """The evaluation's pixels: ``box`` (in the image's ``full`` (w, h) pixels) of the Pillow image ``im`` resized
    bilinearly to ``size`` x ``size`` (flipped if asked), uint8 (C, H, W).

    ``im`` may be a reduced-scale decode (:func:`draft_reduced`): the box is scaled per axis,
    as each side rounds on its own. :meth:`Store.decode` and ``cnnlab predict`` share this,
    so a file predicted on gets the pixels a streamed evaluation saw.
    """
    from PIL import Image

    sx, sy = im.size[0] / full[0], im.size[1] / full[1]
    if (sx, sy) != (1.0, 1.0):
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    im = im.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode_jpeg(data: bytes, channels: int, need: float, h: int, w: int) -> tuple[np.ndarray | None, float]:
    """JPEG ``data`` decoded by simplejpeg (at a reduced scale when ``need`` < 0.5), uint8 (H, W, channels), and its scale.

    ``(None, 1.0)`` when simplejpeg is not installed or refuses the data (Pillow decodes it then).
    """
    try:
        import simplejpeg  # the `stream` extra
    except ImportError:
        return None, 1.0
    kw = {"min_width": int(math.ceil(w * need)), "min_height": int(math.ceil(h * need)), "min_factor": 2} if need < 0.5 else {}
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB", **kw)
    except ValueError:
        return None, 1.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr, (1.0 if arr.shape[1] == w else arr.shape[1] / w)


class _PartBytes:
    """Random access to the image bytes of one store part, read straight from its chunk files.

    litdata (0.2.7x) writes a dict of bytes as an Arrow IPC footer at the end of each chunk,
    and its ``StreamingDataset[i]`` turns a whole 256-row record batch into Python objects
    for each random index: 0.34-0.44 ms per image, holding the GIL, the largest cost of a
    streamed batch (measured on 2 cores). Here each footer is parsed once (pyarrow) into the
    file offsets of every image, and an image is one ``os.pread``: 5-16 microseconds, with
    the GIL released and no mapped pages left resident. Chunks this does not recognise
    (another layout, compression, encryption) leave the part to litdata.
    """

    MAGIC = b"LDARW01\0"  # litdata's trailer: ..., IPC bytes, uint32 length, magic

    def __init__(self, files: list[str], chunk: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
        self.files, self.chunk, self.starts, self.ends = files, chunk, starts, ends

    @classmethod
    def open(cls, part: Path) -> _PartBytes | None:
        """The offsets of ``part``'s images, or None when its chunks are not plain Arrow footers."""
        files: list[str] = []
        chunk: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        ends: list[np.ndarray] = []
        try:
            index = json.loads((part / "index.json").read_text(encoding="utf-8"))
            if any(index["config"].get(k) for k in ("compression", "encryption", "ipc_compression")):
                return None
            for chunk_info in index["chunks"]:
                path = str(part / chunk_info["filename"])
                s, e = _footer_offsets(path)
                if len(s) != chunk_info["chunk_size"]:
                    return None
                chunk.append(np.full(len(s), len(files), dtype=np.int32))
                starts.append(s)
                ends.append(e)
                files.append(path)
        except (ImportError, OSError, ValueError, KeyError, TypeError):
            return None
        if not files:
            return None
        return cls(files, np.concatenate(chunk), np.concatenate(starts), np.concatenate(ends))

    def __getitem__(self, j: int) -> bytes:
        start, end = int(self.starts[j]), int(self.ends[j])
        fd = os.open(self.files[self.chunk[j]], os.O_RDONLY)  # opened per read: a large store has thousands of chunks
        try:
            data = os.pread(fd, end - start, start)
        finally:
            os.close(fd)
        if len(data) != end - start:
            raise CnnlabError(f"the store chunk {readable(self.files[self.chunk[j]])} is truncated; prepare the store again")
        return data


def _footer_offsets(path: str) -> tuple[np.ndarray, np.ndarray]:
    """File offsets (start, end) of each image in the litdata chunk ``path``; ValueError when its footer is not plain Arrow."""
    import mmap
    import struct

    import pyarrow as pa  # litdata's own dependency

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        size = len(mapped)
        if size < 12 or mapped[-8:] != _PartBytes.MAGIC:
            raise ValueError("no Arrow footer")
        (ipc_len,) = struct.unpack_from("<I", mapped, size - 12)
        ipc_start = size - 12 - ipc_len
        if ipc_start < 0:
            raise ValueError("bad Arrow footer")
        whole = pa.py_buffer(mapped)
        base = whole.address
        ipc = whole.slice(ipc_start, ipc_len)
        reader = pa.ipc.open_file(ipc) if mapped[ipc_start : ipc_start + 6] == b"ARROW1" else pa.ipc.open_stream(ipc)
        table = reader.read_all()
        starts, ends = [], []
        for arr in table.column("image").chunks:
            width = {pa.binary(): np.int32, pa.large_binary(): np.int64}.get(arr.type)
            if width is None or arr.null_count:
                raise ValueError(f"image column of type {arr.type}")
            _, offsets, data = arr.buffers()
            offs = np.frombuffer(offsets, dtype=width)[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
            at = (data.address - base) if data is not None else 0
            if not 0 <= at + (offs[0] if len(offs) else 0) <= at + (offs[-1] if len(offs) else 0) <= size:
                raise ValueError("the image bytes are not read in place")  # pyarrow copied them: no file offsets
            starts.append(at + offs[:-1])
            ends.append(at + offs[1:])
        del table, reader, ipc, whole, arr, offsets, data  # release the mapping's buffers before it closes
    return (np.concatenate(starts), np.concatenate(ends)) if starts else (np.zeros(0, np.int64), np.zeros(0, np.int64))


def _chunks_present(part: Path) -> bool:
    """Whether every chunk file ``part``'s index lists is on disk."""
    try:
        index = json.loads((part / "index.json").read_text(encoding="utf-8"))
        return all((part / c["filename"]).is_file() for c in index["chunks"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


@functools.lru_cache(maxsize=8)
def _open_cached(path: str, mtime: float, remote: RemoteStore | None = None) -> Store:
    meta = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    where = remote.url if remote is not None else path
    if meta.get("version") != STORE_VERSION:
        raise CnnlabError(f"the store {readable(where)} has version {meta.get('version')}, this cnnlab reads {STORE_VERSION}; prepare it again")
    return Store(Path(path), meta, remote)


_REMOTES: dict[str, RemoteStore] = {}  # one cache (and one S3 client) per URL per process


def open_store(source: str | os.PathLike[str]) -> Store:
    """The complete store at ``source``: a folder, or a URL (``s3://``) read through the cache (:mod:`cnnlab.data.remote`).

    Raises:
        CnnlabError: an unfinished prepare, or a damaged store (with the command that fixes it).
    """
    if is_remote(source):
        url = os.fspath(source).rstrip("/")
        remote = _REMOTES.get(url) or _REMOTES.setdefault(url, RemoteStore(url))
        local, _ = remote.sync()
        try:
            return _open_cached(str(local), (local / MARKER).stat().st_mtime, remote)
        except (OSError, ValueError, KeyError) as exc:
            raise CnnlabError(f"the store {url} is damaged ({exc}); prepare it again") from None
    path = Path(source).expanduser().resolve()
    marker = path / MARKER
    if not marker.is_file():
        raise CnnlabError(f"the store {readable(str(source))} is not finished; run the same `cnnlab data prepare ... --out "
                          f"{readable(str(source))}` again to complete it")  # fmt: skip
    try:
        return _open_cached(str(path), marker.stat().st_mtime)
    except (OSError, ValueError, KeyError) as exc:
        raise CnnlabError(f"the store {readable(str(source))} is damaged ({exc}); prepare it again") from None


# --------------------------------------------------------------------------- splits of a store


@dataclass(frozen=True, eq=False)
class StoreSplit:
    """One split of a store, read batch by batch (the streaming counterpart of :class:`ImageSet`).

    Attributes:
        store: the store the images are read from.
        index: indices of this split's samples in the store.
        labels: their class indices.
        classes: class names, indexed by label.
        size: the side of the square inputs the images are cropped and resized to.
        channels: 1 or 3 (converted while decoding when the store holds the other).
        decode: where the training crops are decoded, ``cpu`` (the decoding threads) or
            ``device`` (``torchvision.io.decode_jpeg`` on the training device; JPEG stores).
    """

    store: Store
    index: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    size: int
    channels: int
    decode: str = "cpu"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    @property
    def images(self) -> np.ndarray:
        raise CnnlabError("this step needs the images in memory, but the data is streamed from a store; "
                          "use --loader memory (data.loader: memory) if it fits")  # fmt: skip

    def subset(self, indices: np.ndarray) -> StoreSplit:
        indices = np.sort(np.asarray(indices, dtype=np.int64))
        return dataclasses.replace(self, index=self.index[indices], labels=self.labels[indices])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))


@dataclass(frozen=True)
class StoreSplits(Splits):
    """Splits streamed from a store: the training statistics come from the store's pixel sums."""

    store_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @functools.cached_property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:  # type: ignore[override]
        c = self.image_shape[0]
        if self.normalize == "unit":
            return (0.0,) * c, (1.0,) * c
        if self.normalize == "raw":
            return (0.0,) * c, (1.0 / 255.0,) * c
        assert self.store_stats is not None
        return self.store_stats


def _partition(store: Store, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Store indices of train / val / test, with the held-out splits of :func:`cnnlab.data.sources.make_splits`."""
    if (store.splits == -1).all():
        train, val, test = np.arange(len(store)), None, None
    else:
        train = np.flatnonzero(store.splits == 0)
        val = np.flatnonzero(store.splits == 1) if (store.splits == 1).any() else None
        test = np.flatnonzero(store.splits == 2) if (store.splits == 2).any() else None
    n_train = len(train)
    empty = np.zeros(0, np.int64)
    if test is None:
        if cfg.test_split > 0:
            keep, held = stratified_split(store.labels[train], cfg.test_split, cfg.split_seed + 1)
            train, test = train[keep], train[held]
        else:
            test = empty
    if val is None:
        if cfg.val_split > 0:
            frac = min(cfg.val_split * n_train / max(len(train), 1), 0.99)
            keep, held = stratified_split(store.labels[train], frac, cfg.split_seed)
            train, val = train[keep], train[held]
        else:
            val = empty
    return {"train": train, "val": val, "test": test}


def input_size(store: Store, cfg: DataConfig) -> int:
    """The side of the square inputs: ``data.image_size``, else the median shorter side, at most 224."""
    return int(cfg.image_size or min(DEFAULT_MAX_INPUT, int(store.meta.get("median_side", DEFAULT_MAX_INPUT))))


def free_device_memory() -> tuple[int | None, str]:
    """Free bytes of the device that trains (a CUDA device when there is one, else host memory) and its name."""
    import torch


    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free), f"GPU {torch.cuda.get_device_name()}"
    return available_memory(), "host memory"


def choose_loader(store: Store, cfg: DataConfig) -> tuple[str, str]:
    """``(memory | stream, why)`` for ``cfg.loader`` on this store."""

    size = input_size(store, cfg)
    channels = cfg.channels or store.channels
    need = len(store) * channels * size * size
    what = f"{len(store):,} images decoded at {channels}x{size}x{size} take {_human(need)}"
    if cfg.loader == "memory":
        return "memory", f"data.loader is memory ({what})"
    if cfg.loader == "stream":
        return "stream", f"data.loader is stream ({what})"
    free, device = free_device_memory()
    if free is None:
        return "stream", f"{what}; the free memory is unknown, so the images are streamed"
    limit = MEMORY_FRACTION * free
    if need <= limit:
        return "memory", f"{what}, within {MEMORY_FRACTION:.0%} of the {_human(free)} free ({device})"
    return "stream", f"{what}, more than {MEMORY_FRACTION:.0%} of the {_human(free)} free ({device})"


def check_decode(store: Store, decode: str) -> None:
    """Refuse a ``data.decode`` this store cannot have: not cpu or device, or device for a store that is not JPEG."""
    if decode not in ("cpu", "device"):
        raise UsageError(f"data.decode (--decode) must be cpu or device, got {decode!r}")
    if decode == "device" and store.format != "jpeg":
        where = store.remote.url if store.remote is not None else readable(str(store.path))
        raise UsageError(f"--decode device (data.decode) decodes JPEG stores on the device, and {where} "
                         f"holds {store.format} images; use --decode cpu, or prepare the store with --format jpeg")  # fmt: skip


def _load_in_memory(store: Store, parts: dict[str, np.ndarray], size: int, channels: int) -> dict[str, ImageSet]:
    """Decode every image once (shorter side to ``size``, centre square), as the decode cache does for folders."""

    def square(i: int) -> np.ndarray:
        h, w = int(store.heights[i]), int(store.widths[i])
        s = min(h, w)
        left, top = (w - s) / 2, (h - s) / 2
        return store.decode(i, (left, top, left + s, top + s), False, size, channels)

    out = {}
    with ThreadPoolExecutor(min(os.cpu_count() or 1, 8)) as pool:
        for name, idx in parts.items():
            images = np.zeros((len(idx), channels, size, size), np.uint8)
            for j, arr in enumerate(pool.map(square, idx.tolist())):
                images[j] = arr
            out[name] = ImageSet(images, store.labels[idx], store.classes)
    return out


def load_store_splits(cfg: DataConfig) -> Splits:
    """The train / val / test splits of the store ``cfg.source``: in memory or streamed (``data.loader``).

    The held-out splits are those an image folder of the same files gets (same fractions,
    same seeds). In memory, the images are decoded once as the decode cache decodes a
    folder; streamed, each batch is decoded from the stored images (:mod:`cnnlab.data.stream`).
    """
    store = open_store(cfg.source)
    size = input_size(store, cfg)
    channels = cfg.channels or store.channels
    parts = _partition(store, cfg)
    if len(parts["train"]) == 0:
        raise CnnlabError(f"the store {readable(cfg.source)} has no training images")
    mode, why = choose_loader(store, cfg)
    check_decode(store, cfg.decode)
    if int(os.environ.get("RANK", "0") or 0) == 0:  # one line per run, not per torchrun rank
        log.info("store %s, %s loader: %s", readable(cfg.source), mode, why)
        if mode == "memory" and cfg.decode == "device":
            log.info("data.decode is device, but the images are decoded once into memory: nothing is decoded per batch")
    key = json.dumps([store.meta["fingerprint"], mode, size, channels, cfg.val_split, cfg.test_split, cfg.split_seed])
    fingerprint = hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
    name = f"{readable(Path(cfg.source).name)} (store, {size}px, {mode})"
    skipped = tuple((str(a), str(b)) for a, b in store.meta.get("skipped", []))
    if mode == "memory":
        sets = _load_in_memory(store, parts, size, channels)
        return Splits(sets["train"], sets["val"], sets["test"], name, fingerprint, skipped)
    split_sets = {k: StoreSplit(store, idx, store.labels[idx], store.classes, size, channels, cfg.decode)
                  for k, idx in parts.items()}  # fmt: skip
    stats = store.stats(parts["train"])
    if channels != store.channels:  # luma of the RGB statistics is not exact; the grey mean is
        stats = ((float(np.mean(stats[0])),) * channels, (float(np.mean(stats[1])),) * channels)
    return StoreSplits(split_sets["train"], split_sets["val"], split_sets["test"], name, fingerprint, skipped,  # type: ignore[arg-type]
                       store_stats=stats)  # fmt: skip


def describe(store: Store) -> str:
    """One line about a store: images, classes, format, size on disk (and, for a URL, its cache)."""
    m = store.meta
    side = "native size" if m.get("max_side") is None else f"longer side <= {m['max_side']} px"
    line = (f"store of {len(store):,} images, {len(store.classes)} classes, {m.get('format')} ({side}), "
            f"{_human(m.get('bytes', 0))} in {m.get('parts')} part(s), made from {m.get('source') or '?'}")  # fmt: skip
    remote = store.remote
    if remote is not None:
        limit = "the whole store" if remote.limit is None else f"at most {_human(remote.limit)} of chunks per process"
        line += f"; read from {remote.url} through the cache {store.path} ({limit})"
    return line



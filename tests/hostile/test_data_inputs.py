"""Hostile data: image folders, CSV files, caches and dataset files a user brings.

Every file here is one cnnlab did not write, so each may be damaged, odd, or made to
mislead. Each test runs the CLI (``data info`` reads a source exactly as ``train`` does)
and asserts the exit code, a one-line message without a traceback, and that the user's
files did not change.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.errors import CnnlabError
from hostile_cli import assert_unchanged, run_cli, snapshot  # tests/hostile/hostile_cli.py (this folder is on sys.path)

non_utf8_names = pytest.mark.skipif(
    sys.platform in ("darwin", "win32"), reason="this file system stores only valid Unicode names"
)


def _png(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _two_class_folder(root: Path, n: int = 2) -> Path:
    for i in range(n):
        _png(root / "red" / f"{i}.png", (200, 10 * i, 0))
        _png(root / "blue" / f"{i}.png", (0, 10 * i, 200))
    return root


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    # `data info` prints with rich, which wraps at the terminal width; one line per fact here.
    monkeypatch.setenv("COLUMNS", "300")


def _counts(out: str) -> dict[str, str]:
    """``data info``'s table as {"<index>: <class>" or "total": training images}."""
    rows = [line.split("│") for line in out.splitlines() if line.count("│") >= 4]
    return {r[1].strip(): r[2].strip() for r in rows}


def _info(*argv: object):
    return run_cli("data", "info", *map(str, argv), "--val-split", "0", "--test-split", "0")


# --------------------------------------------------------------------------- names that are not UTF-8


@non_utf8_names
def test_non_utf8_class_and_file_names_are_kept_and_shown_readably(tmp_path: Path) -> None:
    root = _two_class_folder(tmp_path / "ds")
    bad_class = os.fsencode(root) + b"/caf\xe9"
    os.makedirs(bad_class)
    Image.new("RGB", (16, 16), (0, 200, 0)).save(os.fsdecode(bad_class + b"/pic\xff.png"))
    Image.new("RGB", (16, 16), (0, 9, 9)).save(os.fsdecode(os.fsencode(root) + b"/red/odd\xfe.png"))
    with open(os.fsdecode(bad_class + b"/notes\xfd.png"), "wb") as fh:
        fh.write(b"not an image")
    before = snapshot(root)
    res = _info(root)
    assert res.code == 0, res.text
    assert "Traceback" not in res.text
    assert "caf\\xe9" in res.out  # the class, readable
    assert "notes\\xfd.png" in res.err  # the skipped file, named readably
    table = _counts(res.out)
    assert table["2: red"] == "3" and table["1: caf\\xe9"] == "1"  # both odd images kept
    assert_unchanged(before, root)


# --------------------------------------------------------------------------- pixel formats


def _decode(path: Path, channels: int = 1) -> np.ndarray:
    from cnnlab.data.decode import decode_image

    arr, err = decode_image((str(path), 8, channels))
    assert err is None, err
    return arr


@pytest.mark.parametrize(
    ("name", "values", "mode", "expected_mean"),
    [
        ("float 0..1", np.linspace(0, 1, 256, dtype=np.float32), "F", 127.5),  # scaled by 255, not clipped to 0/1
        ("float 0..255", np.linspace(0, 255, 256, dtype=np.float32), "F", 127.5),  # taken as is
        ("float -1000..1000", np.linspace(-1000, 1000, 256, dtype=np.float32), "F", 127.5),  # stretched
        ("16-bit", np.linspace(0, 65535, 256).astype(np.uint16), "I;16", 127.5),  # scaled by 255/65535
        ("32-bit 0..1e6", np.linspace(0, 1e6, 256).astype(np.int32), "I", 127.5),  # stretched, not black
        ("32-bit 0..255", np.arange(256, dtype=np.int32), "I", 127.5),  # 8-bit values in a wide container
    ],
)
def test_wide_grayscale_is_scaled_by_its_range(tmp_path: Path, name: str, values: np.ndarray, mode: str,
                                               expected_mean: float) -> None:  # fmt: skip
    path = tmp_path / "x.tiff"
    Image.fromarray(values.reshape(16, 16), mode if mode != "I;16" else None).save(path)
    arr = _decode(path)
    assert abs(float(arr.mean()) - expected_mean) < 4, (name, arr.mean())
    assert arr.min() < 20 and arr.max() > 235, name  # the full range, not a sliver of it


def test_float_tiff_with_nan_decodes_without_warning(tmp_path: Path) -> None:
    values = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    values[0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    Image.fromarray(values, "F").save(tmp_path / "nan.tiff")
    with np.errstate(all="raise"):
        arr = _decode(tmp_path / "nan.tiff")
    assert arr.max() > 200


def test_odd_images_in_a_folder(tmp_path: Path) -> None:
    """Empty files, no pixels, animation, CMYK, palette transparency, EXIF rotation, float TIFF."""
    root = tmp_path / "odd"
    _png(root / "b" / "plain.png", (0, 0, 200))
    (root / "a").mkdir(parents=True)
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "a" / "zero.png").write_bytes(_png_header(0, 0))
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(root / "a" / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(root / "a" / "cmyk.jpg")
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 255, 0] * 256)
    pal.save(root / "a" / "pal.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (24, 16), (9, 9, 9)).save(root / "a" / "rot.jpg", exif=exif)
    Image.fromarray(np.full((16, 16), 0.5, np.float32), "F").save(root / "a" / "float.tiff")
    before = snapshot(root)
    res = _info(root, "--image-size", "8")
    assert res.code == 0, res.text
    assert "Traceback" not in res.text
    assert "empty.png: empty file" in res.err and "zero.png" in res.err
    assert "skipped 2 file(s)" in res.err
    assert_unchanged(before, root)

    from cnnlab.config import DataConfig
    from cnnlab.data.sources import load_splits

    splits = load_splits(DataConfig(source=str(root), image_size=8, val_split=0, test_split=0))
    a = splits.train.images[splits.train.labels == 0]
    means = sorted(tuple(int(v) for v in img[:, 4, 4]) for img in a)
    assert (255, 0, 0) in means  # the animation's first frame
    assert (255, 255, 255) in means  # the transparent palette composited onto white
    assert (128, 128, 128) in means  # float 0.5 -> 128, not black


@pytest.mark.slow  # a separate process (to measure its memory) and 1.5 GB hashed
def test_a_huge_stray_file_is_hashed_in_chunks_not_loaded(tmp_path: Path) -> None:
    import subprocess

    root = _two_class_folder(tmp_path / "ds")
    with open(root / "red" / "video.mkv", "wb") as fh:  # sparse: 1.5 GB on paper, nothing on disk
        fh.truncate(1_500_000_000)
    # The peak memory of this one command: a fresh parent runs it and reports its only child's peak
    # (this process's RUSAGE_CHILDREN would be the largest of every process the suite started so far).
    parent = ("import resource, subprocess, sys; "
              "p = subprocess.run([sys.executable, '-m', 'cnnlab', *sys.argv[1:]], capture_output=True, text=True); "
              "sys.stderr.write(p.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
              "sys.exit(p.returncode)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", parent, "data", "info", str(root), "--val-split", "0", "--test-split", "0"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "video.mkv: not an image" in proc.stderr
    peak = int(proc.stdout.split()[-1]) * (1 if sys.platform == "darwin" else 1024)
    assert peak < 1_200_000_000  # the whole file was never held in memory


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- CSV files


def _csv(tmp_path: Path, lines: list[str], images: dict[str, tuple[int, int, int]] | None = None) -> Path:
    for rel, colour in (images or {"img/a.png": (200, 0, 0), "img/b.png": (0, 0, 200), "img/c.png": (0, 200, 0)}).items():
        _png(tmp_path / rel, colour)
    path = tmp_path / "list.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("header", ["file,class", "image,label", "filename,target,split", "img_path,species"])
def test_csv_header_is_not_read_as_a_row(tmp_path: Path, header: str) -> None:
    path = _csv(tmp_path, [header, "img/a.png,cat", "img/b.png,dog", "img/c.png,dog"])
    before = snapshot(tmp_path)
    res = _info(path)
    assert res.code == 0, res.text
    assert "2 classes" in res.out and "skipped" not in res.err
    assert_unchanged(before, tmp_path)


def test_csv_numeric_labels_sort_as_numbers(tmp_path: Path) -> None:
    from cnnlab.data.listing import list_csv

    path = _csv(tmp_path, ["img/a.png,10", "img/b.png,2", "img/c.png,1"])
    _, classes, _ = list_csv(path)
    assert classes == ("1", "2", "10")  # text order would be 1, 10, 2


def test_csv_same_file_with_two_labels_is_refused_naming_the_lines(tmp_path: Path) -> None:
    path = _csv(tmp_path, ["path,label", "img/a.png,cat", "img/b.png,dog", "./img/a.png,dog"])
    before = snapshot(tmp_path)
    res = _info(path)
    assert res.code == 2
    line = res.error_line()
    assert "two labels" in line and "line 2" in line and "line 4" in line
    assert_unchanged(before, tmp_path)


def test_csv_same_file_in_two_splits_is_refused(tmp_path: Path) -> None:
    path = _csv(tmp_path, ["img/a.png,cat,train", "img/b.png,dog,train", "img/a.png,cat,test"])
    res = _info(path)
    assert res.code == 2 and "two splits" in res.error_line()


def test_csv_repeated_row_is_used_once_and_reported(tmp_path: Path) -> None:
    path = _csv(tmp_path, ["img/a.png,cat", "img/b.png,dog", "img/a.png,cat"])
    res = _info(path)
    assert res.code == 0, res.text
    assert "listed again on line 3" in res.err
    assert _counts(res.out)["total"] == "2"


@pytest.mark.parametrize("escape", ["../outside.png", "{abs}", "img/../../outside.png"])
def test_csv_paths_outside_its_folder_are_refused(tmp_path: Path, escape: str) -> None:
    outside = _png(tmp_path / "outside.png", (1, 2, 3))
    data = tmp_path / "data"
    row = escape.format(abs=outside)
    path = _csv(data, ["path,label", "img/a.png,cat", "img/b.png,dog", f"{row},dog"])
    before = snapshot(tmp_path)
    res = _info(path)
    assert res.code == 2
    line = res.error_line()
    assert "outside the CSV's folder" in line and "line 4" in line and "--allow-outside-root" in line
    assert_unchanged(before, tmp_path)
    allowed = _info(path, "--allow-outside-root")
    assert allowed.code == 0, allowed.text
    assert _counts(allowed.out)["total"] == "3"


def test_csv_refuses_system_files_before_reading_them(tmp_path: Path) -> None:
    path = _csv(tmp_path, ["img/a.png,cat", "img/b.png,dog", "/etc/passwd,dog"])
    res = _info(path)
    assert res.code == 2 and "/etc/passwd" in res.error_line()


def test_csv_that_is_not_utf8_gets_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("img/caf\u00e9.png,cat\nimg/b.png,dog\n".encode("latin-1"))
    res = _info(path)
    assert res.code == 1 and "not UTF-8" in res.error_line()


# --------------------------------------------------------------------------- the decode cache


def _cache_folder() -> Path:
    from cnnlab.io import cache_dir

    return cache_dir("images")


def _damage(folder: Path, how: str) -> None:
    if how == "truncated images.npy":
        data = (folder / "images.npy").read_bytes()
        (folder / "images.npy").write_bytes(data[: len(data) // 2])
    elif how == "bad meta.json":
        (folder / "meta.json").write_text("{not json")
    elif how == "meta.json not an object":
        (folder / "meta.json").write_text("[1, 2]")
    elif how == "missing labels.npy":
        (folder / "labels.npy").unlink()
    elif how == "missing meta.json":
        (folder / "meta.json").unlink()
    elif how == "wrong shape":
        np.save(folder / "images.npy", np.zeros((1, 3, 2, 2), np.uint8))
    elif how == "labels out of range":
        np.save(folder / "labels.npy", np.full(np.load(folder / "labels.npy").shape, 99, np.int64))


@pytest.mark.parametrize(
    "how",
    ["truncated images.npy", "bad meta.json", "meta.json not an object", "missing labels.npy", "missing meta.json",
     "wrong shape", "labels out of range"],
)  # fmt: skip
def test_damaged_decode_cache_is_rebuilt(tmp_path: Path, how: str) -> None:
    root = _two_class_folder(tmp_path / "ds", n=3)
    _png(root / "red" / "own.png", tuple(hashlib.md5(how.encode()).digest()[:3]))  # a cache of this test only
    existing = set(_cache_folder().iterdir())
    first = _info(root)
    assert first.code == 0, first.text
    (folder,) = set(_cache_folder().iterdir()) - existing
    _damage(folder, how)
    before = snapshot(root)
    res = _info(root)
    assert res.code == 0, res.text
    assert "Traceback" not in res.text
    assert sum("is damaged (" in line and "rebuilding" in line for line in res.err.splitlines()) == 1
    assert res.out == first.out  # the same images, decoded again
    assert "is damaged (" not in _info(root).err  # and the rebuilt cache is good
    assert_unchanged(before, root)


# --------------------------------------------------------------------------- sizes beyond the machine


def test_image_size_whose_cache_exceeds_the_disk_is_refused(tmp_path: Path) -> None:
    root = _two_class_folder(tmp_path / "ds")
    existing = {p: p.stat().st_size for p in _cache_folder().rglob("*") if p.is_file()}
    before = snapshot(root)
    res = _info(root, "--image-size", "1000000")  # 12 TB: beyond any test machine's disk and memory
    assert res.code == 2
    line = res.error_line()
    assert "GB" in line or "TB" in line
    assert "--image-size" in line
    assert_unchanged(before, root)
    new = [p for p in _cache_folder().rglob("*") if p.is_file() and p not in existing]
    assert not new  # nothing was decoded, no sparse giant was made


# --------------------------------------------------------------------------- the cache folder


@pytest.mark.parametrize("where", ["under a file", "is a file"])
def test_unwritable_cache_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    root = _two_class_folder(tmp_path / "ds")
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    monkeypatch.setenv("CNNLAB_CACHE", str(blocker / "cache") if where == "under a file" else str(blocker))
    before = snapshot(root, blocker)
    res = _info(root)
    assert res.code == 1
    assert "CNNLAB_CACHE" in res.error_line()
    assert_unchanged(before, root, blocker)


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes to read-only folders")
def test_read_only_cache_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _two_class_folder(tmp_path / "ds")
    cache = tmp_path / "ro"
    cache.mkdir()
    cache.chmod(0o555)
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    try:
        res = _info(root)
    finally:
        cache.chmod(0o755)
    assert res.code == 1 and "CNNLAB_CACHE" in res.error_line()


# --------------------------------------------------------------------------- CIFAR files


def _cifar_folder(tmp_path: Path, **replace: object) -> Path:
    """A tiny CIFAR-10 folder; ``replace`` maps a file name to the object (or raw bytes) it holds."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files: dict[str, object] = {
        f"data_batch_{i}": {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        for i in range(1, 6)
    }
    files["test_batch"] = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [0, 1]}
    files["batches.meta"] = {"label_names": [f"c{i}" for i in range(10)]}
    files.update(replace)
    for name, obj in files.items():
        (folder / name).write_bytes(obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2))
    return folder


_GOOD_BATCH = pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3]}, protocol=2)


@pytest.mark.parametrize(
    ("file", "content", "words"),
    [
        ("data_batch_2", [1, 2, 3], "holds a list"),
        ("data_batch_2", {"pixels": np.zeros((4, 3072), np.uint8)}, "no data, labels entry"),
        ("data_batch_2", {"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]}, "expected uint8 (N, 3072)"),
        ("data_batch_2", {"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1]}, "4 images but 'labels'"),
        ("data_batch_2", {"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 99]}, "out of range"),
        ("data_batch_2", {"data": "text", "labels": [0]}, "'data' is"),
        ("data_batch_2", _GOOD_BATCH[: len(_GOOD_BATCH) // 2], "damaged"),
        ("data_batch_2", b"", "damaged"),
        ("test_batch", b"\x80\x02garbage", "damaged"),
        ("batches.meta", {"label_names": "c0"}, "no list of class names"),
        ("batches.meta", {"names": ["a", "b"]}, "no label_names entry"),
    ],
    ids=["list", "wrong keys", "wrong shape", "too few labels", "label out of range", "text data", "truncated",
         "empty", "garbage", "names not a list", "no names"],
)  # fmt: skip
def test_malformed_cifar_batches_get_one_line(tmp_path: Path, file: str, content: object, words: str) -> None:
    folder = _cifar_folder(tmp_path, **{file: content})
    before = snapshot(tmp_path)
    res = run_cli("data", "info", "cifar10", "--data-root", str(tmp_path), "--no-download")
    assert res.code == 1
    line = res.error_line()
    assert words in line and str(folder / file) in line and "delete" in line
    assert_unchanged(before, tmp_path)


def test_a_good_cifar_folder_still_loads(tmp_path: Path) -> None:
    _cifar_folder(tmp_path, data_batch_3=pickle.dumps({b"data": np.zeros((4, 3, 32, 32), np.uint8),
                                                       b"labels": [0, 1, 2, 3]}))  # fmt: skip
    res = run_cli("data", "info", "cifar10", "--data-root", str(tmp_path), "--no-download", "--val-split", "0")
    assert res.code == 0, res.text


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "escaping member", "prefix sibling"])
def test_damaged_or_unsafe_archive_is_refused_and_leaves_nothing(tmp_path: Path, damage: str) -> None:
    from cnnlab.data.builtin import _extract_tar

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        name = {"escaping member": "../evil.txt", "prefix sibling": "../home2/evil.txt"}.get(damage, "cifar/x.bin")
        data = os.urandom(50_000)
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "a.tar.gz"
    blob = buf.getvalue()
    archive.write_bytes({"truncated": blob[: len(blob) // 2], "not gzip": b"hello"}.get(damage, blob))
    dest = tmp_path / "home"
    with pytest.raises(CnnlabError, match="delete"):
        _extract_tar(archive, dest)
    assert [p.name for p in dest.iterdir()] == [] and not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "home2").exists()


# --------------------------------------------------------------------------- IDX (Fashion-MNIST) files


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def _idx_folder(tmp_path: Path, **replace: bytes) -> Path:
    folder = tmp_path / "fashion-mnist"
    folder.mkdir(parents=True)
    files = {
        "train-images-idx3-ubyte.gz": _idx(np.zeros((20, 28, 28))),
        "train-labels-idx1-ubyte.gz": _idx(np.arange(20) % 10),
        "t10k-images-idx3-ubyte.gz": _idx(np.zeros((10, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": _idx(np.arange(10)),
    }
    files.update(replace)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


_TRAIN_IMAGES = _idx(np.zeros((20, 28, 28)))
# The first byte of the deflate stream flipped: zlib's "invalid distance" error, not an OSError.
_GARBLED = _TRAIN_IMAGES[:10] + bytes([_TRAIN_IMAGES[10] ^ 0xFF]) + _TRAIN_IMAGES[11:]


@pytest.mark.parametrize(
    ("file", "content", "words"),
    [
        ("train-images-idx3-ubyte.gz", _TRAIN_IMAGES[: len(_TRAIN_IMAGES) // 2], "delete it"),
        ("train-images-idx3-ubyte.gz", _GARBLED, "delete it"),
        ("train-images-idx3-ubyte.gz", gzip.compress(b"\x00\x00\x08\x03\x00"), "header is cut off"),
        ("train-images-idx3-ubyte.gz", gzip.compress(b"\x00\x00\x08\x00"), "0 dimensions"),
        ("train-labels-idx1-ubyte.gz", _idx(np.full(20, 200)), "holds label 200"),
        ("t10k-labels-idx1-ubyte.gz", _idx(np.arange(3)), "do not match"),
        ("t10k-images-idx3-ubyte.gz", b"", "not an IDX file"),
    ],
    ids=["truncated", "garbled", "header cut off", "no dimensions", "label out of range", "count mismatch", "empty"],
)  # fmt: skip
def test_damaged_idx_files_get_one_line(tmp_path: Path, file: str, content: bytes, words: str) -> None:
    folder = _idx_folder(tmp_path, **{file: content})
    before = snapshot(tmp_path)
    res = run_cli("data", "info", "fashion-mnist", "--data-root", str(tmp_path), "--no-download")
    assert res.code == 1
    line = res.error_line()
    assert words in line and str(folder) in line
    assert_unchanged(before, tmp_path)


def test_stats_cache_of_the_wrong_shape_is_recomputed(tmp_path: Path) -> None:
    from cnnlab.config import DataConfig
    from cnnlab.data.sources import load_splits
    from cnnlab.io import cache_dir

    root = _two_class_folder(tmp_path / "ds")
    splits = load_splits(DataConfig(source=str(root), val_split=0, test_split=0))
    good = splits.stats
    path = cache_dir("stats") / f"{splits.fingerprint}.json"
    for bad in ([1, 2], {"mean": [0.5], "std": [0.1]}, {"mean": [0.5, 0.5, 0.5], "std": [0, 0, 0]}, {"mean": None}):
        path.write_text(json.dumps(bad))
        fresh = load_splits(DataConfig(source=str(root), val_split=0, test_split=0))
        assert [list(v) for v in fresh.stats] == [pytest.approx(v) for v in good]


# --------------------------------------------------------------------------- downloads


def test_download_into_a_folder_that_cannot_exist_blames_the_folder(tmp_path: Path) -> None:
    from cnnlab.data.download import download

    www = tmp_path / "www"
    www.mkdir()
    (www / "f.bin").write_bytes(b"payload")
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(CnnlabError, match=r"cannot write f\.bin to .*a-file/data: .*--data-root") as info:
        download("f.bin", (www.as_uri() + "/",), blocker / "data", "0" * 32)
    assert "\n" not in str(info.value)
    assert_unchanged(before, tmp_path)


def test_download_with_the_wrong_checksum_leaves_nothing(tmp_path: Path) -> None:
    from cnnlab.data.download import download

    www = tmp_path / "www"
    www.mkdir()
    (www / "f.bin").write_bytes(b"not what was published")
    dest = tmp_path / "data"
    with pytest.raises(CnnlabError, match="checksum"):
        download("f.bin", (www.as_uri() + "/",), dest, "0" * 32)
    assert list(dest.iterdir()) == []  # no file that looks complete, no temporary left


def test_csv_whose_files_all_are_missing_says_so(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("img/a.png,cat\nimg/b.png,dog\n")
    res = _info(path)
    assert res.code == 1
    line = res.error_line()
    assert "none of the 2 files listed" in line and "img/a.png" in line

"""Image folders and CSV files: decoding edge cases, the cache, and clear errors."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.config import DataConfig
from cnnlab.data.sources import load_splits
from cnnlab.errors import CnnlabError


def _rgb(path: Path, colour=(200, 30, 30), size=(24, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _load(source, **kw):
    return load_splits(DataConfig(source=str(source), val_split=0.0, test_split=0.0, **kw))


def test_modes_and_bad_files(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _rgb(root / "a" / "rgb.png")
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(root / "a" / "cmyk.jpg")  # pure red in CMYK
    Image.new("RGBA", (24, 24), (0, 0, 255, 0)).save(root / "a" / "transparent.png")
    pal = Image.new("P", (24, 24), 0)
    pal.putpalette([0, 255, 0] * 256)
    (root / "b").mkdir()
    pal.save(root / "b" / "palette.gif")
    Image.fromarray(np.full((24, 24), 65535, np.uint16)).save(root / "b" / "deep16.png")
    _rgb(root / "b" / "ünïcode 名前.png", (10, 10, 10))
    (root / "b" / "notes.txt").write_text("not an image")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(root / "a" / "full.jpg", quality=95)
    (root / "a" / "truncated.jpg").write_bytes((root / "a" / "full.jpg").read_bytes()[:200])
    (root / "a" / "full.jpg").unlink()

    splits = _load(root, image_size=16)
    reasons = {Path(p).name: r for p, r in splits.skipped}
    assert set(reasons) == {"notes.txt", "truncated.jpg"}
    assert "not an image" in reasons["notes.txt"] and "corrupt or truncated" in reasons["truncated.jpg"]
    imgs = {name: img for name, img in zip(_files(root, splits), splits.train.images)}
    assert splits.image_shape == (3, 16, 16)  # one colour image makes the whole set RGB
    assert tuple(imgs["cmyk.jpg"][:, 8, 8]) == pytest.approx((255, 0, 0), abs=3)
    assert tuple(imgs["transparent.png"][:, 8, 8]) == (255, 255, 255)  # alpha composited on white
    assert tuple(imgs["palette.gif"][:, 8, 8]) == (0, 255, 0)
    assert tuple(imgs["deep16.png"][:, 8, 8]) == (255, 255, 255)  # 16-bit scaled, not clipped garbage
    assert tuple(imgs["ünïcode 名前.png"][:, 8, 8]) == (10, 10, 10)


def _files(root: Path, splits) -> list[str]:
    import json

    from cnnlab.io import cache_dir

    metas = [json.loads(m.read_text()) for m in cache_dir("images").glob("*/meta.json")]
    meta = next(m for m in metas if m["source"] == str(root) and len(m["files"]) == len(splits.train))
    return [Path(f).name for f in meta["files"]]


def test_sixteen_bit_grayscale_is_scaled(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    for cls, value in (("dark", 256 * 50), ("light", 256 * 200)):
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.full((12, 12), value, np.uint16)).save(root / cls / "x.png")
    splits = _load(root)
    assert splits.image_shape == (1, 12, 12)  # all grayscale → one channel
    assert sorted(int(v) for v in splits.train.images[:, 0, 5, 5]) == [50, 199]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    root = tmp_path / "exif"
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:10] = 255  # stored: top half white
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise: the stored top becomes the right side
    (root / "a").mkdir(parents=True)
    img.save(root / "a" / "rot.jpg", exif=exif, quality=100)
    _rgb(root / "b" / "x.png")
    splits = _load(root, image_size=20)
    rot = splits.train.images[splits.train.labels == 0][0].mean(axis=0)
    assert rot[:, 12:].mean() > 200 and rot[:, :8].mean() < 50


def test_resize_keeps_aspect_and_centre_crops(tmp_path: Path) -> None:
    root = tmp_path / "wide"
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, 10:20] = 255  # a white centre third
    (root / "a").mkdir(parents=True)
    Image.fromarray(arr).save(root / "a" / "w.png")
    _rgb(root / "b" / "x.png", size=(10, 10))
    splits = _load(root, image_size=10)
    centre = splits.train.images[splits.train.labels == 0][0]
    assert centre.min() >= 250  # only the white centre survives the square crop


def test_cache_is_reused_and_keyed_by_content(tmp_path: Path) -> None:
    from cnnlab.io import cache_dir

    root = tmp_path / "c"
    _rgb(root / "a" / "1.png")
    _rgb(root / "b" / "1.png", (0, 0, 200))
    first = _load(root)
    caches = set(cache_dir("images").iterdir())
    second = _load(root)
    assert first.fingerprint == second.fingerprint and set(cache_dir("images").iterdir()) == caches
    assert isinstance(second.train.images, np.memmap)  # served from the memory-mapped cache
    _rgb(root / "b" / "1.png", (0, 200, 0))  # same name, new content
    third = _load(root)
    assert third.fingerprint != first.fingerprint
    assert len(set(cache_dir("images").iterdir()) - caches) == 1
    copy = tmp_path / "copy"
    os.system(f"cp -r '{root}' '{copy}'")
    assert _load(copy).fingerprint == third.fingerprint  # moved/copied folders hit the same cache


def test_split_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "s"
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        for cls in ("x", "y"):
            for i in range(n):
                _rgb(root / split / cls / f"{i}.png", (i * 20, 0, 0))
    splits = load_splits(DataConfig(source=str(root)))  # no hold-out: the folders decide
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 6)
    assert splits.classes == ("x", "y")


def test_seeded_stratified_validation_split_for_flat_folders(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for cls in ("x", "y"):
        for i in range(20):
            _rgb(root / cls / f"{i}.png", (i * 10, 0, 0))
    splits = load_splits(DataConfig(source=str(root), val_split=0.1, test_split=0.1))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (32, 4, 4)
    assert splits.val.class_counts().tolist() == [2, 2]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"a/1.png": 1, "b": None}, "is empty"),
        ({"a/1.png": 1}, "single class"),
        ({}, "no class folders"),
        ({"a/1.txt": 0, "b/2.txt": 0}, "no readable images"),
        ({"a/1.png": 1, "b/2.txt": 0}, "no readable images"),
    ],
)
def test_folder_errors(tmp_path: Path, layout: dict, message: str) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    for rel, kind in layout.items():
        path = root / rel
        if kind is None:
            path.mkdir(parents=True)
        elif kind == 1:
            _rgb(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("text")
    with pytest.raises(CnnlabError, match=message):
        _load(root)


def test_csv_source(tmp_path: Path) -> None:
    for i in range(6):
        _rgb(tmp_path / "img" / f"{i}.png", (i * 40, 0, 0))
    rows = ["path,label,split"] + [f"img/{i}.png,{'cat' if i % 2 else 'dog'},{'test' if i == 5 else 'train'}" for i in range(6)]
    rows.append("img/missing.png,cat,train")
    (tmp_path / "list.csv").write_text("\n".join(rows))
    splits = load_splits(DataConfig(source=str(tmp_path / "list.csv"), val_split=0.0))
    assert splits.classes == ("cat", "dog") and len(splits.train) == 5 and len(splits.test) == 1
    assert [Path(p).name for p, _ in splits.skipped] == ["missing.png"]
    (tmp_path / "bad.csv").write_text("path,label\nimg/0.png\n")
    with pytest.raises(CnnlabError, match="line 2"):  # the line in the file, header counted
        load_splits(DataConfig(source=str(tmp_path / "bad.csv")))


def test_parallel_decoding_matches_serial(tmp_path: Path, monkeypatch) -> None:
    from cnnlab.data import images

    root = tmp_path / "many"
    rng = np.random.default_rng(0)
    for i in range(300):
        cls = "ab"[i % 2]
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    parallel = _load(root)  # 300 files: above the threshold, decoded by worker processes
    monkeypatch.setattr(images, "_PARALLEL_MIN_FILES", 10**9)
    monkeypatch.setattr(images, "CACHE_VERSION", images.CACHE_VERSION + 1000)  # force a fresh, serial build
    serial = _load(root)
    assert np.array_equal(np.asarray(parallel.train.images), np.asarray(serial.train.images))

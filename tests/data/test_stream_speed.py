"""The streaming loader's fast path: direct chunk reads, simplejpeg + torch crops, float conversion.

Each fast piece is checked against the slow reference it replaces: litdata's own reader,
torchvision's crop-then-resize on the same pixels, Pillow's JPEG decode, a plain addcmul.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("litdata")

from torchvision.transforms.v2 import functional as TF  # noqa: E402

from cnnlab.config import DataConfig  # noqa: E402
from cnnlab.data.sources import load_splits  # noqa: E402
from cnnlab.data.store import _PartBytes, open_store, plan_folder, prepare_store  # noqa: E402
from cnnlab.data.stream import StreamLoader, _to_float, random_resized_box  # noqa: E402

CLASSES = ("cat", "dog")


def _store(root: Path, fmt: str, per_class: int = 10, side: tuple[int, int] = (40, 90), max_side: int | None = 256) -> Path:
    """A store of smooth, seeded images (JPEG round trips stay close) of varied sizes."""
    rng = np.random.default_rng(1)
    for c, name in enumerate(CLASSES):
        (root / "src" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(*side, size=2))
            small = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
            arr = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))
            Image.fromarray(arr).save(root / "src" / name / f"{i:02d}.png")
    items, classes, channels, skipped = plan_folder(root / "src")
    prepare_store(items, classes, channels, root / "store", skipped=skipped, fmt=fmt, max_side=max_side)
    return root / "store"


def _reference(store, i: int, box: tuple[int, int, int, int], flip: bool, size: int) -> torch.Tensor:  # noqa: ANN001
    """torchvision's RandomResizedCrop on the Pillow-decoded image: crop, antialiased bilinear resize, flip."""
    import io

    arr = np.array(Image.open(io.BytesIO(store.read(i))).convert("RGB"))
    x = torch.from_numpy(arr).permute(2, 0, 1)
    left, top, right, bottom = box
    y = TF.resized_crop(x, top, left, bottom - top, right - left, [size, size], antialias=True)
    return y.flip(-1) if flip else y


def test_direct_reads_give_litdata_s_bytes(tmp_path: Path) -> None:
    from litdata import StreamingDataset

    path = _store(tmp_path, "jpeg")
    store = open_store(path)
    for k, part in enumerate(store.parts):
        theirs = StreamingDataset(str(part))
        for j in range(len(theirs)):
            assert store.read(int(store.offsets[k]) + j) == theirs[j]["image"]
        assert isinstance(store._direct[k], _PartBytes)  # the fast path, not litdata's reader


def test_png_crops_are_torchvision_s_exactly(tmp_path: Path) -> None:
    store = open_store(_store(tmp_path, "png"))
    rng = np.random.default_rng(0)
    for i in range(len(store)):
        box = random_resized_box(rng, int(store.heights[i]), int(store.widths[i]))
        for flip in (False, True):
            out = torch.empty(3, 24, 24, dtype=torch.uint8)
            store.decode_crop(i, box, flip, out)
            assert torch.equal(out, _reference(store, i, box, flip, 24))


def test_jpeg_crops_match_pillow_s_decode_with_and_without_simplejpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("simplejpeg")
    store = open_store(_store(tmp_path, "jpeg"))
    rng = np.random.default_rng(0)
    boxes = [random_resized_box(rng, int(store.heights[i]), int(store.widths[i])) for i in range(len(store))]
    fast = [torch.empty(3, 48, 48, dtype=torch.uint8) for _ in boxes]  # crops under 96 px: decoded at full scale
    for i, (box, out) in enumerate(zip(boxes, fast)):
        store.decode_crop(i, box, i % 2 == 1, out)
        want = _reference(store, i, box, i % 2 == 1, 48)
        assert (out.int() - want.int()).abs().max() <= 2  # two builds of libjpeg-turbo: the same up to rounding
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # not installed: Pillow decodes
    for i, (box, out) in enumerate(zip(boxes, fast)):
        slow = torch.empty(3, 48, 48, dtype=torch.uint8)
        store.decode_crop(i, box, i % 2 == 1, slow)
        assert torch.equal(slow, _reference(store, i, box, i % 2 == 1, 48))
        assert (slow.int() - out.int()).abs().max() <= 2


def test_large_jpeg_crops_decode_at_a_reduced_scale(tmp_path: Path) -> None:
    pytest.importorskip("simplejpeg")
    store = open_store(_store(tmp_path, "jpeg", per_class=2, side=(300, 400), max_side=None))
    for i in range(len(store)):
        h, w = int(store.heights[i]), int(store.widths[i])
        box = (10, 20, w - 5, h - 15)  # over 4x the output: decoded at 1/4 scale
        out = torch.empty(3, 64, 64, dtype=torch.uint8)
        store.decode_crop(i, box, False, out)
        want = _reference(store, i, box, False, 64)
        assert (out.float() - want.float()).abs().mean() < 2.5  # smooth images: the scaled decode is close


def test_grey_crops_of_an_rgb_store(tmp_path: Path) -> None:
    store = open_store(_store(tmp_path, "jpeg", per_class=3))
    box = (2, 3, 30, 33)
    for i in range(len(store)):
        grey = torch.empty(1, 16, 16, dtype=torch.uint8)
        store.decode_crop(i, box, False, grey)
        rgb = _reference(store, i, box, False, 16).float()
        luma = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None]
        assert (grey.float() - luma).abs().max() <= 3


def test_batches_do_not_depend_on_the_decoding_threads(tmp_path: Path) -> None:
    path = _store(tmp_path, "jpeg")
    splits = load_splits(DataConfig(source=str(path), loader="stream", image_size=20, val_split=0.0, test_split=0.0))
    mean, std = splits.stats
    runs = []
    for workers in (1, 3):
        loader = StreamLoader(splits.train, batch_size=6, mean=mean, std=std, seed=4, workers=workers)
        loader.set_epoch(1)
        runs.append(list(loader))
        loader.close()
    assert len(runs[0]) == 3
    for (x1, y1), (x2, y2) in zip(*runs):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_float_conversion_equals_addcmul() -> None:
    raw = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (20, 3, 224, 224), dtype=np.uint8))
    scale = torch.tensor([1 / 60.0, 1 / 62.0, 1 / 64.0]).view(1, 3, 1, 1)
    shift = torch.tensor([-2.0, -1.9, -1.8]).view(1, 3, 1, 1)
    x = _to_float(raw, scale, shift, torch.float32)  # 12 MB: the huge-page buffer
    assert x.shape == raw.shape and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.allclose(x, torch.addcmul(shift, raw.float(), scale), atol=1e-6, rtol=0)

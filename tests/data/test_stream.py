"""Prepared stores and the streaming loader: prepare, read back, resume, ranks, loader choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("litdata")

from cnnlab.cli.main import main  # noqa: E402
from cnnlab.config import DataConfig  # noqa: E402
from cnnlab.data import store as store_mod  # noqa: E402
from cnnlab.data import stream as stream_mod  # noqa: E402
from cnnlab.data.imageset import Splits  # noqa: E402
from cnnlab.data.sources import load_splits  # noqa: E402
from cnnlab.data.store import (  # noqa: E402
    MARKER, StoreSplit, StoreSplits, choose_loader, open_store, plan_folder, prepare_store,
)  # fmt: skip
from cnnlab.data.stream import StreamLoader, random_resized_box  # noqa: E402
from cnnlab.errors import CnnlabError, UsageError  # noqa: E402

CLASSES = ("cat", "dog", "eel")


def _folder(root: Path, per_class: int = 8, fmt: str = "png") -> Path:
    """Images of three classes, each its own size (16..40 px) and aspect ratio, seeded."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(16, 41, size=2))
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            arr[..., c] = 255  # the class's colour channel: learnable
            Image.fromarray(arr).save(root / name / f"{i:02d}.{fmt}")
    return root


def _prepare(src: Path, out: Path, **kw) -> dict:
    items, classes, channels, skipped = plan_folder(src)
    return prepare_store(items, classes, channels, out, skipped=skipped, **kw)


def _cfg(store: Path, **kw) -> DataConfig:
    return DataConfig(source=str(store), **{"val_split": 0.0, "test_split": 0.0, **kw})


def test_prepare_reads_back_every_pixel_and_reports_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _folder(tmp_path / "src")
    (src / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (src / "eel" / "notes.txt").write_text("not an image")
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "store"), "--format", "png", "--max-side", "native"]) == 0
    printed = capsys.readouterr()
    assert "broken.png" in printed.err and "notes.txt" in printed.err and "24 images" in printed.out
    store = open_store(tmp_path / "store")
    meta = json.loads((tmp_path / "store" / MARKER).read_text())
    assert meta["classes"] == list(CLASSES) and meta["count"] == 24 and meta["engine"] == "litdata"
    assert {Path(p).name for p, _ in meta["skipped"]} == {"broken.png", "notes.txt"}
    # Lossless: every stored image decodes to the source file's pixels, at its own size.
    for i, name in enumerate(store.names):
        original = np.asarray(Image.open(name).convert("RGB")).transpose(2, 0, 1)
        h, w = original.shape[1:]
        assert (store.heights[i], store.widths[i]) == (h, w)
        assert store.labels[i] == CLASSES.index(Path(name).parent.name)
        if h == w:  # a whole square image resized to its own size is itself
            assert np.array_equal(store.decode(i, (0, 0, w, h), False, h, 3), original)
    # The stored pixel sums give the exact channel statistics.
    pixels = np.concatenate([np.asarray(Image.open(n).convert("RGB")).reshape(-1, 3) for n in store.names]) / 255.0
    mean, std = store.stats(np.arange(len(store)))
    assert mean == pytest.approx(tuple(pixels.mean(0)), abs=1e-9) and std == pytest.approx(tuple(pixels.std(0)), abs=1e-9)


def test_max_side_keeps_the_aspect_ratio(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for c in CLASSES[:2]:
        (src / c).mkdir(parents=True)
        Image.new("RGB", (300, 120), (200, 10, 10)).save(src / c / "wide.jpg")
        Image.new("RGB", (30, 60), (10, 10, 200)).save(src / c / "small.jpg")
    _prepare(src, tmp_path / "store", max_side=100)
    store = open_store(tmp_path / "store")
    sizes = sorted(zip(store.widths.tolist(), store.heights.tolist()))
    assert sizes == [(30, 60), (30, 60), (100, 40), (100, 40)]  # shrunk to 100 px on the longer side; small ones kept


def test_an_interrupted_prepare_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _folder(tmp_path / "src")
    real = store_mod._encode
    calls = {"n": 0}

    def dies_after_ten(args):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(store_mod, "_encode", dies_after_ten)
    with pytest.raises(KeyboardInterrupt):
        _prepare(src, tmp_path / "store", part_size=4)
    parts = tmp_path / "store" / "parts"
    done = sorted(p.name for p in parts.iterdir() if p.name.startswith("part-"))
    assert done == ["part-00000", "part-00001"] and not (tmp_path / "store" / MARKER).exists()
    with pytest.raises(CnnlabError, match="not finished"):
        load_splits(_cfg(tmp_path / "store"))
    kept = {p: (parts / p / "part.json").stat().st_mtime_ns for p in done}
    monkeypatch.setattr(store_mod, "_encode", real)
    calls["n"] = 0
    _prepare(src, tmp_path / "store", part_size=4)
    assert {p: (parts / p / "part.json").stat().st_mtime_ns for p in done} == kept  # not written again
    _prepare(src, tmp_path / "once", part_size=4)
    a, b = open_store(tmp_path / "store"), open_store(tmp_path / "once")
    assert np.array_equal(a.labels, b.labels) and all(a.read(i) == b.read(i) for i in range(len(a)))
    # Another folder into the same store is refused, not mixed in.
    Image.new("RGB", (20, 20)).save(src / "cat" / "new.png")
    with pytest.raises(UsageError, match="other images"):
        _prepare(src, tmp_path / "store", part_size=4)


@pytest.fixture()
def tiny_store(tmp_path: Path) -> Path:
    _prepare(_folder(tmp_path / "src", per_class=12), tmp_path / "store", fmt="jpeg")
    return tmp_path / "store"


def _loader(store: Path, **kw) -> StreamLoader:
    splits = load_splits(_cfg(store, loader="stream", image_size=16))
    mean, std = splits.stats
    return StreamLoader(splits.train, batch_size=5, mean=mean, std=std, workers=3, **kw)


def test_batches_are_a_pure_function_of_seed_epoch_rank_batch(tiny_store: Path) -> None:
    loader = _loader(tiny_store, seed=3, augment=lambda x, g: x)
    loader.set_epoch(2)
    full = list(loader)
    assert len(full) == len(loader) == 36 // 5 and full[0][0].shape == (5, 3, 16, 16) and full[0][0].dtype == torch.float32
    again = _loader(tiny_store, seed=3, augment=lambda x, g: x)  # a new process after a kill: nothing carried over
    again.set_epoch(2)
    resumed = list(again.iter_from(4))
    assert len(resumed) == len(full) - 4
    for (x, y), (x2, y2) in zip(full[4:], resumed):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    again.set_epoch(3)
    assert not torch.equal(next(iter(again))[0], full[0][0])  # a new epoch: a new order and new crops


def test_ranks_read_disjoint_parts_that_cover_the_epoch(tiny_store: Path) -> None:
    ranks = [_loader(tiny_store, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = []
    for loader in ranks:
        loader.set_epoch(5)
        seen.append(set(loader.order().tolist()))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 36  # 36 images, 18 per rank
    labels = [torch.cat([y for _, y in loader]) for loader in ranks]
    assert sum(len(y) for y in labels) == 2 * 3 * 5  # 3 full batches of 5 per rank


def test_evaluation_is_a_centre_crop_and_keeps_every_image(tiny_store: Path) -> None:
    splits = load_splits(_cfg(tiny_store, loader="stream", image_size=16))
    mean, std = splits.stats
    loader = StreamLoader(splits.train, batch_size=8, mean=mean, std=std, train=False, workers=2)
    xs = torch.cat([x for x, _ in loader])
    assert xs.shape[0] == 36 and torch.equal(xs, torch.cat([x for x, _ in loader]))  # no randomness


@pytest.mark.parametrize("decoder", ["torchcodec", "torchvision"])
def test_device_decoding_gives_the_cpu_threads_pixels_and_resumes(tiny_store: Path, tmp_path: Path, decoder: str) -> None:
    """--decode device: a batched decode_jpeg (here on the CPU device, nvJPEG on a GPU), then crop and resize there."""
    if decoder == "torchcodec":
        pytest.importorskip("torchcodec.decoders")
    splits = load_splits(_cfg(tiny_store, loader="stream", image_size=32, decode="device"))
    assert splits.train.decode == "device"
    mean, std = splits.stats
    loader = StreamLoader(splits.train, batch_size=9, mean=mean, std=std, seed=4, workers=2)
    loader._decode_jpegs = getattr(stream_mod, f"_{decoder}_jpegs")
    cpu = StreamLoader(splits.train, batch_size=9, mean=mean, std=std, seed=4, workers=2, decode="cpu")
    loader.set_epoch(1)
    cpu.set_epoch(1)
    # The same crops and flips; the pixels of both decoders agree (32 px from 16-40 px images: no reduced-scale decode).
    jobs = loader.jobs(loader.order()[:9], 0)
    assert jobs == cpu.jobs(cpu.order()[:9], 0) and any(flip for *_, flip in jobs) and not all(flip for *_, flip in jobs)
    on_device = loader._decode_on_device(jobs, loader._read_slice(jobs))
    threads = torch.empty_like(on_device)
    cpu._decode_slice(jobs, threads)
    assert on_device.dtype == torch.uint8 and on_device.shape == (9, 3, 32, 32)
    diff = (on_device.int() - threads.int()).abs()
    assert diff.max() <= 2 and diff.float().mean() < 0.5, (diff.max(), diff.float().mean())
    # Batches are a pure function of (seed, epoch, batch): a new loader resumes mid-epoch exactly.
    full = list(loader)
    again = StreamLoader(splits.train, batch_size=9, mean=mean, std=std, seed=4, workers=1)
    again._decode_jpegs = loader._decode_jpegs
    again.set_epoch(1)
    for (x, y), (x2, y2) in zip(full[2:], again.iter_from(2), strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    # Evaluation batches are decoded by the CPU threads, whatever data.decode says (the pixels predict sees).
    evaluate = dict(batch_size=8, mean=mean, std=std, train=False, workers=2)
    assert torch.equal(next(iter(StreamLoader(splits.train, **evaluate)))[0],
                       next(iter(StreamLoader(splits.train, decode="cpu", **evaluate)))[0])  # fmt: skip
    # Only JPEG stores decode on the device.
    _prepare(_folder(tmp_path / "png-src", per_class=2), tmp_path / "png", fmt="png")
    with pytest.raises(UsageError, match="--decode cpu"):
        load_splits(_cfg(tmp_path / "png", loader="stream", decode="device"))
    with pytest.raises(UsageError, match="data.decode must be one of cpu, device"):
        DataConfig(decode="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs it)")
def test_device_decoding_on_a_gpu(tiny_store: Path, tmp_path: Path) -> None:
    """nvJPEG decodes the batch on the GPU: the CPU threads' pixels within a level or two, and a run trains end to end."""
    splits = load_splits(_cfg(tiny_store, loader="stream", image_size=32, decode="device"))
    mean, std = splits.stats
    gpu = StreamLoader(splits.train, batch_size=9, mean=mean, std=std, seed=4, workers=2, device="cuda")
    cpu = StreamLoader(splits.train, batch_size=9, mean=mean, std=std, seed=4, workers=2, decode="cpu")
    jobs = gpu.jobs(gpu.order()[:9], 0)
    threads = torch.empty((9, 3, 32, 32), dtype=torch.uint8)
    cpu._decode_slice(jobs, threads)
    for _ in range(3):  # repeated: memory recycled between calls must not be overwritten (the decoding stream)
        on_gpu = gpu._decode_on_device(jobs, gpu._read_slice(jobs))
        assert on_gpu.is_cuda and on_gpu.dtype == torch.uint8
        # nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's: close on average (a wrong crop, flip or channel
        # order is tens of levels off on these noise images), not equal
        diff = (on_gpu.cpu().int() - threads.int()).abs()
        print(f"GPU decode vs CPU threads: mean {diff.float().mean():.2f} levels, max {int(diff.max())}")
        assert diff.float().mean() < 4.0, (diff.max(), diff.float().mean())
    batches = [x for x, _ in gpu]
    assert all(x.is_cuda and x.shape == (9, 3, 32, 32) for x in batches)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_store), "--loader", "stream", "--decode", "device", "--image-size", "32",
                 "--model", "simple", "--epochs", "2", "--batch-size", "8", "--device", "cuda", "--quiet",
                 "--out", str(run)]) == 0  # fmt: skip
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2 and (run / "summary.json").is_file()


def test_random_resized_box_stays_inside_and_is_seeded() -> None:
    for seed in range(50):
        box = random_resized_box(np.random.default_rng(seed), 30, 70)
        assert 0 <= box[0] < box[2] <= 70 and 0 <= box[1] < box[3] <= 30
        assert box == random_resized_box(np.random.default_rng(seed), 30, 70)


def test_loader_choice(tiny_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tiny_store)
    assert choose_loader(store, _cfg(tiny_store, loader="memory", image_size=16))[0] == "memory"
    assert choose_loader(store, _cfg(tiny_store, loader="stream", image_size=16))[0] == "stream"
    need = 36 * 3 * 16 * 16
    monkeypatch.setattr(store_mod, "free_device_memory", lambda: (3 * need, "test memory"))
    mode, why = choose_loader(store, _cfg(tiny_store, image_size=16))
    assert mode == "memory" and "50%" in why and "test memory" in why
    splits = load_splits(_cfg(tiny_store, image_size=16))
    assert type(splits) is Splits and splits.train.images.shape == (36, 3, 16, 16)
    monkeypatch.setattr(store_mod, "free_device_memory", lambda: (need, "test memory"))
    assert choose_loader(store, _cfg(tiny_store, image_size=16))[0] == "stream"
    splits = load_splits(_cfg(tiny_store, image_size=16))
    assert isinstance(splits, StoreSplits) and isinstance(splits.train, StoreSplit)
    with pytest.raises(CnnlabError, match="--loader memory"):
        splits.train.images  # noqa: B018 - a step that needs the images in memory says what to do


def test_held_out_splits_match_the_folder_s(tmp_path: Path, tiny_store: Path) -> None:
    folder = load_splits(DataConfig(source=str(tmp_path / "src"), image_size=16))
    stream = load_splits(DataConfig(source=str(tiny_store), image_size=16, loader="stream"))
    for name in ("train", "val", "test"):
        assert np.array_equal(folder.split(name).class_counts(), stream.split(name).class_counts())
        assert len(stream.split(name)) == len(folder.split(name)) > 0


def test_data_info_says_which_loader_and_why(tiny_store: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "info", str(tiny_store), "--loader", "stream"]) == 0
    out = capsys.readouterr().out
    assert "store of 36 images, 3 classes" in out and "loader: stream (data.loader is stream" in out


@pytest.mark.slow
def test_train_streams_from_a_store(tiny_store: Path, tmp_path: Path) -> None:
    from cnnlab.runfolder import RunFolder

    run = tmp_path / "run"
    argv = ["train", "--data", str(tiny_store), "--loader", "stream", "--image-size", "16", "--model", "simple",
            "--model-opt", "spec=c8-p", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--quiet", "--out", str(run)]
    assert main(argv) == 0
    folder = RunFolder(run)
    assert folder.is_finished() and len(folder.read_metrics()) == 2
    assert 0.0 <= folder.read_summary()["test_acc"] <= 1.0


def test_prepare_refuses_a_non_empty_out_and_bad_max_side(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _folder(tmp_path / "src", per_class=2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "busy")]) == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "prepare", str(src), "--out", str(tmp_path / "s"), "--max-side", "tiny"])


@pytest.mark.slow
def test_streaming_holds_less_than_the_decoded_split(tmp_path: Path) -> None:
    """A process capped below the decoded split's size still streams every batch of it."""
    _prepare(_folder(tmp_path / "src", per_class=40), tmp_path / "store", fmt="jpeg")
    code = f"""
import resource, sys
import torch
from cnnlab.config import DataConfig
from cnnlab.data.sources import load_splits
from cnnlab.data.stream import StreamLoader
splits = load_splits(DataConfig(source={str(tmp_path / "store")!r}, loader="stream", image_size=256, val_split=0, test_split=0))
mean, std = splits.stats
loader = StreamLoader(splits.train, batch_size=8, mean=mean, std=std, workers=2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = sum(x.shape[0] for x, _ in loader)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(n, grew)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, check=True)
    n, grew = (int(v) for v in out.stdout.split())
    decoded = 120 * 3 * 256 * 256 * 4  # the whole split as float32
    assert n == 120 and grew < decoded / 4


@pytest.mark.slow
def test_a_streamed_run_interrupted_mid_epoch_resumes_exactly(tmp_path: Path) -> None:
    """Ctrl-C in the middle of a streamed run, then --resume: the same weights and metrics as a run never stopped."""
    import signal
    import time

    from cnnlab.checkpoint import load_checkpoint

    store = tmp_path / "store"
    assert main(["data", "prepare", "synthetic:classes=3,n=200,size=12,channels=1", "--out", str(store), "--format", "png"]) == 0
    args = ["train", "--data", str(store), "--loader", "stream", "--image-size", "12", "--model", "simple",
            "--model-opt", "spec=c8-p-c16-p", "--augment", "flip,cutout:4", "--epochs", "3", "--batch-size", "16",
            "--lr", "0.05", "--device", "cpu", "--quiet", "--checkpoint-minutes", "0.00001"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    assert subprocess.run([sys.executable, "-m", "cnnlab", *args, "--out", str(reference)], env=env, timeout=300).returncode == 0
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", *args, "--out", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch was recorded"
        time.sleep(0.02)
    time.sleep(0.1)  # into the second epoch
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, proc.stderr.read()
    assert not (run / "summary.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--resume", str(run)], env=env, timeout=300,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")
    metrics = [[{k: json.loads(line)[k] for k in keys} for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (run, reference)]
    assert metrics[0] == metrics[1]
    a, b = load_checkpoint(run / "last.pt")["model"], load_checkpoint(reference / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stream_needs_a_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--data", "synthetic:classes=3,n=60,size=8", "--loader", "stream", "--epochs", "1", "--device", "cpu",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    assert "cnnlab data prepare synthetic:classes=3,n=60,size=8 --out STORE" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

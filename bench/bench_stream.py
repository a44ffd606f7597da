"""Streaming data: which shard engine, and the streaming loader against the usual loaders.

    python bench/make_jpeg_folder.py --n 2000 --out /tmp/jpegs
    python bench/bench_stream.py engines --folder /tmp/jpegs --work /tmp/bench-stream
    python bench/bench_stream.py loaders --folder /tmp/jpegs --work /tmp/bench-stream [--batches 30] [--device cuda]

``engines``: the same images (longer side at most 256 px, JPEG quality 90) written with
MosaicML streaming (MDS shards, when installed), Lightning litdata (chunks) and WebDataset (tar shards):
prepare time, bytes on disk, and images/s reading + decoding + random-resized-crop to 224 +
flip into a uint8 batch (4 decoding threads; MDS and litdata read in a shuffled order by
random access, WebDataset in shard order, its only efficient order).

``loaders``: training batches (224 px, float, normalised) per second and the peak memory
of each loader, every case in a fresh process: cnnlab's StreamLoader on a store prepared
with ``cnnlab data prepare``, torchvision's ImageFolder + DataLoader with 0 and 2 workers
(RandomResizedCrop + flip + ToTensor + Normalize; persistent workers), and litdata's own
StreamingDataset + StreamingDataLoader (2 workers, the store's first part); ``stream-device``
is StreamLoader with ``--decode device`` (the batch decoded by decode_jpeg on ``--device``:
nvJPEG on a GPU). With ``--device cuda`` every batch is moved to the GPU (the DataLoader
pins memory) and the clock stops after a synchronise. Each case skips
2 warm-up batches (worker start, first shard), then times ``--batches`` batches, starting a
new epoch when one ends. ``cpu_ms_per_image``: CPU time of the main and worker processes
over the timed batches, per image (less sensitive than the rate to other jobs on the
machine; 2 cores give at most 2,000 / it images/s). Memory: the main process's max RSS, and the peak over the case's
life of the summed PSS of its whole process tree (main + worker processes, sampled every
50 ms by the parent, so shared pages count once and the workers are not left out).

Writes nothing outside ``--work``; prints one line per case and a JSON summary.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SIZE = 224
BATCH = 128
THREADS = 4
WARMUP = 2  # batches before the clock starts
SAMPLE_S = 0.05  # tree memory sampling period


def _files(folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files = [(str(p), i) for i, c in enumerate(classes) for p in sorted((folder / c).glob("*.jpg"))]
    return files, classes


def _encoded(files: list[tuple[str, int]]) -> list[tuple[bytes, int, int, int]]:
    from cnnlab.data.store import _encode

    out = []
    for path, label in files:
        data, h, w, *_ = _encode((path, 256, "jpeg", 3))
        out.append((data, label, h, w))
    return out


def _crop(data: bytes, rng_seed: int) -> np.ndarray:
    from PIL import Image

    from cnnlab.data.stream import random_resized_box

    rng = np.random.default_rng(rng_seed)
    im = Image.open(io.BytesIO(data))
    w, h = im.size
    box = random_resized_box(rng, h, w)
    im = im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(im).transpose(2, 0, 1)


def _read_rate(get, n: int, order: list[int]) -> float:  # noqa: ANN001 - get(i) -> bytes
    start = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        for b in range(0, n, BATCH):
            idx = order[b : b + BATCH]
            batch = np.stack(list(pool.map(lambda i: _crop(get(i), i), idx)))
            _ = batch.astype(np.float32)
    return n / (time.perf_counter() - start)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def engines(folder: Path, work: Path) -> dict:
    files, _ = _files(folder)
    t = time.perf_counter()
    enc = _encoded(files)
    encode_s = time.perf_counter() - t
    n = len(enc)
    order = np.random.default_rng(0).permutation(n).tolist()
    results = {"images": n, "encode_seconds": round(encode_s, 2)}

    try:
        from streaming import MDSWriter
        from streaming.base.format import reader_from_json

        out = work / "mds"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        with MDSWriter(out=str(out), columns={"image": "bytes", "label": "int"}, size_limit=1 << 26) as w:
            for data, label, _, _ in enc:
                w.write({"image": data, "label": label})
        prep = time.perf_counter() - t
        shards = json.loads((out / "index.json").read_text())["shards"]
        readers = [reader_from_json(str(out), None, s) for s in shards]
        offsets = np.cumsum([0] + [r.samples for r in readers])

        def mds_get(i: int) -> bytes:
            k = int(np.searchsorted(offsets, i, side="right")) - 1
            return readers[k].get_item(int(i - offsets[k]))["image"]

        results["mds"] = {"prepare_s": round(prep, 2), "bytes": _size(out), "images_per_s": round(_read_rate(mds_get, n, order), 1)}
    except ImportError as exc:  # mosaicml-streaming is not installed
        results["mds"] = {"error": f"{type(exc).__name__}: {exc}"}

    try:
        import litdata
        from litdata.streaming.writer import BinaryWriter

        out = work / "litdata"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        writer = BinaryWriter(cache_dir=str(out), chunk_bytes=1 << 26)
        for i, (data, label, _, _) in enumerate(enc):
            writer.add_item(i, {"image": data, "label": label})
        writer.done()
        writer.merge()
        prep = time.perf_counter() - t
        ds = litdata.StreamingDataset(str(out))
        results["litdata"] = {"prepare_s": round(prep, 2), "bytes": _size(out),
                              "images_per_s": round(_read_rate(lambda i: ds[i]["image"], n, order), 1)}  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - a benchmark reports an engine that fails, and goes on
        results["litdata"] = {"error": f"{type(exc).__name__}: {exc}"}

    import webdataset as wds

    out = work / "wds"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    with wds.ShardWriter(str(out / "shard-%05d.tar"), maxsize=1 << 26, verbose=0) as sink:
        for i, (data, label, _, _) in enumerate(enc):
            sink.write({"__key__": f"{i:07d}", "jpg": data, "cls": str(label).encode()})
    prep = time.perf_counter() - t
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    seq = [s["jpg"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]  # warm the page cache as the others are
    t = time.perf_counter()
    samples = [s["jpg"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    read_s = time.perf_counter() - t
    rate = _read_rate(lambda i: samples[i], n, list(range(n)))
    results["webdataset"] = {"prepare_s": round(prep, 2), "bytes": _size(out),
                             "images_per_s": round(n / (read_s + n / rate), 1), "order": "sequential"}  # fmt: skip
    del seq
    return results


# --------------------------------------------------------------------------- loaders, one process each

CASES = ("stream", "imagefolder-0", "imagefolder-2", "litdata-dataloader")  # also: stream-device, imagefolder-N


def _case(name: str, folder: Path, store: Path, batches: int, device: str = "cpu") -> dict:
    import torch

    if name in ("stream", "stream-device"):  # stream-device: --decode device (nvJPEG on a GPU)
        from cnnlab.config import DataConfig
        from cnnlab.data.sources import load_splits
        from cnnlab.data.stream import StreamLoader

        decode = "device" if name == "stream-device" else "cpu"
        splits = load_splits(DataConfig(source=str(store), loader="stream", image_size=SIZE, val_split=0, test_split=0,
                                        decode=decode))  # fmt: skip
        mean, std = splits.stats
        loader = StreamLoader(splits.train, batch_size=BATCH, mean=mean, std=std, train=True, workers=os.cpu_count(),
                              device=device)  # fmt: skip

        def restart():  # noqa: ANN202
            loader.set_epoch(loader.epoch + 1)
            return iter(loader)

        it = iter(loader)
    elif name.startswith("imagefolder"):
        from torchvision import datasets, transforms

        tf = transforms.Compose([transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                 transforms.Normalize([0.5] * 3, [0.25] * 3)])  # fmt: skip
        workers = int(name.rsplit("-", 1)[1])
        ds = datasets.ImageFolder(str(folder), transform=tf)
        dl = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0, pin_memory=device != "cpu")  # fmt: skip
        restart = lambda: iter(dl)  # noqa: E731
        it = restart()
    elif name == "litdata-dataloader":
        from litdata import StreamingDataLoader, StreamingDataset
        from PIL import Image
        from torchvision import transforms

        tf = transforms.Compose([transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                 transforms.Normalize([0.5] * 3, [0.25] * 3)])  # fmt: skip
        part = store / "parts" / "part-00000"  # its own loader reads one litdata folder (1,024 images)
        ds = StreamingDataset(str(part), shuffle=True, transform=lambda s: (tf(Image.open(io.BytesIO(s["image"])).convert("RGB")), 0))
        sdl = StreamingDataLoader(ds, batch_size=BATCH, num_workers=2, drop_last=True)
        restart = lambda: iter(sdl)  # noqa: E731
        it = restart()
    else:
        raise SystemExit(f"unknown case {name}")
    for _ in range(WARMUP):  # start-up (worker processes, first shard) is not counted
        it = _next(it, restart, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    sync()
    cpu = _tree_cpu()
    start = time.perf_counter()
    done = 0
    for _ in range(batches):
        it = _next(it, restart, device)
        done += BATCH
    sync()  # every batch is on the device, ready for the model
    rate = done / (time.perf_counter() - start)
    cpu_ms = (_tree_cpu() - cpu) * 1e3 / done
    return {"case": name, "device": device, "images_per_s": round(rate, 1), "cpu_ms_per_image": round(cpu_ms, 3),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}  # fmt: skip


def _tree_cpu() -> float:
    """CPU seconds (user + system) used so far by this process and its live worker processes."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for proc in (me, *me.children(recursive=True)):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _next(it, restart, device: str = "cpu"):  # noqa: ANN001, ANN202 - one batch on the device; a new epoch when the last one ended
    try:
        x, _ = next(it)
    except StopIteration:
        it = restart()
        x, _ = next(it)
    assert x.shape[0] == BATCH
    x.to(device, non_blocking=True)  # the torchvision and litdata batches are made on the CPU
    return it


def _tree_pss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """Sample the summed PSS of ``pid`` and its descendants every SAMPLE_S until ``stop``; the peak goes into ``peak``."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.is_set():
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            break
        for proc in procs:
            try:
                total += proc.memory_full_info().pss
            except psutil.Error:
                pass  # a worker that just ended
        peak[0] = max(peak[0], total)
        stop.wait(SAMPLE_S)


def loaders(folder: Path, work: Path, batches: int, cases: tuple[str, ...] = CASES, device: str = "cpu") -> list[dict]:
    store = work / "store"
    if not (store / "cnnlab-store.json").is_file():
        shutil.rmtree(store, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "cnnlab", "data", "prepare", str(folder), "--out", str(store)], check=True)
    out = []
    for name in cases:
        proc = subprocess.Popen([sys.executable, __file__, "case", name, "--folder", str(folder), "--work", str(work),
                                 "--batches", str(batches), "--device", device],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        stop, peak = threading.Event(), [0]
        sampler = threading.Thread(target=_tree_pss, args=(proc.pid, stop, peak), daemon=True)
        sampler.start()
        stdout, stderr = proc.communicate()
        stop.set()
        sampler.join()
        line = stdout.strip().splitlines()[-1] if proc.returncode == 0 and stdout.strip() else None
        out.append(json.loads(line) if line else {"case": name, "error": stderr.strip().splitlines()[-1:]})
        if line:
            out[-1]["tree_pss_mb"] = peak[0] >> 20
        print(out[-1], file=sys.stderr)
    best = max((r["images_per_s"] for r in out if r["case"].startswith("imagefolder") and "images_per_s" in r), default=None)
    for r in out:
        if best and "images_per_s" in r:
            r["vs_best_torchvision"] = round(r["images_per_s"] / best, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("engines", "loaders", "case"))
    parser.add_argument("name", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--folder", required=True, help="an image folder from make_jpeg_folder.py")
    parser.add_argument("--work", required=True, help="where the stores are written")
    parser.add_argument("--batches", type=int, default=30, help="timed batches of 128 per loader, after 2 warm-up ones (default 30)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"loaders to time, comma-separated (default {','.join(CASES)}; "
                        "also stream-device: --decode device, and imagefolder-N: N workers)")
    parser.add_argument("--device", default="cpu", help="where the batches go, ready for the model: cpu or cuda (default cpu)")
    args = parser.parse_args(argv)
    folder, work = Path(args.folder), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.what == "engines":
        result = engines(folder, work)
    elif args.what == "loaders":
        result = loaders(folder, work, args.batches, tuple(c for c in args.cases.split(",") if c), args.device)
    else:
        result = _case(args.name, folder, work / "store", args.batches, args.device)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

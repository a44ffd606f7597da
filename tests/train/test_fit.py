"""The engine end to end on small synthetic data: run folder, failure handling, options."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch

from cnnlab.cli.main import main
from cnnlab.config import OptimConfig, RunConfig, load_run_config
from cnnlab.errors import CnnlabError
from cnnlab.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.run import build_model, load_data, run_training
from cnnlab.runfolder import RunFolder
from cnnlab.train.fit import History, accuracy_se

DATA = "synthetic:classes=3,n=600,size=12,channels=1"


def _cfg(**train) -> RunConfig:
    return load_run_config(None, {
        "data": {"source": DATA, "augment": "flip"},
        "model": {"name": "simple", "options": {"spec": "c16-p-c32-p"}},
        "optim": {"lr": 0.1},
        "train": {"epochs": 3, "batch_size": 32, "checkpoint_minutes": 0, **train},
    })  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tiny_run: Path) -> tuple[Path, dict]:
    # The session's shared tiny run (tests/conftest.py): _cfg()'s settings, trained once.
    return tiny_run, RunFolder(tiny_run).read_summary()


def test_run_folder_contents(finished_run) -> None:
    run, summary = finished_run
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "last.pt", "best.pt", "summary.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(RunFolder(run).read_config().train.epochs))
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "time", "images_per_s"):
        assert all(isinstance(r[key], float) for r in records), key
    assert summary["test_acc"] > 0.8  # the synthetic task is learnable in seconds
    assert json.loads((run / "summary.json").read_text())["test_acc"] == summary["test_acc"]
    best = load_checkpoint(run / "best.pt")
    # summary.json counts epochs from 1, as the printout does; checkpoints and metrics.jsonl from 0
    assert best["epoch"] + 1 == summary["best_epoch"] and best["data"]["classes"] == ["class0", "class1", "class2"]
    top = max(r["val_acc"] for r in records)  # the kept epoch: the latest within one standard error of the top
    se = accuracy_se(top, records[0]["val_images"])
    assert max(r["epoch"] for r in records if r["val_acc"] >= top - se) + 1 == summary["best_epoch"]
    assert len(best["data"]["mean"]) == 1 and best["model_args"]["name"] == "simple"


def test_tensorboard_events_hold_every_epoch(finished_run) -> None:
    pytest.importorskip("tensorboard", reason="needs tensorboard (pip install 'cnnlab[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = finished_run
    events = EventAccumulator(str(run))
    events.Reload()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key, tag in (("train_loss", "train/loss"), ("val_acc", "val/acc"), ("lr", "lr")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [r["epoch"] + 1 for r in records]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in records], rel=1e-6)


def test_config_yaml_reproduces_the_run(finished_run, tmp_path) -> None:
    run, summary = finished_run
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(again), "--quiet"]) == 0
    assert load_run_config(again / "config.yaml") == load_run_config(run / "config.yaml")
    a, b = load_checkpoint(run / "last.pt")["model"], load_checkpoint(again / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same config: the same weights


def test_flags_override_the_config_file(finished_run, tmp_path) -> None:
    run, _ = finished_run
    from cnnlab.cli.main import build_parser
    from cnnlab.cli.train import run_overrides

    args = build_parser().parse_args(["train", "--config", str(run / "config.yaml"), "--lr", "0.3", "--epochs", "7"])
    cfg = load_run_config(args.config, run_overrides(args))
    assert cfg.optim.lr == 0.3 and cfg.train.epochs == 7 and cfg.model.options == {"spec": "c16-p-c32-p"}


def test_existing_run_folder_is_not_overwritten(finished_run) -> None:
    run, _ = finished_run
    with pytest.raises(CnnlabError, match="already holds a run"):
        run_training(_cfg(), run, verbose=False)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path) -> None:
    run = tmp_path / "nan"
    with pytest.raises(CnnlabError, match=r"NaN/inf in epoch \d+, step \d+ \(lr .*lr-find"):
        run_training(dataclasses.replace(_cfg(), optim=OptimConfig(lr=1e6)), run, verbose=False)
    if (run / "last.pt").exists():  # whatever was saved before the blow-up is whole and finite
        state = load_checkpoint(run / "last.pt")
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_early_stopping(tmp_path) -> None:
    seen = []
    summary = run_training(_cfg(epochs=30, early_stopping=1), tmp_path / "es", verbose=False,
                           on_epoch_end=lambda r: seen.append(r["epoch"]))  # fmt: skip
    assert summary["stopped"] == "early-stopping" and summary["epochs_run"] < 30 and len(seen) == summary["epochs_run"]


def test_on_epoch_end_can_stop_training(tmp_path) -> None:
    summary = run_training(_cfg(epochs=10), tmp_path / "cb", verbose=False, on_epoch_end=lambda r: r["epoch"] >= 1)
    assert summary["epochs_run"] == 2 and summary["stopped"] == "callback"


def test_ema_label_smoothing_class_weights_and_balanced_sampling_run(tmp_path) -> None:
    cfg = _cfg(epochs=2, ema=0.99, label_smoothing=0.1, class_weights=True, balanced_sampling=True, grad_clip=1.0)
    summary = run_training(cfg, tmp_path / "opts", verbose=False)
    assert summary["test_acc"] is not None and summary["epochs_run"] == 2


def test_prior_bias_makes_the_initial_loss_the_prior_entropy() -> None:
    import math

    cfg = _cfg()
    splits = load_data(cfg)
    model = build_model(cfg, splits).eval()
    fc = model.get_classifier()
    torch.nn.init.zeros_(fc.weight)  # isolate the bias: logits = log priors for every input
    x = torch.randn(8, *splits.image_shape)
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(8) % 3)
    assert loss.item() == pytest.approx(math.log(3), abs=1e-3)


class _Payload:
    def __reduce__(self):
        return (Path("/tmp/cnnlab-ckpt-pwned").touch, ())


def test_tampered_checkpoint_is_rejected_and_its_payload_does_not_run(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}, "evil": _Payload()}, bad)
    with pytest.raises(CnnlabError, match="refusing to load"):
        load_checkpoint(bad)
    assert not Path("/tmp/cnnlab-ckpt-pwned").exists()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CnnlabError):
        load_checkpoint(raw)
    assert not Path("/tmp/cnnlab-ckpt-pwned").exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(100)}})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CnnlabError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_a_text_file_is_not_a_checkpoint_rather_than_a_tampered_one(tmp_path) -> None:
    # A JSON or text file must not be reported as a possible attack: say it is another kind of file.
    for name, data in (("a.json", b'{"model": 1}'), ("a.txt", b"abc"), ("empty.pt", b"")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CnnlabError, match="is not a PyTorch checkpoint") as info:
            load_checkpoint(path)
        assert "tampered" not in str(info.value)


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    assert main(["train", "--data", DATA, "--model", "resnet21", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'resnet21'" in err[0]
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2  # refused before any work (UsageError)


def _epoch(epoch: int, acc: float | None, n: int = 10_000) -> dict:
    return {"epoch": epoch, "time": 1.0, "val_acc": acc, "val_loss": None if acc is None else 1 - acc, "val_images": n}


def _kept(accs: list[float | None], n: int = 10_000) -> History:
    history = History()
    for epoch, acc in enumerate(accs):
        history.add(_epoch(epoch, acc, n))
    return history


def test_a_later_epoch_within_the_noise_of_the_best_is_kept() -> None:
    """On 10,000 images one standard error at 95% is 0.22 points: 94.85% after a lucky 95.0% is kept, 94.7% is not."""
    assert accuracy_se(0.95, 10_000) == pytest.approx(0.00218, abs=1e-5)
    history = _kept([0.90, 0.95, 0.93, 0.9485])
    assert (history.best_epoch, history.best_val_acc, history.max_val_acc) == (3, 0.9485, 0.95)
    history = _kept([0.90, 0.95, 0.93, 0.947])
    assert (history.best_epoch, history.best_val_acc) == (1, 0.95)
    # The same gap on 500 images is noise (one standard error is ~1 point): the later epoch is kept.
    assert _kept([0.90, 0.95, 0.93, 0.947], n=500).best_epoch == 3


def test_an_overfitting_run_keeps_its_best_and_ties_go_to_the_later_epoch() -> None:
    history = _kept([0.80, 0.90, 0.88, 0.86, 0.85])
    assert (history.best_epoch, history.best_val_acc) == (1, 0.90)
    assert _kept([0.80, 0.90, 0.90]).best_epoch == 2
    # A slow slide never takes the kept epoch further than one standard error below the top.
    history = _kept([0.95, 0.9485, 0.9470, 0.9460])
    assert history.best_epoch == 1 and history.best_val_acc >= 0.95 - accuracy_se(0.95, 10_000)


def test_without_validation_the_last_epoch_is_kept() -> None:
    assert _kept([None, None, None]).best_epoch == 2

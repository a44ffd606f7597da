"""A transfer run survives a crash and resumes exactly; a transfer model exports like any other."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.cli.main import main
from cnnlab.infer.saved import load_safetensors_model
from cnnlab.checkpoint import load_checkpoint
from cnnlab.models import model_from_checkpoint
from cnnlab.run import run_training


class _Crash(Exception):
    pass


def _crash_after(epoch: int):  # noqa: ANN202 - an on_epoch_end callback
    def callback(record: dict) -> None:
        if record["epoch"] == epoch:  # raised before this epoch's checkpoint: like a kill at the epoch end
            raise _Crash

    return callback


@pytest.mark.parametrize("mode", ["feature-extract", "finetune"])
def test_transfer_run_resumes_exactly(backbone_run, make_config, tmp_path: Path, mode: str) -> None:
    cfg = make_config(transfer={"backbone": str(backbone_run), "mode": mode, "freeze_epochs": 1}, train={"epochs": 3})
    whole = run_training(cfg, tmp_path / "whole", verbose=False)
    with pytest.raises(_Crash):
        run_training(cfg, tmp_path / "crashed", on_epoch_end=_crash_after(1), verbose=False)
    assert load_checkpoint(tmp_path / "crashed" / "last.pt")["epoch"] == 1
    resumed = run_training(resume=tmp_path / "crashed", verbose=False)
    assert resumed["test_acc"] == whole["test_acc"] and resumed["epochs_run"] == 3
    a = load_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "crashed" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"


def test_finetune_killed_after_its_frozen_phase_starts_again(backbone_run, make_config, tmp_path: Path, monkeypatch) -> None:
    from cnnlab.models.transfer import TransferModel

    cfg = make_config(transfer={"backbone": str(backbone_run), "mode": "finetune", "freeze_epochs": 1}, train={"epochs": 2})
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(TransferModel, "unfreeze_backbone", lambda *a, **k: (_ for _ in ()).throw(_Crash()))
        with pytest.raises(_Crash):  # dies between the frozen (head-only) phase and the main phase
            run_training(cfg, run, verbose=False)
    assert (run / "frozen" / "last.pt").is_file() and not (run / "last.pt").exists()
    summary = run_training(resume=run, verbose=False)  # no main-phase checkpoint yet: starts again from config.yaml
    assert summary["epochs_run"] == 2 and (run / "best.pt").is_file()


def test_transfer_model_exports_to_onnx_and_safetensors(backbone_run, make_config, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install onnx onnxscript)")
    ort = pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (pip install onnxruntime)")
    pytest.importorskip("safetensors", reason="needs safetensors (pip install safetensors)")
    run = tmp_path / "run"
    run_training(make_config(transfer={"backbone": str(backbone_run), "mode": "feature-extract"}), run, verbose=False)
    state = load_checkpoint(run / "best.pt")
    model = model_from_checkpoint(state).eval()
    x = torch.randn(5, *state["data"]["image_shape"])
    with torch.no_grad():
        expected = model(x)
    assert main(["export", str(run), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)
    assert main(["export", str(run), "--format", "safetensors", "-o", str(tmp_path / "m.safetensors")]) == 0
    loaded, meta = load_safetensors_model(tmp_path / "m.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), expected, atol=1e-6, rtol=0)
    assert meta["data"]["classes"] == list(state["data"]["classes"]) and meta["model_args"]["name"] == "transfer"

"""Exports: ONNX (checked with onnxruntime), TorchScript and safetensors round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.cli.main import main
from cnnlab.errors import CnnlabError
from cnnlab.infer.export import export_model
from cnnlab.infer.predict import load_predictor
from cnnlab.infer.saved import load_safetensors_model
from cnnlab.checkpoint import load_checkpoint
from cnnlab.models import model_from_checkpoint


@pytest.fixture(scope="module")
def reference(gray_run: Path, gray_test) -> tuple[torch.nn.Module, torch.Tensor, dict]:  # noqa: ANN001
    """The checkpoint's model, 7 real normalised test images, and the checkpoint."""
    state = load_checkpoint(gray_run)
    images = torch.from_numpy(gray_test[0][:7]).float() / 255
    mean, std = (torch.tensor(state["data"][k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    return model_from_checkpoint(state).eval(), (images - mean) / std, state


def test_onnx_matches_pytorch_with_any_batch_size(gray_run: Path, reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install onnx onnxscript)")
    ort = pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (pip install onnxruntime)")
    import onnx

    out = tmp_path / "model.onnx"
    assert main(["export", str(gray_run), "--format", "onnx", "-o", str(out)]) == 0
    assert "checked with onnxruntime" in capsys.readouterr().out
    model, x, state = reference
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images" and session.get_outputs()[0].name == "logits"
    for n in (1, 7):  # the batch dimension is dynamic
        got = session.run(None, {"images": x[:n].numpy()})[0]
        with torch.no_grad():
            want = model(x[:n]).numpy()
        assert got.shape == (n, 3) and np.abs(got - want).max() <= 1e-4
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["cnnlab"])
    assert meta["data"]["classes"] == state["data"]["classes"] and meta["model_args"] == state["model_args"]


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")  # deprecated in PyTorch, still the format asked for
def test_torchscript_roundtrip(gray_run: Path, reference, tmp_path: Path) -> None:  # noqa: ANN001
    result = export_model(gray_run, "torchscript", tmp_path)  # a folder: the default name inside it
    assert result.path == tmp_path / "best.torchscript.pt" and result.max_abs_diff == 0.0
    model, x, state = reference
    extra = {"cnnlab.json": ""}
    loaded = torch.jit.load(str(result.path), _extra_files=extra)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    assert json.loads(extra["cnnlab.json"])["data"]["mean"] == state["data"]["mean"]


def test_safetensors_rebuilds_an_identical_model(run_copy: Path, reference) -> None:  # noqa: ANN001
    pytest.importorskip("safetensors", reason="needs the safetensors package (pip install safetensors)")
    result = export_model(run_copy, "safetensors")
    assert result.path == run_copy / "best.safetensors"  # next to the checkpoint by default
    model, x, state = reference
    rebuilt, meta = load_safetensors_model(result.path)
    assert rebuilt.model_args == state["model_args"] and meta["data"]["classes"] == state["data"]["classes"]
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    # the file alone is enough to predict: classes, mean/std and image shape travel with it
    predictor = load_predictor(result.path, device="cpu")
    assert predictor.classes == tuple(state["data"]["classes"]) and predictor.config == state["config"]


def test_failed_check_writes_nothing(gray_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "m.torchscript.pt"
    with pytest.raises(CnnlabError, match="differs from PyTorch"):
        export_model(gray_run, "torchscript", target, tolerance=-1.0)  # no export can pass this
    assert list(tmp_path.iterdir()) == []


def test_bad_exports(gray_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="unknown export format"):
        export_model(gray_run, "tflite")
    with pytest.raises(CnnlabError, match="refusing to overwrite"):
        export_model(gray_run, "torchscript", gray_run / "best.pt")
    pytest.importorskip("safetensors", reason="needs the safetensors package (pip install safetensors)")
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CnnlabError, match="no cnnlab metadata"):
        load_safetensors_model(plain)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CnnlabError, match="not a readable safetensors file"):
        load_safetensors_model(tmp_path / "junk.safetensors")

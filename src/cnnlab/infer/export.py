"""Export a trained model to ONNX, TorchScript or safetensors, and check the result.

Every export carries what is needed to use it: the model arguments, class names,
training mean/std and image shape travel inside the file (ONNX ``metadata_props``, a
TorchScript extra file, the safetensors header), as one JSON object under the key
``cnnlab``. Every export is verified before it is kept: it is written to a temporary
file, loaded back (onnxruntime, ``torch.jit.load``, :func:`load_safetensors_model`) and
run on a check batch whose size differs from the traced one (which also proves the
batch dimension is dynamic); the largest absolute difference from the PyTorch logits
must be at most ``tolerance``, or the export fails and nothing is written.

ONNX uses PyTorch's ``torch.export``-based exporter (the default since PyTorch 2.9; it
needs the ``onnx`` and ``onnxscript`` packages). The ``torch.jit`` API behind TorchScript
is deprecated in recent PyTorch releases; its warnings are silenced here because the
format is still what many C++ and mobile runtimes load.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab import __version__
from cnnlab.checkpoint import resolve_checkpoint
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.infer.outputs import check_output_file, write_error
from cnnlab.infer.predict import Predictor, load_predictor
from cnnlab.infer.saved import META_KEY, load_safetensors_model
from cnnlab.io import atomic_path

log = logging.getLogger(__name__)

FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}
TOLERANCE = 1e-4  # max |exported - PyTorch| over the logits of the check batch
_EXAMPLE_BATCH, _CHECK_BATCH = 2, 3  # torch.export specialises sizes 0 and 1, so trace with 2


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how it was checked.

    Attributes:
        path: the exported file.
        format: onnx, torchscript or safetensors.
        max_abs_diff: largest |exported - PyTorch| logit on the check batch (None: unchecked).
        checked_with: the runtime that ran the check (None: unchecked).
        note: why it was not checked, if it was not.
    """

    path: Path
    format: str
    max_abs_diff: float | None
    checked_with: str | None
    note: str | None = None


def export_metadata(pred: Predictor) -> dict[str, Any]:
    """The JSON object stored in every export: how to rebuild and feed the model.

    ``temperature`` is the calibration temperature `cnnlab eval` fitted for the checkpoint
    (1.0: none): the exported graph still outputs the raw logits (same argmax); calibrated
    probabilities are ``softmax(logits / temperature)`` (`cnnlab predict` on a safetensors
    export applies it).
    """
    return {"format": 1, "cnnlab_version": __version__, "model_args": pred.model_args, "data": pred.data,
            "config": pred.config, "temperature": pred.temperature}  # fmt: skip


def default_output(checkpoint: str | Path, fmt: str) -> Path:
    """Where an export goes by default: next to the checkpoint, e.g. ``run/best.onnx``."""
    file = resolve_checkpoint(checkpoint)
    return file.with_name(file.stem + FORMATS[fmt])


def _check_batches(pred: Predictor) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded standard-normal inputs (the scale of normalised images): example and check batch."""
    gen = torch.Generator().manual_seed(0)
    shape = pred.image_shape
    return torch.randn(_EXAMPLE_BATCH, *shape, generator=gen), torch.randn(_CHECK_BATCH, *shape, generator=gen)


def _compare(expected: torch.Tensor, got: Any, what: str, tolerance: float) -> float:
    diff = float(np.abs(np.asarray(got, dtype=np.float64) - expected.double().numpy()).max())
    if not diff <= tolerance:  # also catches NaN
        raise CnnlabError(f"the {what} export differs from PyTorch by up to {diff:.3g} (> {tolerance:g}); it was not written")
    return diff


def export_onnx(pred: Predictor, output: str | Path, *, tolerance: float = TOLERANCE) -> ExportResult:
    """Export to ONNX with a dynamic batch dimension (input ``images``, output ``logits``).

    Checked with onnxruntime when it is installed; otherwise exported unchecked (with a note).

    Raises:
        CnnlabError: onnx/onnxscript missing, the model cannot be exported, or the check fails.
    """
    try:
        import onnx  # noqa: F401 - the exporter needs both; lazy: an optional extra, slow to import
        import onnxscript  # noqa: F401 - lazy: an optional extra
    except ImportError:
        raise CnnlabError("ONNX export needs the onnx and onnxscript packages: pip install 'cnnlab[export]'") from None
    model = pred.model.eval()
    example, check = _check_batches(pred)
    try:
        program = torch.onnx.export(
            model, (example,), dynamo=True, verbose=False, input_names=["images"], output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - export failures come as many types; report one line
        raise CnnlabError(f"the model cannot be exported to ONNX: {str(exc).strip().splitlines()[0][:300]}") from None
    if program is None:  # only happens when the exporter is given a file name, which it is not here
        raise CnnlabError("the ONNX exporter returned no program; upgrade PyTorch")
    program.model.metadata_props[META_KEY] = json.dumps(export_metadata(pred))
    output = Path(output)
    with atomic_path(output) as tmp:
        program.save(str(tmp))
        try:
            import onnxruntime  # lazy: an optional extra, slow to import
        except ImportError:
            log.warning("onnxruntime is not installed: the ONNX file was not checked (pip install onnxruntime)")
            return ExportResult(output, "onnx", None, None, "onnxruntime not installed: not checked")
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: check.numpy()})[0]
        with torch.no_grad():
            diff = _compare(model(check), got, "ONNX", tolerance)
    return ExportResult(output, "onnx", diff, f"onnxruntime {onnxruntime.__version__}")


def export_torchscript(pred: Predictor, output: str | Path, *, tolerance: float = TOLERANCE) -> ExportResult:
    """Export a traced TorchScript module (metadata in its extra file ``cnnlab.json``).

    Note that loading a TorchScript file runs the code it contains: share it only with
    people who trust you, unlike the safetensors export.
    """
    model = pred.model.eval()
    example, check = _check_batches(pred)
    output = Path(output)
    with warnings.catch_warnings(), torch.no_grad(), atomic_path(output) as tmp:
        warnings.filterwarnings("ignore", message=r".*torch\.jit")
        try:
            traced = torch.jit.trace(model, example)
        except Exception as exc:  # noqa: BLE001
            raise CnnlabError(f"the model cannot be traced to TorchScript: {str(exc).strip().splitlines()[0][:300]}") from None
        # Through a buffer: saving to the temporary path would name the archive's root folder after it.
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"cnnlab.json": json.dumps(export_metadata(pred))})
        tmp.write_bytes(buffer.getvalue())
        loaded = torch.jit.load(str(tmp), map_location="cpu")
        diff = _compare(model(check), loaded(check).numpy(), "TorchScript", tolerance)
    return ExportResult(output, "torchscript", diff, "torch.jit.load")


def export_safetensors(pred: Predictor, output: str | Path, *, tolerance: float = TOLERANCE) -> ExportResult:
    """Save the weights as safetensors with the metadata in the header, so the file alone
    rebuilds the model (:func:`load_safetensors_model`) without running any code."""
    try:
        from safetensors.torch import save_file  # lazy: an optional extra
    except ImportError:
        raise CnnlabError("safetensors export needs the safetensors package: pip install 'cnnlab[export]'") from None
    model = pred.model.eval()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _, check = _check_batches(pred)
    output = Path(output)
    with torch.no_grad(), atomic_path(output) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(export_metadata(pred))})
        rebuilt, _ = load_safetensors_model(tmp)
        diff = _compare(model.cpu()(check), rebuilt(check).numpy(), "safetensors", tolerance)
    return ExportResult(output, "safetensors", diff, "load_safetensors_model")


_EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript, "safetensors": export_safetensors}


def export_target(checkpoint: str | Path, fmt: str, output: str | Path | None = None, *, force: bool = False) -> Path:
    """The file an export will be written to, checked before any work (see :mod:`cnnlab.infer.outputs`).

    ``output`` may be a file, or a folder to put the default name in (an existing folder,
    or a path ending in ``/``); ``None`` means next to the checkpoint (:func:`default_output`).

    Raises:
        CnnlabError: the checkpoint does not exist.
        UsageError: the path would replace the checkpoint itself, a file of a run folder
            (even with ``force``), or an existing file (without ``force``); a folder on its
            way is a file, or is not writable.
    """
    if fmt not in _EXPORTERS:
        raise UsageError(f"unknown export format '{fmt}'; choose one of {', '.join(_EXPORTERS)}")
    source = resolve_checkpoint(checkpoint)
    default = default_output(source, fmt)
    if output is None:
        target = default
    elif str(output).endswith(("/", os.sep)) or Path(output).is_dir():  # a folder: the default name in it
        if not str(output).strip():
            raise UsageError("-o is empty; give the export's file name or folder")
        target = Path(output) / default.name
    else:
        target = Path(output)
    if target.exists() and _same_file(target, source):
        raise UsageError(f"refusing to overwrite the checkpoint {source} with its own export; choose another -o")
    return check_output_file(target, flag="--out", force=force, own_run=source.parent, kind=f"{fmt} export")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def export_model(
    checkpoint: str | Path, fmt: str, output: str | Path | None = None, *, tolerance: float = TOLERANCE, force: bool = False
) -> ExportResult:
    """Load a checkpoint (or run folder, or safetensors file) on the CPU and export it.

    Args:
        checkpoint: run folder, ``.pt`` checkpoint or ``.safetensors`` export.
        fmt: ``onnx``, ``torchscript`` or ``safetensors``.
        output: the file to write, or a folder for the default name (default: next to
            the checkpoint, see :func:`default_output`).
        tolerance: largest allowed |exported - PyTorch| logit on the check batch.
        force: replace an existing file (never the checkpoint or a run folder's own files).

    Raises:
        UsageError: unknown format, or an output path refused by :func:`export_target`.
        CnnlabError: unreadable checkpoint, failed export or check, a failed write.
    """
    target = export_target(checkpoint, fmt, output, force=force)  # before loading: a typo fails fast
    pred = load_predictor(checkpoint, device="cpu")  # exports are float32 CPU graphs
    try:
        return _EXPORTERS[fmt](pred, target, tolerance=tolerance)
    except OSError as exc:
        raise write_error(target, exc) from None

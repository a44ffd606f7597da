"""Reading a saved model: a run folder, a ``.pt`` checkpoint or a ``.safetensors`` export.

The one reader that evaluation, prediction and export share. Whatever the file, the
result is the same :class:`SavedModel`: the rebuilt network (on the CPU, in eval mode)
and what it needs to be fed (``model_args``, the training data's classes / mean / std /
image shape, the run's config). Nothing read here runs code from the file: checkpoints
are loaded with ``weights_only`` and safetensors files hold only tensors and JSON;
TorchScript archives, which would run their own code, are refused.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.checkpoint import load_checkpoint, resolve_checkpoint
from cnnlab.errors import CnnlabError
from cnnlab.models import model_from_args
from cnnlab.models.user import is_user_model, rebuild_user_model
from cnnlab.runfolder import RunFolder

SAFETENSORS_SUFFIX = ".safetensors"
META_KEY = "cnnlab"  # the key of the JSON metadata in every export (see cnnlab.infer.export)


@dataclass
class SavedModel:
    """A model read back from disk, with what is needed to use it.

    Attributes:
        model: the network, in eval mode, on the CPU.
        model_args: ``create_model`` arguments that rebuild it (``{"name": ..., ...}``).
        data: the training data's description: ``mean``, ``std`` ([0, 1] units),
            ``classes``, ``image_shape`` [C, H, W], ``source``, ``fingerprint``.
        config: the training run's configuration as plain data (None when unknown).
        path: the file the model was read from.
        temperature: the calibration temperature a safetensors export carries in its metadata
            (None: none; checkpoints keep theirs in ``calibration.json``, see :mod:`cnnlab.infer.calibration`).
    """

    model: nn.Module
    model_args: dict[str, Any]
    data: dict[str, Any]
    config: dict[str, Any] | None
    path: Path
    temperature: float | None = None


def read_saved_model(path: str | Path) -> SavedModel:
    """Read a run folder (its best.pt, else last.pt), a checkpoint or a safetensors export.

    Raises:
        CnnlabError: missing, corrupt or non-cnnlab file, a TorchScript archive, or
            weights that do not fit the model they describe; the message names the file.
    """
    file = resolve_checkpoint(path)
    if file.suffix.lower() == SAFETENSORS_SUFFIX:
        model, meta = load_safetensors_model(file)
        return SavedModel(model, dict(meta["model_args"]), dict(meta["data"]), meta.get("config"), file,
                          _temperature(meta.get("temperature"), file))  # fmt: skip
    if _is_torchscript(file):
        raise CnnlabError(f"{file} is a TorchScript export, which cnnlab does not load (it would run code "
                          "from the file); use the run's .pt checkpoint or a .safetensors export")  # fmt: skip
    state = load_checkpoint(file)  # its structure checked by cnnlab.checkpoint.validate_checkpoint
    # What inference needs beyond that structure: fields that agree with each other, finite weights.
    check_description(state["model_args"], state["data"], state.get("config"), file)
    _check_finite(state["model"], file)
    model = _build(state["model_args"], file)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CnnlabError(f"the weights in {file} do not fit its model '{state['model_args']['name']}': "
                          f"{str(exc).strip().splitlines()[0][:200]}") from None  # fmt: skip
    return SavedModel(model.eval(), dict(state["model_args"]), dict(state["data"]), state.get("config"), file)


def check_description(model_args: Any, data: Any, config: Any, file: Path) -> None:
    """Check what a saved model says about itself before anything uses it.

    A file that loads safely may still hold anything (a hand-made or damaged checkpoint,
    a checkpoint of another program): every field inference reads is checked here, so a
    wrong one is a message naming the file and the field, never a ``KeyError`` later.

    Args:
        model_args: ``{"name": ..., **options}``.
        data: ``classes``, ``image_shape`` [C, H, W], ``mean`` and ``std`` (one per channel).
        config: the run's configuration (a dict of sections) or None.
        file: the file they came from, for the messages.

    Raises:
        CnnlabError: a field is missing or has the wrong type or value.
    """

    def bad(what: str) -> CnnlabError:
        return CnnlabError(f"{file} is not a usable cnnlab model file: {what}")

    if not isinstance(model_args, dict) or not isinstance(model_args.get("name"), str) or not model_args["name"]:
        raise bad("'model_args' is not a dict with a model name")
    if not isinstance(data, dict):
        raise bad("'data' is not a dict")
    classes = data.get("classes")
    if not isinstance(classes, (list, tuple)) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise bad("'data.classes' is not a list of at least two class names")
    shape = data.get("image_shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):  # fmt: skip
        raise bad(f"'data.image_shape' is not [C, H, W] of positive integers (it is {str(shape)[:60]})")
    for key in ("mean", "std"):
        values = data.get(key)
        if (not isinstance(values, (list, tuple)) or len(values) != shape[0]
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)):  # fmt: skip
            raise bad(f"'data.{key}' is not {shape[0]} finite number(s), one per channel")
    if not all(float(v) > 0 for v in data["std"]):
        raise bad("'data.std' has a value that is not positive")
    n = model_args.get("num_classes", len(classes))
    if n != len(classes):
        raise bad(f"the model has {n} outputs but {len(classes)} class names")
    if model_args.get("in_chans", shape[0]) != shape[0]:
        raise bad(f"the model takes {model_args['in_chans']} channel(s) but the images have {shape[0]}")
    if config is not None and (not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values())):
        raise bad("'config' is not a dict of sections")


def _check_finite(tensors: dict[str, Any], file: Path) -> None:
    """Refuse weights with NaN/inf: every output would be NaN, and results silently meaningless."""
    bad = [k for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]  # fmt: skip
    if bad:
        raise CnnlabError(f"the weights in {file} are not finite (NaN/inf in {len(bad)} tensor(s), e.g. {bad[0]}): "
                          "the run diverged before this was saved; use a checkpoint of a run that trained well")  # fmt: skip


def _temperature(value: Any, file: Path) -> float | None:
    """An export's stored calibration temperature (None or 1: none), checked like every other field."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CnnlabError(f"{file} is not a usable cnnlab model file: 'temperature' is not a positive number")
    return None if float(value) == 1.0 else float(value)


def _build(model_args: dict[str, Any], file: Path) -> nn.Module:
    """The untrained model ``model_args`` describe; any failure is the file's fault, named as such."""
    if is_user_model(model_args["name"]):  # only with code the user names or trusts (cnnlab.models.user)
        return rebuild_user_model(model_args, code_dir=file.parent / RunFolder.CODE, what=str(file))
    try:
        return model_from_args(model_args)
    except CnnlabError as exc:
        raise CnnlabError(f"{file}: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        # A factory given option values of the wrong type or range by a hand-made file.
        raise CnnlabError(f"{file}: the model '{model_args['name']}' cannot be built from the options it "
                          f"records ({type(exc).__name__}: {str(exc).strip()[:160]})") from None  # fmt: skip


def load_safetensors_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a safetensors file written by :func:`cnnlab.infer.export.export_safetensors`.

    Returns:
        ``(model, meta)``: the model in eval mode on the CPU, and the stored metadata
        (``model_args``, ``data`` with classes / mean / std / image_shape, ``config``).

    Raises:
        CnnlabError: missing file, not safetensors, no cnnlab metadata, or weights that
            do not fit the described model.
    """
    try:
        from safetensors import SafetensorError, safe_open  # lazy: an optional extra
    except ImportError:
        raise CnnlabError("reading .safetensors files needs the safetensors package: pip install 'cnnlab[export]'") from None
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise CnnlabError(f"{path} is not a readable safetensors file ({str(exc)[:160]})") from None
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, ValueError):
        meta = None
    if not isinstance(meta, dict) or "model_args" not in meta or "data" not in meta:
        raise CnnlabError(f"{path} has no cnnlab metadata; export it with `cnnlab export --format safetensors`")
    check_description(meta["model_args"], meta["data"], meta.get("config"), path)
    _check_finite(tensors, path)
    model = _build(meta["model_args"], path)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CnnlabError(f"the weights in {path} do not fit its model '{meta['model_args']['name']}': "
                          f"{str(exc).strip().splitlines()[0][:200]}") from None  # fmt: skip
    return model.eval(), meta


def _is_torchscript(path: Path) -> bool:
    """Whether a file is a TorchScript archive (a zip with compiled code), not a checkpoint."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False

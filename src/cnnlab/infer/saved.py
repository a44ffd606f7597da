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
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from cnnlab.checkpoint import load_checkpoint, resolve_checkpoint
from cnnlab.errors import CnnlabError
from cnnlab.models import model_from_args, model_from_checkpoint

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
    """

    model: nn.Module
    model_args: dict[str, Any]
    data: dict[str, Any]
    config: dict[str, Any] | None
    path: Path


def read_saved_model(path: str | Path) -> SavedModel:
    """Read a run folder (its best.pt, else last.pt), a checkpoint or a safetensors export.

    Raises:
        CnnlabError: missing, corrupt or non-cnnlab file, a TorchScript archive, or
            weights that do not fit the model they describe.
    """
    file = resolve_checkpoint(path)
    if file.suffix.lower() == SAFETENSORS_SUFFIX:
        model, meta = load_safetensors_model(file)
        return SavedModel(model, dict(meta["model_args"]), dict(meta["data"]), meta.get("config"), file)
    if _is_torchscript(file):
        raise CnnlabError(f"{file} is a TorchScript export, which cnnlab does not load (it would run code "
                          "from the file); use the run's .pt checkpoint or a .safetensors export")  # fmt: skip
    state = load_checkpoint(file)
    missing = [k for k in ("model_args", "data") if k not in state]
    if missing or not state["model_args"].get("name"):
        raise CnnlabError(f"{file} lacks {', '.join(missing) or 'the model name'}; it was not written by `cnnlab train`")
    model = model_from_checkpoint(state)
    return SavedModel(model.eval(), dict(state["model_args"]), dict(state["data"]), state.get("config"), file)


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
        name = meta["model_args"]["name"]
        meta["data"]["classes"], meta["data"]["image_shape"]  # noqa: B018 - required keys
    except (KeyError, TypeError, ValueError):
        raise CnnlabError(f"{path} has no cnnlab metadata; export it with `cnnlab export --format safetensors`") from None
    model = model_from_args(meta["model_args"])
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CnnlabError(f"the weights in {path} do not fit its model '{name}': {str(exc)[:200]}") from None
    return model.eval(), meta


def _is_torchscript(path: Path) -> bool:
    """Whether a file is a TorchScript archive (a zip with compiled code), not a checkpoint."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False

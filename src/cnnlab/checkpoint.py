"""Checkpoints: written atomically, loaded without executing code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(weights_only=True)`` can read it: that unpickler refuses every global a
file could name, and a tampered file that carries a pickle payload is rejected before
anything in it runs. Writes go to a temporary file that is fsynced and renamed over the
old checkpoint, so a kill at any moment leaves either the old or the new file, whole.

Every RNG the run draws from is saved with it (Python, NumPy, torch CPU and CUDA); the
data loader's randomness is a pure function of (seed, epoch, batch), so together with
the step counters (and for fp16 the gradient scaler's loss scale) the run resumes exactly.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_path

FORMAT = 1
LAST_NAME = "last.pt"  # the resumable checkpoint of a run folder (RunFolder.LAST)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plain data and tensors only) to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file a path names: a file itself, or a run folder's best.pt, else last.pt.

    Raises:
        CnnlabError: the path does not exist, or the folder holds no checkpoint.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        if (path / "recipe.json").is_file():  # a recipe's models are in its run folders
            raise CnnlabError(f"{path} is a recipe folder; its final model is {path / 'final'} (more final models: "
                              f"final-2, final-3; `cnnlab predict {path} FILES` and `cnnlab eval {path}` use the recipe's result)")  # fmt: skip
        raise CnnlabError(f"{path} holds no checkpoint (best.pt or last.pt); pass a run folder or a .pt/.safetensors file")
    if not path.is_file():
        raise CnnlabError(f"checkpoint {path} does not exist; pass a run folder or a .pt/.safetensors file")
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, resumable: bool = False
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without running code from it.

    Args:
        path: a checkpoint file, or a run folder (its best.pt, else last.pt).
        map_location: where the tensors go.
        resumable: the caller continues training from it (``--resume``): it must be a
            ``last.pt``, with optimizer, counters and RNG states, not weights only.

    Raises:
        CnnlabError: missing, truncated, corrupt or tampered file (a file that tries to
            load any Python object other than tensors and plain containers), or a file
            that loads but is not a cnnlab checkpoint (:func:`validate_checkpoint`).
    """
    path = resolve_checkpoint(path)
    if not _looks_like_torch_file(path):
        raise CnnlabError(
            f"{path} is not a PyTorch checkpoint (neither a torch zip archive nor a pickle); "
            "use a run folder or its best.pt/last.pt"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CnnlabError(
            f"refusing to load {path}: it contains objects other than tensors and plain data "
            f"({first[:160]}); it may have been tampered with, only load checkpoints you trust"
        ) from None
    # A file that is not a torch archive at all (text, an image) makes torch's legacy reader
    # fail with whatever it trips over first: KeyError, IndexError, TypeError, ...
    except (RuntimeError, EOFError, OSError, ValueError, LookupError, TypeError, AttributeError) as exc:
        raise CnnlabError(
            f"checkpoint {path} is truncated or corrupt, or another kind of file "
            f"({type(exc).__name__}: {str(exc)[:120]}); use a run folder or its best.pt/last.pt"
        ) from None
    return validate_checkpoint(state, path, resumable=resumable)


def _looks_like_torch_file(path: Path) -> bool:
    """Whether ``path`` starts like a ``torch.save`` file: a zip archive (the format since
    torch 1.6) or a legacy pickle (protocol >= 2 starts with byte 0x80).

    Without this, a JSON or text file reaches the unpickler and is reported as a possibly
    tampered file, which sends the user looking for an attack instead of the wrong path.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CnnlabError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _schema_problem(state: Any, *, resumable: bool) -> str | None:
    """What makes ``state`` not a cnnlab checkpoint (None when it is one)."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a checkpoint dict"
    weights = state.get("model")
    if not isinstance(weights, dict) or not weights:
        return "it has no model weights ('model')"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        return "its 'model' entry is not a state dict of named tensors"
    args = state.get("model_args")
    if not isinstance(args, dict) or not isinstance(args.get("name"), str) or not args["name"]:
        return "it does not say which model it holds ('model_args' with a name)"
    data = state.get("data")
    if not isinstance(data, dict):
        return "it does not describe its data ('data')"
    classes, shape = data.get("classes"), data.get("image_shape")
    if not isinstance(classes, list) or not classes:
        return "its data has no class names ('data.classes')"
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
        return "its data has no image shape [C, H, W] ('data.image_shape')"
    for key in ("mean", "std"):
        values = data.get(key)
        if not (isinstance(values, list) and len(values) == shape[0] and all(isinstance(v, (int, float)) for v in values)):
            return f"its data has no per-channel '{key}' ('data.{key}')"
    if "config" in state and state["config"] is not None and not isinstance(state["config"], dict):
        return "its 'config' is not a mapping"
    if not resumable:
        return None
    if not isinstance(state.get("config"), dict):
        return "it has no run configuration ('config')"
    optimizer = state.get("optimizer")
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("param_groups"), list) and isinstance(optimizer.get("state"), dict)):
        return "it has no optimizer state ('optimizer')"
    for key, kind in (("epoch", int), ("step", int), ("epoch_state", dict), ("history", dict), ("rng", dict)):
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            return f"it has no '{key}' ({kind.__name__})"
    scaler = state.get("scaler")  # fp16 runs: the gradient scaler's loss scale (None or absent otherwise)
    if scaler is not None and not (isinstance(scaler, dict) and isinstance(scaler.get("scale"), (int, float))):
        return "its gradient scaler state ('scaler') holds no loss scale"
    if not all(k in state["rng"] for k in ("python", "numpy", "torch")):
        return "its RNG states ('rng') are incomplete"
    if not isinstance(data.get("fingerprint"), str):
        return "its data has no fingerprint ('data.fingerprint')"
    return None


def validate_checkpoint(state: Any, path: str | Path, *, resumable: bool = False) -> dict[str, Any]:
    """Check that a loaded file has a cnnlab checkpoint's structure; return it.

    One schema for every reader, so a file that unpickles safely but holds something else
    (a bare state dict, a list, another program's checkpoint) is named as such instead of
    failing later with a ``KeyError`` deep inside.

    Args:
        state: what ``torch.load`` returned.
        path: the file, for the message.
        resumable: also require what training needs to continue (a ``last.pt``).

    Raises:
        CnnlabError: naming what is missing and what to use instead.
    """
    path = Path(path)
    problem = _schema_problem(state, resumable=False)
    if problem is not None:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint: {problem}; use a run folder or a best.pt/last.pt written by `cnnlab train`")
    if resumable:
        if "optimizer" not in state:  # the weights of a best.pt (or an export-ready copy)
            raise CnnlabError(
                f"{path} holds weights only, not a training state; resume from the run folder "
                f"({path.parent}) or its {LAST_NAME}"
            )
        problem = _schema_problem(state, resumable=True)
        if problem is not None:
            raise CnnlabError(f"{path} cannot be resumed: {problem}; resume from a run folder's {LAST_NAME} written by `cnnlab train`")
    return state


def rng_state() -> dict[str, Any]:
    """Every global RNG state, as tensors and plain data (safe for ``weights_only``)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *[float(v) if isinstance(v, float) else int(v) for v in np_state[2:]]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])

"""Checkpoints: written atomically, loaded without executing code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(weights_only=True)`` can read it: that unpickler refuses every global a
file could name, and a tampered file that carries a pickle payload is rejected before
anything in it runs. Writes go to a temporary file that is fsynced and renamed over the
old checkpoint, so a kill at any moment leaves either the old or the new file, whole.

Every RNG the run draws from is saved with it (Python, NumPy, torch CPU and CUDA); the
data loader's randomness is a pure function of (seed, epoch, batch), so together with
the step counters the run resumes exactly.
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
        raise CnnlabError(f"{path} holds no checkpoint (best.pt or last.pt); pass a run folder or a .pt/.safetensors file")
    if not path.is_file():
        raise CnnlabError(f"checkpoint {path} does not exist; pass a run folder or a .pt/.safetensors file")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without running code from it.

    Raises:
        CnnlabError: missing, truncated, corrupt or tampered file (a file that tries to
            load any Python object other than tensors and plain containers).
    """
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CnnlabError(
            f"refusing to load {path}: it contains objects other than tensors and plain data "
            f"({first[:160]}); it may have been tampered with, only load checkpoints you trust"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CnnlabError(f"checkpoint {path} is truncated or corrupt ({str(exc)[:160]}); use another one") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (no model weights in it)")
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

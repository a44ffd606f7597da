"""Predict classes of image files with a trained model, preprocessed exactly as in training.

A model must see new images the way it saw its training images, or its accuracy on
them is meaningless. Two things make that so here:

- decoding: every file goes through the same function the image-folder cache uses
  (:func:`cnnlab.data.images.decode_image`: EXIF rotation, mode conversion including 16-bit,
  alpha and CMYK, shorter side resized, centre crop) with the channels and size of the
  checkpoint's ``image_shape``;
- normalisation: the uint8 images are batched by the same :class:`DeviceLoader` that fed
  evaluation during training, with the training split's mean/std stored in the
  checkpoint (never statistics of the new images).

A PNG written from a dataset image therefore gets exactly the logits the in-memory image
got during evaluation (``tests/infer`` checks this).

A model trained by streaming a prepared store evaluated on the centre of each image: the
shorter side resized to ``size / eval_crop`` and the centre ``size`` x ``size`` crop
(:mod:`cnnlab.data.stream`; ``eval_crop`` is 0.875, 224 from 256). Its files are cropped so
(:func:`decode_centre_crop`), with the store's own resize, so a file the store keeps as it is
(``--max-side native``) gets the logits `cnnlab eval` gave it (``tests/data/test_stream_runs.py``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.config import TrainConfig
from cnnlab.data.decode import _convert, readable
from cnnlab.data.images import IMAGE_SUFFIXES, decode_image, parallel_map
from cnnlab.data.imageset import ImageSet
from cnnlab.data.loader import DeviceLoader
from cnnlab.data.store import EVAL_CROP, StoreSplit, draft_reduced, resize_over_box
from cnnlab.data.stream import StreamLoader, center_box
from cnnlab.errors import CnnlabError
from cnnlab.infer.calibration import calibration_path, stored_temperature
from cnnlab.infer.saved import read_saved_model
from cnnlab.train.loaders import build_loader
from cnnlab.train.runtime import Runtime, resolve_runtime

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """The top-k classes of one image file, or why it could not be read.

    Attributes:
        path: the file.
        indices: class indices, most probable first (empty on error).
        classes: their names.
        probs: their softmax probabilities.
        error: why the file could not be used (None on success).
        converted: what decoding changed to give the model its input: colour mode and size,
            e.g. ``("mode RGBA -> L (transparency composited onto white)", "size 300x100 -> 12x12 ...")``.
        warning: why the prediction may mean little (an input far from the training size).
    """

    path: str
    indices: tuple[int, ...] = ()
    classes: tuple[str, ...] = ()
    probs: tuple[float, ...] = ()
    error: str | None = None
    converted: tuple[str, ...] = ()
    warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for a JSON line (``converted`` is a list, ``warning`` null when there is none)."""
        # A file name that is not UTF-8 is shown with \xNN escapes: a lone surrogate is not valid JSON text.
        name = readable(self.path)
        if self.error is not None:
            return {"file": name, "error": self.error}
        top = [{"class": c, "index": i, "prob": p} for c, i, p in zip(self.classes, self.indices, self.probs)]
        return {"file": name, "predictions": top, "converted": list(self.converted), "warning": self.warning}


@dataclass
class Predictor:
    """A trained model ready for inference, with what it needs to preprocess inputs.

    Attributes:
        model: the network, in eval mode, on ``runtime.device``.
        model_args: ``create_model`` arguments that rebuild it (``{"name": ..., ...}``).
        data: the checkpoint's data description: ``mean``, ``std`` (training split, [0, 1]
            units), ``classes``, ``image_shape`` [C, H, W], ``source``, ``fingerprint``.
        config: the training run's configuration as plain data (None when unknown).
        path: the file the model was loaded from.
        runtime: device and precision.
        temperature: the logits are divided by it before the softmax (1: the model's own
            probabilities); fitted by `cnnlab eval` and read from the model's
            ``calibration.json`` by :func:`load_predictor` (see :mod:`cnnlab.infer.calibration`).
        temperature_from: the file ``temperature`` was read from (None: not calibrated).
    """

    model: nn.Module
    model_args: dict[str, Any]
    data: dict[str, Any]
    config: dict[str, Any] | None
    path: Path
    runtime: Runtime
    temperature: float = 1.0
    temperature_from: Path | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, indexed by the model's output."""
        return tuple(self.data["classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the model was trained on."""
        c, h, w = (int(v) for v in self.data["image_shape"])
        return c, h, w

    @property
    def eval_crop(self) -> float | None:
        """The centre fraction of the shorter side that evaluation fed the model (a run streamed
        from a store); None: the whole shorter side (the decode cache's square)."""
        if "eval_crop" in self.data:
            return float(self.data["eval_crop"])
        return EVAL_CROP if trained_loader(self.data) == "stream" else None

    def loader(self, images: ImageSet | StoreSplit, batch_size: int) -> DeviceLoader | StreamLoader:
        """Evaluation batches of ``images``, normalised with the training statistics."""
        return build_loader(images, (self.data["mean"], self.data["std"]), self.runtime, batch_size=batch_size)

    @torch.no_grad()
    def predict_images(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities of uint8 images.

        Args:
            images: uint8 (N, C, H, W) with the checkpoint's image shape.
            batch_size: images per forward pass.

        Returns:
            float32 (N, classes) softmax probabilities (of the logits divided by ``temperature``).
        """
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            want = "x".join(map(str, self.image_shape))
            raise CnnlabError(f"expected uint8 images of shape N x {want}, got {images.dtype} {tuple(images.shape)}")
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        dummy = ImageSet(images, np.zeros(len(images), np.int64), self.classes)
        out = []
        for x, _ in self.loader(dummy, batch_size):
            with self.runtime.autocast():
                logits = self.model(x)
            out.append((logits.float() / self.temperature).softmax(1).cpu())
        return torch.cat(out).numpy()

    def predict_files(self, paths: Sequence[str | Path], *, topk: int = 3, batch_size: int = 256) -> Iterator[Prediction]:
        """Top-k predictions of image files, in the order given.

        Files are decoded in worker processes (for many files) and classified in batches;
        a file that cannot be decoded yields a :class:`Prediction` with ``error`` set
        instead of stopping the others.
        """
        c, h, w = self.image_shape
        if h != w:  # the decoder makes square images, as the training cache did
            raise CnnlabError(f"the model expects {h}x{w} images; only square image shapes can be predicted from files")
        k = max(1, min(topk, len(self.classes)))
        crop = self.eval_crop
        decode, jobs = (decode_image, [(str(p), h, c) for p in paths]) if crop is None else \
            (decode_centre_crop, [(str(p), h, c, crop) for p in paths])  # fmt: skip
        pending: list[tuple[str, np.ndarray | None, str | None]] = []
        for job, (arr, err) in zip(jobs, parallel_map(decode, jobs, "decoding")):
            pending.append((job[0], arr, err))
            if len(pending) == batch_size:
                yield from self._classify(pending, k, batch_size)
                pending = []
        yield from self._classify(pending, k, batch_size)

    def _classify(self, items: list[tuple[str, np.ndarray | None, str | None]], k: int, batch_size: int) -> Iterator[Prediction]:
        good = [arr for _, arr, _ in items if arr is not None]
        probs = self.predict_images(np.stack(good), batch_size) if good else np.zeros((0, len(self.classes)))
        row = 0
        c, size, _ = self.image_shape
        for file, arr, err in items:
            if arr is None:
                yield Prediction(file, error=_short_error(err or "unreadable"))
                continue
            p = probs[row]
            row += 1
            if not np.isfinite(p).all():  # a model that overflows on this input: no class can be named
                yield Prediction(file, error="the model's output is not finite (NaN/inf) for this image")
                continue
            top = np.argsort(-p, kind="stable")[:k]
            converted, warning = describe_input(file, c, size, self.eval_crop)
            yield Prediction(file, tuple(int(i) for i in top), tuple(self.classes[i] for i in top),
                             tuple(float(p[i]) for i in top), converted=converted, warning=warning)  # fmt: skip


#: An input whose shorter side is below 1/FAR_SMALLER, or whose longer side is above FAR_LARGER
#: times, the training size is far from what the model learned on: its prediction is flagged.
FAR_SMALLER = 4
FAR_LARGER = 8

# Why a colour mode changes on the way to the model's L or RGB input (cnnlab.data.decode's rules).
_MODE_NOTES = {
    "I;16": "16-bit scaled to 8-bit", "I;16B": "16-bit scaled to 8-bit", "I;16L": "16-bit scaled to 8-bit",
    "I;16N": "16-bit scaled to 8-bit", "I": "32-bit integers mapped to 8-bit", "F": "floating point mapped to 8-bit",
    "RGBA": "transparency composited onto white", "LA": "transparency composited onto white",
    "La": "transparency composited onto white", "RGBa": "transparency composited onto white",
    "PA": "transparency composited onto white", "P": "palette colours", "CMYK": "CMYK converted",
    "1": "black and white", "RGB": "colour to gray (luma)", "L": "gray repeated to 3 channels",
}  # fmt: skip


def describe_input(path: str | Path, channels: int, size: int, crop: float | None = None) -> tuple[tuple[str, ...], str | None]:
    """What decoding ``path`` for a model of ``channels`` x ``size`` x ``size`` changes, and a warning.

    ``crop``: the centre fraction of the shorter side that is kept (:func:`decode_centre_crop`).

    Only the file's header is read (its colour mode and size, EXIF rotation applied), so
    this is cheap next to decoding.

    Returns:
        ``(converted, warning)``: e.g. ``("mode RGBA -> L (transparency composited onto white)",
        "size 3x3 -> 12x12 (enlarged)")`` and, when a side is less than 1/:data:`FAR_SMALLER`
        or more than :data:`FAR_LARGER` times the training size, why the prediction means little.
    """
    from PIL import Image  # lazy: only predicting from files needs PIL

    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF rotation by 90 degrees: decoding swaps the sides
                w, h = h, w
            transparent = "transparency" in im.info
    except Exception:  # noqa: BLE001 - it decoded, so this is only a header we could not re-read
        return (), None
    target = "L" if channels == 1 else "RGB"
    converted = []
    if mode != target or transparent:
        note = _MODE_NOTES.get(mode, "") if mode != target else "transparency composited onto white"
        converted.append(f"mode {mode} -> {target}" + (f" ({note})" if note else ""))
    if crop is not None:
        side = crop * min(w, h)
        how = ["enlarged"] if side < size else ["shrunk"] if side > size else []
        converted.append(f"size {w}x{h} -> {size}x{size} ({', '.join(how + [f'centre {crop:.1%} of the shorter side'])})")
    elif (w, h) != (size, size):
        how = ["enlarged"] if min(w, h) < size else ["shrunk"] if min(w, h) > size else []
        how += ["centre-cropped to a square"] if w != h else []
        converted.append(f"size {w}x{h} -> {size}x{size} ({', '.join(how)})")
    warning = None
    if min(w, h) * FAR_SMALLER < size:
        warning = (f"{w}x{h} is far smaller than the {size}x{size} images the model was trained on "
                   f"(a side under 1/{FAR_SMALLER} of it): this prediction means little")  # fmt: skip
    elif max(w, h) > FAR_LARGER * size:
        warning = (f"{w}x{h} is far larger than the {size}x{size} images the model was trained on "
                   f"(a side over {FAR_LARGER}x it): shrunk this much, its detail is gone and this prediction means little")  # fmt: skip
    return tuple(converted), warning


def _short_error(reason: str) -> str:
    """A one-line reason without PIL's repetition of the file name."""
    if "cannot identify image file" in reason:
        return "not an image (unknown or unsupported format)"
    return reason.splitlines()[0][:200]


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders into their image files (recursively, sorted); keep files as given.

    Files named directly are kept whatever their suffix, so a misnamed image still gets
    predicted and a non-image gets a per-file error; inside folders only files with an
    image suffix (``.png``, ``.jpg``, ...) are taken.

    Raises:
        CnnlabError: a path does not exist or is not a file or folder (a device, a pipe),
            or a folder holds no image files.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))  # fmt: skip
            if not files:
                raise CnnlabError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {p}")
            found += files
        elif p.is_file():
            found.append(p)
        elif p.exists():  # a device or a pipe: reading it could block or never end
            raise CnnlabError(f"{p} is not a regular file or folder; pass image files or folders of images")
        else:
            raise CnnlabError(f"{p} does not exist; pass image files or folders of images")
    return found


def trained_loader(data: dict[str, Any]) -> str:
    """``stream`` or ``memory``: how a run's data was batched, from its checkpoint's data description.

    Checkpoints written before the description recorded ``loader`` name it in the data's
    name (``photos.store (store, 224px, stream)``).
    """
    if "loader" in data:
        return str(data["loader"])
    return "stream" if str(data.get("source", "")).endswith(", stream)") else "memory"


def decode_centre_crop(args: tuple[str, int, int, float]) -> tuple[np.ndarray | None, str | None]:
    """Decode one file as a streamed run's evaluation decoded a stored image, or return why it failed.

    The file is made upright and converted as ``cnnlab data prepare`` stores it, then its
    centre square of ``crop`` x the shorter side is resized to ``size`` x ``size`` as
    :meth:`cnnlab.data.store.Store.decode` resizes it (bilinear over the box; a JPEG decoded
    at a reduced scale when the box is more than twice the size).

    Args:
        args: ``(path, size, channels, crop)``.

    Returns:
        ``(uint8 (C, size, size), None)``, or ``(None, reason)``.
    """
    from PIL import Image, ImageOps  # lazy: only predicting from files needs PIL

    path, size, channels, crop = args
    try:
        with Image.open(path) as im:
            if min(im.size) < 1:
                return None, f"image has no pixels ({im.size[0]}x{im.size[1]})"
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees: the upright sides swap
                w, h = h, w
            draft_reduced(im, size / max(1.0, crop * min(w, h)))
            im = _convert(ImageOps.exif_transpose(im), channels)
            return resize_over_box(im, center_box(h, w, crop), (w, h), size), None
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt data surfaces as many exception types
        return None, f"corrupt or truncated image: {readable(str(exc))}"


def read_image(path: str | Path, image_shape: Sequence[int], crop: float | None = None) -> np.ndarray:
    """Decode one file as training did: uint8 (C, H, W) with the given shape.

    ``crop``: a streamed run's centre fraction of the shorter side (:attr:`Predictor.eval_crop`).

    Raises:
        CnnlabError: the file is missing, not an image, or corrupt.
    """
    c, h, _ = (int(v) for v in image_shape)
    arr, err = decode_image((str(path), h, c)) if crop is None else decode_centre_crop((str(path), h, c, crop))
    if arr is None:
        raise CnnlabError(f"{path}: {_short_error(err or 'unreadable')}")
    return arr


def load_predictor(path: str | Path, *, device: str = "auto", calibrated: bool = True) -> Predictor:
    """Load a model for inference from a run folder, a ``.pt`` checkpoint or a ``.safetensors`` export.

    Checkpoints are read with ``weights_only`` and safetensors files hold only tensors and
    JSON, so loading an untrusted file runs no code from it (see :mod:`cnnlab.infer.saved`).

    Args:
        path: run folder (its best.pt, else last.pt), checkpoint or safetensors file.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        calibrated: use the temperature `cnnlab eval` fitted for this exact file (stored in
            ``calibration.json`` next to it, or in a safetensors export's metadata), so that
            the probabilities are calibrated; False: the model's own probabilities.

    Raises:
        CnnlabError: missing, corrupt or non-cnnlab file; weights that do not fit; an
            unreadable ``calibration.json``.
    """
    saved = read_saved_model(path)
    # One process that sees every image, even when started under torchrun.
    runtime = dataclasses.replace(resolve_runtime(TrainConfig(device=device)), rank=0, world_size=1)
    model = saved.model.eval().to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    temperature, source = 1.0, None
    if calibrated:
        stored, stale = stored_temperature(saved.path)
        if stale:
            logger.warning(stale)
        if stored is not None:
            temperature, source = stored, calibration_path(saved.path)
        elif saved.temperature is not None:  # a safetensors export carries the temperature of its checkpoint
            temperature, source = saved.temperature, saved.path
    return Predictor(model, saved.model_args, saved.data, saved.config, saved.path, runtime, temperature, source)

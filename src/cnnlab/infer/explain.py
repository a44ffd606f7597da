"""Why the model decided: Grad-CAM heat maps of image files, over the images.

Grad-CAM (Selvaraju et al. 2017) weights the feature maps of a convolutional layer by the
mean gradient of the target class's logit over each map, sums them and keeps the positive
part: where in the image the evidence *for* that class lies, at that layer's resolution,
here resized (bilinearly) to the image the model was given.

The computation is captum's ``LayerGradCam`` (the ``explain`` extra), chosen over
pytorch-grad-cam (``grad-cam``) by measurement on cnnlab models (docs/use.md, "Why
captum"): the maps agree (same definition, up to grad-cam's min-subtraction); captum was
faster on every model measured (2x to 4x, on a shared CPU), imports in
about 1 s against about 4 s (grad-cam pulls in OpenCV, ttach, scikit-learn and scipy),
takes one target per image as a tensor and differentiates with ``torch.autograd.grad``, so
nothing is left in the parameters' ``.grad`` (grad-cam calls ``backward()``). The resize
to the image is done here with ``F.interpolate``.

The images are decoded and normalised exactly as ``cnnlab predict`` does
(:func:`cnnlab.infer.predict.read_image`, :meth:`Predictor.loader`), and the class
probabilities shown are :meth:`Predictor.predict_images`'s (calibrated when `cnnlab eval`
stored a temperature). The default target layer is found from the model itself
(:func:`find_target_layer`): the last module with parameters whose output is a spatial
feature map, i.e. the last convolutional block, for cnnlab's own models and for transfer
backbones (timm, torchvision, EfficientNet-Lite0) alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.checkpoint import resolve_checkpoint
from cnnlab.data.decode import readable
from cnnlab.data.imageset import ImageSet
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.infer.outputs import check_output_dir, write_error, writable_folder_problem
from cnnlab.infer.predict import Predictor, read_image
from cnnlab.io import atomic_write_json
from cnnlab.report.plots import captioned_grid, pyplot, save_figure

SHEET = "contact_sheet.png"  # every overlay in one grid
SUMMARY = "explain.json"  # per image: class, probability, target, layer, file written
OVERLAY_ALPHA = 0.45  # opacity of the heat map over the image


@dataclass(frozen=True)
class Explanation:
    """The Grad-CAM of one image file, or why the file could not be used.

    Attributes:
        path: the image file.
        image: uint8 (C, H, W), the image as the model saw it (decoded to its input shape).
        heatmap: float32 (H, W) in [0, 1], 1 where the evidence for ``target`` is strongest.
        predicted: the predicted class index; ``prob`` its probability.
        target: the class the map explains; ``target_prob`` its probability.
        output: the overlay PNG written.
        error: why the file could not be used (then the other fields are empty).
    """

    path: str
    image: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    predicted: int = -1
    prob: float = float("nan")
    target: int = -1
    target_prob: float = float("nan")
    output: Path | None = None
    error: str | None = None


@dataclass(frozen=True)
class ExplainResult:
    """What :func:`explain_files` wrote.

    Attributes:
        layer: the name of the target layer (``model.named_modules()``).
        out_dir: the folder the files went to.
        explanations: one per input file, in order.
        sheet: the contact sheet (None when no file could be used).
        summary: ``explain.json``.
    """

    layer: str
    out_dir: Path
    explanations: tuple[Explanation, ...]
    sheet: Path | None
    summary: Path


# --------------------------------------------------------------------------- the target layer


def _feature_maps(model: nn.Module, image_shape: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of every sub-module with parameters that outputs an (N, C, h, w) map
    with h * w > 1, in the order their forward calls finish (a block after the layers inside it)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen: list[tuple[str, tuple[int, ...]]] = []

    def hook(name: str):  # noqa: ANN202 - a forward hook
        def record(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1:
                seen.append((name, tuple(out.shape)))

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if name and any(True for _ in m.parameters())]  # fmt: skip
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *(int(v) for v in image_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return seen


def find_target_layer(model: nn.Module, image_shape: Sequence[int], name: str | None = None) -> tuple[str, nn.Module]:
    """The layer whose feature maps Grad-CAM weighs: ``name``, or the last convolutional block.

    The default is found by one forward pass of a blank image with hooks, so any model
    works without a table of names: take the last layer with weights of its own (a conv or
    a norm) that outputs a spatial map, then the outermost block around it that finishes
    after it with the same output shape (so the block's residual addition and activation
    are included, but not a pooling that follows it). That is ``layer4`` of a ResNet, the
    last conv block of cnnlab's ``simple`` and VGG models, and ``backbone.bn2`` (head conv
    + norm + activation) of EfficientNet-Lite0 behind a transfer model.

    Args:
        model: the classifier.
        image_shape: (C, H, W) it takes.
        name: a module name (``model.named_modules()``), or None for the default.

    Raises:
        CnnlabError: ``name`` is not a module of the model or does not output a spatial map,
            or the model has no spatial map at all (the message lists the candidates).
    """
    maps = _feature_maps(model, image_shape)
    names = list(dict.fromkeys(n for n, _ in maps))
    modules = dict(model.named_modules())
    if name is None:
        own = [i for i, (n, _) in enumerate(maps) if any(True for _ in modules[n].parameters(recurse=False))]
        if not own:
            raise CnnlabError("the model has no layer with a spatial feature map (h x w > 1) for this input size; "
                              "Grad-CAM needs one")  # fmt: skip
        name, shape = maps[own[-1]]
        for outer, outer_shape in maps[own[-1] + 1 :]:
            if name.startswith(outer + ".") and outer_shape == shape:
                name = outer
    elif name not in names:
        why = "is not a module of the model" if name not in modules else "has no spatial feature map output"
        raise CnnlabError(f"--layer {name} {why}; layers with feature maps, last first: {', '.join(reversed(names[-12:]))}")
    return name, model.get_submodule(name)


# --------------------------------------------------------------------------- Grad-CAM


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Grad-CAM maps of a batch, resized to the input's size and scaled to [0, 1] per image.

    Args:
        model: the classifier (its mode is left as it was; use eval mode).
        layer: the module whose output the maps are computed at.
        x: (N, C, H, W) normalised images, as the model takes them.
        targets: (N,) the class each map explains.

    Returns:
        float32 (N, H, W); an image with no positive evidence gets a map of zeros.
    """
    try:
        from captum.attr import LayerGradCam  # lazy: the optional `explain` extra
    except ImportError:
        raise CnnlabError("cnnlab explain needs captum: pip install 'cnnlab[explain]'") from None
    with torch.enable_grad():
        attr = LayerGradCam(model, layer).attribute(x.float(), target=targets.to(x.device), relu_attributions=True)
    attr = attr.detach().float()
    maps = F.interpolate(attr, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0].clamp_min(0)
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (maps / peak).cpu().numpy().astype(np.float32)


# --------------------------------------------------------------------------- files


def default_output_dir(pred: Predictor) -> Path:
    """``RUN/explain`` for a run folder's own model (best.pt, else last.pt), else
    ``explain-<model file>`` next to the model file (never the current folder)."""
    try:
        own = resolve_checkpoint(pred.path.parent).samefile(pred.path)
    except (CnnlabError, OSError):
        own = False
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", pred.path.name.removesuffix(".pt")).strip("_.") or "model"
    return pred.path.parent / ("explain" if own else f"explain-{stem}")


def _overlay_names(files: Sequence[str | Path]) -> list[str]:
    """One distinct PNG name per input file: ``<stem>-gradcam.png`` (``-2``, ``-3`` on a clash)."""
    names: list[str] = []
    for f in files:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(f).stem).strip("_.") or "image"
        name, k = f"{stem}-gradcam.png", 2
        while name in names or name in (SHEET, SUMMARY):
            name, k = f"{stem}-{k}-gradcam.png", k + 1
        names.append(name)
    return names


def _class_index(pred: Predictor, target: str | int | None) -> int | None:
    """``--target-class``: a class name, or an index into the classes."""
    if target is None:
        return None
    classes = pred.classes
    if str(target) in classes:
        return classes.index(str(target))
    if re.fullmatch(r"\d+", str(target)) and int(target) < len(classes):
        return int(target)
    shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
    raise UsageError(f"--target-class {target} is not one of the model's classes ({shown}) nor an index below {len(classes)}")


def plan_output(pred: Predictor, files: Sequence[str | Path], out_dir: str | Path | None, *, force: bool = False) -> Path:
    """The folder the overlays go to, checked before any work (see :mod:`cnnlab.infer.outputs`).

    The default folder belongs to ``explain``, so its earlier files are replaced; ``out_dir``
    must not be another run's folder, and files in it are replaced only with ``force``.

    Raises:
        UsageError: the folder is refused; the message says why and what to do.
    """
    if out_dir is None:
        default = default_output_dir(pred)
        problem = writable_folder_problem(default)
        if problem:
            raise UsageError(f"cannot write the overlays into {default}: {problem}; pass --out DIR")
        return default
    names = (*_overlay_names(files), SHEET, SUMMARY)
    return check_output_dir(out_dir, names, flag="--out", force=force, own_run=pred.path.parent)


def explain_files(
    pred: Predictor,
    files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    target_class: str | int | None = None,
    layer: str | None = None,
    batch_size: int = 32,
) -> ExplainResult:
    """Grad-CAM overlays of image files: one PNG each, a contact sheet and ``explain.json``.

    Each file is decoded and normalised as ``cnnlab predict`` does; a file that cannot be
    decoded gets an :class:`Explanation` with ``error`` and the others go on.

    Args:
        pred: the loaded model (:func:`cnnlab.infer.predict.load_predictor`).
        files: the image files.
        out_dir: the folder (check it first with :func:`plan_output`).
        target_class: the class every map explains (name or index); None: each image's predicted class.
        layer: the target layer's name; None: :func:`find_target_layer`'s default.
        batch_size: images per Grad-CAM pass.

    Raises:
        CnnlabError: an unknown class or layer, a non-square model, or a file that cannot be written.
    """
    c, h, w = pred.image_shape
    if h != w:  # the decoder makes square images, as the training cache did
        raise CnnlabError(f"the model expects {h}x{w} images; only square image shapes can be explained from files")
    fixed = _class_index(pred, target_class)
    layer_name, module = find_target_layer(pred.model, pred.image_shape, layer)
    decoded: list[tuple[str, np.ndarray | None, str | None]] = []
    for f in files:
        try:
            decoded.append((str(f), read_image(f, pred.image_shape, pred.eval_crop), None))
        except CnnlabError as exc:  # reported per file in the result, like predict's
            decoded.append((str(f), None, str(exc).removeprefix(f"{f}: ")))
    good = [arr for _, arr, _ in decoded if arr is not None]
    images = np.stack(good) if good else np.zeros((0, c, h, w), np.uint8)
    probs = pred.predict_images(images, batch_size) if good else np.zeros((0, len(pred.classes)), np.float32)
    predicted = probs.argmax(1) if good else np.zeros(0, np.int64)
    targets = np.full(len(good), fixed, np.int64) if fixed is not None else predicted.astype(np.int64)
    maps = np.zeros((0, h, w), np.float32)
    if good:
        loader = pred.loader(ImageSet(images, targets, pred.classes), batch_size)  # labels = targets, in order
        maps = np.concatenate([grad_cam(pred.model, module, x, y) for x, y in loader])
    out = Path(out_dir)
    names = _overlay_names([f for f, _, _ in decoded])
    explanations: list[Explanation] = []
    row = 0
    try:
        out.mkdir(parents=True, exist_ok=True)
        for (file, arr, err), name in zip(decoded, names):
            if arr is None:
                explanations.append(Explanation(file, error=err or "unreadable"))
                continue
            i, row = row, row + 1
            e = Explanation(file, arr, maps[i], int(predicted[i]), float(probs[i, predicted[i]]), int(targets[i]),
                            float(probs[i, targets[i]]), out / name)  # fmt: skip
            _write_overlay(e, pred.classes, layer_name)
            explanations.append(e)
        done = [e for e in explanations if e.error is None]
        sheet = _write_sheet(done, pred.classes, out / SHEET, layer_name) if done else None
        summary = out / SUMMARY
        atomic_write_json(summary, {"model": str(pred.path), "layer": layer_name, "method": "Grad-CAM (captum LayerGradCam)",
                                    "temperature": pred.temperature, "images": [_as_dict(e, pred.classes) for e in explanations]})  # fmt: skip
    except OSError as exc:
        raise write_error(exc.filename or out, exc) from None
    return ExplainResult(layer_name, out, tuple(explanations), sheet, summary)


def _as_dict(e: Explanation, classes: Sequence[str]) -> dict[str, Any]:
    if e.error is not None:
        return {"file": readable(e.path), "error": e.error}
    return {"file": readable(e.path), "predicted": classes[e.predicted], "prob": e.prob, "target": classes[e.target],
            "target_prob": e.target_prob, "overlay": e.output.name if e.output else None}  # fmt: skip


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 (3, H, W): the image (gray or RGB) with the heat map (jet colours) blended over it."""
    from matplotlib import colormaps  # lazy: matplotlib is imported only when drawing

    base = np.asarray(image, np.float32) / 255.0
    base = np.repeat(base, 3, 0) if base.shape[0] == 1 else base
    heat = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3].transpose(2, 0, 1)
    return np.clip(np.rint(((1 - alpha) * base + alpha * heat) * 255), 0, 255).astype(np.uint8)


def _title(e: Explanation, classes: Sequence[str]) -> str:
    text = f"predicted {classes[e.predicted]} ({e.prob:.1%})"
    if e.target != e.predicted:
        text += f"\nmap of {classes[e.target]} ({e.target_prob:.1%})"
    return text


def _write_overlay(e: Explanation, classes: Sequence[str], layer: str) -> None:
    """One image's PNG: the image as the model saw it, and the heat map over it."""
    assert e.image is not None and e.heatmap is not None and e.output is not None  # a decoded file
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.6), dpi=100)
    img = e.image
    shown = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    left.imshow(shown, cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=255, interpolation="nearest")
    left.set_title(f"{Path(e.path).name[:40]}\n(as the model saw it: {img.shape[2]}x{img.shape[1]})", fontsize=8)
    right.imshow(shown, cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=255, interpolation="nearest")
    heat = right.imshow(e.heatmap, cmap="jet", alpha=OVERLAY_ALPHA, vmin=0, vmax=1, interpolation="bilinear")
    right.set_title(_title(e, classes), fontsize=9)
    fig.colorbar(heat, ax=right, fraction=0.046, pad=0.04, label="Grad-CAM (1 = strongest evidence)")
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Grad-CAM at layer {layer}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, e.output)


def _write_sheet(done: Sequence[Explanation], classes: Sequence[str], path: Path, layer: str) -> Path:
    images = [overlay(e.image, e.heatmap) for e in done if e.image is not None and e.heatmap is not None]
    captions = [f"{Path(e.path).name[:18]}\n{_title(e, classes)}" for e in done]
    return captioned_grid(images, captions, path, title=f"Grad-CAM at layer {layer} ({len(done)} images)")

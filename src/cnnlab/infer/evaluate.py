"""Evaluate a trained model on a split of a data source: numbers, confusion matrix, top losses.

By default a checkpoint is evaluated on the test split of the data it was trained on,
rebuilt from the configuration it stores (with the same held-out splits, because they
are seeded). Another source can be given instead; it is decoded to the model's image
shape, and must have the same number of classes. Either way the images are normalised
with the *training* mean/std stored in the checkpoint, as at training time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.config import DataConfig, from_dict, merge
from cnnlab.data.sources import Splits, load_splits
from cnnlab.errors import CnnlabError
from cnnlab.infer.predict import Predictor, load_predictor
from cnnlab.io import atomic_write_json
from cnnlab.report.plots import captioned_grid, confusion_plot
from cnnlab.train.loop import evaluate
from cnnlab.train.metrics import ClassificationMetrics, classification_metrics

TOP_LOSSES = 24  # images in top_losses.png


@dataclass
class EvalReport:
    """The result of evaluating a model on one split.

    Attributes:
        checkpoint: the file the model came from.
        model: the model name.
        data_name: readable name of the data source.
        source: the data source as configured (dataset name, folder or CSV).
        split: train, val or test.
        own_data: whether this is the data the model was trained on.
        tta: whether flip test-time augmentation was used.
        loss: mean cross-entropy.
        metrics: accuracy, top-5, per-class scores and confusion matrix.
        probs: float32 (N, classes) softmax probabilities.
        labels: int64 (N,) true classes.
        images: uint8 (N, C, H, W) the evaluated images (for the top-losses grid).
        warnings: things the user should know about the numbers.
    """

    checkpoint: Path
    model: str
    data_name: str
    source: str
    split: str
    own_data: bool
    tta: bool
    loss: float
    metrics: ClassificationMetrics
    probs: np.ndarray
    labels: np.ndarray
    images: np.ndarray
    warnings: tuple[str, ...] = ()

    def top_losses(self, limit: int = TOP_LOSSES) -> np.ndarray:
        """Indices of the misclassified images with the highest loss, highest first."""
        return top_losses(self.probs, self.labels, limit)

    def as_dict(self, limit: int = TOP_LOSSES) -> dict[str, Any]:
        """Plain data for ``eval.json``."""
        classes = self.metrics.classes
        preds = self.probs.argmax(1)
        worst = [
            {"index": int(i), "true": classes[self.labels[i]], "predicted": classes[preds[i]],
             "prob_predicted": float(self.probs[i, preds[i]]), "prob_true": float(self.probs[i, self.labels[i]])}
            for i in self.top_losses(limit)
        ]  # fmt: skip
        return {"checkpoint": str(self.checkpoint), "model": self.model, "data": self.data_name, "source": self.source,
                "split": self.split, "own_data": self.own_data, "tta": self.tta, "loss": self.loss,
                **self.metrics.as_dict(), "top_losses": worst, "warnings": list(self.warnings)}  # fmt: skip


def top_losses(probs: np.ndarray, labels: np.ndarray, limit: int = TOP_LOSSES) -> np.ndarray:
    """Indices of the misclassified images, ordered by cross-entropy loss (highest first).

    The highest-loss mistakes are the ones the model was most sure about while being
    wrong: mislabelled images, ambiguous classes and blind spots show up here first.
    """
    labels = np.asarray(labels, dtype=np.int64)
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    loss = -np.log(np.clip(probs[wrong, labels[wrong]], 1e-12, None))
    return wrong[np.argsort(-loss, kind="stable")][:limit]


def eval_data_config(pred: Predictor, overrides: Mapping[str, Any] | None = None) -> tuple[DataConfig, bool]:
    """The data configuration to evaluate on, and whether it is the model's own data.

    Args:
        pred: the loaded model.
        overrides: ``DataConfig`` fields to change (``None`` values are ignored). A
            ``source`` other than the training one starts from that source's defaults,
            with ``image_size`` and ``channels`` set to the model's input shape.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    trained_on = (pred.config or {}).get("data")
    new_source = "source" in overrides and (trained_on is None or overrides["source"] != trained_on.get("source"))
    if new_source:
        c, h, _ = pred.image_shape
        base: dict[str, Any] = {"image_size": h, "channels": c}
    elif trained_on is None:
        raise CnnlabError(f"{pred.path} does not record the data it was trained on; choose the data with --data")
    else:
        base = {**trained_on, "augment": ""}  # augmentation never applies to evaluation
    return from_dict(DataConfig, merge(base, overrides), where="data"), not new_source


def _load_eval_splits(pred: Predictor, cfg: DataConfig, own: bool) -> tuple[Splits, list[str]]:
    notes: list[str] = []
    if own:
        train = (pred.config or {}).get("train", {})
        splits = load_splits(cfg, train_subset=train.get("train_subset"), subset_seed=train.get("seed", 0))
        if splits.fingerprint != pred.data.get("fingerprint"):
            notes.append(f"the data of {cfg.source} (or its split settings) changed since training; "
                         "these numbers are not comparable with the run's own test accuracy")  # fmt: skip
        return splits, notes
    splits = load_splits(cfg)
    want, got = pred.image_shape, splits.image_shape
    if got != want:
        raise CnnlabError(
            f"the model takes {'x'.join(map(str, want))} images (C x H x W) but {splits.name} has "
            f"{'x'.join(map(str, got))}; for an image folder or CSV pass --image-size {want[1]} --channels {want[0]}"
        )
    if len(splits.classes) != len(pred.classes):
        raise CnnlabError(f"the model knows {len(pred.classes)} classes but {splits.name} has {len(splits.classes)}; "
                          "evaluate on data with the same classes")  # fmt: skip
    if tuple(splits.classes) != pred.classes:
        notes.append(f"class names differ from training ({', '.join(splits.classes[:4])}... vs "
                     f"{', '.join(pred.classes[:4])}...); label i is taken to be the model's class i")  # fmt: skip
    return splits, notes


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: Mapping[str, Any] | None = None,
    split: str = "test",
    tta: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
) -> EvalReport:
    """Evaluate a run folder, checkpoint or safetensors export on one split.

    Args:
        checkpoint: run folder (best.pt, else last.pt), ``.pt`` or ``.safetensors`` file.
        data: ``DataConfig`` overrides (see :func:`eval_data_config`); None: the training data.
        split: train, val or test.
        tta: average the softmax of each image and its mirror image.
        device: auto, cpu, cuda or cuda:N.
        batch_size: images per forward pass (default: the run's eval batch size).

    Raises:
        CnnlabError: unreadable checkpoint or data, empty split, mismatched classes or shape.
    """
    pred = load_predictor(checkpoint, device=device)
    cfg, own = eval_data_config(pred, data)
    splits, notes = _load_eval_splits(pred, cfg, own)
    if splits.skipped:
        notes.append(f"{len(splits.skipped)} unreadable file(s) of {splits.name} were skipped")
    part = splits.split(split)
    if len(part) == 0:
        raise CnnlabError(f"the {split} split of {splits.name} is empty; choose another --split")
    batch_size = batch_size or int((pred.config or {}).get("train", {}).get("eval_batch_size", 512))
    result = evaluate(pred.model, pred.loader(part, batch_size), pred.runtime, tta=tta, keep_outputs=True)
    assert result.logits is not None and result.labels is not None  # keep_outputs=True
    metrics = classification_metrics(result.logits, result.labels, pred.classes)
    return EvalReport(
        checkpoint=pred.path, model=str(pred.model_args.get("name", "model")), data_name=splits.name, source=cfg.source,
        split=split, own_data=own, tta=tta, loss=result.loss, metrics=metrics,
        probs=result.logits.softmax(1).numpy(), labels=result.labels.numpy(), images=part.images,
        warnings=tuple(notes),
    )  # fmt: skip


def default_output_dir(report: EvalReport) -> Path:
    """The run folder for its own test split; ``eval-<split>`` or ``eval-<data>-<split>`` inside it otherwise
    (so evaluating other data never overwrites the run's own results)."""
    run = report.checkpoint.parent
    if report.own_data and report.split == "test":
        return run
    if report.own_data:
        return run / f"eval-{report.split}"
    name = Path(report.source.split(":")[0].rstrip("/\\")).name or "data"
    return run / f"eval-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-{report.split}"


def write_report(report: EvalReport, out_dir: str | Path | None = None, *, limit: int = TOP_LOSSES) -> dict[str, Path]:
    """Write ``eval.json``, ``confusion.png`` and ``top_losses.png``.

    Args:
        report: what :func:`evaluate_checkpoint` returned.
        out_dir: the folder (default :func:`default_output_dir`).
        limit: images in the top-losses grid.

    Returns:
        ``{"json": ..., "confusion": ..., "top_losses": ...}`` paths.
    """
    out = Path(out_dir) if out_dir is not None else default_output_dir(report)
    out.mkdir(parents=True, exist_ok=True)
    m = report.metrics
    tta = ", flip TTA" if report.tta else ""
    title = f"{report.model} on {report.data_name}, {report.split} split{tta}: accuracy {m.accuracy:.2%} (n={m.n})"
    paths = {"json": out / "eval.json", "confusion": out / "confusion.png", "top_losses": out / "top_losses.png"}
    atomic_write_json(paths["json"], report.as_dict(limit))
    confusion_plot(m.confusion, m.classes, paths["confusion"], title=title)
    idx = report.top_losses(limit)
    preds = report.probs.argmax(1)
    captions = [f"pred {m.classes[preds[i]]} ({report.probs[i, preds[i]]:.2f})\n"
                f"true {m.classes[report.labels[i]]} ({report.probs[i, report.labels[i]]:.2f})" for i in idx]  # fmt: skip
    images = [np.asarray(report.images[i]) for i in idx]
    captioned_grid(images, captions, paths["top_losses"],
                   title=f"top losses: the {len(idx)} most confidently wrong of {m.n} {report.split} images")  # fmt: skip
    return paths

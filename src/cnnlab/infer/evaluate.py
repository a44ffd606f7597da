"""Evaluate a trained model on a split of a data source: numbers, confusion matrix, top losses.

By default a checkpoint is evaluated on the test split of the data it was trained on,
rebuilt from the configuration it stores (with the same held-out splits, because they
are seeded). Another source can be given instead; it is decoded to the model's image
shape, and must have the same number of classes. Either way the images are normalised
with the *training* mean/std stored in the checkpoint, as at training time.

A recipe folder is evaluated as its result: the final model, or the average of its final
models, each with the flip TTA its run chose (:func:`cnnlab.infer.ensemble.load_recipe_predictor`),
so the default evaluation measures the recipe's test accuracy again.

A run trained from a prepared store is evaluated the way its own validation was: streamed
batch by batch (the centre crop of :mod:`cnnlab.data.stream`, never the whole split decoded
in memory) when it streamed, decoded into memory when it did (``data.loader`` overrides).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.config import DataConfig, from_dict, merge
from cnnlab.data.sources import Splits, load_splits
from cnnlab.data.store import StoreSplit, is_store
from cnnlab.data.stream import StreamLoader
from cnnlab.checkpoint import resolve_checkpoint
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.infer.calibration import Calibration, calibrate, reliability_diagram, store_temperature
from cnnlab.infer.ensemble import describe_result, is_recipe_folder, load_recipe_predictor
from cnnlab.infer.outputs import EVAL_FILES, check_output_dir, is_run_folder, same_folder, write_error, writable_folder_problem
from cnnlab.infer.predict import Predictor, load_predictor, trained_loader
from cnnlab.io import atomic_write_json
from cnnlab.report.plots import captioned_grid, confusion_plot
from cnnlab.train.loop import evaluate
from cnnlab.train.metrics import ClassificationMetrics, classification_metrics
from cnnlab.train.progress import PassProgress

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
        images: the evaluated images, uint8 (C, H, W) each by index (for the top-losses
            grid): an (N, C, H, W) array, or :class:`StreamedImages` that decodes only those shown.
        warnings: things the user should know about the numbers.
        changed: data settings that differ from those of the data evaluated by default
            (``{"image_size": 64}``); they name the output folder.
        folder_default: whether ``checkpoint`` is the model its folder stands for
            (best.pt, else last.pt); another file's results get their own folder.
        calibration: ECE and reliability bins of ``probs``, and the temperature fitted on the
            validation split with the ECE it gives (see :mod:`cnnlab.infer.calibration`).
        recipe: ``checkpoint`` is a recipe's ``recipe.json``: its result was evaluated, and a
            fitted temperature is reported, never stored (each model keeps its own).
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
    images: np.ndarray | StreamedImages
    warnings: tuple[str, ...] = ()
    changed: dict[str, Any] = field(default_factory=dict)
    folder_default: bool = True
    calibration: Calibration | None = None
    recipe: bool = False

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
                "split": self.split, "own_data": self.own_data, "tta": self.tta, "settings": dict(self.changed),
                "loss": self.loss,
                **self.metrics.as_dict(), "top_losses": worst, "warnings": list(self.warnings),
                "calibration": self.calibration.as_dict() if self.calibration is not None else None}  # fmt: skip


class StreamedImages:
    """The images of a streamed split by index, each decoded when asked for, as its evaluation saw it.

    The top-losses grid shows a few images of a split that is not held in memory.
    """

    def __init__(self, split: StoreSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> np.ndarray:
        """uint8 (C, H, W): image ``i`` of the split, made by the evaluation loader itself (unnormalised)."""
        c = self.split.channels
        # mean 0, std 1/255: the loader's normalisation leaves the 0..255 pixel values as they were decoded
        loader = StreamLoader(self.split.subset(np.array([i])), batch_size=1, mean=(0.0,) * c, std=(1 / 255,) * c,
                              train=False, workers=1)  # fmt: skip
        try:
            x, _ = next(iter(loader))
        finally:
            loader.close()
        return x[0].round().clamp(0, 255).to(torch.uint8).numpy()


def split_images(part: Any) -> np.ndarray | StreamedImages:
    """What the top-losses grid reads a split's images from: in memory, or decoded one by one from a store."""
    return StreamedImages(part) if isinstance(part, StoreSplit) else part.images


def top_losses(probs: np.ndarray, labels: np.ndarray, limit: int = TOP_LOSSES) -> np.ndarray:
    """Indices of the misclassified images, ordered by cross-entropy loss (highest first).

    The highest-loss mistakes are the ones the model was most sure about while being
    wrong: mislabelled images, ambiguous classes and blind spots show up here first.
    """
    labels = np.asarray(labels, dtype=np.int64)
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    loss = -np.log(np.clip(probs[wrong, labels[wrong]], 1e-12, None))
    return wrong[np.argsort(-loss, kind="stable")][:limit]


# DataConfig fields that do not change what is evaluated (where the files are, whether to download).
_NOT_A_SETTING = frozenset({"source", "root", "download", "allow_outside_root", "augment"})


def eval_data_config(pred: Predictor, overrides: Mapping[str, Any] | None = None) -> tuple[DataConfig, bool]:
    """The data configuration to evaluate on, and whether it is the model's own data.

    Args:
        pred: the loaded model.
        overrides: ``DataConfig`` fields to change (``None`` values are ignored). A
            ``source`` other than the training one starts from that source's defaults,
            with ``image_size`` and ``channels`` set to the model's input shape.
    """
    cfg, own, _ = eval_data_setting(pred, overrides)
    return cfg, own


def eval_data_setting(
    pred: Predictor, overrides: Mapping[str, Any] | None = None
) -> tuple[DataConfig, bool, dict[str, Any]]:
    """:func:`eval_data_config`, and the settings that differ from the default evaluation of that data.

    Returns:
        ``(cfg, own_data, changed)``: ``changed`` maps each ``DataConfig`` field whose value
        differs from the one used without overrides (e.g. ``{"image_size": 64}``) to its value.

    Raises:
        UsageError: an override is invalid.
        CnnlabError: the model file records no (or an invalid) training data configuration.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    trained_on = (pred.config or {}).get("data")
    new_source = "source" in overrides and (trained_on is None or overrides["source"] != trained_on.get("source"))
    if new_source:
        c, h, _ = pred.image_shape
        base: dict[str, Any] = {"source": overrides["source"], "image_size": h, "channels": c}
    elif trained_on is None:
        raise CnnlabError(f"{pred.path} does not record the data it was trained on; choose the data with --data")
    else:
        # Augmentation never applies to evaluation; a store is batched as the run batched it (not
        # chosen again by `auto`, whose choice depends on the memory free now).
        base = {**trained_on, "augment": "", "loader": trained_loader(pred.data)}
    if not is_store(base["source"]):
        if overrides.get("loader") == "stream":
            raise UsageError(f"--loader stream reads a prepared store, and {base['source']} is not one; "
                             "evaluate it without --loader")  # fmt: skip
        overrides.pop("loader", None)  # any other source is decoded into memory
    try:
        default = from_dict(DataConfig, base, where="data")
    except CnnlabError as exc:  # the model file's record, not what the user typed
        raise CnnlabError(f"{pred.path} records a data configuration this cnnlab cannot use: {exc}") from None
    cfg = from_dict(DataConfig, merge(base, overrides), where="data")
    # None means "the source's own"; the images the model was trained on had its input shape.
    c, h, _ = pred.image_shape
    shape = {"image_size": h, "channels": c}

    def value(config: DataConfig, name: str) -> Any:
        got = getattr(config, name)
        return shape[name] if got is None and name in shape else got

    changed = {f.name: getattr(cfg, f.name) for f in fields(DataConfig)
               if f.name not in _NOT_A_SETTING and value(cfg, f.name) != value(default, f.name)}  # fmt: skip
    return cfg, not new_source, changed


def _load_eval_splits(pred: Predictor, cfg: DataConfig, own: bool) -> tuple[Splits, list[str]]:
    notes: list[str] = []
    if own:
        train = (pred.config or {}).get("train", {})
        splits = load_splits(cfg, train_subset=train.get("train_subset"), subset_seed=train.get("seed", 0))
        streamed = "stream" if isinstance(splits.test, StoreSplit) else "memory"
        if is_store(cfg.source) and streamed != trained_loader(pred.data):
            notes.append(f"the run {'streamed' if streamed == 'memory' else 'decoded into memory'} its store and this "
                         f"evaluation {'streams' if streamed == 'stream' else 'decodes'} it (--loader {streamed}): the "
                         "images are cropped otherwise, so these numbers are not the run's own test accuracy")  # fmt: skip
        elif splits.fingerprint != pred.data.get("fingerprint"):
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


@dataclass
class Evaluation:
    """An evaluation decided but not yet run: the model, the data settings, the output folder.

    Made by :func:`plan_evaluation`, so that the output folder can be checked (and a bad
    one refused) before any data is decoded or evaluated.

    Attributes:
        pred: the loaded model.
        cfg: the data configuration to evaluate on.
        own_data: whether it is the data the model was trained on.
        split: train, val or test.
        tta: flip test-time augmentation.
        changed: data settings that differ from the default evaluation of that data.
        folder_default: whether the model file is the one its folder stands for.
        recipe: the model is a recipe's result (``pred.path`` is its ``recipe.json``).
    """

    pred: Predictor
    cfg: DataConfig
    own_data: bool
    split: str
    tta: bool
    changed: dict[str, Any]
    folder_default: bool
    recipe: bool = False

    def default_output_dir(self) -> Path:
        """Where the results go without ``--out`` (see :func:`default_output_dir`)."""
        return _default_dir(self.pred.path, self.own_data, self.cfg.source, self.split, self.tta, self.changed,
                            self.folder_default)  # fmt: skip

    def output_dir(self, out_dir: str | Path | None = None, *, force: bool = False) -> Path:
        """The folder for the results, checked before any work (see :mod:`cnnlab.infer.outputs`).

        The default folder belongs to this exact evaluation (model file, data, split and
        settings), so an earlier result of the same evaluation is replaced there. ``out_dir``
        must not be another run's folder, nor the model's own run folder unless this is
        the evaluation that belongs there; earlier results in it are replaced only with
        ``force``.

        Raises:
            UsageError: the folder is refused; the message says why and what to do.
        """
        default = self.default_output_dir()
        if out_dir is None:
            problem = writable_folder_problem(default)
            if problem:
                raise UsageError(f"cannot write the evaluation into {default}: {problem}; pass --out DIR")
            return default
        out = check_output_dir(out_dir, EVAL_FILES, flag="--out", force=force, own_run=self.pred.path.parent)
        if is_run_folder(out) and not same_folder(out, default):
            raise UsageError(
                f"--out {out} is the model's own run folder, whose eval.json is the default evaluation "
                f"(its test split, the training settings); this one ({self.describe()}) goes to "
                f"{default} by default, or choose another --out"
            )
        return out

    def describe(self) -> str:
        """The evaluation's choices that differ from the default one, in words."""
        parts = [] if self.folder_default else [self.pred.path.name]
        parts += [] if self.own_data else [f"data {self.cfg.source}"]
        parts += [f"{self.split} split", *(f"{k}={v}" for k, v in self.changed.items())]
        return ", ".join(parts + (["tta"] if self.tta else []))

    def run(self, batch_size: int | None = None) -> EvalReport:
        """Decode the data and evaluate the model on the split.

        Raises:
            CnnlabError: unreadable data, empty split, mismatched classes or shape.
        """
        pred, cfg = self.pred, self.cfg
        splits, notes = _load_eval_splits(pred, cfg, self.own_data)
        if splits.skipped:
            notes.append(f"{len(splits.skipped)} unreadable file(s) of {splits.name} were skipped")
        part = splits.split(self.split)
        if len(part) == 0:
            raise CnnlabError(f"the {self.split} split of {splits.name} is empty; choose another --split")
        batch_size = batch_size or int((pred.config or {}).get("train", {}).get("eval_batch_size", 512))
        loader = pred.loader(part, batch_size)
        with PassProgress(f"evaluating the {self.split} split", len(loader)) as bar:  # drawn on a terminal, when slow
            result = evaluate(pred.model, loader, pred.runtime, tta=self.tta, keep_outputs=True, progress=bar)
        assert result.logits is not None and result.labels is not None  # keep_outputs=True
        metrics = classification_metrics(result.logits, result.labels, pred.classes)
        bad = int((~torch.isfinite(result.logits).all(1)).sum())
        if bad:  # the accuracy counts their argmax, which means nothing
            notes.append(f"the model's outputs are NaN/inf for {bad} of {len(part)} images; "
                         "the loss and accuracy are not meaningful")  # fmt: skip
        calibration = None if bad else self._calibration(splits, result.logits, result.labels, batch_size, notes)
        return EvalReport(
            checkpoint=pred.path, model=self.model_name(), data_name=splits.name,
            source=cfg.source, split=self.split, own_data=self.own_data, tta=self.tta, loss=result.loss,
            metrics=metrics, probs=result.logits.softmax(1).numpy(), labels=result.labels.numpy(),
            images=split_images(part), warnings=tuple(notes), changed=dict(self.changed), folder_default=self.folder_default,
            calibration=calibration, recipe=self.recipe,
        )  # fmt: skip

    def model_name(self) -> str:
        """The model's name; for a recipe, what its result is (``resnet9s x3 averaged, flip TTA``)."""
        name = str(self.pred.model_args.get("name", "model"))
        return f"recipe result: {name}{describe_result(self.pred)}" if self.recipe else name

    def _calibration(self, splits: Splits, logits: torch.Tensor, labels: torch.Tensor, batch_size: int,
                     notes: list[str]) -> Calibration:  # fmt: skip
        """ECE on the evaluated split; on the model's own data, a temperature fitted on its validation split.

        The validation split costs one more pass (none when it is the evaluated split). Its
        logits come with the same ``tta`` setting as the evaluated ones, so ``T`` fits them.
        """
        if not self.own_data:
            notes.append("no temperature was fitted: that needs the validation split of the model's own data")
            return calibrate(logits.numpy(), labels.numpy())
        val = splits.split("val")
        if len(val) == 0:
            notes.append(f"{splits.name} has no validation split here, so no temperature was fitted")
            return calibrate(logits.numpy(), labels.numpy())
        if self.split == "val":
            fit_logits, fit_labels = logits, labels
            notes.append("the temperature was fitted on this same validation split: its ECE after scaling is optimistic")
        else:
            loader = self.pred.loader(val, batch_size)
            with PassProgress("fitting the temperature on the val split", len(loader)) as bar:
                fitted = evaluate(self.pred.model, loader, self.pred.runtime, tta=self.tta, keep_outputs=True, progress=bar)
            assert fitted.logits is not None and fitted.labels is not None  # keep_outputs=True
            fit_logits, fit_labels = fitted.logits, fitted.labels
            if not bool(torch.isfinite(fit_logits).all()):
                notes.append("the model's outputs on the val split are not finite (NaN/inf); no temperature was fitted")
                return calibrate(logits.numpy(), labels.numpy())
        cal = calibrate(logits.numpy(), labels.numpy(), fit_logits.numpy(), fit_labels.numpy(),
                        fitted_on=f"val split, {len(fit_labels)} images" + (", flip TTA" if self.tta else ""))  # fmt: skip
        if cal.at_bound:
            notes.append(f"the fitted temperature hit its bound ({cal.temperature:g}; the validation split is too easy "
                         "or too small to fit it), so it is not stored for predict")  # fmt: skip
        return cal


def plan_evaluation(
    checkpoint: str | Path,
    *,
    data: Mapping[str, Any] | None = None,
    split: str = "test",
    tta: bool = False,
    device: str = "auto",
) -> Evaluation:
    """Load the model and settle what will be evaluated (nothing is decoded or written yet).

    Args:
        checkpoint: run folder (best.pt, else last.pt), ``.pt`` or ``.safetensors`` file, or a
            recipe folder (its result: see :func:`~cnnlab.infer.ensemble.load_recipe_predictor`).
        data: ``DataConfig`` overrides (see :func:`eval_data_config`); None: the training data.
        split: train, val or test.
        tta: average the softmax of each image and its mirror image.
        device: auto, cpu, cuda or cuda:N.

    Raises:
        UsageError: an invalid data override or split; ``tta`` for a recipe.
        CnnlabError: unreadable or non-cnnlab model file.
    """
    if split not in ("train", "val", "test"):
        raise UsageError(f"the split must be train, val or test, got {split!r}")
    if is_recipe_folder(checkpoint):
        if tta:
            raise UsageError(f"{checkpoint} is a recipe folder: its result already uses flip TTA for each model whose run "
                             "chose it on validation; evaluate it without --tta")  # fmt: skip
        # The models' own probabilities, as the recipe averaged them (a temperature changes the average's argmax).
        pred = load_recipe_predictor(checkpoint, device=device, calibrated=False)
        folder_default = recipe = True
    else:
        pred = load_predictor(checkpoint, device=device)
        recipe = False
        try:
            folder_default = resolve_checkpoint(pred.path.parent).samefile(pred.path)
        except (CnnlabError, OSError):
            folder_default = False
    cfg, own, changed = eval_data_setting(pred, data)
    return Evaluation(pred, cfg, own, split, tta, changed, folder_default, recipe)


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
    return plan_evaluation(checkpoint, data=data, split=split, tta=tta, device=device).run(batch_size)


def default_output_dir(report: EvalReport) -> Path:
    """Where an evaluation's files go by default.

    The run folder itself for the default evaluation (the folder's own model, on its own
    data's test split, with the training settings); otherwise a folder inside it named
    ``eval-<model file>-<data>-<split>-<settings>`` with only the parts that differ
    (``eval-val``, ``eval-test-size64``, ``eval-last-test``, ``eval-photos-test-tta``).
    So another setting never overwrites the run's own results, and the same one
    replaces its own earlier result.
    """
    return _default_dir(report.checkpoint, report.own_data, report.source, report.split, report.tta, report.changed,
                        report.folder_default)  # fmt: skip


def _label(text: str) -> str:
    """``text`` as a safe part of a folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "x"


# How a changed data setting reads in a folder name: --image-size 64 -> size64.
_SETTING_LABELS = {"image_size": "size", "channels": "ch", "val_split": "valsplit", "test_split": "testsplit",
                   "split_seed": "splitseed", "normalize": "", "class_subset": "classes", "loader": ""}  # fmt: skip


def _setting_label(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = "_".join(map(str, value))
    elif isinstance(value, float):
        value = f"{value:g}"
    return _label(f"{_SETTING_LABELS.get(key, key)}{value}")


def _source_label(source: str) -> str:
    """A folder-name part for another data source: its name, and a short digest of the whole
    spec or path unless it is a bare dataset name (``synthetic:n=60`` and ``synthetic:n=600``,
    or ``a/photos`` and ``b/photos``, must not share a folder)."""
    base = source.rstrip("/").rsplit("/", 1)[-1] if "://" in source else source.split(":")[0]  # a URL: its last segment
    name = _label(Path(base.rstrip("/\\")).name or "data")
    if re.fullmatch(r"[A-Za-z0-9_-]+", source):
        return name
    try:
        full = str(Path(source).expanduser().resolve()) if ":" not in source or Path(source).exists() else source
    except (OSError, RuntimeError):
        full = source
    return f"{name}-{hashlib.sha1(full.encode('utf-8', 'surrogateescape')).hexdigest()[:6]}"


def _default_dir(checkpoint: Path, own_data: bool, source: str, split: str, tta: bool,
                 changed: Mapping[str, Any], folder_default: bool) -> Path:  # fmt: skip
    parts = [] if folder_default else [_label(checkpoint.name.removesuffix(".pt"))]
    if not own_data:
        parts.append(_source_label(source))
    settings = [_setting_label(k, v) for k, v in sorted(changed.items())] + (["tta"] if tta else [])
    if not parts and not settings and split == "test":
        return checkpoint.parent
    return checkpoint.parent / "-".join(["eval", *parts, split, *settings])


def write_report(report: EvalReport, out_dir: str | Path | None = None, *, limit: int = TOP_LOSSES) -> dict[str, Path]:
    """Write ``eval.json``, ``confusion.png``, ``top_losses.png`` and ``reliability.png``; store the temperature.

    The folder is not checked here: :meth:`Evaluation.output_dir` checks it before the work.
    The default evaluation (the run's own model on its own test split, training settings,
    no TTA, written into the run folder) also stores its fitted temperature with the model,
    ``RUN/calibration.json`` (:func:`cnnlab.infer.calibration.store_temperature`), which
    ``predict`` then uses. Any other evaluation reports its temperature in ``eval.json``
    only, so that, like ``eval.json``, the stored one is never replaced by another setting's.

    Args:
        report: what :func:`evaluate_checkpoint` returned.
        out_dir: the folder (default :func:`default_output_dir`).
        limit: images in the top-losses grid.

    Returns:
        ``{"json": ..., "confusion": ..., "top_losses": ..., "reliability": ...}`` paths, and
        ``"calibration"`` when the temperature was stored.

    Raises:
        CnnlabError: the folder or a file cannot be written.
    """
    out = Path(out_dir) if out_dir is not None else default_output_dir(report)
    paths = {"json": out / "eval.json", "confusion": out / "confusion.png", "top_losses": out / "top_losses.png"}
    if report.calibration is not None:
        paths["reliability"] = out / "reliability.png"
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_files(report, paths, limit)
        if _stores_temperature(report, out):
            assert report.calibration is not None and report.calibration.temperature is not None  # _stores_temperature
            cal = report.calibration
            paths["calibration"] = store_temperature(report.checkpoint, cal.temperature, fitted_on=cal.fitted_on,
                                                     ece_test_before=cal.ece_before, ece_test_after=cal.ece_after,
                                                     written_by="cnnlab eval")  # fmt: skip
    except OSError as exc:
        raise write_error(exc.filename or out, exc) from None
    return paths


def _stores_temperature(report: EvalReport, out: Path) -> bool:
    """Whether ``report`` is the run's default evaluation, written into the run folder, with a fitted T."""
    cal = report.calibration
    if report.recipe or cal is None or cal.temperature is None or cal.at_bound:  # a T at its bound is no fit
        return False
    run = report.checkpoint.parent
    return same_folder(default_output_dir(report), run) and same_folder(out, run)


def _write_files(report: EvalReport, paths: dict[str, Path], limit: int) -> None:
    m = report.metrics
    tta = ", flip TTA" if report.tta else ""
    title = f"{report.model} on {report.data_name}, {report.split} split{tta}: accuracy {m.accuracy:.2%} (n={m.n})"
    atomic_write_json(paths["json"], report.as_dict(limit))
    confusion_plot(m.confusion, m.classes, paths["confusion"], title=title)
    idx = report.top_losses(limit)
    preds = report.probs.argmax(1)
    captions = [f"pred {m.classes[preds[i]]} ({report.probs[i, preds[i]]:.2f})\n"
                f"true {m.classes[report.labels[i]]} ({report.probs[i, report.labels[i]]:.2f})" for i in idx]  # fmt: skip
    images = [np.asarray(report.images[i]) for i in idx]
    captioned_grid(images, captions, paths["top_losses"],
                   title=f"top losses: the {len(idx)} most confidently wrong of {m.n} {report.split} images")  # fmt: skip
    if report.calibration is not None:
        reliability_diagram(report.calibration, paths["reliability"],
                            title=f"calibration of {report.model} on {report.data_name}, {report.split} split{tta}")  # fmt: skip

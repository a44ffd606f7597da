"""Classification metrics from logits and labels: confusion matrix, per-class scores, top-k.

Everything is computed from the confusion matrix ``cm`` (rows: true class, columns:
predicted class), so the numbers are consistent with each other by construction:

- recall of class k = ``cm[k, k] / cm[k, :].sum()``, which is also the per-class
  accuracy (the fraction of class k's images classified correctly);
- precision of class k = ``cm[k, k] / cm[:, k].sum()``;
- F1 = harmonic mean of the two; support = ``cm[k, :].sum()``.

A ratio with a zero denominator (a class never predicted, or absent from the split) is
0, as scikit-learn's ``zero_division=0`` does. Inputs may be torch tensors or NumPy
arrays; the results are NumPy arrays and Python floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def _numpy(values: Any) -> np.ndarray:
    """A NumPy array from a NumPy array, a sequence or a (CPU or device) torch tensor."""
    if hasattr(values, "detach"):  # a torch tensor; avoids importing torch for NumPy callers
        return values.detach().float().cpu().numpy() if values.is_floating_point() else values.detach().cpu().numpy()
    return np.asarray(values)


def confusion_matrix(labels: Any, preds: Any, num_classes: int) -> np.ndarray:
    """Count (true, predicted) pairs.

    Args:
        labels: true class indices, shape (N,).
        preds: predicted class indices, shape (N,).
        num_classes: the number of classes C (classes absent from both still get a row).

    Returns:
        int64 array (C, C); ``cm[i, j]`` is the number of images of class i predicted as j.
    """
    y = _numpy(labels).astype(np.int64).ravel()
    p = _numpy(preds).astype(np.int64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.size} vs {p.size}")
    if y.size and (min(y.min(), p.min()) < 0 or max(y.max(), p.max()) >= num_classes):
        raise ValueError(f"class indices must lie in [0, {num_classes})")
    # One bincount over the flattened (true, pred) index is far faster than a Python loop.
    return np.bincount(y * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = num.astype(np.float64), den.astype(np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall (= per-class accuracy), F1 and support of every class.

    Args:
        cm: a confusion matrix from :func:`confusion_matrix`.

    Returns:
        ``(precision, recall, f1, support)``: float64 arrays (C,) and an int64 array (C,).
    """
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    precision = _ratio(tp, cm.sum(axis=0))
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1, support.astype(np.int64)


def topk_accuracy(logits: Any, labels: Any, k: int) -> float:
    """Fraction of images whose true class is among the ``k`` highest scores.

    Ties are broken by class index (lower index first), as ``argsort`` is stable.
    """
    scores = _numpy(logits)
    y = _numpy(labels).astype(np.int64).ravel()
    if y.size == 0:
        return 0.0
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


@dataclass(frozen=True)
class ClassificationMetrics:
    """Accuracy, top-5 and per-class scores of one set of predictions.

    Attributes:
        classes: class names, indexed by label.
        confusion: int64 (C, C), rows true class, columns predicted class.
        accuracy: top-1 accuracy over all images.
        top5: top-5 accuracy, only when there are more than 5 classes (else None).
        precision, recall, f1: float64 (C,) per class; recall is the per-class accuracy.
        support: int64 (C,), images of each class.
    """

    classes: tuple[str, ...]
    confusion: np.ndarray
    accuracy: float
    top5: float | None
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray

    @property
    def n(self) -> int:
        """Number of images."""
        return int(self.confusion.sum())

    @property
    def macro(self) -> dict[str, float]:
        """Unweighted means over the classes present in the split."""
        present = self.support > 0
        if not present.any():
            return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
        return {name: float(getattr(self, name)[present].mean()) for name in ("precision", "recall", "f1")}

    def most_confused(self, limit: int = 5) -> list[tuple[str, str, int]]:
        """The largest off-diagonal cells: ``(true class, predicted class, count)``, most first."""
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(-off, axis=None, kind="stable")[:limit]
        pairs = [np.unravel_index(i, off.shape) for i in order]
        return [(self.classes[i], self.classes[j], int(off[i, j])) for i, j in pairs if off[i, j] > 0]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON: totals, per-class rows and the confusion matrix."""
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "top5": self.top5,
            "macro": self.macro,
            "per_class": [
                {"class": name, "precision": float(p), "recall": float(r), "accuracy": float(r), "f1": float(f),
                 "support": int(s)}  # fmt: skip
                for name, p, r, f, s in zip(self.classes, self.precision, self.recall, self.f1, self.support)
            ],
            "confusion": self.confusion.tolist(),
            "most_confused": [{"true": t, "predicted": p, "count": c} for t, p, c in self.most_confused()],
        }


def classification_metrics(logits: Any, labels: Any, classes: Sequence[str]) -> ClassificationMetrics:
    """All metrics of :class:`ClassificationMetrics` from scores and true labels.

    Args:
        logits: (N, C) scores; logits, log-probabilities or probabilities (only their
            order within a row matters).
        labels: (N,) true class indices.
        classes: the C class names.
    """
    scores = _numpy(logits)
    y = _numpy(labels).astype(np.int64).ravel()
    num_classes = len(classes)
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise ValueError(f"expected scores of shape (N, {num_classes}), got {scores.shape}")
    preds = scores.argmax(axis=1)
    cm = confusion_matrix(y, preds, num_classes)
    precision, recall, f1, support = per_class_scores(cm)
    accuracy = float(np.trace(cm) / max(cm.sum(), 1))
    top5 = topk_accuracy(scores, y, 5) if num_classes > 5 else None
    return ClassificationMetrics(tuple(classes), cm, accuracy, top5, precision, recall, f1, support)

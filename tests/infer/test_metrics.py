"""Classification metrics against hand computations and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from cnnlab.train.metrics import classification_metrics, confusion_matrix, per_class_scores, topk_accuracy

# 3 classes, 8 images: class 0 is predicted 0,0,1; class 1 is 1,1,2; class 2 is 2,0.
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2])
PREDS = np.array([0, 0, 1, 1, 1, 2, 2, 0])


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(LABELS, PREDS, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
    assert cm.sum() == len(LABELS)
    assert cm.sum(axis=1).tolist() == np.bincount(LABELS).tolist()  # rows: true class
    assert cm.sum(axis=0).tolist() == np.bincount(PREDS).tolist()  # columns: prediction


def test_per_class_scores_by_hand() -> None:
    precision, recall, f1, support = per_class_scores(confusion_matrix(LABELS, PREDS, 3))
    # precision = correct / predicted as k; recall = correct / truly k
    np.testing.assert_allclose(precision, [2 / 3, 2 / 3, 1 / 2])
    np.testing.assert_allclose(recall, [2 / 3, 2 / 3, 1 / 2])
    np.testing.assert_allclose(f1, [2 / 3, 2 / 3, 1 / 2])
    assert support.tolist() == [3, 3, 2]


def test_against_sklearn_with_a_class_never_predicted() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=500)
    logits = rng.normal(size=(500, 6)) + 2.0 * np.eye(6)[labels]
    logits[:, 4] = -10.0  # class 4 is never predicted: its precision is 0/0
    m = classification_metrics(logits, labels, [f"c{i}" for i in range(6)])
    preds = logits.argmax(1)
    p, r, f, s = skm.precision_recall_fscore_support(labels, preds, labels=range(6), zero_division=0)
    np.testing.assert_allclose(m.precision, p)
    np.testing.assert_allclose(m.recall, r)
    np.testing.assert_allclose(m.f1, f)
    assert m.support.tolist() == s.tolist()
    assert m.confusion.tolist() == skm.confusion_matrix(labels, preds, labels=range(6)).tolist()
    assert m.accuracy == pytest.approx(skm.accuracy_score(labels, preds))
    assert m.top5 == pytest.approx(skm.top_k_accuracy_score(labels, logits, k=5, labels=range(6)))
    assert m.macro["f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro", zero_division=0))
    assert m.precision[4] == 0.0


def test_torch_and_numpy_inputs_agree() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 4, generator=gen)
    labels = torch.randint(0, 4, (64,), generator=gen)
    a = classification_metrics(logits, labels, list("abcd"))
    b = classification_metrics(logits.numpy(), labels.numpy(), list("abcd"))
    assert a.confusion.tolist() == b.confusion.tolist() and a.accuracy == b.accuracy
    assert a.top5 is None  # only reported for more than 5 classes
    assert topk_accuracy(logits, labels, 2) == pytest.approx(skm.top_k_accuracy_score(labels, logits, k=2))
    assert topk_accuracy(logits.to(torch.bfloat16), labels, 4) == 1.0


def test_most_confused_and_as_dict() -> None:
    m = classification_metrics(np.eye(3)[PREDS], LABELS, ["a", "b", "c"])
    assert m.most_confused() == [("a", "b", 1), ("b", "c", 1), ("c", "a", 1)]
    d = m.as_dict()
    assert d["n"] == 8 and d["accuracy"] == pytest.approx(5 / 8)
    assert [row["support"] for row in d["per_class"]] == [3, 3, 2]
    assert d["per_class"][2]["accuracy"] == d["per_class"][2]["recall"] == 0.5


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(np.zeros((3, 2)), [0, 1, 0], ["a", "b", "c"])

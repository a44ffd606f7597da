"""`evaluate_checkpoint` and `write_report` against a manual evaluation of the same model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from cnnlab.errors import CnnlabError
from cnnlab.infer.evaluate import default_output_dir, evaluate_checkpoint, top_losses, write_report
from cnnlab.checkpoint import load_checkpoint
from cnnlab.models import model_from_checkpoint


@pytest.fixture(scope="module")
def report(gray_run: Path):  # noqa: ANN201
    return evaluate_checkpoint(gray_run, device="cpu")


def _manual_logits(run: Path, images: np.ndarray) -> torch.Tensor:
    """Logits computed by hand: rebuild the model, standardise with the checkpoint's mean/std."""
    state = load_checkpoint(run / "best.pt")
    model = model_from_checkpoint(state).eval()
    mean = torch.tensor(state["data"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(state["data"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        return model((torch.from_numpy(np.asarray(images)).float() / 255 - mean) / std)


def test_accuracy_equals_manual_computation(report, gray_run: Path, gray_test) -> None:  # noqa: ANN001
    images, labels, classes = gray_test
    logits = _manual_logits(gray_run, images)
    assert report.metrics.n == len(labels) and report.metrics.classes == classes
    np.testing.assert_array_equal(report.labels, labels)  # the run's own test split, in order
    np.testing.assert_allclose(report.probs, logits.softmax(1).numpy(), atol=1e-5)
    manual_acc = float((logits.argmax(1).numpy() == labels).mean())
    assert report.metrics.accuracy == pytest.approx(manual_acc, abs=1e-12)
    assert report.loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))), rel=1e-4)
    summary = json.loads((gray_run / "summary.json").read_text())
    assert report.metrics.accuracy == pytest.approx(summary["test_acc"])  # what training reported
    assert report.own_data and not report.warnings


def test_per_class_numbers_match_sklearn(report) -> None:  # noqa: ANN001
    m = report.metrics
    preds = report.probs.argmax(1)
    p, r, _, s = skm.precision_recall_fscore_support(report.labels, preds, labels=range(3), zero_division=0)
    np.testing.assert_allclose(m.precision, p)
    np.testing.assert_allclose(m.recall, r)
    assert m.confusion.sum() == m.n == s.sum() and m.confusion.sum(axis=1).tolist() == s.tolist()
    assert m.top5 is None  # 3 classes


def test_top_losses_are_wrong_and_sorted() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.99, 0.01], [0.5, 0.5]])
    labels = np.array([0, 0, 1, 1, 0])
    # wrong: 1 (p_true .2), 2 (.4), 3 (.01); image 4 is a tie, argmax picks class 0: right
    assert top_losses(probs, labels).tolist() == [3, 1, 2]
    assert top_losses(probs, labels, limit=1).tolist() == [3]


def test_write_report_into_the_run_folder(run_copy: Path) -> None:
    rep = evaluate_checkpoint(run_copy, device="cpu")
    assert default_output_dir(rep) == run_copy
    paths = write_report(rep, limit=8)
    written = {k: p for k, p in paths.items() if k != "calibration"}  # calibration.json: tests/infer/test_calibration.py
    assert {p.name for p in written.values()} == {"eval.json", "confusion.png", "top_losses.png", "reliability.png"}
    assert all(p.parent == run_copy and p.stat().st_size > 1000 for p in written.values())
    saved = json.loads(paths["json"].read_text())
    assert saved["accuracy"] == rep.metrics.accuracy and saved["split"] == "test"
    assert np.array(saved["confusion"]).sum() == saved["n"] == rep.metrics.n
    worst = saved["top_losses"]
    assert 0 < len(worst) <= 8 and all(w["true"] != w["predicted"] for w in worst)
    assert [w["prob_true"] for w in worst] == sorted(w["prob_true"] for w in worst)


def test_other_split_goes_to_its_own_folder(run_copy: Path) -> None:
    rep = evaluate_checkpoint(run_copy / "last.pt", split="val", tta=True, device="cpu")
    assert rep.split == "val" and rep.tta and rep.metrics.n == 60
    # the folder names what differs from the default evaluation: the model file (the run
    # folder stands for best.pt), the split and TTA
    assert default_output_dir(rep) == run_copy / "eval-last-val-tta"
    np.testing.assert_allclose(rep.probs.sum(1), 1.0, atol=1e-5)


def test_other_data_as_an_image_folder(gray_run: Path, gray_test, write_pngs, report, tmp_path: Path) -> None:  # noqa: ANN001
    """The test images as PNG files in a train/test folder give exactly the same numbers."""
    images, labels, classes = gray_test
    for part in ("train", "test"):
        write_pngs(images, labels, tmp_path / "folder" / part, classes)
    rep = evaluate_checkpoint(gray_run, data={"source": str(tmp_path / "folder")}, device="cpu")
    assert not rep.own_data and rep.metrics.n == len(labels)
    assert rep.metrics.accuracy == report.metrics.accuracy
    assert rep.metrics.confusion.tolist() == report.metrics.confusion.tolist()
    # the folder's name and a digest of its path: another folder named "folder" gets another one
    assert re.fullmatch(r"eval-folder-[0-9a-f]{6}-test", default_output_dir(rep).name)


def test_mismatched_data_is_a_clear_error(gray_run: Path) -> None:
    with pytest.raises(CnnlabError, match="3 classes but .* has 4"):
        evaluate_checkpoint(gray_run, data={"source": "synthetic:classes=4,n=80,size=12,channels=1"}, device="cpu")
    with pytest.raises(CnnlabError, match="takes 1x12x12 images"):
        evaluate_checkpoint(gray_run, data={"source": "synthetic:classes=3,n=60,size=16,channels=1"}, device="cpu")


def test_changed_split_settings_are_flagged(gray_run: Path) -> None:
    rep = evaluate_checkpoint(gray_run, data={"test_split": 0.2}, split="val", device="cpu")
    assert rep.own_data and any("changed since training" in w for w in rep.warnings)

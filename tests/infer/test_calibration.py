"""Calibration: ECE against a reference and constructed answers, temperature scaling, the stored T.

The ECE reference is the loop of Guo et al. 2017's published code (bins (lo, hi] of width
1/15; the gap of each bin weighted by its share of the images), written out here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.cli.main import main
from cnnlab.infer.calibration import (
    CALIBRATION_FILE, T_MIN, calibrate, expected_calibration_error, fit_temperature, reliability_bins, softmax,
    stored_temperature,
)  # fmt: skip
from cnnlab.infer.evaluate import evaluate_checkpoint, write_report
from cnnlab.infer.predict import load_predictor


def _reference_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    correct = pred == labels
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(ece)


def test_ece_of_constructed_probabilities() -> None:
    # 4 images at confidence 0.9, 3 right (gap 0.15); 2 at 0.59, both right (gap 0.41)
    probs = np.array([[0.9, 0.1]] * 4 + [[0.41, 0.59]] * 2)
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx((4 * 0.15 + 2 * 0.41) / 6)
    bins = reliability_bins(probs, labels)
    assert bins.counts.sum() == 6 and bins.counts[13] == 4 and bins.counts[8] == 2  # (13/15, 14/15], (8/15, 9/15]
    assert bins.accuracy[13] == pytest.approx(0.75) and bins.confidence[8] == pytest.approx(0.59)
    # a confidence of exactly 1 is in the last bin; all right: no gap
    assert expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])) == 0.0
    assert reliability_bins(np.array([[1.0, 0.0]]), np.array([0])).counts[-1] == 1


def test_ece_matches_the_reference_loop() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.5, (3000, 7))
    probs = softmax(logits)
    labels = rng.integers(0, 7, 3000)
    assert expected_calibration_error(probs, labels) == pytest.approx(_reference_ece(probs, labels), abs=1e-12)


def test_labels_drawn_from_the_probabilities_are_calibrated() -> None:
    rng = np.random.default_rng(1)
    probs = softmax(rng.normal(0, 2.0, (100_000, 4)))
    labels = np.array([rng.choice(4, p=p / p.sum()) for p in probs[:20_000]])
    assert expected_calibration_error(probs[:20_000], labels) < 0.02
    # the same probabilities with the labels shuffled: over-confident
    assert expected_calibration_error(probs[:20_000], rng.permutation(labels)) > 0.2


@pytest.mark.parametrize("true_t", [0.5, 2.0, 3.0])
def test_fit_temperature_recovers_a_known_temperature(true_t: float) -> None:
    # labels drawn from softmax(z / T): a model that outputs z is over- (T > 1) or under-confident (T < 1)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(10_000, 5, generator=gen, dtype=torch.float64) * 3
    labels = torch.multinomial((logits / true_t).softmax(1), 1, generator=gen)[:, 0]
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.06)
    cal = calibrate(logits.numpy(), labels.numpy(), logits.numpy(), labels.numpy(), fitted_on="test")
    assert cal.temperature == pytest.approx(t) and cal.ece_after < cal.ece_before and cal.nll_after < cal.nll_before
    # accuracy unchanged: dividing by T > 0 keeps the argmax
    assert (softmax(logits, t).argmax(1) == logits.argmax(1).numpy()).all()


def test_a_separable_validation_split_hits_the_bound_instead_of_zero() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]] * 10)
    labels = torch.tensor([0, 1] * 10)
    assert fit_temperature(logits, labels) == T_MIN
    assert calibrate(logits.numpy(), labels.numpy(), logits.numpy(), labels.numpy()).at_bound


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory, tiny_config) -> Path:  # noqa: ANN001
    """A run trained briefly (so its validation split is not separable), after its default evaluation."""
    from cnnlab.run import run_training

    run = tmp_path_factory.mktemp("calibrated") / "run"
    run_training(tiny_config(epochs=1), run, verbose=False)
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    return run


@pytest.mark.slow  # the calibrated_run fixture: a 1-epoch run and its evaluation
def test_eval_reports_calibration_and_stores_the_temperature(calibrated_run: Path) -> None:
    run = calibrated_run
    saved = json.loads((run / "eval.json").read_text())["calibration"]
    assert saved["bins"] == 15 and 0 <= saved["ece"] <= 1 and saved["fitted_on"].startswith("val split")
    assert (run / "reliability.png").stat().st_size > 1000
    stored = json.loads((run / CALIBRATION_FILE).read_text())
    assert stored["model"] == "best.pt" and stored["temperature"] == pytest.approx(saved["temperature"])
    assert stored_temperature(run / "best.pt") == (pytest.approx(saved["temperature"]), None)
    assert stored_temperature(run / "last.pt") == (None, None)  # fitted for best.pt only


@pytest.mark.slow  # the calibrated_run fixture: a 1-epoch run and its evaluation
def test_predict_uses_the_stored_temperature_and_can_ignore_it(calibrated_run: Path, gray_test) -> None:  # noqa: ANN001
    images = gray_test[0][:50]
    t = json.loads((calibrated_run / CALIBRATION_FILE).read_text())["temperature"]
    calibrated = load_predictor(calibrated_run, device="cpu")
    raw = load_predictor(calibrated_run, device="cpu", calibrated=False)
    assert calibrated.temperature == pytest.approx(t) and calibrated.temperature_from == calibrated_run / CALIBRATION_FILE
    assert raw.temperature == 1.0 and raw.temperature_from is None
    p_cal, p_raw = calibrated.predict_images(images), raw.predict_images(images)
    assert (p_cal.argmax(1) == p_raw.argmax(1)).all()  # accuracy unchanged
    # the calibrated probabilities are softmax(log p_raw / T): the same logits up to a constant
    np.testing.assert_allclose(p_cal, softmax(np.log(p_raw.astype(np.float64)), t), atol=2e-5)
    assert not np.allclose(p_cal, p_raw, atol=1e-3)


@pytest.mark.slow  # the calibrated_run fixture: a 1-epoch run and its evaluation
def test_a_temperature_of_an_earlier_model_file_is_not_used(calibrated_run: Path, tmp_path: Path) -> None:
    import shutil

    run = Path(shutil.copytree(calibrated_run, tmp_path / "run"))
    stored = json.loads((run / CALIBRATION_FILE).read_text())
    (run / CALIBRATION_FILE).write_text(json.dumps({**stored, "sha256": "0" * 64}))  # best.pt was retrained since
    t, why = stored_temperature(run / "best.pt")
    assert t is None and "earlier best.pt" in why
    assert load_predictor(run, device="cpu").temperature == 1.0


@pytest.mark.slow  # the calibrated_run fixture: a 1-epoch run and its evaluation
def test_other_evaluations_do_not_replace_the_stored_temperature(calibrated_run: Path, tmp_path: Path) -> None:
    before = (calibrated_run / CALIBRATION_FILE).read_bytes()
    rep = evaluate_checkpoint(calibrated_run, split="val", device="cpu")
    paths = write_report(rep, tmp_path / "val")
    assert "calibration" not in paths and (tmp_path / "val" / "reliability.png").is_file()
    assert rep.calibration is not None and rep.calibration.temperature is not None  # reported in eval.json
    assert (calibrated_run / CALIBRATION_FILE).read_bytes() == before


@pytest.mark.slow  # the calibrated_run fixture: a 1-epoch run and its evaluation
def test_a_safetensors_export_carries_the_temperature(calibrated_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("safetensors", reason="needs the safetensors package (pip install safetensors)")
    from cnnlab.infer.export import export_model

    t = json.loads((calibrated_run / CALIBRATION_FILE).read_text())["temperature"]
    result = export_model(calibrated_run, "safetensors", tmp_path / "m.safetensors")
    pred = load_predictor(result.path, device="cpu")
    assert pred.temperature == pytest.approx(t) and pred.temperature_from == result.path
    assert load_predictor(result.path, device="cpu", calibrated=False).temperature == 1.0


@pytest.mark.slow  # the calibrated_run fixture: a 1-epoch run and its evaluation
def test_eval_on_other_data_reports_ece_without_a_temperature(calibrated_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    data = "synthetic:classes=3,n=90,size=12,channels=1,seed=5"
    assert main(["eval", str(calibrated_run), "--data", data, "--out", str(tmp_path), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "calibration: ECE" in text and "no temperature was fitted" in text
    saved = json.loads((tmp_path / "eval.json").read_text())["calibration"]
    assert saved["temperature"] is None and saved["ece_after"] is None

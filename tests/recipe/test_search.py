"""Steps 4-5, the hyperparameter search: spaces, refinement, pruning, results, continuing, errors.

Trials are real (tiny) cnnlab runs on synthetic data with the study in a journal file.
"""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
import yaml

from cnnlab.cli.main import main
from cnnlab.cli.common import parse_duration
from cnnlab.cli.search import parse_knob
from cnnlab.config import load_run_config, load_yaml
from cnnlab.errors import CnnlabError
from cnnlab.recipe import storage as st
from cnnlab.recipe.space import CategoricalKnob, FloatKnob, IntKnob
from cnnlab.recipe.search import (
    EpochReporter,
    SearchSpace,
    TrialRecord,
    best_config,
    coarse_space,
    load_search,
    refine_space,
    run_search,
)

DATA = "synthetic:classes=3,n=600,size=12,channels=1"
BASE = {
    "data": {"source": DATA}, "model": {"name": "simple", "options": {"spec": "c16-p-c32-p"}},
    "optim": {"lr": 0.05}, "train": {"batch_size": 32, "device": "cpu", "epochs": 12},
}  # fmt: skip
CLI_RUN = ["--data", DATA, "--model", "simple", "--model-opt", "spec=c16-p-c32-p", "--batch-size", "32", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _cfg(**schedule: str):
    return load_run_config(None, {**BASE, "schedule": schedule or None})


# --------------------------------------------------------------------------- spaces


def test_coarse_space_spans_two_decades_around_the_lr_finder_value() -> None:
    space = coarse_space(0.05, has_dropout=True)
    assert space.lr == pytest.approx((0.005, 0.5))
    knobs = space.knobs()
    assert knobs["optim.lr"].log and knobs["optim.weight_decay"] == FloatKnob(1e-6, 1e-2, log=True)
    assert knobs["model.dropout"] == FloatKnob(0.0, 0.5)
    assert "model.dropout" not in coarse_space(0.05, has_dropout=False).knobs()


def test_space_round_trips_through_plain_data_and_rejects_bad_ranges() -> None:
    space = SearchSpace(lr=(1e-3, 1e-1), dropout=(0.0, 0.3), label_smoothing=(0.0, 0.2),
                        extra={"train.batch_size": CategoricalKnob((32, 64)), "model.options.width": IntKnob(8, 32)})  # fmt: skip
    again = SearchSpace.from_dict(json.loads(json.dumps(space.as_dict())))
    assert again.knobs() == space.knobs()
    with pytest.raises(CnnlabError, match="lo > 0"):
        SearchSpace(lr=(0.0, 0.1))
    with pytest.raises(CnnlabError, match="lo <= hi"):
        SearchSpace(lr=(0.1, 0.01))
    with pytest.raises(CnnlabError, match="own field"):
        SearchSpace(lr=(0.01, 0.1), extra={"optim.lr": FloatKnob(0.1, 1.0, log=True)})


def _record(number: int, value: float | None, lr: float, bs: int, state: str = "COMPLETE") -> TrialRecord:
    return TrialRecord(number=number, state=state, value=value, params={"optim.lr": lr, "model.dropout": 0.1 * (number % 5),
                       "train.batch_size": bs}, epochs=3, seconds=1.0, run_dir=None)  # fmt: skip


def test_refine_space_narrows_every_range_around_the_top_trials() -> None:
    space = SearchSpace(lr=(1e-4, 1.0), weight_decay=None, dropout=(0.0, 0.5),
                        extra={"train.batch_size": CategoricalKnob((32, 64, 128, 256))})  # fmt: skip
    trials = [
        _record(0, 0.90, 0.02, 64), _record(1, 0.88, 0.04, 128), _record(2, 0.87, 0.03, 64),
        _record(3, 0.40, 1e-4 * 1.5, 256), _record(4, 0.35, 0.9, 32),  # bad, at both ends of the LR range
        _record(5, 0.99, 0.5, 256, state="PRUNED"), _record(6, None, 0.001, 32, state="FAIL"),  # never used
    ]
    refined, why = refine_space(trials, space, top_k=3)
    lo, hi = refined.lr
    assert 1e-4 < lo < 0.02 and 0.04 < hi < 0.9, "the span of the top 3 plus a margin, not the bad trials"
    assert hi / lo < 1e4 / 10, "much narrower than the coarse four decades"
    assert refined.knobs()["train.batch_size"] == CategoricalKnob((64, 128))
    assert why["optim.lr"]["old"] == [1e-4, 1.0] and why["optim.lr"]["new"] == [lo, hi]
    assert sorted(why["optim.lr"]["top_values"]) == [0.02, 0.03, 0.04] and why["optim.lr"]["trials"] == [0, 1, 2]
    assert why["optim.lr"]["edge"] is None
    d_lo, d_hi = refined.dropout
    assert 0.0 <= d_lo <= 0.0 + 1e-12 and 0.2 <= d_hi < 0.5  # top dropouts 0, 0.1, 0.2 (clipped at 0)
    assert why["model.dropout"]["edge"] == "low", "best values at the range's boundary are flagged"


def test_refine_space_needs_a_finished_trial() -> None:
    with pytest.raises(CnnlabError, match="no COMPLETE trial"):
        refine_space([_record(0, 0.5, 0.1, 32, state="PRUNED")], coarse_space(0.1, has_dropout=False))


# --------------------------------------------------------------------------- pruning callback


def test_epoch_reporter_prunes_a_clearly_worse_trial_but_never_on_the_last_epoch() -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))
    good = study.ask()
    assert EpochReporter(good, epochs=3)({"epoch": 0, "val_acc": 0.9}) is False
    study.tell(good, 0.9)
    bad = study.ask()
    reporter = EpochReporter(bad, epochs=3)
    assert reporter({"epoch": 0, "val_acc": 0.2}) is True and reporter.pruned_at == 1
    last = study.ask()
    assert EpochReporter(last, epochs=1)({"epoch": 0, "val_acc": 0.1}) is False, "a finished trial is not pruned"
    better = study.ask()
    assert EpochReporter(better, epochs=3)({"epoch": 0, "val_acc": 0.95}) is False
    with pytest.raises(CnnlabError, match="validation split"):
        EpochReporter(study.ask(), epochs=3)({"epoch": 0, "val_acc": None})


# --------------------------------------------------------------------------- whole searches


def test_coarse_search_writes_results_and_a_rerun_continues_the_study(tmp_path) -> None:
    out = tmp_path / "coarse"
    cfg = _cfg()
    first = run_search(cfg, coarse_space(0.05, has_dropout=False), out_dir=out, n_trials=3, epochs=2, pruner="none")
    assert [t.number for t in first.trials] == [0, 1, 2] and all(t.state == "COMPLETE" for t in first.trials)
    saved = json.loads((out / "search.json").read_text())
    assert saved["counts"] == {"COMPLETE": 3} and saved["best"]["number"] == first.best.number
    for t in first.trials:  # every trial is an ordinary run folder of `epochs` epochs
        assert (out / "trials" / f"coarse-{t.number:03d}" / "summary.json").is_file()
        assert load_yaml(out / "trials" / f"coarse-{t.number:03d}" / "config.yaml")["train"]["epochs"] == 2
        assert t.epochs == 2 and len(t.curve) == 2 and t.value == max(t.curve)
    best = load_run_config(out / "best.yaml")
    assert best == best_config(first)
    assert best.optim.lr == first.best.params["optim.lr"] and best.train.epochs == 12, "full length, best values"

    again = run_search(cfg, coarse_space(0.05, has_dropout=False), out_dir=out, n_trials=2, epochs=2, pruner="none")
    assert [t.number for t in again.trials] == [0, 1, 2, 3, 4]
    assert [t.value for t in again.trials[:3]] == [t.value for t in first.trials]
    assert load_search(out).counts() == {"COMPLETE": 5}


def test_asha_prunes_a_trial_with_a_hopeless_learning_rate(tmp_path) -> None:
    space = SearchSpace(lr=(1e-7, 0.1), weight_decay=None)
    result = run_search(_cfg(name="constant"), space, out_dir=tmp_path / "s", n_trials=2, epochs=3, pruner="asha",
                        enqueue=[{"optim.lr": 0.05}, {"optim.lr": 1e-7}])  # fmt: skip
    good, hopeless = result.trials
    assert good.state == "COMPLETE" and good.epochs == 3
    assert hopeless.state == "PRUNED" and hopeless.epochs == 1 and hopeless.stop_reason == "pruned after epoch 1"
    metrics = (tmp_path / "s" / "trials" / "coarse-001" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1, "the pruned run stopped training after one epoch"


def test_a_dead_local_worker_s_trial_is_failed_in_the_journal(tmp_path) -> None:
    url = st.default_storage_url(tmp_path)
    study = optuna.create_study(study_name="s", storage=st.open_storage(url), direction="maximize")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan, alive = study.ask(), study.ask()
    orphan.set_user_attr(st.WORKER_ATTR, f"{st.worker_id().rpartition(':')[0]}:{dead.stdout.strip()}")
    alive.set_user_attr(st.WORKER_ATTR, st.worker_id())
    assert st.fail_stale_trials(study) == [orphan.number]
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states == {orphan.number: "FAIL", alive.number: "RUNNING"}


def test_bad_storage_urls_are_one_line_errors(tmp_path, capsys) -> None:
    with pytest.raises(CnnlabError, match=r"cannot open the study storage postgresql://nobody:\*\*\*@127\.0\.0\.1:1/x"):
        run_search(_cfg(), coarse_space(0.05, has_dropout=False), out_dir=tmp_path, storage="postgresql://nobody:pw@127.0.0.1:1/x")
    assert main(["search", *CLI_RUN, "--storage", "nodb://where", "--out", str(tmp_path / "o"), "--trials", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnlab: error: cannot open the study storage nodb://where") and "\n" not in err
    assert main(["search", "--join", "nope", "--storage", str(tmp_path / "none.journal")]) == 1
    assert "no study 'nope'" in capsys.readouterr().err


def test_cli_coarse_then_refine_from_the_coarse_folder(tmp_path, capsys) -> None:
    coarse, refine = tmp_path / "coarse", tmp_path / "refine"
    assert main(["search", *CLI_RUN, "--lr-center", "0.05", "--dropout-range", "0", "0.3", "--trials", "3",
                 "--epochs", "1", "--pruner", "none", "--sampler", "random", "--out", str(coarse)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "val acc" in out and "dropout" in out and f"best config: {coarse / 'best.yaml'}" in out
    assert main(["search", "--stage", "refine", "--from", str(coarse), "--top-k", "2", "--trials", "1",
                 "--epochs", "2", "--out", str(refine)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "refined ranges" in printed and "optim.lr: [0.005, 0.5] ->" in printed
    saved = json.loads((refine / "search.json").read_text())
    assert saved["stage"] == "refine" and saved["settings"]["epochs"] == 2
    assert saved["settings"]["origin"]["from"] == str(coarse)
    lo, hi = saved["settings"]["origin"]["refined"]["optim.lr"]["new"]
    assert saved["trials"][0]["params"]["model.dropout"] <= 0.3 and lo <= saved["trials"][0]["params"]["optim.lr"] <= hi
    assert yaml.safe_load((refine / "best.yaml").read_text())["model"]["name"] == "simple"


def test_budget_and_knob_parsing() -> None:
    assert [parse_duration(t) for t in ("600", "600s", "30m", "2h", "1h30m")] == [600, 600, 1800, 7200, 5400]
    assert parse_knob("train.batch_size=cat:64,128") == ("train.batch_size", CategoricalKnob((64, 128)))
    assert parse_knob("optim.momentum=float:0.8:0.99") == ("optim.momentum", FloatKnob(0.8, 0.99))
    assert parse_knob("optim.weight_decay=float:1e-6:1e-2:log") == ("optim.weight_decay", FloatKnob(1e-6, 1e-2, log=True))
    assert parse_knob("model.options.width=int:16:64") == ("model.options.width", IntKnob(16, 64))
    for bad in ("soon", "10x"):
        with pytest.raises(CnnlabError, match="--budget"):
            parse_duration(bad)
    with pytest.raises(CnnlabError, match="--knob"):
        parse_knob("optim.momentum=float:0.8")
    with pytest.raises(CnnlabError, match="--knob optim.momentum: .*lo <= hi"):
        parse_knob("optim.momentum=float:0.99:0.8")

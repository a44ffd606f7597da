"""The whole recipe on tiny synthetic data: steps in order, best.yaml, final run, resume, report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cnnlab.cli.main import main
from cnnlab.config import load_run_config
from cnnlab.errors import CnnlabError
from cnnlab.recipe.diagnose import Suggestion
from cnnlab.recipe.recipe import RecipeOptions, RecipeState, rewrite_report, run_recipe
from cnnlab.recipe.search import SearchSpace
from cnnlab.recipe.planner import SATURATION_EPOCHS
from cnnlab.recipe.steps import RECIPE_STEPS
from cnnlab.runfolder import RunFolder

pytest.importorskip("optuna", reason="the recipe needs optuna (pip install 'cnnlab[recipe]')")

DATA = "synthetic:classes=3,n=600,size=12,channels=1"
OPTIONS = RecipeOptions(budget_seconds=None, coarse_trials=3, refine_trials=2, coarse_epochs=1, refine_epochs=2,
                        search_subset=None, final_epochs=2, max_rounds=1, sampler="random", pruner="none")  # fmt: skip


def _cfg(**model):  # noqa: ANN202
    return load_run_config(None, {
        "data": {"source": DATA}, "model": {"name": "simple", "options": {"spec": "c16-p-c32-p-fc32"}, **model},
        "train": {"epochs": 2, "batch_size": 32, "checkpoint_minutes": 0, "device": "cpu"},
    })  # fmt: skip


@pytest.fixture(scope="module")
def recipe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("recipe") / "r"
    result = run_recipe(_cfg(), out, OPTIONS, verbose=False)
    assert result.stopped is None and result.test_acc is not None
    return out


def test_recipe_runs_every_step_in_order(recipe_dir: Path) -> None:
    state = RecipeState.load(recipe_dir)
    assert state.finished
    assert state.order == ["check", "overfit", "lr_find", "coarse", "diagnose-1", "refine-1", "chosen", "final"]
    assert state.steps["check"]["passed"] and state.steps["overfit"]["passed"]
    coarse, refine = state.steps["coarse"], state.steps["refine-1"]
    assert len(coarse["trials"]) == 3 and len(refine["trials"]) == 2
    lr = state.steps["lr_find"]["suggestion"]
    lo, hi, _ = coarse["space"]["optim.lr"]
    min_lr = state.steps["lr_find"]["min_lr"]  # the search is centred on the LR finder's pick, up to the loss minimum
    base = _cfg().optim  # the range holds the starting configuration's lr too
    assert lo == pytest.approx(min(lr / 10, base.lr)) and hi == pytest.approx(max(lr * 10, 10 * min_lr, base.lr))
    first_coarse = min(coarse["trials"], key=lambda t: t["number"])  # the starting configuration is tried first
    assert first_coarse["params"]["optim.lr"] == base.lr and first_coarse["params"]["optim.weight_decay"] == base.weight_decay
    rlo, rhi, _ = refine["space"]["optim.lr"]
    assert lo <= rlo and rhi <= hi and (rlo, rhi) != (lo, hi)  # refine narrowed the coarse range
    first = min(refine["trials"], key=lambda t: t["number"])
    assert first["params"] == coarse["best"]["params"]  # refine starts from the best coarse point, trained longer
    assert [t["params"] for t in refine["trials"][1:]] != [t["params"] for t in coarse["trials"][1:3]]  # fresh draws
    final = state.steps["final"]
    assert final["test_acc"] > 0.5 and final["epochs"] == 2  # 3 classes: chance is 33%
    assert (recipe_dir / "final" / "best.pt").is_file() and (recipe_dir / "final" / "summary.json").is_file()


def test_every_recorded_step_reads_back_typed_and_writes_the_same_data(recipe_dir: Path) -> None:
    state = RecipeState.load(recipe_dir)
    for key in state.order:
        step = RECIPE_STEPS.for_key(key)
        stored = {k: v for k, v in state.steps[key].items() if k != "seconds"}
        result = step.from_dict(stored)
        assert json.dumps(step.to_dict(result), sort_keys=True) == json.dumps(stored, sort_keys=True), key
        assert step.evidence(result)


def test_report_shows_the_saved_test_predictions_not_a_new_evaluation(recipe_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    shutil.copytree(recipe_dir, out)
    assert (out / "final" / "predictions-test.npz").is_file()
    (out / "final" / "predictions-test.npz").unlink()
    text = rewrite_report(out).read_text()
    assert "No confusion matrix: predictions-test.npz is missing" in text
    assert text.count("data:image/png;base64") == (recipe_dir / "report.html").read_text().count("data:image/png;base64") - 1


def test_best_yaml_trains_the_chosen_configuration(recipe_dir: Path) -> None:
    cfg = load_run_config(recipe_dir / "best.yaml")
    chosen = RecipeState.load(recipe_dir).steps["chosen"]["params"]
    assert cfg.optim.lr == pytest.approx(chosen["optim.lr"]) and cfg.optim.weight_decay == pytest.approx(chosen["optim.weight_decay"])
    assert cfg.model.dropout == pytest.approx(chosen["model.dropout"])  # the model has head dropout: it was searched
    assert cfg.train.train_subset is None  # the final model trains on all the data, not the search subset


def test_finished_recipe_refuses_to_resume_and_to_be_overwritten(recipe_dir: Path) -> None:
    with pytest.raises(CnnlabError, match="already finished"):
        run_recipe(None, recipe_dir, resume=True, verbose=False)
    with pytest.raises(CnnlabError, match="--resume"):
        run_recipe(_cfg(), recipe_dir, OPTIONS, verbose=False)


def test_report_of_a_finished_recipe_is_rewritten_from_its_files(recipe_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    shutil.copytree(recipe_dir, out)
    before = (out / "report.html").read_text()
    (out / "report.html").unlink()
    shutil.rmtree(out / "report")
    assert main(["recipe", "--report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.html'}"
    after = (out / "report.html").read_text()
    assert len(after) == pytest.approx(len(before), rel=0.02) and after.count("data:image/png;base64") == before.count("data:image/png;base64")
    assert RecipeState.load(out).steps == RecipeState.load(recipe_dir).steps  # nothing ran


def test_resume_continues_from_the_last_finished_step(recipe_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    shutil.copytree(recipe_dir, out)
    state = RecipeState.load(out)
    for name in ("refine-1", "chosen", "final"):  # as if killed during the refine search
        state.steps.pop(name)
        state.order.remove(name)
    state.finished = False
    state.save(out)
    shutil.rmtree(out / "final")
    kept = {k: json.dumps(state.steps[k], sort_keys=True) for k in ("check", "overfit", "lr_find", "coarse")}
    result = run_recipe(None, out, resume=True, verbose=False)
    after = RecipeState.load(out)
    assert after.finished and result.test_acc is not None
    assert {k: json.dumps(after.steps[k], sort_keys=True) for k in kept} == kept  # done steps were not redone
    assert after.order[-3:] == ["refine-1", "chosen", "final"]


def test_failed_check_stops_the_recipe_with_the_reason(tmp_path: Path) -> None:
    cfg = _cfg(init="normal:1.0", prior_bias=False)  # huge initial logits: the initial loss is far from ln(3)
    result = run_recipe(cfg, tmp_path / "r", OPTIONS, verbose=False)
    assert result.stopped and "check failed" in result.stopped and result.test_acc is None
    assert RecipeState.load(tmp_path / "r").order == ["check"]
    assert result.report is not None and "FAIL" in result.report.read_text()


def test_adjusted_space_follows_the_diagnosis() -> None:
    space = SearchSpace(lr=(0.01, 1.0), weight_decay=(1e-5, 1e-3), dropout=(0.0, 0.3))
    lower, moves = space.adjusted(Suggestion(lr_scale=0.3))
    assert lower.lr == pytest.approx((0.003, 0.3)) and lower.weight_decay == space.weight_decay and len(moves) == 1
    more, _ = space.adjusted(Suggestion(more_regularisation=True))
    assert more.weight_decay == pytest.approx((3e-5, 3e-3)) and more.dropout == pytest.approx((0.1, 0.4))
    less, _ = space.adjusted(Suggestion(less_regularisation=True))
    assert less.weight_decay == pytest.approx((1e-5 / 3, 1e-3 / 3)) and less.dropout == pytest.approx((0.0, 0.2))
    same, moves = space.adjusted(Suggestion(longer=True, check_labels=True))  # nothing a range can do
    assert same == space and moves == []


def test_budget_is_required_and_sane() -> None:
    with pytest.raises(CnnlabError, match="budget"):
        RecipeOptions(budget_seconds=None, coarse_trials=None)
    with pytest.raises(CnnlabError, match="too short"):
        RecipeOptions(budget_seconds=10)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def test_report_renders_in_a_real_browser(recipe_dir: Path) -> None:
    browser = _chromium()
    if browser is None:
        if os.environ.get("CNNLAB_REQUIRE_SYSTEM_TESTS") == "1":
            pytest.fail("chromium is missing; bash scripts/ensure-system-deps.sh installs it")
        pytest.skip("needs chromium (bash scripts/ensure-system-deps.sh installs it)")
    report = recipe_dir / "report.html"
    text = report.read_text()
    for heading in ("1. Check the setup", "2. Overfit a tiny sample", "3. Learning-rate finder", "Search, diagnose, refine",
                    "Chosen configuration", "Final model"):  # fmt: skip
        assert heading in text, heading
    assert "src='http" not in text and 'src="http' not in text  # self-contained: nothing fetched
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", report.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    assert 'id="selfcheck" data-ok="yes"' in dom, dom[-400:]
    n_images = int(dom.split('id="selfcheck"')[1].split("images=")[1].split()[0])
    assert n_images >= 5  # overfit, lr finder, trials, parameters, curves, confusion


def test_report_reads_for_a_person(recipe_dir: Path) -> None:
    text = (recipe_dir / "report.html").read_text()
    assert "<p hidden>self-check: <span id='selfcheck'" in text  # the browser test's hook, kept out of sight
    assert "3 trials, best val acc" in text and "2 trials, best val acc" in text
    assert "broken parameter tensors (allowed: at most 0)" in text  # not a bare "0 | 0"
    assert "<th>expected</th>" not in text


def test_report_pieces_say_what_they_mean() -> None:
    from cnnlab.recipe.checks import CheckItem
    from cnnlab.recipe.html import plural
    from cnnlab.recipe.report import time_spent
    from cnnlab.recipe.steps.check import measurement

    assert (plural(1, "trial"), plural(2, "trial"), plural(0, "epoch")) == ("1 trial", "2 trials", "0 epochs")
    assert measurement(CheckItem("initial-loss", True, 1.1019, 1.0986, "", "~", 0.11)) == "1.102 loss (expected 1.099 ± 0.11)"
    assert measurement(CheckItem("gradients", True, 0.0, 0.0, "all fine", "<=")) == "0 broken parameter tensors (allowed: at most 0)"
    assert measurement(CheckItem("weight-decay", True, 0.25, 0.0, "", ">")) == "0.25 loss increase (must be > 0)"
    assert measurement(CheckItem("batch-independence", True, 0.0, 0.0, "skipped: needs a batch of at least 2 images", "<=")) == "does not apply"
    assert time_spent(720, 600) == "12.0 min: over the 10 min budget by 2.0 min (+20%); the steps' times below show where it went"
    assert time_spent(540, 600) == "9.0 min of 10 min" and time_spent(30, None) == "0.5 min"


def test_cli_recipe_resume_of_a_missing_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "--resume", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnlab: error:") and "recipe.json" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_recipe_killed_in_its_search_resumes(tmp_path: Path) -> None:
    """SIGKILL the recipe process during the coarse search; --resume keeps its finished trials."""
    import signal
    import sys
    import time

    out = tmp_path / "r"
    args = ["recipe", "--data", DATA, "--model", "simple", "--model-opt", "spec=c16-p-c32-p-fc32", "--dropout", "0.1",
            "--batch-size", "32", "--device", "cpu", "--budget", "10m", "--trials", "4", "--coarse-epochs", "1",
            "--refine-epochs", "2", "--rounds", "1", "--final-epochs", "2", "--search-subset", "0", "--sampler", "random",
            "--pruner", "none", "--out", str(out), "--quiet"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    trials = out / "search" / "coarse" / "trials"
    deadline = time.monotonic() + 180
    while not (trials.is_dir() and any((t / "summary.json").is_file() for t in trials.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "the recipe ended before its first coarse trial finished"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = RecipeState.load(out)
    assert state.order == ["check", "overfit", "plan", "lr_find"] and not state.finished  # killed inside the coarse search
    finished = {t.name for t in trials.iterdir() if (t / "summary.json").is_file()}
    assert main(["recipe", "--resume", str(out), "--quiet"]) == 0
    after = RecipeState.load(out)
    assert after.finished and after.order[:4] == ["check", "overfit", "plan", "lr_find"]
    done = ("check", "overfit", "plan", "lr_find")
    assert {k: after.steps[k] for k in done} == {k: state.steps[k] for k in done}
    kept = {Path(t["run_dir"]).name for t in after.steps["coarse"]["trials"] if t["state"] == "COMPLETE"}
    assert finished <= kept  # no finished trial was lost or redone


def test_best_yaml_says_the_epochs_the_final_run_trained(recipe_dir: Path) -> None:
    best, final = load_run_config(recipe_dir / "best.yaml"), load_run_config(recipe_dir / "final" / "config.yaml")
    assert best.train.epochs == final.train.epochs == RecipeState.load(recipe_dir).steps["final"]["epochs"]


def test_final_epochs_come_from_the_final_models_measured_speed(tmp_path: Path) -> None:
    """With a budget, the final step times the final model, plans whole epochs in the time left, and says why."""
    import dataclasses

    from cnnlab.config import dump_yaml, to_dict
    from cnnlab.recipe.step import RecipeContext, ReportContext
    from cnnlab.recipe.steps.chosen import BEST_YAML
    from cnnlab.recipe.planner import SATURATION_EPOCHS as MAX_EPOCHS
    from cnnlab.recipe.steps.final import FinalStep

    base = _cfg()
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=1000))  # far more than fits
    options = RecipeOptions(budget_seconds=60.0, coarse_trials=1)
    state = RecipeState(config=to_dict(base), options=dataclasses.asdict(options), spent_seconds=54.0)  # 6 s left
    tmp_path.joinpath(BEST_YAML).write_text(dump_yaml(base))
    ctx = RecipeContext(base, options, tmp_path, state, RECIPE_STEPS, verbose=False)
    step = FinalStep()
    result = step.run(ctx, "final")
    plan = result.plan
    assert plan is not None and plan.search_seconds == 0.0 and not plan.skip_search
    left = max(plan.budget_seconds - plan.elapsed_seconds, 0.0)
    fits = int(max(left - plan.fixed_seconds, 0.0) // plan.final_epoch_seconds)
    assert plan.final_epochs == min(fits, MAX_EPOCHS)  # the whole epochs of its measured speed that fit
    assert 1 <= result.epochs <= max(plan.final_epochs, 1) and plan.final_seconds <= left  # planned inside the budget
    # the final run's first epoch then re-planned its steps to end by the budget's end (5 s left, the report's
    # seconds kept: it stops there); best.yaml reproduces what it trained, not the base config's 1000 epochs
    best, final_cfg = load_run_config(tmp_path / BEST_YAML), load_run_config(tmp_path / "final" / "config.yaml")
    assert best == final_cfg and best.train.epochs == max(plan.final_epochs, 1)
    assert len(RunFolder(tmp_path / "final").read_metrics()) == result.epochs
    assert step.from_dict(json.loads(json.dumps(step.to_dict(result)))).plan == plan  # recipe.json keeps the plan
    (tmp_path / "figs").mkdir()
    html = step.report_section([("final", result)], ReportContext(tmp_path, tmp_path / "figs", state, ctx.records))
    assert "budget plan" in html and all(reason.split(" (")[0] in html for reason in plan.reasons)


def test_a_plan_that_skips_the_search_trains_the_starting_configuration(tmp_path: Path) -> None:
    """When the budget plan gives all the time to the final model, no search runs and best.yaml is the start config."""
    import dataclasses

    from cnnlab.config import to_dict
    from cnnlab.recipe.planner import plan_budget
    from cnnlab.recipe.recipe import run_steps
    from cnnlab.recipe.step import RecipeContext

    base = _cfg()
    # one final model: the tiny model's real pace would otherwise share the time among several (test_ensemble.py)
    options = RecipeOptions(budget_seconds=600.0, coarse_epochs=1, sampler="random", pruner="none", ensemble=1)
    state = RecipeState(config=to_dict(base), options=dataclasses.asdict(options))
    ctx = RecipeContext(base, options, tmp_path, state, RECIPE_STEPS, verbose=False)
    for key in ("check", "overfit"):  # the gates ran; their results do not matter here
        ctx.run(RECIPE_STEPS[key], key)
    plan = plan_budget(600.0, 10.0, 60.0, 5.0, max_epochs=30)  # 9 final epochs fit, below saturation: no search
    # (constructed figures: 60 s per epoch of this tiny model is what the final plan must reuse, not re-measure)
    assert plan.skip_search
    ctx.records.add("plan", RECIPE_STEPS["plan"], plan, 0.0)
    run_steps(ctx, RECIPE_STEPS)
    assert state.order == ["check", "overfit", "plan", "chosen", "final"] and state.finished  # no LR finder, no search
    assert not (tmp_path / "search").exists()
    best = load_run_config(tmp_path / "best.yaml")
    assert best.optim == base.optim and best.model == base.model and best.train.tta == "auto"
    final = ctx.records.get("final")
    assert ctx.records.get("chosen").value is None and final.test_acc is not None
    # the final model is the configuration the plan timed: its measurement is used again
    assert final.plan.final_epoch_seconds == plan.final_epoch_seconds
    # then its first epoch's real pace (this tiny model is far faster than the constructed 60 s) re-planned its
    # steps, up to the saturation epochs; best.yaml holds the steps it trained and the warmup that made it exact
    assert best.train.steps is not None and best.schedule.warmup_epochs == pytest.approx(0.25 * 9)
    assert final.epochs == len(RunFolder(tmp_path / "final").read_metrics()) == SATURATION_EPOCHS
    html = rewrite_report(tmp_path).read_text()
    assert "search skipped" in html and "the starting configuration" in html and "must beat" in html


def test_short_trials_keep_the_starting_regularisation(recipe_dir: Path, tmp_path: Path) -> None:
    """Trials shorter than half the final model's epochs choose the learning rate, not weight decay or dropout."""
    import dataclasses

    from cnnlab.recipe.step import RecipeContext

    def choose(final_epochs: int):  # noqa: ANN202
        out = tmp_path / f"r{final_epochs}"
        shutil.copytree(recipe_dir, out)
        state = RecipeState.load(out)
        for key in ("chosen", "final"):
            del state.steps[key]
            state.order.remove(key)
        options = dataclasses.replace(OPTIONS, final_epochs=final_epochs)
        ctx = RecipeContext(_cfg(), options, out, state, RECIPE_STEPS, verbose=False)
        return RECIPE_STEPS["chosen"].run(ctx, "chosen"), load_run_config(out / "best.yaml")

    start = _cfg()
    chosen, best = choose(10)  # trials of 1-2 epochs, a final model of 10
    assert chosen.kept and set(chosen.kept) <= {"optim.weight_decay", "model.dropout"} and "less than half" in chosen.why_kept
    assert best.optim.weight_decay == start.optim.weight_decay and best.model.dropout == start.model.dropout
    assert best.optim.lr == pytest.approx(chosen.params["optim.lr"])  # the search's learning rate stands
    assert "kept from the start" in RECIPE_STEPS["chosen"].evidence(chosen)
    chosen, best = choose(2)  # trials as long as half the final model's: the search decides everything
    assert chosen.kept == {} and best.optim.weight_decay == pytest.approx(chosen.params["optim.weight_decay"])

"""The recipe's shape: the step protocol and registry, typed knobs, and the diagnosis moving a space."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from cnnlab.config import load_run_config
from cnnlab.recipe.diagnose import Suggestion
from cnnlab.recipe.recipe import run_steps
from cnnlab.recipe.space import CategoricalKnob, FloatKnob, IntKnob, SearchSpace, knob_from_list
from cnnlab.recipe.state import RecipeOptions, RecipeState, RecipeStopped
from cnnlab.recipe.step import OnceStep, RecipeContext, ReportContext, StepRegistry
from cnnlab.recipe.steps import RECIPE_STEPS
from cnnlab.recipe.steps.chosen import Chosen

CFG = load_run_config(None, {"data": {"source": "synthetic:classes=3,n=60,size=8,channels=1"}, "train": {"device": "cpu"}})
OPTIONS = RecipeOptions(budget_seconds=None, coarse_trials=1)


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Count:
    """A toy step's typed result."""

    n: int


class CountStep(OnceStep):
    """A step that counts its runs (so a test sees what ran); it passes when told to."""

    name = "count"
    title = "Count"
    failure = "the count failed"

    def __init__(self, passes: bool = True) -> None:
        self.runs, self.passes = 0, passes

    def run(self, ctx: RecipeContext, key: str) -> Count:
        self.runs += 1
        return Count(self.runs)

    def to_dict(self, result: Count) -> dict[str, Any]:
        return {"n": result.n}

    def from_dict(self, data: Mapping[str, Any]) -> Count:
        return Count(int(data["n"]))

    def verdict(self, result: Count) -> bool | None:
        return self.passes

    def evidence(self, result: Count) -> str:
        return f"ran {result.n} time(s)"

    def report_section(self, results: Sequence[tuple[str, Count]], report: ReportContext) -> str:
        return f"<h2>{self.title}</h2><p>{results[-1][1].n}</p>"


def _context(tmp_path: Path, steps: StepRegistry) -> RecipeContext:
    state = RecipeState(config={}, options={})
    return RecipeContext(CFG, OPTIONS, tmp_path, state, steps, verbose=False)


def test_a_registered_step_runs_once_is_recorded_and_skipped_when_done(tmp_path: Path) -> None:
    steps = StepRegistry()
    step = steps.register(CountStep())  # adding a step: its module, and this one line
    ctx = _context(tmp_path, steps)
    run_steps(ctx, steps)
    saved = RecipeState.load(tmp_path)
    assert saved.order == ["count"] and saved.steps["count"]["n"] == 1 and "seconds" in saved.steps["count"]
    assert ctx.state.finished
    again = RecipeContext(CFG, OPTIONS, tmp_path, saved, steps, verbose=False)
    run_steps(again, steps)  # as after --resume: done steps are read back, not redone
    assert step.runs == 1 and again.records.get("count") == Count(1)


def test_a_failed_gate_stops_after_recording_the_result(tmp_path: Path) -> None:
    steps = StepRegistry()
    steps.register(CountStep(passes=False))
    ctx = _context(tmp_path, steps)
    with pytest.raises(RecipeStopped, match="the count failed"):
        run_steps(ctx, steps)
    assert RecipeState.load(tmp_path).order == ["count"] and not ctx.state.finished


def test_registry_refuses_duplicates_and_finds_repeated_keys() -> None:
    steps = StepRegistry()
    steps.register(CountStep())
    with pytest.raises(ValueError, match="registered already"):
        steps.register(CountStep())
    assert steps.for_key("count-3").name == "count"
    with pytest.raises(KeyError, match="no recipe step"):
        steps.for_key("nothing-1")
    assert [s.name for s in RECIPE_STEPS] == ["check", "overfit", "plan", "lr_find", "coarse", "diagnose", "refine", "chosen", "final", "member", "ensemble"]
    assert RECIPE_STEPS.for_key("refine-2").name == "refine" and RECIPE_STEPS.for_key("diagnose-1").name == "diagnose"


def test_a_registered_step_result_round_trips_through_plain_data() -> None:
    step = RECIPE_STEPS["chosen"]
    chosen = Chosen({"optim.lr": 0.05, "train.batch_size": 64}, 0.91, "runs/x/trials/coarse-003")
    data = json.loads(json.dumps(step.to_dict(chosen)))
    assert data == {"params": {"optim.lr": 0.05, "train.batch_size": 64}, "value": 0.91, "from": "runs/x/trials/coarse-003",
                    "kept": {}, "why_kept": ""}
    assert step.from_dict(data) == chosen
    assert step.evidence(chosen) == "optim.lr=0.05, train.batch_size=64 (val acc 91.00%)"


# --------------------------------------------------------------------------- knobs


@pytest.mark.parametrize("knob", [FloatKnob(1e-4, 1.0, log=True), FloatKnob(0.0, 0.5), IntKnob(8, 64), IntKnob(1, 1000, log=True),
                                  CategoricalKnob((32, 64, "auto", None))])  # fmt: skip
def test_every_knob_suggests_inside_its_range_and_round_trips(knob) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = []
    for _ in range(40):
        trial = study.ask()
        values.append(knob.suggest(trial, "x"))
        study.tell(trial, 0.0)
    assert all(knob.contains(v) for v in values)
    if isinstance(knob, CategoricalKnob):
        assert set(values) == set(knob.choices)
    else:
        assert all(isinstance(v, int) for v in values) == isinstance(knob, IntKnob)
        assert max(values) - min(values) > 0.5 * (knob.hi - knob.lo) or knob.log  # the draws spread over the range
    assert knob_from_list(knob.kind, json.loads(json.dumps(knob.to_list()))) == knob


def test_knobs_describe_themselves() -> None:
    assert FloatKnob(0.001, 0.1, log=True).describe() == "log-uniform [0.001, 0.1]"
    assert FloatKnob(0.0, 0.5).describe() == "uniform [0, 0.5]"
    assert IntKnob(16, 64).describe() == "uniform int [16, 64]"
    assert CategoricalKnob((64, 128)).describe() == "one of [64, 128]"


def test_knobs_narrow_around_values_inside_their_range() -> None:
    # log axis: values span 10^-2..10^-1.4; margin = max(0.25 * 0.6, 0.1 * 4) = 0.4 decades each side
    narrowed, why = FloatKnob(1e-4, 1.0, log=True).narrow([0.01, 0.04])
    assert narrowed.lo == pytest.approx(10**-2.4, rel=1e-3) and narrowed.hi == pytest.approx(0.04 * 10**0.4, rel=1e-3)
    assert narrowed.log and why["old"] == [1e-4, 1.0] and why["new"] == [narrowed.lo, narrowed.hi] and why["edge"] is None
    edge, why = FloatKnob(0.0, 0.5).narrow([0.0, 0.1])
    assert edge.lo == 0.0 and why["edge"] == "low"  # never below the old range; flagged at its edge
    ints, _ = IntKnob(8, 64).narrow([30, 33])
    assert (ints.lo, ints.hi) == (24, 39)  # margin 5.6 on each side, widened to whole numbers
    cats, why = CategoricalKnob((32, 64, 128, 256)).narrow([128, 64, 128])
    assert cats == CategoricalKnob((64, 128)) and why["new"] == [64, 128]


def test_bad_knobs_are_user_errors() -> None:
    from cnnlab.errors import CnnlabError

    with pytest.raises(CnnlabError, match="lo <= hi"):
        IntKnob(5, 1)
    with pytest.raises(CnnlabError, match="lo > 0"):
        FloatKnob(0.0, 1.0, log=True)
    with pytest.raises(CnnlabError, match="non-empty"):
        CategoricalKnob(())
    with pytest.raises(CnnlabError, match="FloatKnob, IntKnob or CategoricalKnob"):
        SearchSpace(lr=(0.01, 0.1), extra={"train.batch_size": ("cat", [32, 64])})


# --------------------------------------------------------------------------- diagnosis -> space


def test_a_suggestion_moves_the_space_and_nothing_else() -> None:
    space = SearchSpace(lr=(0.01, 1.0), weight_decay=(1e-5, 1e-3), dropout=(0.6, 0.75),
                        extra={"train.batch_size": CategoricalKnob((32, 64))})  # fmt: skip
    moved, moves = space.adjusted(Suggestion(lr_scale=0.1, more_regularisation=True))
    assert moved.lr == pytest.approx((0.001, 0.1)) and moved.weight_decay == pytest.approx((3e-5, 3e-3))
    assert moved.dropout == pytest.approx((0.7, 0.8))  # capped at 0.8
    assert moved.extra == space.extra and len(moves) == 3
    assert Suggestion.from_dict(Suggestion(lr_scale=0.1, more_regularisation=True).as_dict()) == Suggestion(
        lr_scale=0.1, more_regularisation=True)
    assert Suggestion(lr_scale=0.3).merged(Suggestion(lr_scale=0.1, longer=True)) == Suggestion(lr_scale=0.1, longer=True)
    no_wd = SearchSpace(lr=(0.01, 1.0), weight_decay=None)
    assert no_wd.adjusted(Suggestion(less_regularisation=True)) == (no_wd, [])  # nothing to move

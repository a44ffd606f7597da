"""The budget planner's decisions on constructed throughput inputs (no training)."""

from __future__ import annotations

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.recipe.planner import MIN_TRIALS, SATURATION_EPOCHS, Plan, plan_budget

BUDGET_5M, BUDGET_1H = 300.0, 3600.0


def _within_budget(plan: Plan) -> bool:
    """What the plan spends from its start on fits in the time left (the +5 % margin is never planned)."""
    return plan.elapsed_seconds + plan.search_seconds + plan.final_seconds <= plan.budget_seconds + 1e-9


def test_final_model_first_then_the_search_gets_the_time_beyond_saturation() -> None:
    # 1 h, nothing spent, a 60 s final epoch saturating at 30 epochs: 1800 s + 5 s for the final
    # model, the other 1795 s for the search (89 trials of 2 x 10 s)
    plan = plan_budget(BUDGET_1H, 0.0, 60.0, 10.0, trial_epochs=2, fixed_seconds=5.0, max_epochs=SATURATION_EPOCHS)
    assert plan.final_epochs == SATURATION_EPOCHS == 30 and plan.final_seconds == pytest.approx(30 * 60.0 + 5.0)
    assert not plan.skip_search and plan.search_seconds == pytest.approx(BUDGET_1H - 30 * 60.0 - 5.0)
    assert _within_budget(plan)
    assert any(r.startswith("search:") for r in plan.reasons) and any(r.startswith("final:") for r in plan.reasons)


def test_short_budget_gives_everything_to_the_final_model() -> None:
    # 5 min, 60 s spent on the checks, 20 s epochs: 12 epochs fit, below saturation: no search
    plan = plan_budget(BUDGET_5M, 60.0, 20.0, 3.0, trial_epochs=2, max_epochs=SATURATION_EPOCHS)
    assert plan.skip_search and plan.search_seconds == 0.0
    assert plan.final_epochs == 12 and _within_budget(plan)
    assert any("search skipped" in r and "all the time left" in r for r in plan.reasons)


def test_slow_model_never_loses_epochs_to_the_search() -> None:
    fast = plan_budget(BUDGET_1H, 0.0, 60.0, 10.0, max_epochs=SATURATION_EPOCHS)
    slow = plan_budget(BUDGET_1H, 0.0, 400.0, 10.0, max_epochs=SATURATION_EPOCHS)  # 9 epochs fit, far below 30
    assert slow.skip_search and slow.final_epochs == int(BUDGET_1H // 400.0) == 9
    assert not fast.skip_search and _within_budget(slow)


def test_too_little_beyond_saturation_skips_the_search() -> None:
    # 30 epochs of 9 s = 270 s of 300 s: the 30 s beyond fit 1 trial of 2 x 15 s, fewer than MIN_TRIALS
    plan = plan_budget(BUDGET_5M, 0.0, 9.0, 15.0, trial_epochs=2, max_epochs=30)
    assert MIN_TRIALS > 1 and plan.skip_search and plan.final_epochs == 30
    assert any("fit 1 coarse trial(s)" in r for r in plan.reasons) and _within_budget(plan)
    # just enough beyond for MIN_TRIALS trials: the search runs
    enough = plan_budget(BUDGET_5M, 0.0, 9.0, 30.0 / (2 * MIN_TRIALS), trial_epochs=2, max_epochs=30)
    assert not enough.skip_search and enough.search_seconds == pytest.approx(30.0)


def test_huge_budget_is_capped_and_still_within_it() -> None:
    plan = plan_budget(100 * BUDGET_1H, 0.0, 10.0, 5.0, max_epochs=30)
    assert plan.final_epochs == 30 and "capped at the saturation epochs" in plan.reasons[-1] and _within_budget(plan)
    uncapped = plan_budget(100 * BUDGET_1H, 0.0, 10.0, 5.0)  # no saturation given: all to the final model
    assert uncapped.skip_search and uncapped.final_epochs == int(100 * BUDGET_1H // 10.0)


def test_overrun_in_progress_plans_no_epoch_rather_than_an_overrun() -> None:
    # the search already ran past the budget: nothing is left, so no epoch is planned
    plan = plan_budget(BUDGET_5M, 330.0, 20.0, search_done=True)
    assert plan.final_epochs == 0 and plan.final_seconds == 0.0 and plan.search_seconds == 0.0
    assert "not one epoch" in plan.reasons[-1] and "0 s of the 300 s budget left" in plan.reasons[0]
    # 50 s left, 20 s epochs and a 15 s test evaluation: 1 epoch (35 s), not 2 (55 s)
    close = plan_budget(BUDGET_5M, 250.0, 20.0, search_done=True, fixed_seconds=15.0)
    assert close.final_epochs == 1 and close.final_seconds == pytest.approx(35.0) and _within_budget(close)


@pytest.mark.parametrize("budget", [60.0, 300.0, 600.0, 1800.0, 3600.0])
@pytest.mark.parametrize("final_epoch", [0.5, 7.0, 45.0, 500.0])
@pytest.mark.parametrize("elapsed_fraction", [0.0, 0.3, 0.9, 1.2])
def test_no_plan_ever_overruns(budget: float, final_epoch: float, elapsed_fraction: float) -> None:
    for search_done in (False, True):
        plan = plan_budget(budget, elapsed_fraction * budget, final_epoch, 3.0, search_done=search_done, fixed_seconds=2.0,
                           max_epochs=SATURATION_EPOCHS)
        if elapsed_fraction < 1:
            assert _within_budget(plan)
        assert plan.search_seconds + plan.final_seconds <= max(budget - elapsed_fraction * budget, 0.0) + 1e-9


def test_plan_reads_back_and_refuses_bad_measurements() -> None:
    plan = plan_budget(BUDGET_1H, 10.0, 60.0, 10.0)
    assert Plan.from_dict(plan.as_dict()) == plan
    with pytest.raises(CnnlabError, match="seconds per final epoch"):
        plan_budget(BUDGET_1H, 0.0, 0.0, 10.0)
    with pytest.raises(CnnlabError, match="trial epoch"):
        plan_budget(BUDGET_1H, 0.0, 60.0)  # a search still to run needs the trials' speed
    with pytest.raises(CnnlabError, match="budget"):
        plan_budget(float("nan"), 0.0, 60.0, 10.0)

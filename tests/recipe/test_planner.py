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


# --------------------------------------------------------------------------- ensembles (rule 4)


def test_time_beyond_saturation_buys_more_final_models_before_any_search() -> None:
    # 30 min, 120 s spent, 30 s epochs + 10 s fixed: 55 epochs fit, more than 30: two models of 27 epochs, no search
    plan = plan_budget(1800.0, 120.0, 30.0, 3.0, trial_epochs=2, fixed_seconds=10.0, max_epochs=30, max_members=3)
    assert plan.members == 2 and plan.final_epochs == (1680 - 2 * 10) // (2 * 30) == 27
    assert plan.skip_search and plan.search_seconds == 0.0 and _within_budget(plan)
    assert plan.final_seconds == pytest.approx(2 * (27 * 30.0 + 10.0))
    assert any("2 averaged final models" in r for r in plan.reasons) and any(r.startswith("ensemble:") for r in plan.reasons)
    # with --ensemble 1 the same time goes to one saturated model and a search, as before
    single = plan_budget(1800.0, 120.0, 30.0, 3.0, trial_epochs=2, fixed_seconds=10.0, max_epochs=30, max_members=1)
    assert single.members == 1 and single.final_epochs == 30 and not single.skip_search


@pytest.mark.parametrize("left_epochs", [31, 45, 59, 60, 61, 89, 90, 91, 120, 500])
def test_members_share_the_time_and_each_gets_at_least_half_the_saturation_epochs(left_epochs: int) -> None:
    from cnnlab.recipe.planner import MAX_MEMBERS, share_members

    members, epochs = share_members(left_epochs * 10.0, 10.0, 0.0, 30, MAX_MEMBERS)
    assert 2 <= members <= MAX_MEMBERS and 15 <= epochs <= 30
    assert members * epochs <= left_epochs  # within the time
    if members < MAX_MEMBERS:  # not capped by the member count: more than the time's worth of whole models
        assert (members - 1) * 30 < left_epochs <= members * 30


def test_fixed_costs_drop_a_member_rather_than_starve_them() -> None:
    from cnnlab.recipe.planner import share_members

    # 61 epochs' time, 3 models would each get (610 - 3 x 100) / 30 = 10 epochs (< 15): two models of 20 instead
    assert share_members(610.0 + 100.0, 10.0, 100.0, 30, 3) == (2, (710 - 200) // 20)
    assert share_members(250.0, 10.0, 0.0, 30, 3) == (1, 25)  # below saturation: one model, every epoch


def test_search_runs_only_beyond_the_largest_ensemble_of_saturated_models() -> None:
    # 2 h, 30 s epochs: 3 models x 30 epochs take 2700 s; the 4500 s beyond go to the search
    plan = plan_budget(7200.0, 0.0, 30.0, 3.0, trial_epochs=2, max_epochs=30, max_members=3)
    assert plan.members == 3 and plan.final_epochs == 30 and not plan.skip_search
    assert plan.search_seconds == pytest.approx(7200.0 - 3 * 30 * 30.0) and _within_budget(plan)
    with pytest.raises(CnnlabError, match="at least one final model"):
        plan_budget(7200.0, 0.0, 30.0, 3.0, max_members=0)


def test_plans_of_recipes_before_ensembles_read_back_as_one_model() -> None:
    data = plan_budget(BUDGET_5M, 0.0, 20.0, 3.0, max_epochs=30).as_dict()
    del data["members"]
    assert Plan.from_dict(data).members == 1

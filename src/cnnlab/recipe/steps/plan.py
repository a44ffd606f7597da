"""The budget plan: after the checks, decide how much of the time left the search gets.

Runs once, after the overfit gate and before the LR finder, when the recipe has a budget.
It times a few of the starting configuration's own training steps
(:func:`cnnlab.timing.measure_speed`), derives the seconds per epoch of the final
model (whole training split) and of a search trial (its subset), and hands them to
:func:`cnnlab.recipe.planner.plan_budget`. The LR finder (which only centres the search)
and the search steps then run in the time the plan gives them, or not at all; the final
step plans its epochs again from the time actually left when it starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cnnlab.recipe.html import esc, h2, plural
from cnnlab.recipe.planner import SATURATION_EPOCHS, Plan, plan_budget
from cnnlab.recipe.step import OnceStep, RecipeContext, ReportContext
from cnnlab.timing import measure_speed

PLAN = "plan"


class PlanStep(OnceStep):
    """Time the starting configuration and split the time left between the search and the final model."""

    name = PLAN
    title = "Budget plan"

    def keys(self, ctx: RecipeContext) -> Iterator[str]:
        if ctx.options.budget_seconds is not None:  # with --trials and no budget, the trial counts rule
            yield self.name

    def run(self, ctx: RecipeContext, key: str) -> Plan:
        splits = ctx.splits()
        speed = measure_speed(ctx.cfg, splits)
        n_train, n_val = len(splits.train), len(splits.val)
        trial_images = min(ctx.options.search_subset or n_train, n_train)
        plan = plan_budget(ctx.options.budget_seconds or 0.0, ctx.clock.spent(), speed.epoch_seconds(n_train, n_val),
                           speed.epoch_seconds(trial_images, n_val), trial_epochs=ctx.options.coarse_epochs,
                           fixed_seconds=speed.final_seconds(splits), max_epochs=SATURATION_EPOCHS,
                           max_members=ctx.options.planned_members)  # fmt: skip
        for reason in plan.reasons:
            ctx.say(f"plan: {reason}")
        return plan

    def to_dict(self, result: Plan) -> dict[str, Any]:
        return result.as_dict()

    def from_dict(self, data: Mapping[str, Any]) -> Plan:
        fields = {f.name for f in dataclasses.fields(Plan)}  # recipe.json adds the step's "seconds"
        return Plan.from_dict({k: v for k, v in data.items() if k in fields})

    def evidence(self, result: Plan) -> str:
        if result.skip_search:
            return f"search skipped; the final model gets {plural(result.final_epochs, 'epoch')}"
        return f"search {result.search_seconds:.0f} s, then the final model ({plural(result.final_epochs, 'epoch')} planned)"

    def report_section(self, results: Sequence[tuple[str, Plan]], report: ReportContext) -> str:
        _, plan = results[-1]
        whole = int(max(plan.budget_seconds - plan.fixed_seconds, 0.0) // plan.final_epoch_seconds)
        return (h2(self.title)
                + "<p>Measured on the starting configuration's own training steps, before the search:</p><ul>"
                + "".join(f"<li>{esc(r)}</li>" for r in plan.reasons) + "</ul>"
                + f"<p>The baseline this recipe must beat: the starting configuration trained for the whole "
                f"budget, about {plural(whole, 'epoch')} of {plan.final_epoch_seconds:.1f} s "
                f"(<code>bench/bench_budget.py</code> measures both).</p>")  # fmt: skip


def search_skipped(ctx: RecipeContext) -> bool:
    """Whether the plan skipped the search (no plan: the search runs, as with --trials)."""
    plan = ctx.records.get(PLAN)
    return plan is not None and plan.skip_search


def search_end(ctx: RecipeContext) -> float | None:
    """The recipe time (seconds spent) by which the search must end; None without a plan."""
    plan = ctx.records.get(PLAN)
    return None if plan is None else plan.elapsed_seconds + plan.search_seconds

"""``cnnlab recipe``: the lecture's seven steps, run end to end within a budget.

1. check the loss at initialisation (and gradients, weight decay, batch independence);
2. overfit a tiny sample (and compare with zeroed inputs);
3. find the learning rate (LR range test);
4. coarse search: short trials over wide ranges centred on step 3's learning rate;
5. refined search: narrowed ranges around the best coarse trials, longer trials;
6. diagnose the best trial's curves;
7. loop 5-6, moving the ranges as the diagnosis says, until the budget is spent or the
   validation accuracy stops improving; then train the final model with the best
   configuration and evaluate it on the test split, once.

Every step's result is saved in ``recipe.json`` as soon as the step ends, so
``--resume`` continues from the last finished step (a search continues its study).
Everything lands in one folder::

    RECIPE/recipe.json      the steps done, their results, the time spent
    RECIPE/check.json, overfit/, lr_find/, search/ (Optuna storage + one run folder per trial)
    RECIPE/best.yaml        the chosen configuration (feed it to `cnnlab train --config`)
    RECIPE/final/           the final model's run folder (best.pt, curves, summary.json)
    RECIPE/report.html      one self-contained page with every step's evidence

Each step is a module of :mod:`cnnlab.recipe.steps` (registered in the order it runs);
this module only runs them in turn and stops when a gate (check, overfit) fails.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.config import RunConfig, from_dict, to_dict
from cnnlab.errors import CnnlabError
from cnnlab.recipe.report import write_recipe_report
from cnnlab.recipe.state import STATE_FILE, RecipeOptions, RecipeState, RecipeStopped
from cnnlab.recipe.step import RecipeContext, StepRegistry
from cnnlab.recipe.steps import RECIPE_STEPS

__all__ = ["RecipeOptions", "RecipeResult", "RecipeState", "RecipeStopped", "rewrite_report", "run_recipe"]

log = logging.getLogger(__name__)


@dataclass
class RecipeResult:
    """The outcome: where everything is and the final test accuracy."""

    out_dir: Path
    best_config: Path | None
    final_run: Path | None
    test_acc: float | None
    report: Path | None
    stopped: str | None  # why the recipe stopped early (a failed step), else None
    state: RecipeState

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "out_dir": str(self.out_dir), "best_config": str(self.best_config) if self.best_config else None,
            "final_run": str(self.final_run) if self.final_run else None, "test_acc": self.test_acc,
            "report": str(self.report) if self.report else None, "stopped": self.stopped,
            "spent_seconds": self.state.spent_seconds,
        }  # fmt: skip


def rewrite_report(out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` again from the recipe's state and files; runs nothing."""
    out_dir = Path(out_dir)
    return write_recipe_report(out_dir, RecipeState.load(out_dir))


def run_recipe(
    cfg: RunConfig | None, out_dir: str | Path, options: RecipeOptions | None = None, *, resume: bool = False,
    verbose: bool = True,
) -> RecipeResult:  # fmt: skip
    """Run (or continue, with ``resume``) the seven steps; see the module docstring.

    Args:
        cfg: the run configuration the recipe starts from (None when resuming).
        out_dir: the recipe folder.
        options: the budget and search settings (default :class:`RecipeOptions`).
        resume: continue the recipe in ``out_dir`` from its last finished step.
        verbose: print the final training's epoch lines.

    Raises:
        CnnlabError: ``out_dir`` already holds a recipe (without ``resume``), holds none or a
            finished one (with ``resume``), or a step failed in a way a user can fix.
    """
    out_dir = Path(out_dir)
    if resume:
        state = RecipeState.load(out_dir)
        cfg = from_dict(RunConfig, state.config)
        options = from_dict(RecipeOptions, state.options, where="recipe")
        if state.finished:
            raise CnnlabError(f"the recipe in {out_dir} already finished; its report is {out_dir / 'report.html'} "
                              f"(rewrite it with `cnnlab recipe --report {out_dir}`)")
        log.info("resuming the recipe in %s after %s (%.0f s spent)", out_dir, ", ".join(state.order) or "no step", state.spent_seconds)
    else:
        if cfg is None:
            raise ValueError("run_recipe needs a config unless it resumes")
        options = options or RecipeOptions()
        if (out_dir / STATE_FILE).exists():
            raise CnnlabError(f"{out_dir} already holds a recipe; continue it with `cnnlab recipe --resume {out_dir}` or choose another --out")
        out_dir.mkdir(parents=True, exist_ok=True)
        state = RecipeState(config=to_dict(cfg), options=dataclasses.asdict(options))
        state.save(out_dir)
    ctx = RecipeContext(cfg, options, out_dir, state, RECIPE_STEPS, verbose=verbose)
    stopped = None
    try:
        run_steps(ctx, RECIPE_STEPS)
    except RecipeStopped as exc:
        stopped = str(exc)
        log.error("%s", exc)
    finally:
        ctx.clock.sync()
        state.save(out_dir)
    report = _write_report(out_dir, state)
    final = ctx.records.get("final")
    return RecipeResult(
        out_dir=out_dir, best_config=out_dir / "best.yaml" if (out_dir / "best.yaml").is_file() else None,
        final_run=out_dir / "final" if final else None, test_acc=final.test_acc if final else None,
        report=report, stopped=stopped, state=state,
    )  # fmt: skip


def run_steps(ctx: RecipeContext, steps: StepRegistry) -> None:
    """Run every registered step in order, skipping what ``recipe.json`` has; stop at a failed gate.

    Raises:
        RecipeStopped: a step failed (with ``stop_on_failure``) or could not go on.
    """
    for step in steps:
        for key in step.keys(ctx):
            result = ctx.run(step, key)
            passed = step.verdict(result)
            if passed is None:
                continue
            ctx.say(f"{key}: {'pass' if passed else 'FAIL'}")
            if not passed and ctx.options.stop_on_failure:
                raise RecipeStopped(f"{step.failure}; fix it first (details in {ctx.out / 'report.html'}), "
                                    f"or run with --keep-going to search anyway")  # fmt: skip
    ctx.state.finished = True


def _write_report(out_dir: Path, state: RecipeState) -> Path | None:
    try:
        return write_recipe_report(out_dir, state)
    except (CnnlabError, OSError) as exc:  # a report problem (a file gone, a full disk) must not hide the recipe's result
        log.warning("could not write the report: %s", exc)
        return None

"""The choice after the search: the best trial's values on the base config, as ``best.yaml``.

Short trials prefer little regularisation: what weight decay and dropout buy shows late
in training, so a 2-4 epoch trial ranks a weakly regularised point above the one a 30
epoch run needs (at 30 minutes on Fashion-MNIST the search picked a tenth of the starting
weight decay, and the final model trained with it validated 0.4 points below the
starting configuration trained as long). So when the trials were shorter than half the
final model's planned epochs, the choice takes the search's learning rate (and any other
knob) but keeps the starting configuration's regularisation (``REGULARISATION``), and
says so; a search whose trials were as long as that decides everything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cnnlab.config import dump_yaml
from cnnlab.io import atomic_write_text
from cnnlab.recipe.html import esc, h2, params
from cnnlab.recipe.records import apply_params, best_config
from cnnlab.recipe.space import DROPOUT, WD
from cnnlab.recipe.state import RecipeStopped
from cnnlab.recipe.step import OnceStep, RecipeContext, ReportContext
from cnnlab.recipe.steps.plan import PLAN, search_skipped
from cnnlab.recipe.steps.stage import best_stage

BEST_YAML = "best.yaml"
# Knobs whose worth short trials underrate: kept from the starting configuration after short trials.
REGULARISATION = (WD, DROPOUT)


@dataclass(frozen=True)
class Chosen:
    """The chosen trial: its values, its validation accuracy, its run folder."""

    params: dict[str, Any]
    value: float | None  # None: no search ran (the plan skipped it); the starting configuration was chosen
    run_dir: str | None
    kept: dict[str, Any] = dataclasses.field(default_factory=dict)  # knob -> the starting value kept instead of the trial's
    why_kept: str = ""


class ChosenStep(OnceStep):
    """Write ``best.yaml``: the base configuration with the best trial's values."""

    name = "chosen"
    title = "Chosen configuration"

    def run(self, ctx: RecipeContext, key: str) -> Chosen:
        if search_skipped(ctx):  # the starting configuration, as given: known to train, no trial to beat it
            atomic_write_text(ctx.out / BEST_YAML, dump_yaml(ctx.cfg))
            ctx.say(f"chosen: the starting configuration (the plan skipped the search) -> {ctx.out / BEST_YAML}")
            return Chosen({}, None, None)
        stage = best_stage(ctx.records)
        trial = stage.best if stage is not None else None
        if trial is None:
            raise RecipeStopped("no search trial finished within the budget; give a larger --budget")
        chosen = best_config(stage.search)
        kept, why = _kept_regularisation(ctx, trial.params, chosen.train.epochs)
        if kept:
            chosen = apply_params(chosen, kept)
        # The final model trains on all the data (not the search subset) and may checkpoint.
        train = dataclasses.replace(chosen.train, train_subset=ctx.cfg.train.train_subset,
                                    checkpoint_minutes=ctx.cfg.train.checkpoint_minutes)  # fmt: skip
        atomic_write_text(ctx.out / BEST_YAML, dump_yaml(dataclasses.replace(chosen, train=train)))
        ctx.say(f"chosen: {params(trial.params)} (val acc {trial.value:.2%}) -> {ctx.out / BEST_YAML}")
        if kept:
            ctx.say(f"chosen: kept {params(kept)} from the starting configuration: {why}")
        return Chosen(dict(trial.params), float(trial.value), trial.run_dir, kept, why)

    def to_dict(self, result: Chosen) -> dict[str, Any]:
        return {"params": result.params, "value": result.value, "from": result.run_dir, "kept": result.kept,
                "why_kept": result.why_kept}  # fmt: skip

    def from_dict(self, data: Mapping[str, Any]) -> Chosen:
        value = data["value"]
        return Chosen(dict(data["params"]), None if value is None else float(value), data.get("from"),
                      dict(data.get("kept") or {}), str(data.get("why_kept") or ""))  # fmt: skip

    def evidence(self, result: Chosen) -> str:
        if result.value is None:
            return "the starting configuration (no search: the budget plan gave its time to the final model)"
        kept = f"; kept from the start: {params(result.kept)}" if result.kept else ""
        return f"{params(result.params)} (val acc {result.value:.2%}){kept}"

    def report_section(self, results: Sequence[tuple[str, Chosen]], report: ReportContext) -> str:
        path = report.out / BEST_YAML
        if not path.is_file():
            return h2(self.title) + f"<p>{esc(path)} is missing: the chosen configuration was moved or deleted.</p>"
        _, chosen = results[-1]
        kept = (f"<p>Kept from the starting configuration: {esc(params(chosen.kept))} ({esc(chosen.why_kept)}).</p>"
                if chosen.kept else "")  # fmt: skip
        return (h2(self.title) + kept + f"<p>Train it again with <code>cnnlab train --config {esc(path)}</code></p>"
                f"<pre>{esc(path.read_text())}</pre>")  # fmt: skip


def _kept_regularisation(ctx: RecipeContext, trial: Mapping[str, Any], trial_epochs: int) -> tuple[dict[str, Any], str]:
    """The starting values of the regularisation knobs the trial set, when its epochs were too few to judge them.

    Returns:
        ``({knob: starting value}, why)``; empty when the trials were at least half the
        final model's planned epochs (or no plan says how many).
    """
    plan = ctx.records.get(PLAN)
    final_epochs = ctx.options.final_epochs or (plan.final_epochs if plan is not None else None)
    if not final_epochs or 2 * trial_epochs >= final_epochs:
        return {}, ""
    start = {WD: ctx.cfg.optim.weight_decay, DROPOUT: ctx.cfg.model.dropout}
    kept = {k: start[k] for k in REGULARISATION if k in trial and start[k] != trial[k]}
    why = (f"its trials trained {trial_epochs} epochs, less than half the final model's {final_epochs}, and short "
           "trials prefer little regularisation")  # fmt: skip
    return kept, why

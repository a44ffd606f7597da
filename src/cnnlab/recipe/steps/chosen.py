"""The choice after the search: the best trial's values on the base config, as ``best.yaml``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cnnlab.config import dump_yaml
from cnnlab.io import atomic_write_text
from cnnlab.recipe.html import esc, h2, params
from cnnlab.recipe.records import best_config
from cnnlab.recipe.state import RecipeStopped
from cnnlab.recipe.step import OnceStep, RecipeContext, ReportContext
from cnnlab.recipe.steps.plan import search_skipped
from cnnlab.recipe.steps.stage import best_stage

BEST_YAML = "best.yaml"


@dataclass(frozen=True)
class Chosen:
    """The chosen trial: its values, its validation accuracy, its run folder."""

    params: dict[str, Any]
    value: float | None  # None: no search ran (the plan skipped it); the starting configuration was chosen
    run_dir: str | None


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
        # The final model trains on all the data (not the search subset) and may checkpoint.
        train = dataclasses.replace(chosen.train, train_subset=ctx.cfg.train.train_subset,
                                    checkpoint_minutes=ctx.cfg.train.checkpoint_minutes)  # fmt: skip
        atomic_write_text(ctx.out / BEST_YAML, dump_yaml(dataclasses.replace(chosen, train=train)))
        ctx.say(f"chosen: {params(trial.params)} (val acc {trial.value:.2%}) -> {ctx.out / BEST_YAML}")
        return Chosen(dict(trial.params), float(trial.value), trial.run_dir)

    def to_dict(self, result: Chosen) -> dict[str, Any]:
        return {"params": result.params, "value": result.value, "from": result.run_dir}

    def from_dict(self, data: Mapping[str, Any]) -> Chosen:
        value = data["value"]
        return Chosen(dict(data["params"]), None if value is None else float(value), data.get("from"))

    def evidence(self, result: Chosen) -> str:
        if result.value is None:
            return "the starting configuration (no search: the budget plan gave its time to the final model)"
        return f"{params(result.params)} (val acc {result.value:.2%})"

    def report_section(self, results: Sequence[tuple[str, Chosen]], report: ReportContext) -> str:
        path = report.out / BEST_YAML
        if not path.is_file():
            return h2(self.title) + f"<p>{esc(path)} is missing: the chosen configuration was moved or deleted.</p>"
        return (h2(self.title) + f"<p>Train it again with <code>cnnlab train --config {esc(path)}</code></p>"
                f"<pre>{esc(path.read_text())}</pre>")  # fmt: skip

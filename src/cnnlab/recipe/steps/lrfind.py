"""Step 3: the learning-rate range test (:mod:`cnnlab.recipe.lrfind`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cnnlab.recipe.html import esc, h2, img
from cnnlab.recipe.lrfind import LRFindResult, lr_find
from cnnlab.recipe.step import OnceStep, RecipeContext, ReportContext
from cnnlab.recipe.steps.plan import search_skipped

FOLDER = "lr_find"


class LrFindStep(OnceStep):
    """Sweep the learning rate up over a few hundred steps; its suggestion centres the search."""

    name = "lr_find"
    title = "3. Learning-rate finder"

    def keys(self, ctx: RecipeContext) -> Iterator[str]:
        if search_skipped(ctx):  # its pick centres the search; the final model trains the starting lr
            if self.name not in ctx.records:
                ctx.say(f"{self.name}: skipped, no search to centre (the budget plan gave its time to the final model)")
            return
        yield self.name

    def run(self, ctx: RecipeContext, key: str) -> LRFindResult:
        # When the curve cannot decide, the configuration's own peak lr (config.py's default
        # for a new user) is known to train; the coarse search spans a decade either side of it.
        result = lr_find(ctx.cfg, splits=ctx.splits(), out_dir=ctx.out / FOLDER, fallback_lr=ctx.cfg.optim.lr)
        ctx.say(f"lr-find: suggested lr {result.suggestion:.3g} ({result.rule})")
        return result

    def to_dict(self, result: LRFindResult) -> dict[str, Any]:
        return result.as_dict()

    def from_dict(self, data: Mapping[str, Any]) -> LRFindResult:
        return LRFindResult(**{f.name: data[f.name] for f in dataclasses.fields(LRFindResult) if f.name in data})

    def evidence(self, result: LRFindResult) -> str:
        return f"suggested lr {result.suggestion:.3g}: {result.rule}"

    def report_section(self, results: Sequence[tuple[str, LRFindResult]], report: ReportContext) -> str:
        _, lr = results[-1]
        return (h2(self.title) + f"<p>Suggested learning rate <b>{lr.suggestion:.3g}</b>: {esc(lr.rule)}</p>"
                + img(report.out / FOLDER / "lr_find.png"))  # fmt: skip

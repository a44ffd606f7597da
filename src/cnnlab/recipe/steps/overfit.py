"""Step 2: overfit a tiny sample, compared with zeroed inputs (:mod:`cnnlab.recipe.overfit`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from cnnlab.recipe.html import esc, h2, img, verdict
from cnnlab.recipe.overfit import OverfitReport, overfit_small
from cnnlab.recipe.step import OnceStep, RecipeContext, ReportContext

FOLDER = "overfit"


class OverfitStep(OnceStep):
    """Memorise a few batches with regularisation off; writes ``overfit/``."""

    name = "overfit"
    title = "2. Overfit a tiny sample"
    failure = "the model could not overfit a tiny sample"

    def run(self, ctx: RecipeContext, key: str) -> OverfitReport:
        return overfit_small(ctx.cfg, splits=ctx.splits(), out_dir=ctx.out / FOLDER)

    def to_dict(self, result: OverfitReport) -> dict[str, Any]:
        return result.as_dict()

    def from_dict(self, data: Mapping[str, Any]) -> OverfitReport:
        values = {f.name: _typed(data[f.name], str(f.type)) for f in dataclasses.fields(OverfitReport) if f.name in data}
        return OverfitReport(**values)

    def verdict(self, result: OverfitReport) -> bool:
        return result.passed

    def evidence(self, result: OverfitReport) -> str:
        return result.message or result.diagnosis

    def report_section(self, results: Sequence[tuple[str, OverfitReport]], report: ReportContext) -> str:
        _, overfit = results[-1]
        return h2(self.title) + f"<p>{verdict(overfit.passed)} {esc(overfit.message)}</p>" + img(report.out / FOLDER / "overfit.png")


def _typed(value: Any, annotation: str) -> Any:
    """Undo ``OverfitReport.as_dict``: lists back to tuples, "nan"/"inf" strings back to floats."""
    if annotation.startswith("tuple[float"):
        return tuple(float(v) for v in value)
    if annotation.startswith("tuple"):
        return tuple(value)
    if annotation == "float" and value is not None:
        return float(value)
    return value

"""Step 1: check the setup at initialisation (:mod:`cnnlab.recipe.checks`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cnnlab.recipe.checks import CheckItem, CheckReport, check_setup
from cnnlab.recipe.html import esc, h2, num, verdict
from cnnlab.recipe.step import OnceStep, RecipeContext, ReportContext


class CheckStep(OnceStep):
    """Loss at initialisation, gradients, weight decay, batch independence; writes ``check.json``."""

    name = "check"
    title = "1. Check the setup"
    failure = "the setup check failed"

    def run(self, ctx: RecipeContext, key: str) -> CheckReport:
        return check_setup(ctx.cfg, splits=ctx.splits(), out_dir=ctx.out)

    def to_dict(self, result: CheckReport) -> dict[str, Any]:
        return result.as_dict()

    def from_dict(self, data: Mapping[str, Any]) -> CheckReport:
        return CheckReport.from_dict(data)

    def verdict(self, result: CheckReport) -> bool:
        return result.passed

    def evidence(self, result: CheckReport) -> str:
        failed = [i.name for i in result.items if not i.passed]
        return "all checks passed" if not failed else "failed: " + ", ".join(failed)

    def report_section(self, results: Sequence[tuple[str, CheckReport]], report: ReportContext) -> str:
        _, check = results[-1]
        rows = "".join(
            f"<tr><td>{esc(i.name)}</td><td>{verdict(i.passed)}</td><td>{esc(measurement(i))}</td><td>{esc(i.message)}</td></tr>"
            for i in check.items
        )
        return (h2(self.title) + "<table><tr><th>check</th><th>verdict</th><th>measured (criterion)</th>"
                "<th>what it means</th></tr>" + rows + "</table>")  # fmt: skip


# What each check's number counts: a bare "0" next to "expected 0" says nothing.
_MEASURES = {"initial-loss": "loss", "gradients": "broken parameter tensors",
             "weight-decay": "loss increase", "batch-independence": "leak ratio"}  # fmt: skip


def measurement(item: CheckItem) -> str:
    """The number a check measured, with its unit and the criterion it must meet, in words.

    A check that did not run (``skipped: ...``) has no number: it says "does not apply".
    """
    if item.message.startswith("skipped"):
        return "does not apply"
    what = _MEASURES.get(item.name, "")
    value = f"{num(item.measured)} {what}".strip()
    if item.relation == "~":
        tol = f" ± {num(item.tolerance)}" if item.tolerance is not None else ""
        return f"{value} (expected {num(item.expected)}{tol})"
    if item.relation == ">":
        return f"{value} (must be > {num(item.expected)})"
    limit = item.tolerance if item.tolerance is not None else item.expected
    return f"{value} (allowed: at most {num(limit)})"

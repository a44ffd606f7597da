"""Step 1: check the setup at initialisation (:mod:`cnnlab.recipe.checks`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cnnlab.recipe.checks import CheckReport, check_setup
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
            f"<tr><td>{esc(i.name)}</td><td>{verdict(i.passed)}</td><td>{esc(num(i.measured))}</td>"
            f"<td>{esc(num(i.expected))}</td><td>{esc(i.message)}</td></tr>"
            for i in check.items
        )
        return (h2(self.title) + "<table><tr><th>check</th><th>verdict</th><th>measured</th><th>expected</th>"
                "<th>what it means</th></tr>" + rows + "</table>")  # fmt: skip

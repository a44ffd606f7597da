"""Step 6: diagnose the best trial of the previous search stage (:mod:`cnnlab.recipe.diagnose`).

A refine round runs it before it searches, so the step has no keys of its own to run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.recipe.diagnose import Diagnosis, Suggestion, diagnose_run
from cnnlab.recipe.html import esc
from cnnlab.recipe.step import RecipeContext, ReportContext
from cnnlab.recipe.steps.stage import stage_before
from cnnlab.runfolder import RunFolder

DIAGNOSE = "diagnose"


@dataclass(frozen=True)
class RoundDiagnosis:
    """The diagnosis of one stage's best trial, and which run folder it read (None: no finished trial)."""

    diagnosis: Diagnosis
    run_dir: str | None = None


class DiagnoseStep:
    """Read the curves of the previous stage's best trial; its suggestion moves the next ranges."""

    name = DIAGNOSE
    title = "6. Diagnose"
    failure = ""

    def keys(self, ctx: RecipeContext) -> Iterator[str]:
        return iter(())  # each refine round runs its own diagnosis first

    def run(self, ctx: RecipeContext, key: str) -> RoundDiagnosis:
        stage = ctx.records.get(stage_before(int(key.rpartition("-")[2])))
        best = stage.best if stage is not None else None
        if best is None or not best.run_dir or not RunFolder(best.run_dir).read_metrics():
            return RoundDiagnosis(Diagnosis([], "no finished trial to diagnose", Suggestion(), 0))
        diagnosis = diagnose_run(best.run_dir)
        ctx.say(f"diagnosis of {Path(best.run_dir).name}: {diagnosis.summary}")
        return RoundDiagnosis(diagnosis, best.run_dir)

    def to_dict(self, result: RoundDiagnosis) -> dict[str, Any]:
        extra = {"run_dir": result.run_dir} if result.run_dir else {}
        return {**result.diagnosis.as_dict(), **extra}

    def from_dict(self, data: Mapping[str, Any]) -> RoundDiagnosis:
        return RoundDiagnosis(Diagnosis.from_dict(data), data.get("run_dir"))

    def verdict(self, result: RoundDiagnosis) -> bool | None:
        return None

    def evidence(self, result: RoundDiagnosis) -> str:
        return result.diagnosis.summary

    def report_section(self, results: Sequence[tuple[str, RoundDiagnosis]], report: ReportContext) -> str:
        return ""  # the diagnoses are told within the search section, between the stages they link


def diagnosis_block(name: str, diagnosis: Diagnosis, run_dir: str | None = None) -> str:
    """A diagnosis as a paragraph and a list of findings (evidence, then advice)."""
    items = "".join(f"<li><b>{esc(f.kind)}</b>: {esc(f.evidence)} <i>{esc(f.advice)}</i></li>" for f in diagnosis.findings)
    where = f" ({esc(Path(run_dir).name)})" if run_dir else ""
    return f"<p><b>{esc(name)}</b>{where}: {esc(diagnosis.summary)}</p>" + (f"<ul>{items}</ul>" if items else "")

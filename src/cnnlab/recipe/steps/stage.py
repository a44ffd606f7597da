"""A search stage's typed result, shared by the search, diagnose, chosen and final steps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cnnlab.recipe.records import SearchResult, TrialRecord
from cnnlab.recipe.space import SearchSpace
from cnnlab.recipe.step import Records, step_key

COARSE, REFINE = "coarse", "refine"  # the step names (and recipe.json keys: coarse, refine-1, refine-2...)


@dataclass(frozen=True)
class StageResult:
    """One search stage: its trials (and study) and the space it searched."""

    search: SearchResult
    space: SearchSpace

    @property
    def best(self) -> TrialRecord | None:
        """The best COMPLETE trial (None when none finished)."""
        return self.search.best

    @property
    def best_value(self) -> float:
        """The best validation accuracy (0 when no trial finished)."""
        best = self.best
        return float(best.value) if best is not None and best.value is not None else 0.0

    @property
    def complete(self) -> list[TrialRecord]:
        return [t for t in self.search.trials if t.state == "COMPLETE"]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``recipe.json``: ``search.json``'s content plus the space searched."""
        return {**self.search.as_dict(), "space": self.space.as_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageResult:
        """The inverse of :meth:`to_dict`."""
        return cls(SearchResult.from_dict(data), SearchSpace.from_dict(data["space"]))


def stage_before(round_: int) -> str:
    """The key of the stage that refine round ``round_`` narrows (and its diagnosis reads)."""
    return COARSE if round_ == 1 else step_key(REFINE, round_ - 1)


def stages(records: Records, *, before: int | None = None) -> list[StageResult]:
    """The finished stages in order: coarse, then refine rounds (only those before ``before``)."""
    out = [result for _, result in records.of(COARSE)]
    for key, result in records.of(REFINE):
        if before is None or int(key.rpartition("-")[2]) < before:
            out.append(result)
    return out


def best_stage(records: Records, *, before: int | None = None) -> StageResult | None:
    """The stage with the best trial (the earliest on a tie); None before the coarse search."""
    found = stages(records, before=before)
    return max(found, key=lambda s: s.best_value) if found else None

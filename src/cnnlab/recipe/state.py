"""What a recipe runs with and what it has done: options, ``recipe.json`` and the budget clock."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_write_json

STATE_FILE = "recipe.json"


@dataclass(frozen=True)
class RecipeOptions:
    """How the recipe spends its budget.

    Attributes:
        budget_seconds: wall time for the whole recipe (None: no time limit, use trials).
        coarse_trials, refine_trials: trial caps per stage (None: as many as the time allows).
        coarse_epochs, refine_epochs: epochs per trial in each stage.
        search_subset: training images per search trial (a stratified subset; None: all).
        final_epochs: epochs of the final training (None: what the budget allows, 3-30).
        max_rounds: refine/diagnose rounds at most.
        sampler, pruner, workers, storage: passed to the searches (see ``cnnlab search``).
        stop_on_failure: stop after a failed check or overfit (the usual meaning: a bug).
        seed: seeds the samplers.
    """

    budget_seconds: float | None = 1800.0
    coarse_trials: int | None = None
    refine_trials: int | None = None
    coarse_epochs: int = 2
    refine_epochs: int = 4
    search_subset: int | None = 10000
    final_epochs: int | None = None
    max_rounds: int = 3
    sampler: str = "tpe"
    pruner: str = "asha"
    workers: int = 1
    storage: str | None = None
    stop_on_failure: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.budget_seconds is None and self.coarse_trials is None:
            raise CnnlabError("the recipe needs a budget: give --budget (e.g. 30m) or --trials N")
        if self.budget_seconds is not None and self.budget_seconds < 60:
            raise CnnlabError(f"a recipe budget of {self.budget_seconds:.0f} s is too short; give at least --budget 1m")


class RecipeStopped(CnnlabError):
    """A step failed in a way that makes the rest pointless (a check or overfit failure)."""


@dataclass
class RecipeState:
    """What ``recipe.json`` holds: the inputs, and each finished step's result as plain data."""

    config: dict[str, Any]
    options: dict[str, Any]
    steps: dict[str, Any] = dataclasses.field(default_factory=dict)
    order: list[str] = dataclasses.field(default_factory=list)
    spent_seconds: float = 0.0
    finished: bool = False

    def save(self, out_dir: Path) -> None:
        """Write ``recipe.json`` into ``out_dir`` (atomically: a kill never leaves half a file)."""
        atomic_write_json(out_dir / STATE_FILE, dataclasses.asdict(self))

    @classmethod
    def load(cls, out_dir: Path) -> RecipeState:
        """Read ``out_dir/recipe.json``.

        Raises:
            CnnlabError: the file is missing or not a recipe state.
        """
        path = out_dir / STATE_FILE
        if not path.is_file():
            raise CnnlabError(f"{out_dir} holds no recipe ({STATE_FILE} is missing); start one with `cnnlab recipe --out {out_dir}`")
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise CnnlabError(f"{path} is not a readable recipe state ({exc}); start a new recipe with another --out") from None


class Clock:
    """The budget: wall time spent in this process plus what earlier sessions spent."""

    def __init__(self, state: RecipeState, budget: float | None) -> None:
        self.state, self.budget = state, budget
        self._start, self._base = time.monotonic(), state.spent_seconds

    def spent(self) -> float:
        """Seconds spent, all sessions together."""
        return self._base + time.monotonic() - self._start

    def left(self) -> float:
        """Seconds left of the budget (inf without one)."""
        return math.inf if self.budget is None else max(self.budget - self.spent(), 0.0)

    def sync(self) -> None:
        """Copy the time spent into the state (saved with it)."""
        self.state.spent_seconds = self.spent()

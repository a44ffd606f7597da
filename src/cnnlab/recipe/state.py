"""What a recipe runs with and what it has done: options, ``recipe.json`` and the budget clock."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError, UsageError
from cnnlab.io import atomic_write_json
from cnnlab.recipe.planner import MAX_MEMBERS
from cnnlab.recipe.storage import redact

STATE_FILE = "recipe.json"
# The layout of recipe.json; a file of another version is refused, never guessed at.
STATE_VERSION = 1


@dataclass(frozen=True)
class RecipeOptions:
    """How the recipe spends its budget.

    Attributes:
        budget_seconds: wall time for the whole recipe (None: no time limit, use trials).
        coarse_trials, refine_trials: trial caps per stage (None: as many as the time allows).
        coarse_epochs, refine_epochs: epochs per trial in each stage.
        search_subset: training images per search trial (a stratified subset; None: all).
        final_epochs: epochs of the final training (None: the whole epochs the budget left
            allows at the final model's measured speed, at most 30).
        max_rounds: refine/diagnose rounds at most.
        ensemble: final models at most, averaged when the budget holds more epochs than one
            model can use (1: always a single model). None: the plan shares the time among up
            to ``MAX_MEMBERS``, and when they are done early (a misread pace) more train while
            the time left holds one, up to twice that.
        sampler, pruner, workers, storage: passed to the searches (see ``cnnlab search``);
            ``storage`` is written to recipe.json with its password masked, so a resume
            needs the URL again (``--storage`` or ``CNNLAB_STORAGE``).
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
    ensemble: int | None = None

    @property
    def planned_members(self) -> int:
        """The most final models a plan shares the time among."""
        return self.ensemble or MAX_MEMBERS
    sampler: str = "tpe"
    pruner: str = "asha"
    workers: int = 1
    storage: str | None = None
    stop_on_failure: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.budget_seconds is None and self.coarse_trials is None:
            raise UsageError("the recipe needs a budget: give --budget (e.g. 30m) or --trials N")
        if self.budget_seconds is not None and not (math.isfinite(self.budget_seconds) and self.budget_seconds >= 60):
            raise UsageError(f"a recipe budget of {self.budget_seconds:.0f} s is too short; give at least --budget 1m")
        at_least_one = {"--trials": self.coarse_trials, "--trials (refine)": self.refine_trials,
                        "--coarse-epochs": self.coarse_epochs, "--refine-epochs": self.refine_epochs,
                        "--final-epochs": self.final_epochs, "--rounds": self.max_rounds, "--workers": self.workers,
                        "--ensemble": self.ensemble}  # fmt: skip
        for flag, value in at_least_one.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UsageError(f"{flag} must be a whole number of at least 1, got {value!r}")
        if self.search_subset is not None and (not isinstance(self.search_subset, int) or self.search_subset < 1):
            raise UsageError(f"--search-subset must be a number of images (0 = all), got {self.search_subset!r}")
        if self.sampler not in ("tpe", "random") or self.pruner not in ("asha", "hyperband", "median", "none"):
            raise UsageError(f"unknown sampler/pruner {self.sampler}/{self.pruner}; see `cnnlab recipe --help`")

    def masked(self) -> RecipeOptions:
        """These options as written to recipe.json: the storage URL's password masked."""
        return dataclasses.replace(self, storage=redact(self.storage) if self.storage else None)


class RecipeStopped(CnnlabError):
    """A step failed in a way that makes the rest pointless (a check or overfit failure)."""


@dataclass
class RecipeState:
    """What ``recipe.json`` holds: the inputs, and each finished step's result as plain data."""

    config: dict[str, Any]
    options: dict[str, Any]  # RecipeOptions.masked(): never a password
    steps: dict[str, Any] = dataclasses.field(default_factory=dict)
    order: list[str] = dataclasses.field(default_factory=list)
    spent_seconds: float = 0.0
    finished: bool = False
    version: int = STATE_VERSION

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
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            version = data.get("version", STATE_VERSION)  # files written before the field existed are version 1
            if version != STATE_VERSION:
                raise CnnlabError(f"{path} is a recipe state of version {version!r}, this cnnlab reads version "
                                  f"{STATE_VERSION}; continue it with the cnnlab that wrote it")  # fmt: skip
            state = cls(**{**data, "version": version})
            state.check()
        except CnnlabError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise CnnlabError(f"{path} is not a readable recipe state ({exc}); start a new recipe with another --out") from None
        return state

    def check(self) -> None:
        """Refuse a state whose parts are not of the shape recipe.json has (a hand-edited or torn file).

        Raises:
            TypeError: a part of the wrong type, or ``order`` naming a step without a result.
        """
        kinds = {"config": dict, "options": dict, "steps": dict, "order": list, "spent_seconds": (int, float), "finished": bool}
        for name, kind in kinds.items():
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"'{name}' is a {type(getattr(self, name)).__name__}")
        missing = [key for key in self.order if not isinstance(key, str) or not isinstance(self.steps.get(key), dict)]
        if missing or len(set(self.order)) != len(self.order):
            raise TypeError(f"'order' names steps without a result, or twice: {missing or self.order}")


class Clock:
    """The budget: wall time spent in this process plus what earlier sessions spent.

    ``start`` is when this session's time began on the ``time.monotonic()`` clock (default:
    now); the command line passes the process's own start, so Python's start-up and the
    imports count against the budget too (:func:`cnnlab.uptime.process_started`).
    """

    def __init__(self, state: RecipeState, budget: float | None, start: float | None = None) -> None:
        self.state, self.budget = state, budget
        self._start, self._base = (time.monotonic() if start is None else start), state.spent_seconds

    def spent(self) -> float:
        """Seconds spent, all sessions together."""
        return self._base + time.monotonic() - self._start

    def left(self) -> float:
        """Seconds left of the budget (inf without one)."""
        return math.inf if self.budget is None else max(self.budget - self.spent(), 0.0)

    def sync(self) -> None:
        """Copy the time spent into the state (saved with it)."""
        self.state.spent_seconds = self.spent()

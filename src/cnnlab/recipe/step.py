"""The recipe step: one small protocol, a registry, and the context a step runs in.

A step is one module under :mod:`cnnlab.recipe.steps` with one class that has:

* ``name`` (its key in ``recipe.json``; a step that repeats records ``name-1``, ``name-2``...)
  and ``title`` (its report heading);
* ``keys(ctx)``: the keys to run now, in order (``(name,)`` for a step that runs once;
  none for a step that another step runs, as each refine round runs its diagnosis);
* ``run(ctx, key)``: do the work and return a typed result (a dataclass);
* ``to_dict`` / ``from_dict``: that result as the plain data of ``recipe.json``;
* ``verdict`` (pass / fail / None), ``failure`` (why a fail stops the recipe), ``evidence``
  (one line for the report's table) and ``report_section`` (its part of ``report.html``).

Steps hand each other typed results through :class:`Records`; dicts exist only where a
result meets ``recipe.json``. Adding a step is a module and one ``register`` line in
:mod:`cnnlab.recipe.steps`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cnnlab.config import RunConfig
from cnnlab.data.sources import Splits
from cnnlab.recipe.state import Clock, RecipeOptions, RecipeState
from cnnlab.run import load_data

R = TypeVar("R")


class Step(Protocol[R]):
    """What every recipe step implements (see the module docstring)."""

    name: str
    title: str
    failure: str

    def keys(self, ctx: RecipeContext) -> Iterator[str]:
        """The ``recipe.json`` keys to run now, in order; may look at results as they arrive."""
        ...

    def run(self, ctx: RecipeContext, key: str) -> R:
        """Do the work of ``key`` and return its typed result."""
        ...

    def to_dict(self, result: R) -> dict[str, Any]:
        """The result as plain data for ``recipe.json``."""
        ...

    def from_dict(self, data: Mapping[str, Any]) -> R:
        """The inverse of :meth:`to_dict`."""
        ...

    def verdict(self, result: R) -> bool | None:
        """Pass (True), fail (False), or None for a step that only measures."""
        ...

    def evidence(self, result: R) -> str:
        """One line for the report's table of steps."""
        ...

    def report_section(self, results: Sequence[tuple[str, R]], report: ReportContext) -> str:
        """The step's HTML section (``""``: shown within another step's section)."""
        ...


class OnceStep:
    """Defaults for a step that runs once and only measures; a step class may inherit them."""

    name = ""
    failure = ""

    def keys(self, ctx: RecipeContext) -> Iterator[str]:
        """Just the step's own name."""
        yield self.name

    def verdict(self, result: Any) -> bool | None:
        """No pass or fail."""
        return None


class StepRegistry:
    """The recipe's steps, in the order they run."""

    def __init__(self) -> None:
        self._steps: dict[str, Step[Any]] = {}

    def register(self, step: Step[Any]) -> Step[Any]:
        """Add ``step`` after the ones registered before it.

        Raises:
            ValueError: a step of that name is registered already.
        """
        if step.name in self._steps:
            raise ValueError(f"a recipe step named {step.name!r} is registered already")
        self._steps[step.name] = step
        return step

    def __iter__(self) -> Iterator[Step[Any]]:
        return iter(self._steps.values())

    def __getitem__(self, name: str) -> Step[Any]:
        return self._steps[name]

    def for_key(self, key: str) -> Step[Any]:
        """The step that wrote ``key`` of ``recipe.json`` (``refine-2`` -> the ``refine`` step).

        Raises:
            KeyError: no registered step writes that key.
        """
        if key in self._steps:
            return self._steps[key]
        base, _, number = key.rpartition("-")
        if number.isdigit() and base in self._steps:
            return self._steps[base]
        raise KeyError(f"no recipe step writes {key!r} (steps: {', '.join(self._steps)})")


def step_key(name: str, round_: int) -> str:
    """The key of round ``round_`` (from 1) of a repeated step: ``refine-1``."""
    return f"{name}-{round_}"


class Records:
    """Every finished step's typed result, read from (and written to) a :class:`RecipeState`."""

    def __init__(self, state: RecipeState, steps: StepRegistry) -> None:
        self.state, self.steps = state, steps
        self._typed: dict[str, Any] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.state.steps

    def get(self, key: str) -> Any | None:
        """The typed result of ``key``, or None when it has not finished."""
        if key not in self.state.steps:
            return None
        if key not in self._typed:
            self._typed[key] = self.steps.for_key(key).from_dict(self.state.steps[key])
        return self._typed[key]

    def of(self, name: str) -> list[tuple[str, Any]]:
        """``(key, result)`` of every finished key of the step ``name``, in the order they ran."""
        return [(key, self.get(key)) for key in self.state.order if self.steps.for_key(key).name == name]

    def seconds(self, key: str) -> float:
        """The wall time ``key`` took."""
        return float(self.state.steps[key].get("seconds") or 0.0)

    def add(self, key: str, step: Step[Any], result: Any, seconds: float) -> None:
        """Record a finished key (the caller saves the state)."""
        self.state.steps[key] = {**step.to_dict(result), "seconds": seconds}
        self.state.order.append(key)
        self._typed[key] = result


class RecipeContext:
    """What a running step sees: the configuration, the options, the folder, the clock, the results."""

    def __init__(self, cfg: RunConfig, options: RecipeOptions, out: Path, state: RecipeState, steps: StepRegistry,
                 *, verbose: bool, started: float | None = None) -> None:  # fmt: skip
        self.cfg, self.options, self.out, self.state, self.verbose = cfg, options, out, state, verbose
        self.steps = steps
        self.records = Records(state, steps)
        self.clock = Clock(state, options.budget_seconds, start=started)
        self._splits: Splits | None = None

    def splits(self) -> Splits:
        """The run's data, loaded once (the check, overfit and LR steps share it)."""
        if self._splits is None:
            self._splits = load_data(self.cfg)
        return self._splits

    def say(self, text: str) -> None:
        """A progress line (always shown: ``verbose`` is about the final training's epoch lines)."""
        print(f"recipe [{self.clock.spent() / 60:5.1f} min] {text}", flush=True)

    def run(self, step: Step[R], key: str) -> R:
        """Run ``key`` of ``step`` unless ``recipe.json`` has it; record its result and the time."""
        done = self.records.get(key)
        if done is not None:
            return done
        self.say(f"step {key}")
        start = time.monotonic()
        result = step.run(self, key)
        self.records.add(key, step, result, time.monotonic() - start)
        self.clock.sync()
        self.state.save(self.out)
        return result


@dataclass(frozen=True)
class ReportContext:
    """What a report section sees: the recipe folder, where figures go, and the results."""

    out: Path
    figs: Path
    state: RecipeState
    records: Records

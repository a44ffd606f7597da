"""The search space of steps 4 and 5: typed knobs by config path, the coarse space, refining it.

A knob is a :class:`FloatKnob`, :class:`IntKnob` or :class:`CategoricalKnob`, keyed by the
config path it sets (``optim.lr``, ``model.dropout``, ...). Each knob draws its value from an
Optuna trial (``suggest``), narrows itself around good values (``narrow``) and says what it
spans (``describe``). ``coarse_space`` spans two decades of learning rate around the LR
finder's value with wide weight-decay / dropout ranges; ``refine_space`` narrows every range
to the values of the best trials of a previous stage (plus a margin), never leaving the old
range; :meth:`SearchSpace.adjusted` moves the ranges as a diagnosis suggests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    import optuna

    from cnnlab.recipe.diagnose import Suggestion

LR, WD, DROPOUT, LABEL_SMOOTHING = "optim.lr", "optim.weight_decay", "model.dropout", "train.label_smoothing"

# How a diagnosis moves the regularisation ranges: weight decay x3 (or /3), dropout +-0.1
# within [0, 0.8] (a dropout above that leaves too few units to learn from).
REGULARISATION_FACTOR = 3.0
DROPOUT_SHIFT = 0.1
DROPOUT_MAX = 0.8
DROPOUT_MIN_HIGH = 0.05  # the upper end of a dropout range never drops below this


# --------------------------------------------------------------------------- knobs


@dataclass(frozen=True)
class FloatKnob:
    """A real-valued knob, uniform or log-uniform on ``[lo, hi]``."""

    lo: float
    hi: float
    log: bool = False
    kind: ClassVar[str] = "float"

    def __post_init__(self) -> None:
        _check_range(self.lo, self.hi, self.log)
        object.__setattr__(self, "lo", float(self.lo))
        object.__setattr__(self, "hi", float(self.hi))

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        """Draw a value from ``trial`` under the parameter name ``name``."""
        return trial.suggest_float(name, self.lo, self.hi, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in the range."""
        return isinstance(value, int | float) and self.lo <= value <= self.hi

    def example(self) -> float:
        """A value the knob can take (its low end), to validate config paths before a search."""
        return self.lo

    def describe(self) -> str:
        """``log-uniform [0.001, 0.1]``."""
        return f"{'log-uniform' if self.log else 'uniform'} [{self.lo:.4g}, {self.hi:.4g}]"

    def narrow(self, values: Sequence[float]) -> tuple[FloatKnob, dict[str, Any]]:
        """The range around ``values`` plus a margin, inside this one; and how it moved."""
        lo, hi, info = _narrow_numeric(self, values)
        lo, hi = max(self.lo, float(f"{lo:.4g}")), min(self.hi, float(f"{hi:.4g}"))
        lo, hi = min(lo, min(values)), max(hi, max(values))  # rounding never drops a top value
        return FloatKnob(lo, hi, self.log), {**info, "new": [lo, hi]}

    def to_list(self) -> list[Any]:
        """Plain data for JSON: ``[lo, hi, log]``."""
        return [self.lo, self.hi, self.log]


@dataclass(frozen=True)
class IntKnob:
    """An integer knob on ``[lo, hi]`` (both included), uniform or log-uniform."""

    lo: int
    hi: int
    log: bool = False
    kind: ClassVar[str] = "int"

    def __post_init__(self) -> None:
        _check_range(self.lo, self.hi, self.log)
        object.__setattr__(self, "lo", int(self.lo))
        object.__setattr__(self, "hi", int(self.hi))

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        """Draw a value from ``trial`` under the parameter name ``name``."""
        return trial.suggest_int(name, self.lo, self.hi, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in the range."""
        return isinstance(value, int | float) and self.lo <= value <= self.hi

    def example(self) -> int:
        """A value the knob can take (its low end)."""
        return self.lo

    def describe(self) -> str:
        """``uniform int [16, 64]``."""
        return f"{'log-uniform' if self.log else 'uniform'} int [{self.lo:.4g}, {self.hi:.4g}]"

    def narrow(self, values: Sequence[int]) -> tuple[IntKnob, dict[str, Any]]:
        """The range around ``values`` plus a margin, widened to whole numbers, inside this one."""
        lo, hi, info = _narrow_numeric(self, values)
        lo, hi = max(self.lo, math.floor(lo)), min(self.hi, math.ceil(hi))
        return IntKnob(lo, hi, self.log), {**info, "new": [lo, hi]}

    def to_list(self) -> list[Any]:
        """Plain data for JSON: ``[lo, hi, log]``."""
        return [self.lo, self.hi, self.log]


@dataclass(frozen=True)
class CategoricalKnob:
    """A knob that takes one of a few plain values (numbers, strings, booleans, None)."""

    choices: tuple[Any, ...]
    kind: ClassVar[str] = "cat"

    def __post_init__(self) -> None:
        choices = tuple(self.choices) if isinstance(self.choices, list | tuple) else ()
        if not choices or not all(c is None or isinstance(c, bool | int | float | str) for c in choices):
            raise CnnlabError(f"a categorical search knob needs a non-empty list of plain values, got {self.choices!r}")
        object.__setattr__(self, "choices", choices)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Draw one of the choices from ``trial`` under the parameter name ``name``."""
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the choices."""
        return value in self.choices

    def example(self) -> Any:
        """A value the knob can take (its first choice)."""
        return self.choices[0]

    def describe(self) -> str:
        """``one of [32, 64]``."""
        return f"one of {list(self.choices)}"

    def narrow(self, values: Sequence[Any]) -> tuple[CategoricalKnob, dict[str, Any]]:
        """Only the choices among ``values`` (in this knob's order)."""
        kept = tuple(c for c in self.choices if c in values)
        return CategoricalKnob(kept), {"old": list(self.choices), "new": list(kept), "top_values": list(values), "edge": None}

    def to_list(self) -> list[Any]:
        """Plain data for JSON: the choices."""
        return list(self.choices)


Knob = FloatKnob | IntKnob | CategoricalKnob
_KINDS: dict[str, type[FloatKnob] | type[IntKnob] | type[CategoricalKnob]] = {
    k.kind: k for k in (FloatKnob, IntKnob, CategoricalKnob)
}


def knob_from_list(kind: str, value: Sequence[Any]) -> Knob:
    """The inverse of ``knob.to_list()`` (with ``knob.kind``); ``[lo, hi]`` means a linear range."""
    if kind == CategoricalKnob.kind:
        return CategoricalKnob(tuple(value))
    if kind not in _KINDS or len(value) not in (2, 3):
        raise CnnlabError(f"unknown search knob {kind!r} {list(value)!r}; expected float/int [lo, hi, log] or cat [choices]")
    return _KINDS[kind](value[0], value[1], bool(value[2]) if len(value) == 3 else False)  # type: ignore[call-arg]


def _check_range(lo: Any, hi: Any, log: bool) -> None:
    if not (isinstance(lo, int | float) and isinstance(hi, int | float)) or lo > hi:
        raise CnnlabError(f"a search range [{lo}, {hi}] must be two numbers with lo <= hi")
    if log and lo <= 0:
        raise CnnlabError(f"a log search range needs lo > 0 (use e.g. 1e-6 for 'about zero'), got {lo}")


def _narrow_numeric(knob: FloatKnob | IntKnob, values: Sequence[float]) -> tuple[float, float, dict[str, Any]]:
    """The unrounded narrowed range of a numeric knob, and the explanation without ``new``."""
    to: Callable[[float], float] = math.log10 if knob.log else float
    back: Callable[[float], float] = (lambda v: 10.0**v) if knob.log else float
    lo, hi = to(knob.lo), to(knob.hi)
    vlo, vhi = to(min(values)), to(max(values))
    # The margin keeps room around the best values (they are noisy, short runs): a quarter
    # of their own spread, and at least a tenth of the old range so the space never collapses.
    margin = max(0.25 * (vhi - vlo), 0.1 * (hi - lo))
    # A best value near the boundary hints that the optimum lies outside the coarse range.
    near = 0.05 * (hi - lo)
    edge = "low" if vlo - lo <= near else "high" if hi - vhi <= near else None
    info = {"old": [knob.lo, knob.hi], "top_values": list(values), "edge": edge}
    return back(max(lo, vlo - margin)), back(min(hi, vhi + margin)), info


# --------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class SearchSpace:
    """What a search varies, each knob named by its config path.

    ``lr`` and ``weight_decay`` are log-uniform (a weight decay of 1e-6 is, in effect,
    none: log ranges cannot hold 0). ``dropout`` and ``label_smoothing`` are uniform and
    None when not searched. ``extra`` maps any other config path (``model.options.width``,
    ``train.batch_size``, ``data.augment``) to a knob.
    """

    lr: tuple[float, float]
    weight_decay: tuple[float, float] | None = (1e-6, 1e-2)
    dropout: tuple[float, float] | None = None
    label_smoothing: tuple[float, float] | None = None
    extra: dict[str, Knob] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = {LR, WD, DROPOUT, LABEL_SMOOTHING} & set(self.extra)
        if clash:
            raise CnnlabError(f"search knob {sorted(clash)[0]} has its own field in SearchSpace; do not put it in extra")
        for name, knob in self.extra.items():
            if not isinstance(knob, FloatKnob | IntKnob | CategoricalKnob):
                raise CnnlabError(f"search knob {name}: expected a FloatKnob, IntKnob or CategoricalKnob, got {knob!r}")
        self.knobs()  # validates every range

    def knobs(self) -> dict[str, Knob]:
        """Every searched knob, by config path."""
        out: dict[str, Knob] = {}
        for name, span, log in ((LR, self.lr, True), (WD, self.weight_decay, True), (DROPOUT, self.dropout, False),
                                (LABEL_SMOOTHING, self.label_smoothing, False)):  # fmt: skip
            if span is not None:
                try:
                    out[name] = FloatKnob(*span, log=log)
                except CnnlabError as exc:
                    raise CnnlabError(f"search knob {name}: {exc}") from None
        return out | self.extra

    @classmethod
    def from_knobs(cls, knobs: Mapping[str, Knob]) -> SearchSpace:
        """The inverse of :meth:`knobs`."""
        rest = dict(knobs)
        pick = lambda name: (rest[name].lo, rest.pop(name).hi) if name in rest else None  # noqa: E731
        lr = pick(LR)
        if lr is None:
            raise CnnlabError(f"a search space needs a learning-rate range ({LR})")
        return cls(lr=lr, weight_decay=pick(WD), dropout=pick(DROPOUT), label_smoothing=pick(LABEL_SMOOTHING), extra=rest)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw one value per knob from ``trial``; keys are config paths."""
        return {name: knob.suggest(trial, name) for name, knob in self.knobs().items()}

    def contains(self, params: Mapping[str, Any]) -> bool:
        """Whether every value of ``params`` belongs to a knob of this space and lies in its range."""
        knobs = self.knobs()
        return all(name in knobs and knobs[name].contains(value) for name, value in params.items())

    def describe(self) -> dict[str, str]:
        """One human-readable line per knob, e.g. ``{"optim.lr": "log-uniform [0.001, 0.1]"}``."""
        return {name: knob.describe() for name, knob in self.knobs().items()}

    def adjusted(self, suggestion: Suggestion) -> tuple[SearchSpace, list[str]]:
        """Move the ranges as a diagnosis suggests; returns the new space and what moved.

        ``lr_scale`` multiplies the learning-rate range; ``more_regularisation`` moves weight
        decay up (x3) and dropout up (+0.1); ``less_regularisation`` moves them down. The
        other suggestions (train longer, check the labels, ...) leave the ranges alone.
        """
        moves: list[str] = []
        new = self
        if suggestion.lr_scale != 1.0:
            s = suggestion.lr_scale
            lo, hi = self.lr
            new = dataclasses.replace(new, lr=(lo * s, hi * s))
            moves.append(f"learning-rate range x{s:g} -> [{lo * s:.3g}, {hi * s:.3g}]")
        for wanted, why, factor, shift in ((suggestion.more_regularisation, "more regularisation", REGULARISATION_FACTOR, DROPOUT_SHIFT),
                                           (suggestion.less_regularisation, "less regularisation", 1 / REGULARISATION_FACTOR, -DROPOUT_SHIFT)):  # fmt: skip
            if not wanted:
                continue
            if new.weight_decay is not None:
                lo, hi = new.weight_decay
                new = dataclasses.replace(new, weight_decay=(lo * factor, hi * factor))
                moves.append(f"weight-decay range x{factor:.3g} -> [{lo * factor:.3g}, {hi * factor:.3g}] ({why})")
            if new.dropout is not None:
                lo, hi = new.dropout
                lo = min(max(lo + shift, 0.0), DROPOUT_MAX)
                hi = min(max(hi + shift, DROPOUT_MIN_HIGH), DROPOUT_MAX)
                new = dataclasses.replace(new, dropout=(lo, hi))
                moves.append(f"dropout range -> [{lo:.2f}, {hi:.2f}]")
        return new, moves

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML): ``{path: [lo, hi, log] | [choices], "_kinds": {path: kind}}``."""
        knobs = self.knobs()
        return {name: k.to_list() for name, k in knobs.items()} | {"_kinds": {name: k.kind for name, k in knobs.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Rebuild a space from :meth:`as_dict` output."""
        kinds = data.get("_kinds", {})
        return cls.from_knobs({name: knob_from_list(kinds.get(name, "float"), value)
                               for name, value in data.items() if name != "_kinds"})  # fmt: skip


def coarse_space(lr_center: float, *, has_dropout: bool) -> SearchSpace:
    """Step 4's wide space: two decades of LR around the LR finder's value.

    Args:
        lr_center: the learning rate the LR finder suggested; searched in
            ``[lr_center / 10, lr_center * 10]``, log-uniform.
        has_dropout: also search dropout in [0, 0.5] (only when the model has dropout).
    """
    if not lr_center > 0:
        raise CnnlabError(f"the LR centre of a search must be positive, got {lr_center}")
    return SearchSpace(lr=(lr_center / 10, lr_center * 10), weight_decay=(1e-6, 1e-2),
                       dropout=(0.0, 0.5) if has_dropout else None)  # fmt: skip


# --------------------------------------------------------------------------- refining


def refine_space(trials: Sequence[Any], space: SearchSpace, *, top_k: int = 5) -> tuple[SearchSpace, dict[str, Any]]:
    """Step 5's space: every range narrowed around the ``top_k`` best finished trials.

    Args:
        trials: the previous stage's trials: ``TrialRecord`` objects or their ``as_dict()``
            (anything with number, state, value and params).
        space: the coarse space (the new ranges stay inside it).
        top_k: how many of the best COMPLETE trials define the new ranges.

    Returns:
        The refined space, and per knob ``{"old", "new", "top_values", "edge"}`` where
        ``edge`` is ``"low"``/``"high"`` when the best values sit at the coarse range's
        boundary (the optimum may be outside it: widen the coarse search there).
    """
    records = [t if isinstance(t, Mapping) else t.as_dict() for t in trials]
    done = sorted((t for t in records if t["state"] == "COMPLETE" and t["value"] is not None), key=lambda t: -t["value"])
    if not done:
        raise CnnlabError("no COMPLETE trial to refine from: run (or continue) the coarse search first")
    top = done[:top_k]
    knobs: dict[str, Knob] = {}
    explanation: dict[str, Any] = {}
    for name, knob in space.knobs().items():
        values = [t["params"][name] for t in top if name in t["params"]]
        if not values:
            span = knob.to_list()[:2]
            knobs[name], explanation[name] = knob, {"old": span, "new": span, "top_values": [], "edge": None}
            continue
        knobs[name], explanation[name] = knob.narrow(values)
        explanation[name]["trials"] = [t["number"] for t in top if name in t["params"]]
    return SearchSpace.from_knobs(knobs), explanation

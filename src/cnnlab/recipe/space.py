"""The search space of steps 4 and 5: knobs by config path, the coarse space, and refining it.

A knob is ``("float", lo, hi, log)``, ``("int", lo, hi[, log])`` or ``("cat", [choices])``,
keyed by the config path it sets (``optim.lr``, ``model.dropout``, ...).
``coarse_space`` spans two decades of learning rate around the LR finder's value with
wide weight-decay / dropout ranges; ``refine_space`` narrows every range to the values of
the best trials of a previous stage (plus a margin), never leaving the old range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    import optuna

LR, WD, DROPOUT, LABEL_SMOOTHING = "optim.lr", "optim.weight_decay", "model.dropout", "train.label_smoothing"

Knob = tuple  # ("float", lo, hi, log) | ("int", lo, hi[, log]) | ("cat", [choices])


# --------------------------------------------------------------------------- the space


def _check_knob(name: str, knob: Sequence[Any]) -> tuple:
    """Validate one knob and return it in canonical form (tuples, floats, explicit log flag)."""
    kind = knob[0] if knob else None
    if kind == "cat":
        choices = tuple(knob[1]) if len(knob) == 2 and isinstance(knob[1], (list, tuple)) else ()
        if not choices or not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise CnnlabError(f"search knob {name}: ('cat', [choices]) needs a non-empty list of plain values")
        return ("cat", choices)
    if kind not in ("float", "int") or len(knob) not in (3, 4):
        raise CnnlabError(f"search knob {name}: expected ('float', lo, hi, log), ('int', lo, hi) or ('cat', [...]), got {knob!r}")
    lo, hi = knob[1], knob[2]
    log_scale = bool(knob[3]) if len(knob) == 4 else False
    cast = float if kind == "float" else int
    if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float))) or lo > hi:
        raise CnnlabError(f"search knob {name}: the range [{lo}, {hi}] must be two numbers with lo <= hi")
    if log_scale and lo <= 0:
        raise CnnlabError(f"search knob {name}: a log range needs lo > 0 (use e.g. 1e-6 for 'about zero'), got {lo}")
    return (kind, cast(lo), cast(hi), log_scale)


@dataclass(frozen=True)
class SearchSpace:
    """What a search varies, each knob named by its config path.

    ``lr`` and ``weight_decay`` are log-uniform (a weight decay of 1e-6 is, in effect,
    none: log ranges cannot hold 0). ``dropout`` and ``label_smoothing`` are uniform and
    None when not searched. ``extra`` maps any other config path (``model.options.width``,
    ``train.batch_size``, ``data.augment``) to ``("float", lo, hi, log)``,
    ``("int", lo, hi)`` or ``("cat", [choices])``.
    """

    lr: tuple[float, float]
    weight_decay: tuple[float, float] | None = (1e-6, 1e-2)
    dropout: tuple[float, float] | None = None
    label_smoothing: tuple[float, float] | None = None
    extra: dict[str, tuple] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = {LR, WD, DROPOUT, LABEL_SMOOTHING} & set(self.extra)
        if clash:
            raise CnnlabError(f"search knob {sorted(clash)[0]} has its own field in SearchSpace; do not put it in extra")
        self.knobs()  # validates every range

    def knobs(self) -> dict[str, tuple]:
        """Every searched knob, by config path, in canonical form."""
        out = {LR: _check_knob(LR, ("float", *self.lr, True))}
        if self.weight_decay is not None:
            out[WD] = _check_knob(WD, ("float", *self.weight_decay, True))
        if self.dropout is not None:
            out[DROPOUT] = _check_knob(DROPOUT, ("float", *self.dropout, False))
        if self.label_smoothing is not None:
            out[LABEL_SMOOTHING] = _check_knob(LABEL_SMOOTHING, ("float", *self.label_smoothing, False))
        out.update({name: _check_knob(name, knob) for name, knob in self.extra.items()})
        return out

    @classmethod
    def from_knobs(cls, knobs: Mapping[str, Sequence[Any]]) -> SearchSpace:
        """The inverse of :meth:`knobs`."""
        rest = dict(knobs)
        pick = lambda name: tuple(rest.pop(name)[1:3]) if name in rest else None  # noqa: E731
        lr = pick(LR)
        if lr is None:
            raise CnnlabError(f"a search space needs a learning-rate range ({LR})")
        return cls(lr=lr, weight_decay=pick(WD), dropout=pick(DROPOUT), label_smoothing=pick(LABEL_SMOOTHING),
                   extra={k: tuple(v) for k, v in rest.items()})  # fmt: skip

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw one value per knob from ``trial``; keys are config paths."""
        params: dict[str, Any] = {}
        for name, knob in self.knobs().items():
            if knob[0] == "cat":
                params[name] = trial.suggest_categorical(name, list(knob[1]))
            elif knob[0] == "int":
                params[name] = trial.suggest_int(name, knob[1], knob[2], log=knob[3])
            else:
                params[name] = trial.suggest_float(name, knob[1], knob[2], log=knob[3])
        return params

    def describe(self) -> dict[str, str]:
        """One human-readable line per knob, e.g. ``{"optim.lr": "log-uniform [0.001, 0.1]"}``."""
        out = {}
        for name, knob in self.knobs().items():
            if knob[0] == "cat":
                out[name] = f"one of {list(knob[1])}"
            else:
                scale = "log-uniform" if knob[3] else "uniform"
                out[name] = f"{scale}{' int' if knob[0] == 'int' else ''} [{knob[1]:.4g}, {knob[2]:.4g}]"
        return out

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML)."""
        return {name: list(k[1]) if k[0] == "cat" else list(k[1:]) for name, k in self.knobs().items()} | {
            "_kinds": {name: k[0] for name, k in self.knobs().items()}
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Rebuild a space from :meth:`as_dict` output."""
        kinds = data.get("_kinds", {})
        knobs = {}
        for name, value in data.items():
            if name == "_kinds":
                continue
            kind = kinds.get(name, "float")
            knobs[name] = ("cat", list(value)) if kind == "cat" else (kind, *value)
        return cls.from_knobs(knobs)


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


def _scale(knob: tuple) -> tuple[Any, Any]:
    """(to, back): the axis on which a knob's range is narrowed (log10 for log knobs)."""
    if knob[3]:
        return math.log10, lambda v: 10.0**v
    return float, float


def _narrow(knob: tuple, values: Sequence[Any]) -> tuple[tuple, dict[str, Any]]:
    """Narrow one knob to the span of ``values`` plus a margin, inside the old range."""
    if knob[0] == "cat":
        kept = [c for c in knob[1] if c in values]
        return ("cat", kept), {"old": list(knob[1]), "new": kept, "top_values": list(values), "edge": None}
    to, back = _scale(knob)
    lo, hi = to(knob[1]), to(knob[2])
    vlo, vhi = to(min(values)), to(max(values))
    # The margin keeps room around the best values (they are noisy, short runs): a quarter
    # of their own spread, and at least a tenth of the old range so the space never collapses.
    margin = max(0.25 * (vhi - vlo), 0.1 * (hi - lo))
    new_lo, new_hi = back(max(lo, vlo - margin)), back(min(hi, vhi + margin))
    if knob[0] == "int":
        new_lo, new_hi = max(knob[1], math.floor(new_lo)), min(knob[2], math.ceil(new_hi))
    else:
        new_lo, new_hi = max(knob[1], float(f"{new_lo:.4g}")), min(knob[2], float(f"{new_hi:.4g}"))
        new_lo, new_hi = min(new_lo, min(values)), max(new_hi, max(values))  # rounding never drops a top value
    # A best value near the boundary hints that the optimum lies outside the coarse range.
    near = 0.05 * (hi - lo)
    edge = "low" if vlo - lo <= near else "high" if hi - vhi <= near else None
    info = {"old": [knob[1], knob[2]], "new": [new_lo, new_hi], "top_values": list(values), "edge": edge}
    return (knob[0], new_lo, new_hi, knob[3]), info


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
    knobs, explanation = {}, {}
    for name, knob in space.knobs().items():
        values = [t["params"][name] for t in top if name in t["params"]]
        if not values:
            knobs[name], explanation[name] = knob, {"old": list(knob[1:3]), "new": list(knob[1:3]), "top_values": [], "edge": None}
            continue
        knobs[name], explanation[name] = _narrow(knob, values)
        explanation[name]["trials"] = [t["number"] for t in top if name in t["params"]]
    return SearchSpace.from_knobs(knobs), explanation

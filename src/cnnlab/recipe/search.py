"""Steps 4 and 5 of the recipe: a coarse hyperparameter search, then a refined one (Optuna).

Each trial is an ordinary cnnlab run (``run_training``) in ``<out>/trials/<stage>-NNN``
whose ``on_epoch_end`` reports the validation accuracy to Optuna, so a pruner can stop a
hopeless trial after any epoch. The objective is the run's best validation accuracy
(maximised); the test split is never used to choose.

* ``coarse_space`` spans two decades of learning rate around the LR-finder's value, and
  wide weight-decay / dropout ranges; trials are short (3 epochs).
* ``refine_space`` narrows every range to the values of the best coarse trials (plus a
  margin); trials are longer (8 epochs).

The study lives in a storage (see :mod:`cnnlab.recipe.storage`) that several worker
processes can share: ``workers=N`` starts local ones, and ``cnnlab search --join`` adds
one from anywhere that reaches the storage. Everything a worker needs (base config,
space, stage settings) is stored in the study itself. After the stage, ``search.json``
and ``best.yaml`` (the base config with the best values) are written to the search folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.config import RunConfig, dump_yaml, from_dict, to_dict
from cnnlab.errors import CnnlabError
from cnnlab.recipe import storage as st

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

LR, WD, DROPOUT, LABEL_SMOOTHING = "optim.lr", "optim.weight_decay", "model.dropout", "train.label_smoothing"
STAGES = ("coarse", "refine")
SAMPLERS = ("tpe", "random")
PRUNERS = ("asha", "hyperband", "median", "none")
DEFAULT_EPOCHS = {"coarse": 3, "refine": 8}  # per trial: short runs rank settings well enough to discard most
DEFAULT_TRIALS = {"coarse": 20, "refine": 10}  # when neither a trial count nor a time budget is given
SETTINGS_ATTR = "cnnlab_search"  # study user attribute holding SearchSettings
MAX_FAILURES_IN_A_ROW = 3  # a worker gives up after this many failed trials in a row (a broken config)

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
        trials: :class:`TrialRecord` objects (or their ``as_dict()``) of the coarse search.
        space: the coarse space (the new ranges stay inside it).
        top_k: how many of the best COMPLETE trials define the new ranges.

    Returns:
        The refined space, and per knob ``{"old", "new", "top_values", "edge"}`` where
        ``edge`` is ``"low"``/``"high"`` when the best values sit at the coarse range's
        boundary (the optimum may be outside it: widen the coarse search there).
    """
    records = [t if isinstance(t, TrialRecord) else TrialRecord.from_dict(t) for t in trials]
    done = sorted((t for t in records if t.state == "COMPLETE" and t.value is not None), key=lambda t: -t.value)
    if not done:
        raise CnnlabError("no COMPLETE trial to refine from: run (or continue) the coarse search first")
    top = done[:top_k]
    knobs, explanation = {}, {}
    for name, knob in space.knobs().items():
        values = [t.params[name] for t in top if name in t.params]
        if not values:
            knobs[name], explanation[name] = knob, {"old": list(knob[1:3]), "new": list(knob[1:3]), "top_values": [], "edge": None}
            continue
        knobs[name], explanation[name] = _narrow(knob, values)
        explanation[name]["trials"] = [t.number for t in top if name in t.params]
    return SearchSpace.from_knobs(knobs), explanation


# --------------------------------------------------------------------------- results


def apply_params(cfg: RunConfig, params: Mapping[str, Any]) -> RunConfig:
    """``cfg`` with each ``config.path -> value`` of ``params`` set (validated like any config)."""
    data = to_dict(cfg)
    for path, value in params.items():
        node = data
        *parents, leaf = path.split(".")
        for key in parents:
            if not isinstance(node.get(key, {}), dict):
                raise CnnlabError(f"search knob {path}: {key} is not a config section")
            node = node.setdefault(key, {})
        node[leaf] = value
    return from_dict(RunConfig, data)


@dataclass
class TrialRecord:
    """One trial of a search, as plain data."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None  # best validation accuracy (PRUNED: the last reported one)
    params: dict[str, Any]
    epochs: int  # epochs it ran (reported to the pruner)
    seconds: float | None
    run_dir: str | None
    curve: list[float] = field(default_factory=list)  # validation accuracy after each epoch
    stop_reason: str | None = None  # why a PRUNED trial stopped (pruner, diverged)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})

    @classmethod
    def from_trial(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord:
        steps = sorted(trial.intermediate_values)
        seconds = None
        if trial.datetime_start and trial.datetime_complete:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        return cls(number=trial.number, state=trial.state.name, value=trial.value, params=dict(trial.params),
                   epochs=len(steps), seconds=seconds, run_dir=trial.user_attrs.get("run_dir"),
                   curve=[trial.intermediate_values[s] for s in steps], stop_reason=trial.user_attrs.get("stop_reason"))  # fmt: skip


@dataclass(frozen=True)
class SearchSettings:
    """What a stage runs with; stored in the study so a joining worker needs nothing else."""

    stage: str
    epochs: int  # per trial
    sampler: str
    pruner: str
    seed: int
    heartbeat: int | None
    out_dir: str
    base_config: dict[str, Any]
    space: dict[str, Any]
    target_trials: int | None = None  # stop starting trials once this many are finished or running
    deadline: float | None = None  # time.time() after which no trial starts
    origin: dict[str, Any] | None = None  # e.g. the coarse search a refine stage narrowed from

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSettings:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class SearchResult:
    """A search stage: where its study lives, how it was set up, and every trial."""

    study_name: str
    storage: str  # URL without password
    settings: SearchSettings
    trials: list[TrialRecord]

    @property
    def space(self) -> SearchSpace:
        return SearchSpace.from_dict(self.settings.space)

    @property
    def best(self) -> TrialRecord | None:
        """The COMPLETE trial with the highest validation accuracy (None before the first)."""
        done = [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]
        return max(done, key=lambda t: (t.value, -t.number)) if done else None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per trial (like Optuna's trials_dataframe), ready to plot or tabulate."""
        return [{"number": t.number, "state": t.state, "value": t.value, "epochs": t.epochs, "seconds": t.seconds,
                 **t.params} for t in self.trials]  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "study_name": self.study_name, "storage": self.storage, "stage": self.settings.stage,
            "objective": "best validation accuracy (maximize)", "counts": self.counts(),
            "best": None if best is None else {**best.as_dict(), "config": to_dict(best_config(self))},
            "settings": self.settings.as_dict(), "space": self.space.describe(),
            "trials": [t.as_dict() for t in self.trials],
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchResult:
        return cls(study_name=data["study_name"], storage=data["storage"],
                   settings=SearchSettings.from_dict(data["settings"]),
                   trials=[TrialRecord.from_dict(t) for t in data["trials"]])  # fmt: skip


def best_config(result: SearchResult) -> RunConfig:
    """The search's base config with the best trial's values (its full ``train.epochs``)."""
    best = result.best
    if best is None:
        raise CnnlabError(f"study {result.study_name} has no COMPLETE trial yet; run (or continue) the search")
    return apply_params(from_dict(RunConfig, result.settings.base_config), best.params)


def write_result(result: SearchResult) -> Path:
    """Write ``search.json`` (and ``best.yaml`` once a trial finished) into the search folder."""
    from cnnlab.io import atomic_write_json, atomic_write_text

    out = Path(result.settings.out_dir)
    atomic_write_json(out / "search.json", result.as_dict())
    if result.best is not None:
        atomic_write_text(out / "best.yaml", dump_yaml(best_config(result)))
    return out / "search.json"


def load_search(out_dir: str | Path, *, storage: str | None = None, study_name: str | None = None) -> SearchResult:
    """The search in ``out_dir``: from its study when reachable (current), else its search.json."""
    out_dir = Path(out_dir)
    saved_file = out_dir / "search.json"
    saved = json.loads(saved_file.read_text(encoding="utf-8")) if saved_file.is_file() else None
    url = storage or (saved or {}).get("storage")
    if url is None and (out_dir / st.JOURNAL_NAME).is_file():
        url = st.default_storage_url(out_dir)
    if url is None:
        raise CnnlabError(f"{out_dir} holds no search (no search.json or {st.JOURNAL_NAME}); give the search's --out folder")
    try:
        study = _load_study(study_name or (saved or {}).get("study_name"), url)
        return _collect(study, url)
    except CnnlabError:
        if saved is None:
            raise
        return SearchResult.from_dict(saved)


# --------------------------------------------------------------------------- running


def _count_active(study: optuna.Study) -> int:
    """Trials that count towards the target: finished or running. Not FAIL (its slot is
    re-run), not WAITING (enqueued points count once a worker starts them)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


def _make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: parallel workers see running trials as bad guesses and do not all sample the same spot.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    if name == "asha":  # rungs at epochs 1, 3, 9...: keep the best third at each rung
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if name == "median":  # below the median of earlier trials at the same epoch, after 3 trials
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def _load_study(name: str | None, url: str, *, heartbeat: int | None = st.DEFAULT_HEARTBEAT, **kwargs: Any) -> optuna.Study:
    optuna = st.import_optuna()
    storage = st.open_storage(url, heartbeat=heartbeat)
    names = optuna.get_all_study_names(storage)
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        known = ", ".join(names) or "none"
        raise CnnlabError(f"no study '{name}' in {st.redact(url)} (studies there: {known}); check --study/--join")
    return optuna.load_study(study_name=name, storage=storage, **kwargs)


def _settings(study: optuna.Study) -> SearchSettings:
    data = study.user_attrs.get(SETTINGS_ATTR)
    if not data:
        raise CnnlabError(f"study {study.study_name} was not created by `cnnlab search`; it holds no search settings")
    return SearchSettings.from_dict(data)


def _collect(study: optuna.Study, url: str) -> SearchResult:
    trials = [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
    return SearchResult(study.study_name, st.redact(url), _settings(study), trials)


class EpochReporter:
    """``on_epoch_end`` for a trial: reports validation accuracy, stops when the pruner says so.

    The step is the number of epochs done, the resource ASHA/Hyperband count in. The last
    epoch is never pruned: the trial has already paid for it, and it finishes COMPLETE.
    """

    def __init__(self, trial: optuna.Trial, epochs: int) -> None:
        self.trial, self.epochs = trial, epochs
        self.pruned_at: int | None = None

    def __call__(self, record: Mapping[str, Any]) -> bool:
        if record.get("val_acc") is None:
            raise CnnlabError("a search needs a validation split to score trials: set --val-split above 0")
        step = int(record["epoch"]) + 1
        self.trial.report(float(record["val_acc"]), step)
        if step < self.epochs and self.trial.should_prune():
            self.pruned_at = step
            return True
        return False


def _diverged(exc: CnnlabError) -> bool:
    # fit() turns a NaN/inf loss into a CnnlabError with this wording; a too-high LR is a
    # result (a bad one), not a broken trial, so the sampler should learn from it.
    return "NaN/inf" in str(exc)


def _objective(settings: SearchSettings, verbose: bool):  # noqa: ANN202 - an optuna objective
    import optuna

    from cnnlab.train.run import run_training

    base, space = from_dict(RunConfig, settings.base_config), SearchSpace.from_dict(settings.space)
    trials_dir = Path(settings.out_dir) / "trials"

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial)
        run_dir = trials_dir / f"{settings.stage}-{trial.number:03d}"
        trial.set_user_attr(st.WORKER_ATTR, st.worker_id())
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = apply_params(base, {**params, "train.epochs": settings.epochs})
        reporter = EpochReporter(trial, settings.epochs)
        # Quiet trials: run_training prints its test line; the search prints its own table.
        quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        try:
            with quiet:
                summary = run_training(cfg, run_dir, on_epoch_end=reporter, verbose=verbose)
        except CnnlabError as exc:
            if not _diverged(exc):
                trial.set_user_attr("error", str(exc))
                raise
            trial.set_user_attr("stop_reason", "diverged (NaN/inf loss)")
            raise optuna.TrialPruned("diverged") from None
        except Exception as exc:  # a crash in one trial (e.g. a model option it cannot take) fails only it
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        if reporter.pruned_at is not None:
            trial.set_user_attr("stop_reason", f"pruned after epoch {reporter.pruned_at}")
            raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned_at}")
        return float(summary["best_val_acc"])

    return objective


def _log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    value = "-" if trial.value is None else f"{trial.value:.2%}"
    params = ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                       for k, v in trial.params.items())  # fmt: skip
    log.info("trial %d %s: val acc %s after %d epoch(s) (%s)", trial.number, trial.state.name.lower(), value,
             len(trial.intermediate_values), params)  # fmt: skip


def _work(study: optuna.Study, verbose: bool, *, out_dir: str) -> None:
    """Run trials until the study's target or deadline; wait for other workers' last trials.

    Trial run folders go under ``out_dir``/trials (this worker's view of the search folder).
    """
    from optuna.trial import TrialState

    failures = 0
    while True:
        settings = replace(_settings(study), out_dir=out_dir)  # re-read: a rerun may have raised the target
        st.fail_stale_trials(study)  # a dead worker's trial becomes FAIL and is replaced below
        if settings.deadline is not None and time.time() >= settings.deadline:
            return
        if settings.target_trials is not None and _count_active(study) >= settings.target_trials:
            if not st.watched_running_trials(study):
                return
            time.sleep(min(settings.heartbeat or 2, 2))  # another worker's trial may yet fail and need a rerun
            continue
        study.optimize(_objective(settings, verbose), n_trials=1, catch=(Exception,), callbacks=[_log_trial])
        last = _own_last_trial(study)
        failures = failures + 1 if last is not None and last.state == TrialState.FAIL else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            reason = last.user_attrs.get("error") or "see the messages above"
            raise CnnlabError(f"{failures} trials in a row failed; the last: {reason}")


def _own_last_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    me = st.worker_id()
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(st.WORKER_ATTR) == me]
    return mine[-1] if mine else None


def prepare_search(
    base_cfg: RunConfig,
    space: SearchSpace,
    *,
    stage: str = "coarse",
    out_dir: str | Path,
    study_name: str | None = None,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    epochs: int | None = None,
    sampler: str = "tpe",
    pruner: str = "asha",
    seed: int = 0,
    heartbeat: int | None = st.DEFAULT_HEARTBEAT,
    enqueue: Sequence[Mapping[str, Any]] = (),
    origin: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """Create (or continue) a study and store its settings; run no trial. See :func:`run_search`.

    Returns:
        ``(study_name, storage_url)``: what ``cnnlab search --join`` needs.
    """
    optuna = st.import_optuna()
    _check_choice("stage", stage, STAGES)
    _check_choice("sampler", sampler, SAMPLERS)
    _check_choice("pruner", pruner, PRUNERS)
    if n_trials is not None and n_trials < 1 or timeout is not None and timeout <= 0:
        raise CnnlabError("a search needs --trials >= 1 and a positive --budget")
    out = Path(out_dir).resolve()
    url = storage or st.default_storage_url(out)
    name = study_name or f"cnnlab-{stage}-{out.name}"
    apply_params(base_cfg, {k: (v[1][0] if v[0] == "cat" else v[1]) for k, v in space.knobs().items()})  # paths valid?
    study = optuna.create_study(study_name=name, storage=st.open_storage(url, heartbeat=heartbeat),
                                direction="maximize", load_if_exists=True)  # fmt: skip
    previous = study.user_attrs.get(SETTINGS_ATTR)
    if previous and previous["stage"] != stage:
        raise CnnlabError(f"study {name} is a {previous['stage']} search; give the {stage} stage another --study or --out")
    st.fail_stale_trials(study)
    if n_trials is None and timeout is None:
        n_trials = DEFAULT_TRIALS[stage]
    settings = SearchSettings(
        stage=stage, epochs=epochs or DEFAULT_EPOCHS[stage], sampler=sampler, pruner=pruner, seed=seed,
        heartbeat=heartbeat, out_dir=str(out), base_config=to_dict(base_cfg), space=space.as_dict(),
        target_trials=_count_active(study) + n_trials if n_trials else None,
        deadline=time.time() + timeout if timeout else None, origin=dict(origin) if origin else None,
    )  # fmt: skip
    study.set_user_attr(SETTINGS_ATTR, settings.as_dict())
    for params in enqueue:
        study.enqueue_trial(dict(params), skip_if_exists=True)
    return name, url


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise CnnlabError(f"unknown search {what} '{value}'; choose one of {', '.join(choices)}")


def join_search(
    study_name: str | None,
    storage: str,
    *,
    out_dir: str | Path | None = None,
    seed: int | None = None,
    verbose: bool = False,
) -> SearchResult:
    """Work on an existing study until its target or deadline, then write its results.

    Args:
        study_name: the study (None: the only one in ``storage``).
        storage: its storage URL.
        out_dir: where trial run folders go (default: the folder stored in the study).
        seed: the sampler seed of this worker (default: the study's seed plus the pid, so
            parallel workers draw different points).
        verbose: print every trial's epoch lines.
    """
    optuna = st.import_optuna()
    peek = _load_study(study_name, storage)
    settings = _settings(peek)
    if out_dir is not None:
        settings = replace(settings, out_dir=str(Path(out_dir).resolve()))
    seed = settings.seed + os.getpid() if seed is None else seed
    study = _load_study(peek.study_name, storage, heartbeat=settings.heartbeat,
                        sampler=_make_sampler(settings.sampler, seed), pruner=_make_pruner(settings.pruner, settings.epochs))  # fmt: skip
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    try:
        _work(study, verbose, out_dir=settings.out_dir)
    except BaseException:  # Ctrl-C, a broken config: still record what finished, then re-raise
        with contextlib.suppress(Exception):
            _finish(study, storage, settings.out_dir)
        raise
    finally:
        optuna.logging.set_verbosity(verbosity)
    return _finish(study, storage, settings.out_dir)


def _finish(study: optuna.Study, url: str, out_dir: str) -> SearchResult:
    result = _collect(study, url)
    result.settings = replace(result.settings, out_dir=out_dir)
    write_result(result)
    return result


def run_search(
    base_cfg: RunConfig,
    space: SearchSpace,
    *,
    stage: str = "coarse",
    out_dir: str | Path,
    study_name: str | None = None,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    epochs: int | None = None,
    sampler: str = "tpe",
    pruner: str = "asha",
    workers: int = 1,
    seed: int = 0,
    verbose: bool = False,
    heartbeat: int | None = st.DEFAULT_HEARTBEAT,
    enqueue: Sequence[Mapping[str, Any]] = (),
    origin: Mapping[str, Any] | None = None,
) -> SearchResult:
    """Run one search stage; continue the study if ``out_dir`` (or ``study_name``) already has it.

    Args:
        base_cfg: the run every trial starts from (its ``train.epochs`` is the full
            training length, kept in ``best.yaml``; trials run ``epochs``).
        space: what to vary (:func:`coarse_space`, :func:`refine_space`).
        stage: ``"coarse"`` or ``"refine"``; sets the default epochs (3 / 8) and trials (20 / 10).
        out_dir: the search folder: search.json, best.yaml, trials/<stage>-NNN run folders and,
            by default, the study journal.
        study_name: default ``cnnlab-<stage>-<folder name>``.
        storage: a database URL (``postgresql://USER@HOST:PORT/DB``) or ``journal:PATH``;
            default ``<out_dir>/study.journal``.
        n_trials: trials to add to the study (all workers together).
        timeout: seconds after which no new trial starts (running ones finish).
        epochs: epochs per trial.
        sampler: ``"tpe"`` (seeded, constant liar for parallel workers) or ``"random"``.
        pruner: ``"asha"`` (successive halving, rungs at 1, 3, 9 epochs), ``"hyperband"``,
            ``"median"`` or ``"none"``.
        workers: local worker processes (this one and ``workers - 1`` started ``cnnlab
            search --join`` processes sharing the storage).
        seed: sampler seed (worker ``i`` uses ``seed + i``).
        verbose: print every trial's epoch lines.
        heartbeat: seconds between heartbeats of running trials in a database storage; a
            trial silent for 3 heartbeats is marked FAIL and its slot re-run.
        enqueue: parameter sets (config path -> value) to try first, e.g. the base config's own.
        origin: free-form notes stored with the study (e.g. the coarse search refined from).

    Returns:
        The stage's :class:`SearchResult` (also written to ``out_dir/search.json``).
    """
    if workers < 1:
        raise CnnlabError(f"--workers must be at least 1, got {workers}")
    name, url = prepare_search(base_cfg, space, stage=stage, out_dir=out_dir, study_name=study_name, storage=storage,
                               n_trials=n_trials, timeout=timeout, epochs=epochs, sampler=sampler, pruner=pruner,
                               seed=seed, heartbeat=heartbeat, enqueue=enqueue, origin=origin)  # fmt: skip
    threads = _threads_per_worker(workers)
    procs = [_spawn_worker(name, url, seed + i, threads) for i in range(1, workers)]
    previous_threads = _set_torch_threads(threads)
    try:
        result = join_search(name, url, seed=seed, verbose=verbose)
        for proc in procs:  # they stop by themselves once the study's target is reached
            if proc.wait() != 0:
                log.warning("search worker %d exited with code %d", proc.pid, proc.returncode)
    finally:
        _stop_workers(procs)
        _set_torch_threads(previous_threads)
    if procs:  # the other workers may have finished trials after this one's last look
        result = _finish(_load_study(name, url, heartbeat=heartbeat), url, result.settings.out_dir)
    return result


def _threads_per_worker(workers: int) -> int | None:
    """CPU threads each worker may use so that N workers do not oversubscribe the cores."""
    if workers == 1:
        return None
    return max(1, (os.cpu_count() or 1) // workers)


def _set_torch_threads(threads: int | None) -> int | None:
    if threads is None:
        return None
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


def _spawn_worker(study_name: str, url: str, seed: int, threads: int | None) -> subprocess.Popen:
    """Start ``cnnlab search --join`` in a child process (the storage URL travels in the
    environment, so a database password never shows in the process list)."""
    env = {**os.environ, "CNNLAB_STORAGE": url}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "cnnlab", "search", "--join", study_name, "--sampler-seed", str(seed), "--quiet"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)


def _stop_workers(procs: Sequence[subprocess.Popen], grace: float = 60.0) -> None:
    """Ask still-running workers to stop (SIGINT: they finish the step and record the trial), then kill."""
    import signal

    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGINT)
    for proc in running:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

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

A study is bound to what it measures: continuing it with other data, another model, another
space or other trial settings is refused (naming what changed), as ``cnnlab train --resume``
refuses a changed run. A study that lost trials its folder records (an emptied or replaced
journal) is refused too, and a trial never writes into an existing folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from itertools import count
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.config import RunConfig, from_dict, to_dict
from cnnlab.errors import CnnlabError, TrainingDiverged, UsageError
from cnnlab.io import folder_lock
from cnnlab.recipe import storage as st
from cnnlab.recipe.records import (  # noqa: F401 - re-exported
    SearchResult,
    SearchSettings,
    TrialRecord,
    apply_params,
    best_config,
    write_result,
)
from cnnlab.recipe.space import (  # noqa: F401 - re-exported
    DROPOUT,
    LABEL_SMOOTHING,
    LR,
    WD,
    SearchSpace,
    coarse_space,
    refine_space,
)
from cnnlab.recipe.workers import (
    set_torch_threads,
    spawn_worker,
    stop_workers,
    threads_per_worker,
)
from cnnlab.run import load_data, run_training

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

STAGES = ("coarse", "refine")
SAMPLERS = ("tpe", "random")
PRUNERS = ("asha", "hyperband", "median", "none")
DEFAULT_EPOCHS = {"coarse": 3, "refine": 8}  # per trial: short runs rank settings well enough to discard most
DEFAULT_TRIALS = {"coarse": 20, "refine": 10}  # when neither a trial count nor a time budget is given
SETTINGS_ATTR = "cnnlab_search"  # study user attribute holding SearchSettings
MAX_FAILURES_IN_A_ROW = 3  # a worker gives up after this many failed trials in a row (a broken config)
# Base-config fields a continued study may change: they do not change what a trial measures
# (train.epochs is the final training's length, written to best.yaml; the others say where
# the data is or how fast it runs).
FREE_TO_CHANGE = ("train.epochs", "train.device", "train.eval_batch_size", "train.checkpoint_minutes", "data.root",
                  "data.download")  # fmt: skip

def load_search(out_dir: str | Path, *, storage: str | None = None, study_name: str | None = None) -> SearchResult:
    """The search in ``out_dir``: from its study when reachable (current), else its search.json.

    A search.json whose storage URL had a password (masked when written) is reached with
    the URL in ``CNNLAB_STORAGE`` when that names the same storage.

    Raises:
        CnnlabError: ``out_dir`` holds no search, or neither its study nor its search.json
            can be read.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise CnnlabError(f"{out_dir} is not a folder; give the --out folder of a `cnnlab search`")
    saved, damage = _read_saved(out_dir / "search.json")
    url = storage or (st.unmask(saved.storage) if saved else None)
    if url is None and (out_dir / st.JOURNAL_NAME).is_file():
        url = st.default_storage_url(out_dir)
    if url is None:
        raise CnnlabError(damage or f"{out_dir} holds no search (no search.json or {st.JOURNAL_NAME}); give the search's --out folder")
    try:
        study = _load_study(study_name or (saved.study_name if saved else None), url)
        return _collect(study, url)
    except CnnlabError as exc:
        if saved is None and damage:
            raise type(exc)(f"{exc} (and {damage})") from None
        if saved is None:
            raise
        return saved  # a finished search's record is enough to read it (a report, a refine --from)


def _read_saved(path: Path) -> tuple[SearchResult | None, str | None]:
    """``search.json`` as a SearchResult, or (None, why it cannot be used)."""
    if not path.is_file():
        return None, None
    try:
        saved = SearchResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
        saved.space  # noqa: B018 - parse it now: a broken space must not surface later as a traceback
        return saved, None
    except (ValueError, TypeError, KeyError, AttributeError, CnnlabError) as exc:  # not JSON, or not a search's record
        return None, f"{path} is not a readable search record ({type(exc).__name__}: {exc})"


# --------------------------------------------------------------------------- running


def _count_active(study: optuna.Study) -> int:
    """Trials that count towards the target: finished or running. Not FAIL (its slot is
    re-run), not WAITING (enqueued points count once a worker starts them)."""
    from optuna.trial import TrialState  # lazy: optional dependency, imported only when a search runs

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


def _make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    import optuna  # lazy: optional dependency, imported only when a search runs

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: parallel workers see running trials as bad guesses and do not all sample the same spot.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    import optuna  # lazy: optional dependency, imported only when a search runs

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


def _objective(settings: SearchSettings, verbose: bool):  # noqa: ANN202 - an optuna objective
    import optuna  # lazy: optional dependency, imported only when a search runs

    base, space = from_dict(RunConfig, settings.base_config), SearchSpace.from_dict(settings.space)
    trials_dir = Path(settings.out_dir) / "trials"

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial)
        run_dir = claim_run_dir(trials_dir, f"{settings.stage}-{trial.number:03d}")
        trial.set_user_attr(st.WORKER_ATTR, st.worker_id())
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = apply_params(base, {**params, "train.epochs": settings.epochs})
        reporter = EpochReporter(trial, settings.epochs)
        try:  # the test split stays unseen by the search: trials are chosen by validation accuracy only
            summary = run_training(cfg, run_dir, on_epoch_end=reporter, verbose=verbose, evaluate_test=False)
        except TrainingDiverged:  # a too-high LR is a result (a bad one), not a broken trial: the sampler learns from it
            trial.set_user_attr("stop_reason", "diverged (NaN/inf loss)")
            raise optuna.TrialPruned("diverged") from None
        except CnnlabError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        except Exception as exc:  # a crash in one trial (e.g. a model option it cannot take) fails only it
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        if reporter.pruned_at is not None:
            trial.set_user_attr("stop_reason", f"pruned after epoch {reporter.pruned_at}")
            raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned_at}")
        return float(summary["best_val_acc"])

    return objective


def claim_run_dir(trials_dir: Path, name: str) -> Path:
    """Create and return a new, empty folder for a trial's run: ``NAME``, else ``NAME-2``, ``NAME-3``...

    ``mkdir`` is atomic, so two workers never share a folder, and a folder that exists (a
    run of another study in the same search folder, or of a study whose journal was lost)
    is never written into.

    Raises:
        CnnlabError: the trials folder cannot be written.
    """
    try:
        trials_dir.mkdir(parents=True, exist_ok=True)
        for n in count(1):
            run_dir = trials_dir / (name if n == 1 else f"{name}-{n}")
            try:
                run_dir.mkdir()
            except FileExistsError:
                continue
            if n > 1:
                log.warning("%s exists (a run of an earlier study); this trial runs in %s", trials_dir / name, run_dir.name)
            return run_dir
    except OSError as exc:
        raise CnnlabError(f"cannot create a trial folder in {trials_dir}: {exc.strerror or exc}") from None
    raise AssertionError("unreachable: count() never ends")


def _log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    value = "-" if trial.value is None else f"{trial.value:.2%}"
    params = ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                       for k, v in trial.params.items())  # fmt: skip
    error = trial.user_attrs.get("error")
    why = f": {error}" if error and trial.state.name == "FAIL" else ""
    log.info("trial %d %s: val acc %s after %d epoch(s) (%s)%s", trial.number, trial.state.name.lower(), value,
             len(trial.intermediate_values), params, why)  # fmt: skip


# Loggers whose lines are wrong or noise inside a search: Optuna logs every failed trial with
# the exception's traceback (a failure is reported by _log_trial in one line, with its
# reason), and an interrupted trial would say `cnnlab train --resume <trial>`, although a
# search continues by running it again (and a recipe with `cnnlab recipe --resume`).
_HUSHED = ("optuna.study._optimize", "cnnlab.train.fit", "cnnlab.train.interrupt")


@contextlib.contextmanager
def trial_logs_hushed() -> Iterator[None]:
    """Within the block, show only errors of the loggers in ``_HUSHED``; restore them after."""
    loggers = [logging.getLogger(name) for name in _HUSHED]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _work(study: optuna.Study, verbose: bool, *, out_dir: str) -> None:
    """Run trials until the study's target or deadline; wait for other workers' last trials.

    Trial run folders go under ``out_dir``/trials (this worker's view of the search folder).
    """
    from optuna.trial import TrialState  # lazy: optional dependency, imported only when a search runs

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
    _check_numbers(n_trials=n_trials, timeout=timeout, epochs=epochs, heartbeat=heartbeat)
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"the search folder {out} is a file; give --out a folder")
    url = storage or st.default_storage_url(out)
    name = study_name or f"cnnlab-{stage}-{out.name}"
    apply_params(base_cfg, {k: knob.example() for k, knob in space.knobs().items()})  # paths valid?
    opened = st.open_storage(url, heartbeat=heartbeat)
    existing = optuna.load_study(study_name=name, storage=opened) if name in optuna.get_all_study_names(opened) else None
    _check_not_lost(out, name, url, stage, existing)  # before anything is written into the storage
    settings = SearchSettings(
        stage=stage, epochs=epochs or DEFAULT_EPOCHS[stage], sampler=sampler, pruner=pruner, seed=seed,
        heartbeat=heartbeat, out_dir=str(out), base_config=to_dict(base_cfg), space=space.as_dict(),
        origin=dict(origin) if origin else None, data_fingerprint=load_data(base_cfg).fingerprint,
    )  # fmt: skip
    previous = existing.user_attrs.get(SETTINGS_ATTR) if existing is not None else None
    if previous:
        _check_same_search(name, url, SearchSettings.from_dict(previous), settings)
    study = existing or optuna.create_study(study_name=name, storage=opened, direction="maximize")
    st.fail_stale_trials(study)
    if n_trials is None and timeout is None:
        n_trials = DEFAULT_TRIALS[stage]
    settings = replace(settings, target_trials=_count_active(study) + n_trials if n_trials else None,
                       deadline=time.time() + timeout if timeout else None)  # fmt: skip
    study.set_user_attr(SETTINGS_ATTR, settings.as_dict())
    for params in enqueue:
        study.enqueue_trial(dict(params), skip_if_exists=True)
    return name, url


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UsageError(f"unknown search {what} '{value}'; choose one of {', '.join(choices)}")


def _check_numbers(*, n_trials: int | None, timeout: float | None, epochs: int | None, heartbeat: int | None) -> None:
    """Refuse counts and durations that would make a search do nothing, or something else."""
    import math

    if n_trials is not None and n_trials < 1:
        raise UsageError(f"--trials must be at least 1, got {n_trials}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--budget must be a positive duration, got {timeout:g} s")
    if epochs is not None and epochs < 1:
        raise UsageError(f"--epochs (per trial) must be at least 1, got {epochs}")
    if heartbeat is not None and heartbeat < 1:
        raise UsageError(f"--heartbeat must be at least 1 s, got {heartbeat}")


def _trial_folders(out: Path, stage: str) -> list[Path]:
    trials = out / "trials"
    return sorted(p for p in trials.glob(f"{stage}-*") if p.is_dir()) if trials.is_dir() else []


def _check_not_lost(out: Path, name: str, url: str, stage: str, study: optuna.Study | None) -> None:
    """Refuse to go on with a study that has lost trials its search folder records.

    An emptied, truncated or replaced journal (or a dropped database) would otherwise start
    over silently: the earlier trials vanish from the study and from the next search.json.

    Raises:
        CnnlabError: search.json records more trials than the study holds, or trial folders
            of this stage exist while the study does not.
    """
    held = len(study.get_trials(deepcopy=False)) if study is not None else 0
    where = st.redact(url)
    saved, damage = _read_saved(out / "search.json")
    if damage:
        raise CnnlabError(f"{damage}; move it away to continue the search in {out}, or choose another --out")
    if saved is not None and saved.study_name != name:
        raise UsageError(f"{out} holds the search of study {saved.study_name}; a search of study {name} would replace "
                         f"its search.json and best.yaml: give it another --out")  # fmt: skip
    # The record is this study's (same name): its trials must be in the storage now given,
    # whether the folder moved (a journal path changes) or another --storage is named.
    recorded = len(saved.trials) if saved is not None else 0
    folders = _trial_folders(out, stage)
    if recorded > held or (study is None and folders):
        what = f"{out / 'search.json'} records {recorded} trial(s)" if recorded > held else f"{out / 'trials'} holds {len(folders)} trial folder(s)"
        raise CnnlabError(
            f"the study {name} in {where} has lost trials: {what}, the study holds {held}. Its storage was emptied, "
            f"truncated or replaced (a damaged journal is kept next to it as {st.JOURNAL_NAME}.damaged-*); restore it, "
            "or start the search in another --out (the trial folders stay where they are)"
        )


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _changes(before: Mapping[str, Any], after: Mapping[str, Any], *, skip: Sequence[str] = ()) -> list[str]:
    """``path: old -> new`` for every leaf that differs."""
    a, b = _flat(before), _flat(after)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)]


def _check_same_search(name: str, url: str, before: SearchSettings, now: SearchSettings) -> None:
    """Refuse to continue a study with settings that change what its trials measure.

    Raises:
        UsageError: the stage, data, model, any other trial setting, the space or the epochs
            per trial differ from the study's, named one by one.
    """
    if before.stage != now.stage:
        raise UsageError(f"study {name} is a {before.stage} search; give the {now.stage} stage another --study or --out")
    changed = _changes(before.base_config, now.base_config, skip=FREE_TO_CHANGE)
    changed += [f"space {c}" for c in _changes(before.space, now.space)]
    if before.epochs != now.epochs:
        changed.append(f"epochs per trial: {before.epochs} -> {now.epochs}")
    if before.data_fingerprint and before.data_fingerprint != now.data_fingerprint and not any(c.startswith("data.") for c in changed):
        changed.append("the data's images changed (same --data, other files)")
    if changed:
        shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise UsageError(
            f"study {name} in {st.redact(url)} was run with other settings, so its trials would not compare: {shown}. "
            "Rerun the original command to continue it, or give another --out (or --study) for a new search"
        )


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
        with trial_logs_hushed():
            _work(study, verbose, out_dir=settings.out_dir)
    except BaseException:  # Ctrl-C, a broken config: still record what finished, then re-raise
        try:
            _finish(study, storage, settings.out_dir)
        except Exception as exc:  # noqa: BLE001 - the original error matters more; say why nothing was recorded
            log.warning("could not record the finished trials: %s", exc)
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
        raise UsageError(f"--workers must be at least 1, got {workers}")
    # One process owns a search folder; the workers it starts (and `--join` workers) share it
    # through the study and take no lock: only a second owner is refused.
    with folder_lock(out_dir, "search"):
        return _run_search_locked(base_cfg, space, stage=stage, out_dir=out_dir, study_name=study_name,
                                  storage=storage, n_trials=n_trials, timeout=timeout, epochs=epochs, sampler=sampler,
                                  pruner=pruner, workers=workers, seed=seed, verbose=verbose, heartbeat=heartbeat,
                                  enqueue=enqueue, origin=origin)  # fmt: skip


def _run_search_locked(base_cfg: RunConfig, space: SearchSpace, *, workers: int, seed: int, verbose: bool,
                       heartbeat: int | None, **kwargs: Any) -> SearchResult:  # fmt: skip
    name, url = prepare_search(base_cfg, space, seed=seed, heartbeat=heartbeat, **kwargs)
    threads = threads_per_worker(workers)
    procs = [spawn_worker(name, url, seed + i, threads) for i in range(1, workers)]
    previous_threads = set_torch_threads(threads)
    try:
        result = join_search(name, url, seed=seed, verbose=verbose)
        for proc in procs:  # they stop by themselves once the study's target is reached
            if proc.wait() != 0:
                log.warning("search worker %d exited with code %d", proc.pid, proc.returncode)
    finally:
        stop_workers(procs)
        set_torch_threads(previous_threads)
    if procs:  # the other workers may have finished trials after this one's last look
        result = _finish(_load_study(name, url, heartbeat=heartbeat), url, result.settings.out_dir)
    return result

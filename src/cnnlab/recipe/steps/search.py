"""Steps 4, 5 and 7: the coarse search, then refine rounds that each diagnose, move and narrow.

Each stage is an Optuna study in ``search/<key>/`` (:func:`cnnlab.recipe.search.run_search`);
a stage cut short (killed) continues its study on ``--resume``. A refine round first
diagnoses the previous stage's best trial (the diagnose step), narrows the ranges around the
previous stage's best trials and moves them as the diagnosis suggests
(:meth:`~cnnlab.recipe.space.SearchSpace.adjusted`); rounds stop when the budget is spent or
the best validation accuracy stops improving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cnnlab.config import RunConfig
from cnnlab.io import atomic_write_json
from cnnlab.recipe.html import params, plural
from cnnlab.models.registry import list_models, model_info
from cnnlab.recipe.search import load_search, run_search
from cnnlab.recipe.space import LR, WD, SearchSpace, coarse_space, refine_space
from cnnlab.recipe.step import RecipeContext, ReportContext, step_key
from cnnlab.recipe.steps.diagnose import DIAGNOSE, RoundDiagnosis
from cnnlab.recipe.steps.plan import search_end, search_skipped
from cnnlab.recipe.steps.search_report import search_section
from cnnlab.recipe.steps.stage import COARSE, REFINE, StageResult, best_stage, stage_before
from cnnlab.recipe.storage import JOURNAL_NAME

# Recipes started before the plan step (recipe.json without a "plan" record) kept this
# share of the budget for the final training; their search continues under the same rule.
FINAL_SHARE = 0.5
# Share of the search time spent on the coarse stage; refine rounds split the rest.
COARSE_SHARE = 0.45
# The coarse LR range reaches this multiple of the LR finder's loss minimum.
LR_ABOVE_MIN = 10.0
# A refine round gets at least this many trials' time, else the rounds left merge into one.
MIN_ROUND_TRIALS = 3
# A refine round must raise the best validation accuracy by this much to earn another round.
MIN_IMPROVEMENT = 0.002


class _StageStep:
    """What both search steps share: the record format and the verdict-less table line."""

    name = ""
    failure = ""

    def to_dict(self, result: StageResult) -> dict[str, Any]:
        return result.to_dict()

    def from_dict(self, data: Mapping[str, Any]) -> StageResult:
        return StageResult.from_dict(data)

    def verdict(self, result: StageResult) -> bool | None:
        return None

    def evidence(self, result: StageResult) -> str:
        best = result.best
        return f"{plural(len(result.search.trials), 'trial')}, best val acc {result.best_value:.2%} with {params(best.params if best else {})}"


class CoarseStep(_StageStep):
    """Short trials over wide ranges centred on the LR finder's pick."""

    name = COARSE
    title = "4-7. Search, diagnose, refine"

    def keys(self, ctx: RecipeContext) -> Iterator[str]:
        if search_skipped(ctx):
            if self.name not in ctx.records:
                ctx.say(f"{self.name}: skipped by the budget plan; the final model trains the starting configuration")
            return
        yield self.name

    def run(self, ctx: RecipeContext, key: str) -> StageResult:
        lr = ctx.records.get("lr_find")
        space = coarse_space(lr.suggestion, has_dropout=_has_dropout(ctx.cfg))
        # The finder's pick is cautious, and a one-cycle schedule peaks well above it: measured
        # on Fashion-MNIST, random search found its best peak LR (0.6) at ~5x the loss
        # minimum's LR (0.11), beyond 10x the pick. So the range reaches 10x that minimum.
        if LR_ABOVE_MIN * (lr.min_lr or 0.0) > space.lr[1]:
            space = dataclasses.replace(space, lr=(space.lr[0], LR_ABOVE_MIN * lr.min_lr))
        # The starting configuration is the first trial: the search's pick can only be it or one
        # that beat it on the same trials, never a worse one (the range widens to hold it).
        prior = {LR: ctx.cfg.optim.lr, WD: ctx.cfg.optim.weight_decay}
        space = dataclasses.replace(space, lr=(min(space.lr[0], prior[LR]), max(space.lr[1], prior[LR])))
        if space.weight_decay is not None and prior[WD] > 0:
            space = dataclasses.replace(space, weight_decay=(min(space.weight_decay[0], prior[WD]),
                                                             max(space.weight_decay[1], prior[WD])))  # fmt: skip
        knobs = space.knobs()
        start = {k: v for k, v in prior.items() if k in knobs and knobs[k].contains(v)}
        seconds = COARSE_SHARE * search_seconds(ctx)
        return run_stage(ctx, key, "coarse", space, seconds, ctx.options.coarse_trials, ctx.options.coarse_epochs,
                         start_from=start or None)  # fmt: skip

    def report_section(self, results: Sequence[tuple[str, StageResult]], report: ReportContext) -> str:
        # One section tells the whole search story: every stage, how its ranges moved, the
        # diagnoses between them, and the plots over all trials.
        return search_section(self.title, report)


class RefineStep(_StageStep):
    """Refine rounds: diagnose the previous stage, narrow and move its ranges, search longer."""

    name = REFINE
    title = "5. Refined search"

    def keys(self, ctx: RecipeContext) -> Iterator[str]:
        best = previous = ctx.records.get(COARSE)
        if best is None:  # no coarse search (the plan skipped it): nothing to refine
            return
        for round_ in range(1, ctx.options.max_rounds + 1):
            key = step_key(self.name, round_)
            if key not in ctx.records:
                seconds, trial = _round_seconds(ctx, previous, round_)
                if seconds < trial:
                    ctx.say(f"{key}: skipped, the search time left ({seconds:.0f} s) is less than one trial (~{trial:.0f} s)")
                    return
                yield key
            refined = ctx.records.get(key)
            gain = refined.best_value - best.best_value
            best = refined if refined.best_value > best.best_value else best
            previous = refined
            if round_ > 1 and gain < MIN_IMPROVEMENT:
                ctx.say(f"{key}: best validation accuracy improved by {gain:+.2%} (< {MIN_IMPROVEMENT:.1%}): stop searching")
                return

    def run(self, ctx: RecipeContext, key: str) -> StageResult:
        round_ = int(key.rpartition("-")[2])
        previous = ctx.records.get(stage_before(round_))
        seconds, _ = _round_seconds(ctx, previous, round_)
        diagnosis = ctx.run(ctx.steps[DIAGNOSE], step_key(DIAGNOSE, round_))
        space = _next_space(ctx, previous, diagnosis, key)
        best = best_stage(ctx.records, before=round_)
        return run_stage(ctx, key, "refine", space, seconds, ctx.options.refine_trials, ctx.options.refine_epochs,
                         start_from=_inside(best, space))  # fmt: skip

    def report_section(self, results: Sequence[tuple[str, StageResult]], report: ReportContext) -> str:
        return ""  # within the coarse step's search section


def search_seconds(ctx: RecipeContext) -> float:
    """Time the whole search may still use: until the end the budget plan set for it."""
    if ctx.options.budget_seconds is None:
        return math.inf
    end = search_end(ctx)
    if end is None:  # a recipe started before the plan step: the old fixed share
        return max(ctx.clock.left() - FINAL_SHARE * ctx.options.budget_seconds, 0.0)
    return max(end - ctx.clock.spent(), 0.0)


def _round_seconds(ctx: RecipeContext, previous: StageResult, round_: int) -> tuple[float, float]:
    """(time for refine round ``round_``, time of one of its trials)."""
    rounds_left = ctx.options.max_rounds - round_ + 1
    left = search_seconds(ctx)
    trial = _trial_seconds(previous, ctx.options.refine_epochs)
    seconds = left / rounds_left
    if seconds < MIN_ROUND_TRIALS * trial:  # too little for several rounds: one last round gets it all
        seconds = left
    return seconds, trial


def _trial_seconds(stage: StageResult, epochs: int) -> float:
    """The wall time of one trial of ``epochs`` epochs, from the measured epochs of ``stage``'s trials."""
    per_epoch = sorted(t.seconds / t.epochs for t in stage.complete if t.seconds and t.epochs)
    return per_epoch[len(per_epoch) // 2] * epochs if per_epoch else 0.0


def run_stage(ctx: RecipeContext, key: str, stage: str, space: SearchSpace, seconds: float, trials: int | None,
              epochs: int, start_from: dict[str, Any] | None = None) -> StageResult:  # fmt: skip
    """One search stage in ``search/<key>``. ``start_from``: parameters tried first (the best so far, trained longer)."""
    opt = ctx.options
    # Each stage gets its own sampler seed: the same seed would replay the same random
    # draws (mapped into the new ranges) in every stage.
    seed = opt.seed * 1000 + len(ctx.records.of(COARSE)) + len(ctx.records.of(REFINE))
    folder, name = ctx.out / "search" / key, _study_name(ctx, key)
    timeout = None if math.isinf(seconds) else max(seconds, 1.0)
    trials = _trials_left(ctx, key, trials)
    if trials == 0:  # killed after its last trial: nothing left to run
        result = load_search(folder, storage=opt.storage, study_name=name)
    else:
        with _quiet_trials():
            result = run_search(_search_cfg(ctx), space, stage=stage, out_dir=folder, study_name=name,
                                storage=opt.storage, n_trials=trials, timeout=timeout, epochs=epochs,
                                sampler=opt.sampler, pruner=opt.pruner, workers=opt.workers, seed=seed,
                                verbose=False, enqueue=[start_from] if start_from else ())  # fmt: skip
    out = StageResult(result, space)
    ctx.say(f"{key}: {plural(len(result.trials), 'trial')} ({len(out.complete)} complete), best val acc {out.best_value:.2%}")
    return out


def _search_cfg(ctx: RecipeContext) -> RunConfig:
    """The configuration search trials start from: a training subset, no early checkpoints."""
    cfg, subset = ctx.cfg, ctx.options.search_subset
    train = dataclasses.replace(cfg.train, train_subset=subset or cfg.train.train_subset, checkpoint_minutes=0.0)
    if subset and cfg.train.train_subset and cfg.train.train_subset < subset:
        train = dataclasses.replace(train, train_subset=cfg.train.train_subset)
    return dataclasses.replace(cfg, train=train)


def _trials_left(ctx: RecipeContext, key: str, trials: int | None) -> int | None:
    """A stage cut short (killed) continues its study: only the trials it still owes."""
    if trials is None or ctx.options.storage is not None:
        return trials
    folder = ctx.out / "search" / key
    if not (folder / JOURNAL_NAME).is_file():
        return trials
    done = sum(t.state in ("COMPLETE", "PRUNED") for t in load_search(folder, study_name=_study_name(ctx, key)).trials)
    return max(trials - done, 0)


def _study_name(ctx: RecipeContext, key: str) -> str:
    """Unique per recipe folder: a shared --storage may hold many recipes' studies."""
    tag = hashlib.sha1(str(ctx.out.resolve()).encode()).hexdigest()[:8]
    return f"recipe-{ctx.out.name}-{tag}-{key}"


def _next_space(ctx: RecipeContext, previous: StageResult, diagnosis: RoundDiagnosis, key: str) -> SearchSpace:
    """Narrow around the best trials, then move the ranges as the diagnosis suggests."""
    narrowed, why = refine_space(previous.search.trials, previous.space)
    adjusted, moves = narrowed.adjusted(diagnosis.diagnosis.suggestion)
    atomic_write_json(ctx.out / "search" / f"{key}-space.json",
                      {"from": previous.space.as_dict(), "narrowed": why, "moves": moves, "space": adjusted.as_dict()})  # fmt: skip
    for move in moves:
        ctx.say(f"{key}: {move}")
    return adjusted


def _inside(stage: StageResult | None, space: SearchSpace) -> dict[str, Any] | None:
    """The best trial's parameters of ``stage`` if every one lies in ``space``'s ranges."""
    params = dict(stage.best.params) if stage is not None and stage.best is not None else {}
    return params if params and space.contains(params) else None


def _has_dropout(cfg: RunConfig) -> bool:
    name = cfg.model.name
    return name in list_models() and "dropout" in model_info(name).options()


@contextlib.contextmanager
def _quiet_trials() -> Iterator[None]:
    """One line per trial is enough: hide each trial's model line and Optuna's study messages."""
    import optuna  # lazy: optuna is an optional dependency, needed only once a search runs

    loggers = [logging.getLogger(name) for name in ("cnnlab.run", "cnnlab.transfer.finetune")]
    levels = [lg.level for lg in loggers]
    verbosity = optuna.logging.get_verbosity()
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        optuna.logging.set_verbosity(verbosity)

"""After the final model: more final models from other seeds, and their average when it validates better.

When the budget plan gives the final training more time than one model can use (more
epochs than the saturation epochs fit, :func:`cnnlab.recipe.planner.share_members`), the
time buys more models of the same configuration, each trained from another seed
(``final-2/``, ``final-3/``, ...) exactly as ``final/`` was (its ``config.yaml``, the
steps its deadline set included), so every member reproduces from ``best.yaml`` with
``--seed``. A member trains as ``final/`` did when the time left holds a run as long as
``final/`` took; when it holds less, but still at least half the saturation epochs (the
least the plan gives a member), the member is trained shorter, its steps set from its own
pace to end with the budget (:class:`~cnnlab.train.deadline.Deadline`, as ``final/``'s
were); else it is skipped, said in the report. (Measured: a 5-minute recipe skipped its
third planned member with 103 s left where ``final/`` had taken 99 s and the report needs
5: a third of the budget unused.) When the plan misread the pace and time is left after
the planned members, more start while one more fits (up to ``--ensemble`` when it was
given, else :func:`~cnnlab.recipe.planner.most_members`).

The ensemble averages the members' class probabilities (each member's own flip-TTA choice
included: the predictions its run saved). Like flip TTA, it is used on the test only if it
raises the validation accuracy above the best member's, on the same validation images;
the test accuracy then reported is the ensemble's, evaluated once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnlab.infer.calibration import softmax
from cnnlab.recipe.html import esc, h2, plural
from cnnlab.config import RunConfig
from cnnlab.recipe.planner import SATURATION_EPOCHS, most_members
from cnnlab.recipe.step import OnceStep, RecipeContext, Records, ReportContext
from cnnlab.recipe.steps.final import FOLDER, REPORT_SECONDS, FinalResult
from cnnlab.run import TEST, VAL, resume_config, run_training
from cnnlab.runfolder import RunFolder
from cnnlab.train.deadline import Deadline

log = logging.getLogger(__name__)

MEMBER = "member"
ENSEMBLE = "ensemble"


def member_folder(k: int) -> str:
    """The run folder of the ``k``-th final model (``final`` for the first)."""
    return FOLDER if k == 1 else f"{FOLDER}-{k}"


@dataclass(frozen=True)
class MemberResult:
    """One more final model: its run, or why it was not trained."""

    run_dir: str
    seed: int
    test_acc: float | None = None
    best_val_acc: float | None = None
    epochs: int = 0
    skipped: str | None = None  # why it was not trained (the time left); None: trained


class MemberStep(OnceStep):
    """Train final models 2..n of the plan, each from its own seed, as ``final/`` was trained."""

    name = MEMBER
    title = "More final models"

    def keys(self, ctx: RecipeContext) -> Iterator[str]:
        """Members 2..n of the plan; then more while the time left holds one (up to ``--ensemble``, else ``most_members``).

        A plan made from a few timed steps can misread the pace (the final model then stops at
        the saturation epochs before its share of the time is spent): the time it left over
        buys another member when it holds a whole run as long as ``final/``, rather than
        staying unused (the configuration is fixed by now: no search can use it). Read
        lazily, after each member, so the time left is the real one.
        """
        final = ctx.records.get("final")
        planned = final.plan.members if isinstance(final, FinalResult) and final.plan is not None else 1
        if planned < 2:
            return
        for k in range(2, most_members(ctx.options.ensemble) + 1):
            key = f"{MEMBER}-{k}"
            if k > planned and key not in ctx.records and not _fits(ctx):
                return
            yield key

    def run(self, ctx: RecipeContext, key: str) -> MemberResult:
        k = int(key.rsplit("-", 1)[1])
        run = RunFolder(ctx.out / member_folder(k))
        if run.exists():  # started before this session: continue it, whatever the time left
            cfg = resume_config(run.path)
            ctx.say(f"{key}: resuming (seed {cfg.train.seed}) -> {run.path}")
            summary = run_training(resume=run.path, verbose=ctx.verbose)
            return _trained(run, cfg.train.seed, summary)
        first = RunFolder(ctx.out / FOLDER)
        cfg = first.read_config()
        seed = cfg.train.seed + k - 1
        final = ctx.records.get("final")
        room = _member_epochs(ctx)
        if room < _least_epochs(final.epochs):
            why = (f"{ctx.clock.left():.0f} s left, the first final model took {ctx.records.seconds('final'):.0f} s "
                   f"for {plural(final.epochs, 'epoch')}: {plural(room, 'epoch')} would fit")  # fmt: skip
            ctx.say(f"{key}: skipped ({why})")
            return MemberResult(str(run.path), seed, skipped=why)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        deadline = None
        if room < final.epochs:  # shorter than final/: its steps set from its own pace to end with the budget
            deadline = _shorter(ctx, cfg, final)
            if deadline is None:  # a schedule without a warmup epoch cannot be re-planned: the epochs that fit, fixed
                cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=room, steps=None))
            ctx.say(f"{key}: at most {plural(room if deadline is None else final.epochs, 'epoch')}, as many as the "
                    f"{ctx.clock.left():.0f} s left allow ({first.path.name}/ took {ctx.records.seconds('final'):.0f} s "
                    f"for {final.epochs}), seed {seed} -> {run.path}")  # fmt: skip
        else:  # what final/ trained (its steps), not its config's planned epochs
            ctx.say(f"{key}: {plural(final.epochs, 'epoch')} as {first.path.name}/ trained, seed {seed} -> {run.path}")
        summary = run_training(cfg, run.path, verbose=ctx.verbose, deadline=deadline)
        return _trained(run, seed, summary)

    def to_dict(self, result: MemberResult) -> dict[str, Any]:
        return dataclasses.asdict(result)

    def from_dict(self, data: Mapping[str, Any]) -> MemberResult:
        return MemberResult(**{f.name: data[f.name] for f in dataclasses.fields(MemberResult) if f.name in data})

    def evidence(self, result: MemberResult) -> str:
        if result.skipped:
            return f"seed {result.seed}: skipped ({result.skipped})"
        return f"seed {result.seed}: test accuracy {result.test_acc or 0:.2%} after {plural(result.epochs, 'epoch')}"

    def report_section(self, results: Sequence[tuple[str, MemberResult]], report: ReportContext) -> str:
        return ""  # the ensemble's section shows every member


def _member_epochs(ctx: RecipeContext) -> int:
    """The epochs of ``final/``'s pace (its fixed costs counted in proportion) that the time left holds, report
    after it kept free; at most what ``final/`` trained."""
    epochs = ctx.records.get("final").epochs
    took = ctx.records.seconds("final")
    left = ctx.clock.left() - REPORT_SECONDS
    if took <= 0:
        return epochs
    return max(0, min(epochs, int(epochs * left / took)))


def _least_epochs(final_epochs: int) -> int:
    """The fewest epochs worth a member: half the saturation epochs (the least the budget plan gives a member,
    :func:`~cnnlab.recipe.planner.share_members`), or all of ``final/``'s when it trained fewer."""
    return min(final_epochs, math.ceil(SATURATION_EPOCHS / 2))


def _fits(ctx: RecipeContext) -> bool:
    """Whether one more member fits in the time left (:func:`_member_epochs`, :func:`_least_epochs`)."""
    return _member_epochs(ctx) >= _least_epochs(ctx.records.get("final").epochs)


def _shorter(ctx: RecipeContext, cfg: RunConfig, final: FinalResult) -> Deadline | None:
    """The deadline of a member shorter than ``final/``: the budget's end (the report kept free), at most
    ``final/``'s epochs; None when its schedule has no warmup epoch to re-plan in."""
    if cfg.schedule.warmup_epochs < 1 or ctx.options.budget_seconds is None:
        return None
    fixed = final.plan.fixed_seconds if final.plan is not None else 0.0
    return Deadline(time.time() + ctx.clock.left() - REPORT_SECONDS, end_seconds=fixed, max_epochs=final.epochs)


def _trained(run: RunFolder, seed: int, summary: Mapping[str, Any]) -> MemberResult:
    return MemberResult(str(run.path), seed, summary.get("test_acc"), summary.get("best_val_acc"),
                        int(summary.get("epochs_run") or 0))  # fmt: skip


@dataclass(frozen=True)
class EnsembleResult:
    """The members' and their average's accuracies, and whether the average was used on the test."""

    members: list[dict[str, Any]]  # {"run_dir", "val_acc", "test_acc"} per member, ``final/`` first
    val_acc: float | None  # the average's validation accuracy (None: not measured, see reason)
    test_acc: float | None  # the average's test accuracy, only when used
    used: bool
    reason: str


class EnsembleStep(OnceStep):
    """Average the final models' saved predictions; keep the average only if it validates better."""

    name = ENSEMBLE
    title = "Ensemble of the final models"

    def keys(self, ctx: RecipeContext) -> Iterator[str]:
        if any(not r.skipped for _, r in ctx.records.of(MEMBER)):
            yield self.name

    def run(self, ctx: RecipeContext, key: str) -> EnsembleResult:
        folders = [RunFolder(ctx.out / FOLDER)] + [RunFolder(r.run_dir) for _, r in ctx.records.of(MEMBER) if not r.skipped]
        result = combine(folders)
        ctx.say(f"{key}: {result.reason}")
        return result

    def to_dict(self, result: EnsembleResult) -> dict[str, Any]:
        return dataclasses.asdict(result)

    def from_dict(self, data: Mapping[str, Any]) -> EnsembleResult:
        return EnsembleResult([dict(m) for m in data["members"]], data.get("val_acc"), data.get("test_acc"),
                              bool(data["used"]), str(data["reason"]))  # fmt: skip

    def evidence(self, result: EnsembleResult) -> str:
        n = len(result.members)
        if result.used:
            return f"{n} models averaged: test accuracy {result.test_acc or 0:.2%}"
        return f"{n} models, average not used"

    def report_section(self, results: Sequence[tuple[str, EnsembleResult]], report: ReportContext) -> str:
        _, ens = results[-1]
        rows = "".join(f"<tr><td><code>{esc(m['run_dir'])}</code></td><td>{_pct(m.get('val_acc'))}</td>"
                       f"<td>{_pct(m.get('test_acc'))}</td></tr>" for m in ens.members)  # fmt: skip
        rows += (f"<tr><th>average of the {len(ens.members)}</th><td>{_pct(ens.val_acc)}</td>"
                 f"<td>{_pct(ens.test_acc) if ens.used else 'not evaluated'}</td></tr>")  # fmt: skip
        skipped = [r for _, r in report.records.of(MEMBER) if r.skipped]
        note = "".join(f"<p class='muted'>{esc(r.run_dir)}: not trained ({esc(r.skipped)}).</p>" for r in skipped)
        return (h2(self.title) + f"<p>{esc(ens.reason)}.</p><table><tr><th>model</th><th>validation</th><th>test</th></tr>"
                f"{rows}</table>{note}")  # fmt: skip


def combine(folders: Sequence[RunFolder]) -> EnsembleResult:
    """The ensemble of finished runs, from the predictions they saved (``predictions-val/test.npz``).

    Class probabilities are averaged (saved logits, or a flip-TTA run's log-probabilities,
    through a softmax). The average is used when its validation accuracy is strictly above
    every member's, on the same validation images; its test accuracy is then computed, once.
    """
    saved = [(folder.read_predictions(VAL), folder.read_predictions(TEST)) for folder in folders]
    members = [{"run_dir": str(folder.path), "val_acc": _acc(val), "test_acc": (folder.read_summary() or {}).get("test_acc")}
               for folder, (val, _) in zip(folders, saved)]  # fmt: skip
    for folder, (val, test) in zip(folders, saved):
        missing = [name for name, split in ((VAL, val), (TEST, test)) if split is None]
        if missing:
            return EnsembleResult(members, None, None, False, f"not used: {folder.path} saved no {' or '.join(missing)} "
                                  "predictions (a run without a validation split, or with train.tta other than auto)")  # fmt: skip
    vals = [val for val, _ in saved if val is not None]
    tests = [test for _, test in saved if test is not None]
    for folder, val, test in zip(folders[1:], vals[1:], tests[1:]):
        if not (np.array_equal(val[1], vals[0][1]) and np.array_equal(test[1], tests[0][1])):
            return EnsembleResult(members, None, None, False, f"not used: {folder.path} was validated or tested on other "
                                  "images than the first model (a --val-subset is drawn by each seed)")  # fmt: skip
    val_acc = _average_acc(vals)
    best = max(m["val_acc"] for m in members)
    if not val_acc > best:
        return EnsembleResult(members, val_acc, None, False,
                              f"not used: the average validated at {val_acc:.2%}, not above the best model's {best:.2%}")  # fmt: skip
    test_acc = _average_acc(tests)
    return EnsembleResult(members, val_acc, test_acc, True,
                          f"used: the average of {len(folders)} models validated at {val_acc:.2%}, above the best "
                          f"model's {best:.2%}; test accuracy {test_acc:.2%}")  # fmt: skip


def recipe_test_acc(records: Records) -> float | None:
    """The recipe's test accuracy: the ensemble's when it was used, else the final model's."""
    ensemble = records.get(ENSEMBLE)
    if isinstance(ensemble, EnsembleResult) and ensemble.used:
        return ensemble.test_acc
    final = records.get("final")
    return final.test_acc if final is not None else None


def _average_acc(saved: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """The accuracy of the averaged class probabilities of several runs' saved ``(logits, labels)``."""
    probs = np.mean([softmax(logits) for logits, _ in saved], axis=0)
    return float((probs.argmax(1) == saved[0][1]).mean())


def _acc(saved: tuple[np.ndarray, np.ndarray] | None) -> float | None:
    return None if saved is None else float((saved[0].argmax(1) == saved[1]).mean())


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"

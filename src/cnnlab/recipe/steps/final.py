"""The last step: train the chosen configuration on all the training data, test it once."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.checkpoint import load_checkpoint
from cnnlab.config import RunConfig, dump_yaml, load_run_config
from cnnlab.io import atomic_write_text
from cnnlab.recipe.diagnose import Diagnosis, diagnose_run
from cnnlab.recipe.html import esc, h2, img, plural
from cnnlab.recipe.planner import SATURATION_EPOCHS, Plan, most_members, plan_budget, share_members
from cnnlab.recipe.step import OnceStep, RecipeContext, ReportContext
from cnnlab.recipe.steps.chosen import BEST_YAML
from cnnlab.recipe.steps.diagnose import diagnosis_block
from cnnlab.recipe.steps.plan import PLAN
from cnnlab.timing import measure_epoch_seconds
from cnnlab.report.plots import confusion_plot
from cnnlab.runfolder import RunFolder
from cnnlab.train.metrics import classification_metrics
from cnnlab.run import resume_config, run_training
from cnnlab.train.deadline import Deadline, deadline_schedule

log = logging.getLogger(__name__)

FOLDER = "final"
# Seconds the recipe still spends after the final run: its diagnosis, the report and its pictures.
REPORT_SECONDS = 5.0


@dataclass(frozen=True)
class FinalResult:
    """The final model: its test accuracy (evaluated once), its run's summary and diagnosis."""

    test_acc: float | None
    best_val_acc: float | None
    epochs: int
    summary: dict[str, Any]  # the run folder's summary.json
    diagnosis: Diagnosis
    plan: Plan | None = None  # the budget plan that set the epochs (None: no budget, or --final-epochs)


class FinalStep(OnceStep):
    """Train ``best.yaml`` for as many epochs as the budget left allows, into ``final/``."""

    name = "final"
    title = "Final model"

    def run(self, ctx: RecipeContext, key: str) -> FinalResult:
        run = RunFolder(ctx.out / FOLDER)
        if run.exists():  # started before (a checkpoint, or only its config): a new run may not reuse the folder
            epochs = resume_config(run.path).train.epochs
            ctx.say(f"final: resuming {plural(epochs, 'epoch')} on the whole training split -> {run.path}")
            summary = run_training(resume=run.path, verbose=ctx.verbose)
            # the plan made before the search says how many models were to share the time (the final step's own
            # plan was not recorded: the step had not finished): without it a resumed recipe would train only one
            before = ctx.records.get(PLAN)
            plan = None if before is None else dataclasses.replace(
                before, reasons=(*before.reasons, "the final run was resumed: this is the plan made before the search"))
            return _result(run, summary, epochs, plan)
        cfg = load_run_config(ctx.out / BEST_YAML)
        plan = None if ctx.options.final_epochs or ctx.options.budget_seconds is None else _plan(ctx, cfg)
        epochs = ctx.options.final_epochs or (plan.final_epochs if plan else ctx.cfg.train.epochs)
        if plan is not None and epochs == 0:  # not one epoch fits: the least that gives a model, said aloud
            epochs = 1
            log.warning("the final model needs %.0f s for one epoch, more than the budget has left; "
                        "it trains 1 epoch and overruns the budget", plan.final_epoch_seconds)
        # flip TTA on the test only if it raises the final model's validation accuracy (see finish_run)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs, tta="auto"))
        cfg, deadline = _deadline(ctx, cfg, plan)
        # best.yaml reproduces the final run: the epochs it trains (not the base config's) and its TTA choice.
        atomic_write_text(ctx.out / BEST_YAML, dump_yaml(cfg))
        paced = " (re-planned in steps after each warmup epoch, from their pace)" if deadline is not None else ""
        models = f" (the first of {plan.members} models to average)" if plan is not None and plan.members > 1 else ""
        ctx.say(f"final: {plural(epochs, 'epoch')} on the whole training split{paced}{models} -> {run.path}")
        summary = run_training(cfg, run.path, verbose=ctx.verbose, deadline=deadline)
        if deadline is not None:  # the steps the deadline set are in the run's config.yaml: best.yaml gets them too
            atomic_write_text(ctx.out / BEST_YAML, dump_yaml(run.read_config()))
        if plan is not None and isinstance(deadline, SharedDeadline) and deadline.shares and deadline.shares[-1] != plan.members:
            n = deadline.shares[-1]
            why = (f"re-planned from the warmup epochs of the final model: {n} models share the time, not {plan.members} "
                   f"(the plan's pace came from a few timed steps)")  # fmt: skip
            ctx.say(f"plan: {why}")
            plan = dataclasses.replace(plan, members=n, reasons=(*plan.reasons, why))
        return _result(run, summary, epochs, plan)

    def to_dict(self, result: FinalResult) -> dict[str, Any]:
        return {"test_acc": result.test_acc, "best_val_acc": result.best_val_acc, "epochs": result.epochs,
                "summary": result.summary, "diagnosis": result.diagnosis.as_dict(),
                "plan": result.plan.as_dict() if result.plan else None}  # fmt: skip

    def from_dict(self, data: Mapping[str, Any]) -> FinalResult:
        plan = Plan.from_dict(data["plan"]) if data.get("plan") else None  # recipes before the planner have none
        return FinalResult(data.get("test_acc"), data.get("best_val_acc"), int(data["epochs"]),
                           dict(data.get("summary") or {}), Diagnosis.from_dict(data.get("diagnosis") or {}), plan)  # fmt: skip

    def evidence(self, result: FinalResult) -> str:
        return f"test accuracy {result.test_acc or 0:.2%} after {plural(result.epochs, 'epoch')}"

    def report_section(self, results: Sequence[tuple[str, FinalResult]], report: ReportContext) -> str:
        _, final = results[-1]
        run = RunFolder(report.out / FOLDER)
        parts = [h2(self.title),
                 f"<p>Test accuracy <b>{final.test_acc or 0:.2%}</b> (best validation {final.best_val_acc or 0:.2%}) "
                 f"after {plural(final.epochs, 'epoch')}; run folder <code>{esc(run.path)}</code>.</p>"]  # fmt: skip
        tta = final.summary.get("tta")  # {"mode", "used", ...}; a final run from before "auto" holds a bool: no sentence
        if isinstance(tta, Mapping):
            used = "used" if tta.get("used") else "not used"
            if tta.get("val_acc") is not None:
                parts.append(f"<p>Flip TTA {'raised' if tta.get('used') else 'did not raise'} the validation accuracy of the "
                             f"final weights ({tta['val_acc']:.2%} without, {tta['val_acc_tta']:.2%} with), so it was "
                             f"{used} on the test.</p>")  # fmt: skip
            else:
                why = f" ({esc(tta['reason'])})" if tta.get("reason") else ""
                parts.append(f"<p>Flip TTA: {esc(tta.get('mode'))}, {used} on the test{why}.</p>")
        if final.plan is not None:
            parts.append("<p>The budget plan (from the final model's measured speed):</p><ul>"
                         + "".join(f"<li>{esc(r)}</li>" for r in final.plan.reasons) + "</ul>")  # fmt: skip
        if final.diagnosis.epochs:
            parts.append(diagnosis_block("diagnosis", final.diagnosis))
        confusion, missing = _confusion(run, report.figs / "confusion.png")
        parts.append("<div class='grid'>" + img(run.curves_png) + img(confusion) + "</div>")
        if missing:
            parts.append(f"<p class='muted'>{esc(missing)}</p>")
        return "".join(parts)


def _result(run: RunFolder, summary: dict[str, Any], epochs: int, plan: Plan | None) -> FinalResult:
    """The finished final run's result: the epochs it trained (its summary's, else ``epochs``)."""
    epochs = int(summary.get("epochs_run") or epochs)
    return FinalResult(summary["test_acc"], summary["best_val_acc"], epochs, summary, diagnose_run(run.path), plan)


def _plan(ctx: RecipeContext, cfg: RunConfig) -> Plan:
    """The final runs' plan: all the time left, in whole epochs of the final model's measured speed.

    Up to the saturation epochs for one model; beyond them, the time is shared by up to
    ``--ensemble`` models (:func:`~cnnlab.recipe.planner.share_members`): this step trains the
    first, :mod:`cnnlab.recipe.steps.ensemble` the others.

    When the plan step skipped the search, the final model is the configuration it timed
    moments ago: its measurement is used again (a second one costs time and, on a noisy
    machine, can differ by enough to lose an epoch). After a search the chosen
    configuration is timed anew.
    """
    before = ctx.records.get(PLAN)
    if before is not None and before.skip_search:
        epoch_seconds, fixed_seconds = before.final_epoch_seconds, before.fixed_seconds
    else:
        epoch_seconds, fixed_seconds = measure_epoch_seconds(cfg, ctx.splits())  # best.yaml keeps the base data and subset
    plan = plan_budget(ctx.options.budget_seconds or 0.0, ctx.clock.spent(), epoch_seconds, search_done=True,
                       fixed_seconds=fixed_seconds, max_epochs=SATURATION_EPOCHS, max_members=ctx.options.planned_members)  # fmt: skip
    for reason in plan.reasons:
        ctx.say(f"plan: {reason}")
    return plan


def _deadline(ctx: RecipeContext, cfg: RunConfig, plan: Plan | None) -> tuple[RunConfig, Deadline | None]:
    """The final run's deadline, and its config with the warmup that allows one.

    The deadline is the budget's end, or with ``n`` planned members the end of the first
    ``1/n`` of the time left (the others then train as long, one after the other).

    A plan made before training reads the pace from a few timed steps, which on a machine
    whose speed drifts misses by 10-15% either way (docs/benchmarks.md); the final run
    instead re-plans its steps from its own first epoch (:mod:`cnnlab.train.deadline`).
    That is exact only while the first epoch is warmup, so onecycle's rise is made an
    explicit warmup of the same length (:func:`~cnnlab.train.deadline.deadline_schedule`).
    When the rise is shorter than one epoch (fewer than 1/pct_start planned epochs), or
    another schedule has no warmup of an epoch, the run keeps its planned epochs: no deadline.
    """
    if plan is None or ctx.options.budget_seconds is None:
        return cfg, None
    schedule = deadline_schedule(cfg.schedule, cfg.train.epochs)
    if schedule is None:
        return cfg, None
    cfg = dataclasses.replace(cfg, schedule=schedule)
    left = ctx.options.budget_seconds - ctx.clock.spent() - REPORT_SECONDS
    now = time.time()
    deadline = Deadline(now + left / max(plan.members, 1), end_seconds=plan.fixed_seconds, max_epochs=SATURATION_EPOCHS)
    if ctx.options.planned_members > 1:  # how many models share the time is re-decided from this run's own pace
        deadline = SharedDeadline(**dataclasses.asdict(deadline), start=now, window=left,
                                  max_members=most_members(ctx.options.ensemble))  # fmt: skip
    return cfg, deadline


@dataclass(frozen=True)
class SharedDeadline(Deadline):
    """The first final model's deadline when the time left may be shared by several: how many, from its own pace.

    The plan decides the number of models from a few timed steps, which misread the pace of
    the epochs that follow by up to 60% on a shared machine (docs/benchmarks.md: 34.7 s read
    where epochs took 24.5 s, so a 30-minute recipe planned 2 models of 30 epochs where 3 of
    24 fitted, and 5 minutes went unused). The run's warmup epochs are a far better clock:
    after each, the number of models is decided again from their median pace
    (:func:`~cnnlab.recipe.planner.share_members` over the same ``window``), and the run ends
    at ``start + window / n``; the other models then train as long (:mod:`.ensemble`).

    The plan allows at most 3 models (``MAX_MEMBERS``) so that time beyond them is left to a
    search; by now the search is over and its configuration fixed, so up to
    :func:`~cnnlab.recipe.planner.most_members` share the time (``--ensemble N`` when given):
    a pace faster than the plan read gives more models, not an idle end (a 60-minute recipe
    left 7 minutes unused: 3 models of 30 epochs at 21 s where the plan had read 25 s).

    Attributes:
        start: when the run started (``time.time()``).
        window: the seconds from ``start`` that all the final models share.
        max_members: the most models (``--ensemble``, else :func:`~cnnlab.recipe.planner.most_members`).
        shares: the number of models decided after each warmup epoch, the last one holding.
    """

    start: float = 0.0
    window: float = 0.0
    max_members: int = 1
    shares: list[int] = field(default_factory=list, compare=False)

    def total_steps(self, now: float, steps_done: int, steps_per_epoch: int, epoch_seconds: float, val_seconds: float) -> int:
        cap = self.max_epochs if self.max_epochs is not None else SATURATION_EPOCHS
        n, _ = share_members(self.window, epoch_seconds, self.end_seconds, cap, self.max_members)
        self.shares.append(n)
        share = Deadline(self.start + self.window / n, self.end_seconds, self.max_epochs, self.margin)
        return share.total_steps(now, steps_done, steps_per_epoch, epoch_seconds, val_seconds)


def _confusion(run: RunFolder, path: Path) -> tuple[Path | None, str | None]:
    """The confusion matrix of the test predictions the final run saved; else why there is none."""
    saved = run.read_predictions("test")
    if saved is None:
        return None, f"No confusion matrix: {run.predictions_path('test').name} is missing from {run.path}."
    logits, labels = saved
    classes = _class_names(run, logits.shape[1])
    m = classification_metrics(logits, labels, classes)
    return confusion_plot(m.confusion, m.classes, path, title=f"Final model on the test split ({m.accuracy:.2%})"), None


def _class_names(run: RunFolder, count: int) -> list[str]:
    """The class names the final model's checkpoint stores (their indices when it has none)."""
    if run.best_pt.is_file():
        names = load_checkpoint(run.best_pt).get("data", {}).get("classes")
        if names and len(names) == count:
            return [str(n) for n in names]
    return [str(i) for i in range(count)]

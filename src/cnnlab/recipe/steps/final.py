"""The last step: train the chosen configuration on all the training data, test it once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.checkpoint import load_checkpoint
from cnnlab.config import load_run_config
from cnnlab.recipe.diagnose import Diagnosis, diagnose_run
from cnnlab.recipe.html import esc, h2, img, plural
from cnnlab.recipe.step import OnceStep, RecipeContext, ReportContext
from cnnlab.recipe.steps.chosen import BEST_YAML
from cnnlab.recipe.steps.diagnose import diagnosis_block
from cnnlab.recipe.steps.stage import stages
from cnnlab.report.plots import confusion_plot
from cnnlab.runfolder import RunFolder
from cnnlab.train.metrics import classification_metrics
from cnnlab.run import run_training

FOLDER = "final"
# Without a time budget, or without a measured speed, the final training runs this many
# epochs at least and at most (a budget sets it from the trials' speed within these bounds).
MIN_EPOCHS, MAX_EPOCHS, NO_SPEED_EPOCHS = 3, 30, 10
# Evaluating an image is ~3x faster than training on it (no backward pass); epochs cost
# another ~5% in overheads (logging, checkpoints).
EVAL_SPEEDUP, EPOCH_OVERHEAD = 3.0, 1.05


@dataclass(frozen=True)
class FinalResult:
    """The final model: its test accuracy (evaluated once), its run's summary and diagnosis."""

    test_acc: float | None
    best_val_acc: float | None
    epochs: int
    summary: dict[str, Any]  # the run folder's summary.json
    diagnosis: Diagnosis


class FinalStep(OnceStep):
    """Train ``best.yaml`` for as many epochs as the budget left allows, into ``final/``."""

    name = "final"
    title = "Final model"

    def run(self, ctx: RecipeContext, key: str) -> FinalResult:
        cfg = load_run_config(ctx.out / BEST_YAML)
        epochs = ctx.options.final_epochs or _final_epochs(ctx)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
        run = RunFolder(ctx.out / FOLDER)
        ctx.say(f"final: {plural(epochs, 'epoch')} on the whole training split -> {run.path}")
        if run.exists():  # started before (a checkpoint, or only its config): a new run may not reuse the folder
            summary = run_training(resume=run.path, verbose=ctx.verbose)
        else:
            summary = run_training(cfg, run.path, verbose=ctx.verbose)
        return FinalResult(summary["test_acc"], summary["best_val_acc"], epochs, summary, diagnose_run(run.path))

    def to_dict(self, result: FinalResult) -> dict[str, Any]:
        return {"test_acc": result.test_acc, "best_val_acc": result.best_val_acc, "epochs": result.epochs,
                "summary": result.summary, "diagnosis": result.diagnosis.as_dict()}  # fmt: skip

    def from_dict(self, data: Mapping[str, Any]) -> FinalResult:
        return FinalResult(data.get("test_acc"), data.get("best_val_acc"), int(data["epochs"]),
                           dict(data.get("summary") or {}), Diagnosis.from_dict(data.get("diagnosis") or {}))  # fmt: skip

    def evidence(self, result: FinalResult) -> str:
        return f"test accuracy {result.test_acc or 0:.2%} after {plural(result.epochs, 'epoch')}"

    def report_section(self, results: Sequence[tuple[str, FinalResult]], report: ReportContext) -> str:
        _, final = results[-1]
        run = RunFolder(report.out / FOLDER)
        parts = [h2(self.title),
                 f"<p>Test accuracy <b>{final.test_acc or 0:.2%}</b> (best validation {final.best_val_acc or 0:.2%}) "
                 f"after {plural(final.epochs, 'epoch')}; run folder <code>{esc(run.path)}</code>.</p>"]  # fmt: skip
        if final.diagnosis.epochs:
            parts.append(diagnosis_block("diagnosis", final.diagnosis))
        confusion, missing = _confusion(run, report.figs / "confusion.png")
        parts.append("<div class='grid'>" + img(run.curves_png) + img(confusion) + "</div>")
        if missing:
            parts.append(f"<p class='muted'>{esc(missing)}</p>")
        return "".join(parts)


def _final_epochs(ctx: RecipeContext) -> int:
    """As many epochs as the budget left allows, from the trials' measured training speed."""
    if ctx.options.budget_seconds is None:
        return ctx.cfg.train.epochs
    speeds = [v for stage in stages(ctx.records) for t in stage.complete if t.run_dir and (v := _images_per_s(t.run_dir))]
    if not speeds:
        return max(MIN_EPOCHS, min(ctx.cfg.train.epochs, NO_SPEED_EPOCHS))
    speed = sorted(speeds)[len(speeds) // 2]
    splits = ctx.splits()
    seconds = (len(splits.train) / speed + len(splits.val) / (EVAL_SPEEDUP * speed)) * EPOCH_OVERHEAD
    return int(min(max(ctx.clock.left() // seconds, MIN_EPOCHS), MAX_EPOCHS))


def _images_per_s(run_dir: str) -> float | None:
    """A finished trial's training speed, from its run folder's summary."""
    value = (RunFolder(run_dir).read_summary() or {}).get("images_per_s")
    return float(value) if isinstance(value, int | float) and value > 0 else None


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

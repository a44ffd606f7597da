"""The search section of ``report.html``: every stage, how its ranges moved, the diagnoses, the plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.recipe.html import esc, h2, img, num, params
from cnnlab.recipe.records import TrialRecord
from cnnlab.recipe.step import ReportContext
from cnnlab.recipe.steps.diagnose import DIAGNOSE, diagnosis_block
from cnnlab.recipe.steps.stage import COARSE, REFINE, StageResult
from cnnlab.recipe.storage import open_storage, unmask
from cnnlab.report.plots import pyplot, save_figure

log = logging.getLogger(__name__)

# Fewer finished trials than this make importances noise (fANOVA fits a forest to them).
MIN_IMPORTANCE_TRIALS = 5


def search_section(title: str, report: ReportContext) -> str:
    """The whole search story, from the coarse stage through every refine round."""
    records = report.records
    searches: list[tuple[str, StageResult]] = [*records.of(COARSE), *records.of(REFINE)]
    parts = [h2(title)]
    rows = []
    for name, s in searches:
        spans = [(k, knob.to_list()) for k, knob in s.space.knobs().items()]
        ranges = "; ".join(f"{k} [{num(v[0])}, {num(v[1])}]" for k, v in spans if len(v) >= 2)
        counts = ", ".join(f"{v} {k.lower()}" for k, v in s.search.counts().items())
        best = s.best
        rows.append(f"<tr><td>{esc(name)}</td><td>{esc(ranges)}</td><td>{esc(counts)}</td>"
                    f"<td>{s.best_value:.2%}</td><td>{esc(params(best.params if best else {}))}</td></tr>")  # fmt: skip
    parts.append("<table><tr><th>stage</th><th>ranges</th><th>trials</th><th>best val acc</th><th>best values</th></tr>" + "".join(rows) + "</table>")
    for name, _ in searches:
        space_file = report.out / "search" / f"{name}-space.json"
        if space_file.is_file():
            data = json.loads(space_file.read_text())
            moves = data.get("moves") or []
            narrowed = data.get("narrowed") or {}
            lines = "".join(f"<li>{esc(_narrowing(k, v))}</li>" for k, v in narrowed.items() if isinstance(v, dict))
            moved = f"<li>moved by the diagnosis: {esc('; '.join(moves))}</li>" if moves else ""
            parts.append(f"<p><b>{esc(name)}</b> ranges, derived from the best trials of the previous stage:</p><ul>{lines}{moved}</ul>")
    for name, d in records.of(DIAGNOSE):
        parts.append(diagnosis_block(name, d.diagnosis, d.run_dir))
    trials = [(name, t) for name, s in searches for t in s.search.trials]
    plots = [_trials_plot(trials, report.figs / "trials.png"), _params_plot(trials, report.figs / "params.png")]
    importance = _importance_plot(searches, report.figs / "importance.png")
    parts.append("<div class='grid'>" + "".join(img(p) for p in plots if p) + "</div>")
    if importance:
        parts.append(img(importance))
    else:
        parts.append(f"<p class='muted'>No parameter importances: they need at least {MIN_IMPORTANCE_TRIALS} finished "
                     "(not pruned) trials in one stage.</p>")  # fmt: skip
    return "".join(parts)


def _trials_plot(trials: list[tuple[str, TrialRecord]], path: Path) -> Path | None:
    done = [(s, t) for s, t in trials if t.value is not None]
    if not done:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    best, xs, ys = -1.0, [], []
    for i, (stage, t) in enumerate(done):
        pruned = t.state == "PRUNED"
        ax.scatter(i, t.value, s=18, color="C0" if stage == COARSE else "C1", alpha=0.5 if pruned else 1.0,
                   marker="x" if pruned else "o")  # fmt: skip
        best = max(best, t.value)
        xs.append(i)
        ys.append(best)
    ax.step(xs, ys, where="post", color="k", lw=1, label="best so far")
    ax.scatter([], [], color="C0", label="coarse")
    ax.scatter([], [], color="C1", label="refine")
    ax.scatter([], [], color="grey", marker="x", label="pruned (last value)")
    ax.set(xlabel="trial (in order)", ylabel="validation accuracy", title="Trials over time")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _params_plot(trials: list[tuple[str, TrialRecord]], path: Path) -> Path | None:
    done = [(s, t) for s, t in trials if t.value is not None and t.params]
    names = sorted({k for _, t in done for k, v in t.params.items() if isinstance(v, int | float)})
    if not names:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for s, t in done:
            if name in t.params:
                ax.scatter(t.params[name], t.value, s=16, color="C0" if s == COARSE else "C1")
        values = [t.params[name] for _, t in done if name in t.params]
        if name.endswith(("lr", "weight_decay")) and min(values) > 0:
            ax.set_xscale("log")
        ax.set(xlabel=name, ylabel="val acc" if ax is axes[0][0] else None)
    fig.suptitle("Parameter vs validation accuracy (blue coarse, orange refine)", fontsize=10)
    return save_figure(fig, path)


def _importance_plot(searches: list[tuple[str, StageResult]], path: Path) -> Path | None:
    """Optuna's hyperparameter importances over the stage with the most finished trials."""
    name, stage = max(searches, key=lambda item: len(item[1].complete))
    if len(stage.complete) < MIN_IMPORTANCE_TRIALS or not stage.search.storage or not stage.search.study_name:
        return None
    import optuna  # lazy: optuna is an optional dependency, needed only for a recipe's report

    try:
        study = optuna.load_study(study_name=stage.search.study_name, storage=open_storage(unmask(stage.search.storage)))
    except (CnnlabError, KeyError) as exc:  # the storage moved or the study is gone: say why the plot is missing
        log.info("no parameter importances in the report: %s", exc)
        return None
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return None
    try:
        importances = optuna.importance.get_param_importances(study)
    except (ImportError, RuntimeError, ValueError):  # fANOVA needs scikit-learn and varied trials; PED-ANOVA neither
        importances = optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.45 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="C2")
    ax.set(xlabel="importance (share of variance explained)", title=f"Which hyperparameters mattered ({name} search)")
    return save_figure(fig, path)


def _narrowing(name: str, how: dict) -> str:
    """``optim.lr: [0.003, 0.3] -> [0.01, 0.1] around 0.02, 0.05, 0.07 (best at the high edge)``."""
    old, new = how.get("old") or [], how.get("new") or []
    fmt = lambda r: "[" + ", ".join(num(float(x)) if isinstance(x, int | float) else str(x) for x in r[:2]) + "]"  # noqa: E731
    tops = ", ".join(num(float(v)) if isinstance(v, int | float) else str(v) for v in how.get("top_values") or [])
    edge = f" (best at the {how['edge']} edge: the optimum may lie outside)" if how.get("edge") else ""
    return f"{name}: {fmt(old)} -> {fmt(new)}" + (f" around {tops}" if tops else "") + edge

"""``report.html``: one self-contained page with every recipe step's verdict and evidence.

Plots are PNGs embedded as base64 data URIs, styles are inline, and the page's only
script checks itself: it counts images that failed to decode and any script error, and
writes the result into ``#selfcheck`` (a headless browser test reads it back).
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Fewer finished trials than this make importances noise (fANOVA fits a forest to them).
MIN_IMPORTANCE_TRIALS = 5

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1050px;color:#1d1d1f;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #ddd;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f5f5f7}.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}.info{color:#57606a}
img{max-width:100%;border:1px solid #eee;margin:.4rem 0}pre{background:#f6f8fa;padding:.7rem;overflow:auto;font-size:13px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}.muted{color:#57606a;font-size:.9rem}
"""

# Runs after load: every <img> must have decoded, and no script error may have happened.
_SELFCHECK = """
<script>
window.__errors=[];window.addEventListener('error',function(e){if(e instanceof ErrorEvent){window.__errors.push(String(e.message));}},true);
window.addEventListener('load',function(){
  var imgs=document.images,broken=0;
  for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0){broken++;}}
  var el=document.getElementById('selfcheck');
  el.textContent='images='+imgs.length+' broken='+broken+' errors='+window.__errors.length;
  el.setAttribute('data-ok',(broken===0&&window.__errors.length===0)?'yes':'no');
});
</script>
"""


def write_recipe_report(out_dir: str | Path, state: Any) -> Path:
    """Write ``out_dir/report.html`` from a recipe's state (a ``RecipeState``) and its files."""
    out_dir = Path(out_dir)
    figs = out_dir / "report"
    figs.mkdir(parents=True, exist_ok=True)
    steps = state.steps
    parts = [_header(out_dir, state), _steps_table(state)]
    if "check" in steps:
        parts.append(_check_section(steps["check"]))
    if "overfit" in steps:
        parts.append(_overfit_section(steps["overfit"], out_dir))
    if "lr_find" in steps:
        parts.append(_lrfind_section(steps["lr_find"], out_dir))
    searches = [(k, v) for k, v in steps.items() if k == "coarse" or k.startswith("refine-")]
    if searches:
        parts.append(_search_section(searches, steps, out_dir, figs))
    if (out_dir / "best.yaml").is_file():
        parts.append(_h2("Chosen configuration") + f"<p>Train it again with <code>cnnlab train --config {_e(out_dir / 'best.yaml')}</code></p>"
                     f"<pre>{_e((out_dir / 'best.yaml').read_text())}</pre>")  # fmt: skip
    if "final" in steps:
        parts.append(_final_section(steps["final"], out_dir, figs))
    body = "\n".join(parts)
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>cnnlab recipe report</title>"
            f"<style>{_CSS}</style>{_SELFCHECK}</head><body>{body}"
            f"<p class='muted'>self-check: <span id='selfcheck' data-ok='pending'>pending</span></p></body></html>")  # fmt: skip
    path = out_dir / "report.html"
    from cnnlab.io import atomic_write_text

    atomic_write_text(path, page)
    return path


# -- sections ---------------------------------------------------------------------------


def _header(out_dir: Path, state: Any) -> str:
    cfg = state.config
    final = state.steps.get("final") or {}
    test = final.get("test_acc")
    status = "finished" if state.finished else "not finished (continue with <code>cnnlab recipe --resume " + _e(out_dir) + "</code>)"
    budget = state.options.get("budget_seconds")
    rows = [
        ("data", cfg["data"]["source"]), ("model", cfg["model"]["name"]),
        ("budget", f"{budget / 60:.0f} min" if budget else "trial count"),
        ("time spent", f"{state.spent_seconds / 60:.1f} min"), ("status", status),
        ("test accuracy (final model, evaluated once)", f"<b>{test:.2%}</b>" if test is not None else "-"),
    ]  # fmt: skip
    table = "".join(f"<tr><th>{k}</th><td>{v if k in ('status', 'test accuracy (final model, evaluated once)') else _e(v)}</td></tr>" for k, v in rows)
    return f"<h1>cnnlab recipe</h1><p class='muted'>{_e(out_dir)}</p><table>{table}</table>"


def _verdict(passed: bool | None) -> str:
    if passed is None:
        return "<span class='info'>done</span>"
    return "<span class='pass'>pass</span>" if passed else "<span class='fail'>FAIL</span>"


def _steps_table(state: Any) -> str:
    rows = []
    for name in state.order:
        result = state.steps[name]
        passed = result.get("passed") if isinstance(result, dict) else None
        rows.append(f"<tr><td>{_e(name)}</td><td>{_verdict(passed)}</td><td>{_e(_step_evidence(name, result))}</td>"
                    f"<td>{result.get('seconds', 0):.0f} s</td></tr>")  # fmt: skip
    return _h2("Steps") + "<table><tr><th>step</th><th>verdict</th><th>evidence</th><th>time</th></tr>" + "".join(rows) + "</table>"


def _step_evidence(name: str, result: dict[str, Any]) -> str:
    if name == "check":
        failed = [i["name"] for i in result.get("items", []) if not i.get("passed")]
        return "all checks passed" if not failed else "failed: " + ", ".join(failed)
    if name == "overfit":
        return str(result.get("message") or result.get("verdict") or "")
    if name == "lr_find":
        return f"suggested lr {result.get('suggestion', 0):.3g}: {result.get('rule', '')}"
    if name == "coarse" or name.startswith("refine-"):
        best = result.get("best") or {}
        n = len(result.get("trials", []))
        return f"{n} trials, best val acc {best.get('value', 0):.2%} with {_params(best.get('params', {}))}"
    if name.startswith("diagnose"):
        return str(result.get("summary", ""))
    if name == "chosen":
        return f"{_params(result.get('params', {}))} (val acc {result.get('value', 0):.2%})"
    if name == "final":
        return f"test accuracy {result.get('test_acc', 0):.2%} after {result.get('epochs')} epochs"
    return ""


def _check_section(check: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_e(i.get('name'))}</td><td>{_verdict(i.get('passed'))}</td><td>{_e(_num(i.get('measured')))}</td>"
        f"<td>{_e(_num(i.get('expected')))}</td><td>{_e(i.get('message', ''))}</td></tr>"
        for i in check.get("items", [])
    )
    return (_h2("1. Check the setup") + "<table><tr><th>check</th><th>verdict</th><th>measured</th><th>expected</th>"
            "<th>what it means</th></tr>" + rows + "</table>")  # fmt: skip


def _overfit_section(overfit: dict[str, Any], out_dir: Path) -> str:
    text = _e(overfit.get("message") or "")
    return _h2("2. Overfit a tiny sample") + f"<p>{_verdict(overfit.get('passed'))} {text}</p>" + _img(out_dir / "overfit" / "overfit.png")


def _lrfind_section(lr: dict[str, Any], out_dir: Path) -> str:
    return (_h2("3. Learning-rate finder") + f"<p>Suggested learning rate <b>{lr.get('suggestion', 0):.3g}</b>: "
            f"{_e(lr.get('rule', ''))}</p>" + _img(out_dir / "lr_find" / "lr_find.png"))  # fmt: skip


def _search_section(searches: Sequence[tuple[str, dict[str, Any]]], steps: dict[str, Any], out_dir: Path, figs: Path) -> str:
    parts = [_h2("4-7. Search, diagnose, refine")]
    rows = []
    for name, s in searches:
        best = s.get("best") or {}
        space = s.get("space") or {}
        ranges = "; ".join(f"{k} [{_num(v[0])}, {_num(v[1])}]" for k, v in space.items() if k != "_kinds" and isinstance(v, list | tuple) and len(v) >= 2)
        states: dict[str, int] = {}
        for t in s.get("trials", []):
            states[t.get("state", "?")] = states.get(t.get("state", "?"), 0) + 1
        rows.append(f"<tr><td>{_e(name)}</td><td>{_e(ranges)}</td><td>{_e(', '.join(f'{v} {k.lower()}' for k, v in states.items()))}</td>"
                    f"<td>{best.get('value', 0):.2%}</td><td>{_e(_params(best.get('params', {})))}</td></tr>")  # fmt: skip
    parts.append("<table><tr><th>stage</th><th>ranges</th><th>trials</th><th>best val acc</th><th>best values</th></tr>" + "".join(rows) + "</table>")
    for name, _ in searches:
        space_file = out_dir / "search" / f"{name}-space.json"
        if space_file.is_file():
            data = json.loads(space_file.read_text())
            moves = data.get("moves") or []
            narrowed = data.get("narrowed") or {}
            lines = "".join(f"<li>{_e(_narrowing(k, v))}</li>" for k, v in narrowed.items() if isinstance(v, dict))
            moved = f"<li>moved by the diagnosis: {_e('; '.join(moves))}</li>" if moves else ""
            parts.append(f"<p><b>{_e(name)}</b> ranges, derived from the best trials of the previous stage:</p><ul>{lines}{moved}</ul>")
    for name, d in steps.items():
        if name.startswith("diagnose") and d.get("findings") is not None:
            parts.append(_diagnosis_block(name, d))
    trials = [(name, t) for name, s in searches for t in s.get("trials", [])]
    plots = [_trials_plot(trials, figs / "trials.png"), _params_plot(trials, figs / "params.png")]
    importance = _importance_plot(searches, out_dir, figs / "importance.png")
    parts.append("<div class='grid'>" + "".join(_img(p) for p in plots if p) + "</div>")
    if importance:
        parts.append(_img(importance))
    else:
        parts.append(f"<p class='muted'>No parameter importances: they need at least {MIN_IMPORTANCE_TRIALS} finished "
                     "(not pruned) trials in one stage.</p>")  # fmt: skip
    return "".join(parts)


def _diagnosis_block(name: str, d: dict[str, Any]) -> str:
    items = "".join(f"<li><b>{_e(f.get('kind'))}</b>: {_e(f.get('evidence'))} <i>{_e(f.get('advice'))}</i></li>" for f in d.get("findings", []))
    where = f" ({_e(Path(d['run_dir']).name)})" if d.get("run_dir") else ""
    return f"<p><b>{_e(name)}</b>{where}: {_e(d.get('summary', ''))}</p>" + (f"<ul>{items}</ul>" if items else "")


def _final_section(final: dict[str, Any], out_dir: Path, figs: Path) -> str:
    run = out_dir / "final"
    parts = [_h2("Final model"),
             f"<p>Test accuracy <b>{final.get('test_acc', 0):.2%}</b> (best validation {final.get('best_val_acc') or 0:.2%}) "
             f"after {final.get('epochs')} epochs; run folder <code>{_e(run)}</code>.</p>"]  # fmt: skip
    if final.get("diagnosis"):
        parts.append(_diagnosis_block("diagnosis", final["diagnosis"]))
    confusion = _confusion(run, figs / "confusion.png")
    parts.append("<div class='grid'>" + _img(run / "curves.png") + (_img(confusion) if confusion else "") + "</div>")
    return "".join(parts)


# -- plots ------------------------------------------------------------------------------


def _trials_plot(trials: list[tuple[str, dict[str, Any]]], path: Path) -> Path | None:
    from cnnlab.report.plots import pyplot, save_figure

    done = [(s, t) for s, t in trials if t.get("value") is not None]
    if not done:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    best, xs, ys = -1.0, [], []
    for i, (stage, t) in enumerate(done):
        ax.scatter(i, t["value"], s=18, color="C0" if stage == "coarse" else "C1", alpha=0.5 if t.get("state") == "PRUNED" else 1.0,
                   marker="x" if t.get("state") == "PRUNED" else "o")  # fmt: skip
        best = max(best, t["value"])
        xs.append(i)
        ys.append(best)
    ax.step(xs, ys, where="post", color="k", lw=1, label="best so far")
    ax.scatter([], [], color="C0", label="coarse")
    ax.scatter([], [], color="C1", label="refine")
    ax.scatter([], [], color="grey", marker="x", label="pruned (last value)")
    ax.set(xlabel="trial (in order)", ylabel="validation accuracy", title="Trials over time")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _params_plot(trials: list[tuple[str, dict[str, Any]]], path: Path) -> Path | None:
    from cnnlab.report.plots import pyplot, save_figure

    done = [(s, t) for s, t in trials if t.get("value") is not None and t.get("params")]
    names = sorted({k for _, t in done for k, v in t["params"].items() if isinstance(v, int | float)})
    if not names:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for s, t in done:
            if name in t["params"]:
                ax.scatter(t["params"][name], t["value"], s=16, color="C0" if s == "coarse" else "C1")
        values = [t["params"][name] for _, t in done if name in t["params"]]
        if name.endswith(("lr", "weight_decay")) and min(values) > 0:
            ax.set_xscale("log")
        ax.set(xlabel=name, ylabel="val acc" if ax is axes[0][0] else None)
    fig.suptitle("Parameter vs validation accuracy (blue coarse, orange refine)", fontsize=10)
    return save_figure(fig, path)


def _importance_plot(searches: Sequence[tuple[str, dict[str, Any]]], out_dir: Path, path: Path) -> Path | None:
    """Optuna's hyperparameter importances over the stage with the most finished trials."""
    done = lambda s: sum(t.get("state") == "COMPLETE" for t in s.get("trials", []))  # noqa: E731
    name, coarse = max(searches, key=lambda item: done(item[1]))
    if done(coarse) < MIN_IMPORTANCE_TRIALS or not coarse.get("storage") or not coarse.get("study_name"):
        return None
    try:
        import optuna

        from cnnlab.report.plots import pyplot, save_figure

        study = optuna.load_study(study_name=coarse["study_name"], storage=_storage(coarse["storage"]))
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(complete) < MIN_IMPORTANCE_TRIALS:
            return None
        try:
            importances = optuna.importance.get_param_importances(study)
        except (ImportError, RuntimeError, ValueError):
            importances = optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except Exception as exc:  # noqa: BLE001 - importances are a nice-to-have; say why they are missing
        log.info("no parameter importances in the report: %s", exc)
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.45 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="C2")
    ax.set(xlabel="importance (share of variance explained)", title=f"Which hyperparameters mattered ({name} search)")
    return save_figure(fig, path)


def _storage(url: str):  # noqa: ANN202 - an Optuna storage object or URL
    from cnnlab.recipe.storage import open_storage

    return open_storage(url)


def _confusion(run: Path, path: Path) -> Path | None:
    if not (run / "best.pt").is_file():
        return None
    try:
        from cnnlab.infer.evaluate import evaluate_checkpoint
        from cnnlab.report.plots import confusion_plot

        report = evaluate_checkpoint(run, device="cpu")
        m = report.metrics
        return confusion_plot(m.confusion, m.classes, path, title=f"Final model on the test split ({m.accuracy:.2%})")
    except Exception as exc:  # noqa: BLE001
        log.info("no confusion matrix in the report: %s", exc)
        return None


# -- html helpers -----------------------------------------------------------------------


def _img(path: Path | None) -> str:
    if path is None or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img alt='{_e(Path(path).stem)}' src='data:image/png;base64,{data}'>"


def _h2(text: str) -> str:
    return f"<h2>{_e(text)}</h2>"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_num(v)}" for k, v in params.items())


def _narrowing(name: str, how: dict[str, Any]) -> str:
    """``optim.lr: [0.003, 0.3] -> [0.01, 0.1] around 0.02, 0.05, 0.07 (best at the high edge)``."""
    old, new = how.get("old") or [], how.get("new") or []
    fmt = lambda r: "[" + ", ".join(_num(float(x)) if isinstance(x, int | float) else str(x) for x in r[:2]) + "]"  # noqa: E731
    tops = ", ".join(_num(float(v)) if isinstance(v, int | float) else str(v) for v in how.get("top_values") or [])
    edge = f" (best at the {how['edge']} edge: the optimum may lie outside)" if how.get("edge") else ""
    return f"{name}: {fmt(old)} -> {fmt(new)}" + (f" around {tops}" if tops else "") + edge

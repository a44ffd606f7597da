"""``report.html``: one self-contained page with every recipe step's verdict and evidence.

Plots are PNGs embedded as base64 data URIs, styles are inline, and the page's only
script checks itself: it counts images that failed to decode and any script error, and
writes the result into ``#selfcheck`` (a headless browser test reads it back). That line is
a test hook, not something for the reader: it is in the page but ``hidden``.
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.io import atomic_write_text
from cnnlab.recipe.html import esc, h2, verdict
from cnnlab.recipe.state import RecipeState
from cnnlab.recipe.step import Records, ReportContext
from cnnlab.recipe.steps import RECIPE_STEPS
from cnnlab.recipe.steps.ensemble import ENSEMBLE, recipe_test_acc

# An overrun below 2% of the budget is timing noise, not worth a comment.
BUDGET_SLACK = 0.02

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


def write_recipe_report(out_dir: str | Path, state: RecipeState) -> Path:
    """Write ``out_dir/report.html`` from a recipe's state and its files; each step renders its own section."""
    out_dir = Path(out_dir)
    figs = out_dir / "report"
    figs.mkdir(parents=True, exist_ok=True)
    report = ReportContext(out_dir, figs, state, Records(state, RECIPE_STEPS))
    parts = [_header(report), _steps_table(report)]
    for step in RECIPE_STEPS:
        results = report.records.of(step.name)
        if results:
            parts.append(step.report_section(results, report))
    body = "\n".join(p for p in parts if p)
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>cnnlab recipe report</title>"
            f"<style>{_CSS}</style>{_SELFCHECK}</head><body>{body}"
            f"<p hidden>self-check: <span id='selfcheck' data-ok='pending'>pending</span></p></body></html>")  # fmt: skip
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path


def _header(report: ReportContext) -> str:
    state, out_dir = report.state, report.out
    cfg = state.config
    test = recipe_test_acc(report.records)
    ensemble = report.records.get(ENSEMBLE)
    what = f"the average of {len(ensemble.members)} final models" if ensemble is not None and ensemble.used else "final model"
    status = "finished" if state.finished else "not finished (continue with <code>cnnlab recipe --resume " + esc(out_dir) + "</code>)"
    budget = state.options.get("budget_seconds")
    rows = [
        ("data", esc(cfg.get("data", {}).get("source", "-"))), ("model", esc(cfg.get("model", {}).get("name", "-"))),
        ("budget", esc(f"{budget / 60:.0f} min" if budget else "trial count")),
        ("time spent", esc(time_spent(state.spent_seconds, budget))), ("status", status),
        (f"test accuracy ({what}, evaluated once)", f"<b>{test:.2%}</b>" if test is not None else "-"),
    ]  # fmt: skip
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<h1>cnnlab recipe</h1><p class='muted'>{esc(out_dir)}</p><table>{table}</table>"


def time_spent(spent_seconds: float, budget_seconds: float | None) -> str:
    """``"12.0 min"``, and by how much a budget was overrun ("over the budget by 2.0 min, +20%")."""
    text = f"{spent_seconds / 60:.1f} min"
    if budget_seconds and spent_seconds > budget_seconds * (1 + BUDGET_SLACK):
        over = spent_seconds - budget_seconds
        text += (f": over the {budget_seconds / 60:.0f} min budget by {over / 60:.1f} min (+{over / budget_seconds:.0%}); "
                 "the steps' times below show where it went")  # fmt: skip
    elif budget_seconds:
        text += f" of {budget_seconds / 60:.0f} min"
    return text


def _steps_table(report: ReportContext) -> str:
    rows = []
    for key in report.state.order:
        step, result = RECIPE_STEPS.for_key(key), report.records.get(key)
        rows.append(f"<tr><td>{esc(key)}</td><td>{verdict(step.verdict(result))}</td><td>{esc(step.evidence(result))}</td>"
                    f"<td>{report.records.seconds(key):.0f} s</td></tr>")  # fmt: skip
    return h2("Steps") + "<table><tr><th>step</th><th>verdict</th><th>evidence</th><th>time</th></tr>" + "".join(rows) + "</table>"

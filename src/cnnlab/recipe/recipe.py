"""``cnnlab recipe``: the lecture's seven steps, run end to end within a budget.

1. check the loss at initialisation (and gradients, weight decay, batch independence);
2. overfit a tiny sample (and compare with zeroed inputs);
3. find the learning rate (LR range test);
4. coarse search: short trials over wide ranges centred on step 3's learning rate;
5. refined search: narrowed ranges around the best coarse trials, longer trials;
6. diagnose the best trial's curves;
7. loop 5-6, moving the ranges as the diagnosis says, until the budget is spent or the
   validation accuracy stops improving; then train the final model with the best
   configuration and evaluate it on the test split, once.

Every step's result is saved in ``recipe.json`` as soon as the step ends, so
``--resume`` continues from the last finished step (a search continues its study).
Everything lands in one folder::

    RECIPE/recipe.json      the steps done, their results, the time spent
    RECIPE/check.json, overfit/, lr_find/, search/ (Optuna storage + one run folder per trial)
    RECIPE/best.yaml        the chosen configuration (feed it to `cnnlab train --config`)
    RECIPE/final/           the final model's run folder (best.pt, curves, summary.json)
    RECIPE/report.html      one self-contained page with every step's evidence

Each step is a module of :mod:`cnnlab.recipe.steps` (registered in the order it runs);
this module only runs them in turn and stops when a gate (check, overfit) fails.

Before any step runs, the recipe checks what it can: the folder (new or empty, or a recipe
to resume), its lock (one process per recipe folder), and the study storage (a bad
``--storage`` fails now, not after the first three steps).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.config import RunConfig, from_dict, to_dict
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.io import LOCK_NAME, folder_lock
from cnnlab.recipe import storage as st
from cnnlab.recipe.report import write_recipe_report
from cnnlab.recipe.search import trial_logs_hushed
from cnnlab.recipe.state import STATE_FILE, RecipeOptions, RecipeState, RecipeStopped
from cnnlab.recipe.step import RecipeContext, StepRegistry
from cnnlab.recipe.steps import RECIPE_STEPS
from cnnlab.recipe.steps.ensemble import recipe_test_acc

__all__ = ["RecipeOptions", "RecipeResult", "RecipeState", "RecipeStopped", "rewrite_report", "run_recipe"]

log = logging.getLogger(__name__)


@dataclass
class RecipeResult:
    """The outcome: where everything is and the final test accuracy."""

    out_dir: Path
    best_config: Path | None
    final_run: Path | None
    test_acc: float | None
    report: Path | None
    stopped: str | None  # why the recipe stopped early (a failed step), else None
    state: RecipeState

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "out_dir": str(self.out_dir), "best_config": str(self.best_config) if self.best_config else None,
            "final_run": str(self.final_run) if self.final_run else None, "test_acc": self.test_acc,
            "report": str(self.report) if self.report else None, "stopped": self.stopped,
            "spent_seconds": self.state.spent_seconds,
        }  # fmt: skip


def rewrite_report(out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` again from the recipe's state and files; runs nothing.

    Raises:
        CnnlabError: no readable recipe in ``out_dir``, or a recipe running there now.
    """
    out_dir = Path(out_dir)
    state = load_state(out_dir)
    with folder_lock(out_dir, "recipe"):  # a running recipe rewrites its report itself
        try:
            return write_recipe_report(out_dir, state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # records that read but do not render
            raise CnnlabError(f"{out_dir / STATE_FILE} holds records the report cannot show ({type(exc).__name__}: "
                              f"{exc}); it was edited or written by another cnnlab version") from None  # fmt: skip


def load_state(out_dir: Path) -> RecipeState:
    """``recipe.json`` of ``out_dir``, with every recorded step's result checked to read back.

    Raises:
        CnnlabError: no recipe there, or a recipe.json that is damaged, hand-edited or of
            another version (naming the step whose record does not read).
    """
    state = RecipeState.load(out_dir)
    from_dict(RunConfig, state.config)  # a config that no longer validates is named by the config layer
    for key in state.order:
        try:
            RECIPE_STEPS.for_key(key).from_dict(state.steps[key])
        except CnnlabError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CnnlabError(f"{out_dir / STATE_FILE}: the record of step '{key}' does not read ({type(exc).__name__}: "
                              f"{exc}); it was edited or written by another cnnlab version") from None  # fmt: skip
    return state


def _storage_first(storage: str | None) -> None:
    """Open the study storage now: a wrong URL or a server that is down fails before any step runs.

    A journal file is only read (checked for damage), never created here: the folder
    checks that follow must not find a file the check itself made.
    """
    if storage is None:
        return
    if not st.is_journal(storage):
        st.open_storage(storage, heartbeat=None)
        return
    path = Path(storage.removeprefix(st.JOURNAL_PREFIX))
    if path.exists() and not path.is_file():
        raise UsageError(f"the study journal {path} is not a file; give --storage a journal file path")
    st.check_journal(path)


def _resume_options(state: RecipeState, storage: str | None, out_dir: Path) -> RecipeOptions:
    """The options recipe.json holds, with the storage URL (whose password it never held) given again.

    Raises:
        UsageError: the recipe's storage has a password and none was given, or the URL
            given names another storage.
    """
    options = from_dict(RecipeOptions, state.options, where="recipe")
    saved = options.storage
    env = os.environ.get("CNNLAB_STORAGE")
    if storage is None and saved is not None and st.is_masked(saved) and env:
        storage = env  # checked below to name the same storage
    if storage is None or saved is None:
        if saved is not None and st.is_masked(saved):
            raise UsageError(f"the recipe in {out_dir} keeps its study in {saved}, whose password is not stored; "
                             "give the URL again: --storage URL (or the environment variable CNNLAB_STORAGE)")  # fmt: skip
        if storage is not None and saved is None:
            raise UsageError(f"the recipe in {out_dir} keeps its studies in its own folder; resume it without --storage")
        return options
    if not st.same_storage(storage, saved):
        raise UsageError(f"the recipe in {out_dir} keeps its study in {saved}, not in {st.redact(storage)}; "
                         "give the storage it started with")  # fmt: skip
    return dataclasses.replace(options, storage=storage)


def _check_new_folder(out_dir: Path) -> None:
    """A new recipe goes into a new or empty folder: it writes best.yaml, report.html, final/..."""
    if (out_dir / STATE_FILE).exists():
        raise UsageError(f"{out_dir} already holds a recipe; continue it with `cnnlab recipe --resume {out_dir}` or choose another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"the recipe folder {out_dir} is a file; choose another --out")
    if out_dir.is_dir():
        others = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_NAME)
        if others:
            shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
            raise UsageError(f"{out_dir} is not empty ({shown}) and holds no recipe; a recipe writes its own files "
                             "there (best.yaml, report.html, final/...): choose a new or empty --out")  # fmt: skip


def run_recipe(
    cfg: RunConfig | None, out_dir: str | Path, options: RecipeOptions | None = None, *, resume: bool = False,
    verbose: bool = True, storage: str | None = None, started: float | None = None,
) -> RecipeResult:  # fmt: skip
    """Run (or continue, with ``resume``) the seven steps; see the module docstring.

    Args:
        cfg: the run configuration the recipe starts from (None when resuming).
        out_dir: the recipe folder.
        options: the budget and search settings (default :class:`RecipeOptions`).
        resume: continue the recipe in ``out_dir`` from its last finished step.
        verbose: print the final training's epoch lines.
        storage: with ``resume``, the study storage URL again (recipe.json keeps it with
            its password masked); it must name the storage the recipe started with.
        started: when this session's time began on the ``time.monotonic()`` clock (default:
            now); the command line passes the process's start, so start-up counts too.

    Raises:
        CnnlabError: ``out_dir`` already holds a recipe or other files (without ``resume``),
            holds none or a finished one (with ``resume``), another process runs it, the
            storage cannot be opened, or a step failed in a way a user can fix.
        KeyboardInterrupt: Ctrl-C; every finished step is saved, ``--resume`` continues.
    """
    out_dir = Path(out_dir)
    if resume:
        state = load_state(out_dir)
        cfg = from_dict(RunConfig, state.config)
        options = _resume_options(state, storage, out_dir)
        if state.finished:
            raise CnnlabError(f"the recipe in {out_dir} already finished; its report is {out_dir / 'report.html'} "
                              f"(rewrite it with `cnnlab recipe --report {out_dir}`)")
    else:
        if cfg is None:
            raise ValueError("run_recipe needs a config unless it resumes")
        options = options or RecipeOptions()
        _check_new_folder(out_dir)
    _storage_first(options.storage)
    with folder_lock(out_dir, "recipe"):
        if resume:
            state = load_state(out_dir)  # again, under the lock: the process that held it may have changed it
            log.info("resuming the recipe in %s after %s (%.0f s spent)", out_dir, ", ".join(state.order) or "no step", state.spent_seconds)
        else:
            _check_new_folder(out_dir)  # again, under the lock: another recipe may have started here meanwhile
            state = RecipeState(config=to_dict(cfg), options=dataclasses.asdict(options.masked()))
            state.save(out_dir)
        return _run_locked(cfg, out_dir, options, state, verbose=verbose, started=started)


def _run_locked(cfg: RunConfig, out_dir: Path, options: RecipeOptions, state: RecipeState, *, verbose: bool,
                started: float | None) -> RecipeResult:  # fmt: skip
    ctx = RecipeContext(cfg, options, out_dir, state, RECIPE_STEPS, verbose=verbose, started=started)
    stopped = None
    try:
        with trial_logs_hushed():  # an interrupted step must not suggest `cnnlab train --resume <its run>`
            run_steps(ctx, RECIPE_STEPS)
    except RecipeStopped as exc:
        stopped = str(exc)
        log.error("%s", exc)
    finally:
        ctx.clock.sync()
        state.save(out_dir)
    report = _write_report(out_dir, state)
    final = ctx.records.get("final")
    return RecipeResult(
        out_dir=out_dir, best_config=out_dir / "best.yaml" if (out_dir / "best.yaml").is_file() else None,
        final_run=out_dir / "final" if final else None, test_acc=recipe_test_acc(ctx.records),
        report=report, stopped=stopped, state=state,
    )  # fmt: skip


def run_steps(ctx: RecipeContext, steps: StepRegistry) -> None:
    """Run every registered step in order, skipping what ``recipe.json`` has; stop at a failed gate.

    Raises:
        RecipeStopped: a step failed (with ``stop_on_failure``) or could not go on.
    """
    for step in steps:
        for key in step.keys(ctx):
            result = ctx.run(step, key)
            passed = step.verdict(result)
            if passed is None:
                continue
            ctx.say(f"{key}: {'pass' if passed else 'FAIL'}")
            if not passed and ctx.options.stop_on_failure:
                raise RecipeStopped(f"{step.failure}; fix it first (details in {ctx.out / 'report.html'}), "
                                    f"or run with --keep-going to search anyway")  # fmt: skip
    ctx.state.finished = True


def _write_report(out_dir: Path, state: RecipeState) -> Path | None:
    try:
        return write_recipe_report(out_dir, state)
    except (CnnlabError, OSError) as exc:  # a report problem (a file gone, a full disk) must not hide the recipe's result
        log.warning("could not write the report: %s", exc)
        return None

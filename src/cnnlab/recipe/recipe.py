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
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.config import RunConfig, dump_yaml, from_dict, to_dict
from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

STATE_FILE = "recipe.json"

# Share of the budget kept for the final training (the rest goes to steps 1-6): the final
# model trains on all the data for several epochs, a search trial on a subset for a few.
FINAL_SHARE = 0.5
# Share of the search time spent on the coarse stage; refine rounds split the rest.
COARSE_SHARE = 0.45
# The coarse LR range reaches this multiple of the LR finder's loss minimum.
LR_ABOVE_MIN = 10.0
# A refine round gets at least this many trials' time, else the rounds left merge into one.
MIN_ROUND_TRIALS = 3
# A refine round must raise the best validation accuracy by this much to earn another round.
MIN_IMPROVEMENT = 0.002


@dataclass(frozen=True)
class RecipeOptions:
    """How the recipe spends its budget.

    Attributes:
        budget_seconds: wall time for the whole recipe (None: no time limit, use trials).
        coarse_trials, refine_trials: trial caps per stage (None: as many as the time allows).
        coarse_epochs, refine_epochs: epochs per trial in each stage.
        search_subset: training images per search trial (a stratified subset; None: all).
        final_epochs: epochs of the final training (None: what the budget allows, 3-30).
        max_rounds: refine/diagnose rounds at most.
        sampler, pruner, workers, storage: passed to the searches (see ``cnnlab search``).
        stop_on_failure: stop after a failed check or overfit (the usual meaning: a bug).
        seed: seeds the samplers.
    """

    budget_seconds: float | None = 1800.0
    coarse_trials: int | None = None
    refine_trials: int | None = None
    coarse_epochs: int = 2
    refine_epochs: int = 4
    search_subset: int | None = 10000
    final_epochs: int | None = None
    max_rounds: int = 3
    sampler: str = "tpe"
    pruner: str = "asha"
    workers: int = 1
    storage: str | None = None
    stop_on_failure: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.budget_seconds is None and self.coarse_trials is None:
            raise CnnlabError("the recipe needs a budget: give --budget (e.g. 30m) or --trials N")
        if self.budget_seconds is not None and self.budget_seconds < 60:
            raise CnnlabError(f"a recipe budget of {self.budget_seconds:.0f} s is too short; give at least --budget 1m")


class RecipeStopped(CnnlabError):
    """A step failed in a way that makes the rest pointless (a check or overfit failure)."""


@dataclass
class RecipeState:
    """What ``recipe.json`` holds: the inputs, and each finished step's result."""

    config: dict[str, Any]
    options: dict[str, Any]
    steps: dict[str, Any] = dataclasses.field(default_factory=dict)
    order: list[str] = dataclasses.field(default_factory=list)
    spent_seconds: float = 0.0
    finished: bool = False

    def save(self, out_dir: Path) -> None:
        atomic_write_json(out_dir / STATE_FILE, dataclasses.asdict(self))

    @classmethod
    def load(cls, out_dir: Path) -> RecipeState:
        import json

        path = out_dir / STATE_FILE
        if not path.is_file():
            raise CnnlabError(f"{out_dir} holds no recipe ({STATE_FILE} is missing); start one with `cnnlab recipe --out {out_dir}`")
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise CnnlabError(f"{path} is not a readable recipe state ({exc}); start a new recipe with another --out") from None


class _Clock:
    """The budget: wall time spent in this process plus what earlier sessions spent."""

    def __init__(self, state: RecipeState, budget: float | None) -> None:
        self.state, self.budget = state, budget
        self._start, self._base = time.monotonic(), state.spent_seconds

    def spent(self) -> float:
        return self._base + time.monotonic() - self._start

    def left(self) -> float:
        return math.inf if self.budget is None else max(self.budget - self.spent(), 0.0)

    def sync(self) -> None:
        self.state.spent_seconds = self.spent()


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
        return {
            "out_dir": str(self.out_dir), "best_config": str(self.best_config) if self.best_config else None,
            "final_run": str(self.final_run) if self.final_run else None, "test_acc": self.test_acc,
            "report": str(self.report) if self.report else None, "stopped": self.stopped,
            "spent_seconds": self.state.spent_seconds,
        }  # fmt: skip


def rewrite_report(out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` again from the recipe's state and files; runs nothing."""
    from cnnlab.recipe.report import write_recipe_report

    out_dir = Path(out_dir)
    return write_recipe_report(out_dir, RecipeState.load(out_dir))


def run_recipe(
    cfg: RunConfig | None, out_dir: str | Path, options: RecipeOptions | None = None, *, resume: bool = False,
    verbose: bool = True,
) -> RecipeResult:  # fmt: skip
    """Run (or continue, with ``resume``) the seven steps; see the module docstring."""
    out_dir = Path(out_dir)
    if resume:
        state = RecipeState.load(out_dir)
        cfg = from_dict(RunConfig, state.config)
        options = from_dict(RecipeOptions, state.options, where="recipe")
        if state.finished:
            raise CnnlabError(f"the recipe in {out_dir} already finished; its report is {out_dir / 'report.html'} "
                              f"(rewrite it with `cnnlab recipe --report {out_dir}`)")
        log.info("resuming the recipe in %s after %s (%.0f s spent)", out_dir, ", ".join(state.order) or "no step", state.spent_seconds)
    else:
        if cfg is None:
            raise ValueError("run_recipe needs a config unless it resumes")
        options = options or RecipeOptions()
        if (out_dir / STATE_FILE).exists():
            raise CnnlabError(f"{out_dir} already holds a recipe; continue it with `cnnlab recipe --resume {out_dir}` or choose another --out")
        out_dir.mkdir(parents=True, exist_ok=True)
        state = RecipeState(config=to_dict(cfg), options=dataclasses.asdict(options))
        state.save(out_dir)
    runner = _Runner(cfg, options, out_dir, state, verbose)
    stopped = None
    try:
        runner.run()
    except RecipeStopped as exc:
        stopped = str(exc)
        log.error("%s", exc)
    finally:
        runner.clock.sync()
        state.save(out_dir)
    report = runner.write_report()
    final = state.steps.get("final")
    return RecipeResult(
        out_dir=out_dir, best_config=out_dir / "best.yaml" if (out_dir / "best.yaml").is_file() else None,
        final_run=out_dir / "final" if final else None, test_acc=final.get("test_acc") if final else None,
        report=report, stopped=stopped, state=state,
    )  # fmt: skip


class _Runner:
    """Runs the steps in order, skipping the ones ``recipe.json`` says are done."""

    def __init__(self, cfg: RunConfig, options: RecipeOptions, out_dir: Path, state: RecipeState, verbose: bool) -> None:
        self.cfg, self.opt, self.out, self.state, self.verbose = cfg, options, out_dir, state, verbose
        self.clock = _Clock(state, options.budget_seconds)
        self._splits = None

    # -- bookkeeping -------------------------------------------------------------------
    def _step(self, name: str, fn, *args: Any) -> Any:  # noqa: ANN001
        """Run ``fn`` unless ``name`` is done; record its result (a JSON-able dict) and the time."""
        if name in self.state.steps:
            return self.state.steps[name]
        self._say(f"step {name}")
        start = time.monotonic()
        result = fn(*args)
        result = {**result, "seconds": time.monotonic() - start}
        self.state.steps[name] = result
        self.state.order.append(name)
        self.clock.sync()
        self.state.save(self.out)
        return result

    def _say(self, text: str) -> None:
        """A progress line (always shown: ``verbose`` is about the final training's epoch lines)."""
        print(f"recipe [{self.clock.spent() / 60:5.1f} min] {text}", flush=True)

    def splits(self):  # noqa: ANN201 - Splits, loaded once for steps 1-3
        if self._splits is None:
            from cnnlab.train.run import load_data

            self._splits = load_data(self.cfg)
        return self._splits

    # -- the steps ---------------------------------------------------------------------
    def run(self) -> None:
        check = self._step("check", self._check)
        self._gate("check", check, "the setup check failed")
        overfit = self._step("overfit", self._overfit)
        self._gate("overfit", overfit, "the model could not overfit a tiny sample")
        lr = self._step("lr_find", self._lr_find)
        self._search_loop(lr["suggestion"])
        self._step("final", self._final)
        self.state.finished = True

    def _gate(self, name: str, result: dict[str, Any], what: str) -> None:
        self._say(f"{name}: {'pass' if result['passed'] else 'FAIL'}")
        if not result["passed"] and self.opt.stop_on_failure:
            raise RecipeStopped(f"{what}; fix it first (details in {self.out / 'report.html'}), "
                                f"or run with --keep-going to search anyway")  # fmt: skip

    def _check(self) -> dict[str, Any]:
        from cnnlab.recipe.checks import check_setup

        report = check_setup(self.cfg, splits=self.splits())
        atomic_write_json(self.out / "check.json", report.as_dict())
        return report.as_dict()

    def _overfit(self) -> dict[str, Any]:
        from cnnlab.recipe.overfit import overfit_small

        return overfit_small(self.cfg, splits=self.splits(), out_dir=self.out / "overfit").as_dict()

    def _lr_find(self) -> dict[str, Any]:
        from cnnlab.recipe.lrfind import lr_find

        result = lr_find(self.cfg, splits=self.splits(), out_dir=self.out / "lr_find")
        self._say(f"lr-find: suggested lr {result.suggestion:.3g} ({result.rule})")
        return result.as_dict()

    def _search_cfg(self) -> RunConfig:
        """The configuration search trials start from: a training subset, no early checkpoints."""
        train = dataclasses.replace(self.cfg.train, train_subset=self.opt.search_subset or self.cfg.train.train_subset,
                                    checkpoint_minutes=0.0)  # fmt: skip
        if self.opt.search_subset and self.cfg.train.train_subset and self.cfg.train.train_subset < self.opt.search_subset:
            train = dataclasses.replace(train, train_subset=self.cfg.train.train_subset)
        return dataclasses.replace(self.cfg, train=train)

    def _search_seconds(self) -> float:
        """Time the whole search may use: the budget left minus the final training's share."""
        if self.opt.budget_seconds is None:
            return math.inf
        return max(self.clock.left() - FINAL_SHARE * self.opt.budget_seconds, 0.0)

    def _search_loop(self, lr_center: float) -> None:
        from cnnlab.recipe.search import coarse_space

        space = coarse_space(lr_center, has_dropout=_has_dropout(self.cfg))
        min_lr = float(self.state.steps["lr_find"].get("min_lr") or 0.0)
        # The finder's pick is cautious, and a one-cycle schedule peaks well above it: measured
        # on Fashion-MNIST, random search found its best peak LR (0.6) at ~5x the loss
        # minimum's LR (0.11), beyond 10x the pick. So the range reaches 10x that minimum.
        if LR_ABOVE_MIN * min_lr > space.lr[1]:
            space = dataclasses.replace(space, lr=(space.lr[0], LR_ABOVE_MIN * min_lr))
        search_time = self._search_seconds()
        coarse = self._step("coarse", self._search, "coarse", "coarse", space, COARSE_SHARE * search_time,
                            self.opt.coarse_trials, self.opt.coarse_epochs)  # fmt: skip
        best, previous = coarse, coarse
        for round_ in range(1, self.opt.max_rounds + 1):
            name = f"refine-{round_}"
            if name not in self.state.steps:
                rounds_left = self.opt.max_rounds - round_ + 1
                left = self._search_seconds() if self.opt.budget_seconds else math.inf
                trial = self._min_trial_seconds(previous)
                seconds = left / rounds_left
                if seconds < MIN_ROUND_TRIALS * trial:  # too little for several rounds: one last round gets it all
                    seconds = left
                if seconds < trial:
                    self._say(f"{name}: skipped, the search time left ({seconds:.0f} s) is less than one trial (~{trial:.0f} s)")
                    break
                diagnosis = self._step(f"diagnose-{round_}", self._diagnose, previous)
                new_space = self._next_space(previous, diagnosis, name)
                refined = self._step(name, self._search, name, "refine", new_space, seconds, self.opt.refine_trials,
                                     self.opt.refine_epochs, _inside(best, new_space))  # fmt: skip
            else:
                refined = self.state.steps[name]
            gain = _best_value(refined) - _best_value(best)
            if _best_value(refined) > _best_value(best):
                best = refined
            previous = refined
            if round_ > 1 and gain < MIN_IMPROVEMENT:
                self._say(f"{name}: best validation accuracy improved by {gain:+.2%} (< {MIN_IMPROVEMENT:.1%}): stop searching")
                break
        self._choose(best)

    def _min_trial_seconds(self, search: dict[str, Any]) -> float:
        """The wall time of one refine trial, from the measured epochs of ``search``'s trials."""
        per_epoch = [t["seconds"] / t["epochs"] for t in search.get("trials", [])
                     if t.get("state") == "COMPLETE" and t.get("seconds") and t.get("epochs")]  # fmt: skip
        return sorted(per_epoch)[len(per_epoch) // 2] * self.opt.refine_epochs if per_epoch else 0.0

    def _search(self, study: str, stage: str, space, seconds: float, trials: int | None, epochs: int,  # noqa: ANN001
                start_from: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """One search stage. ``start_from``: parameters tried first (the best so far, trained longer)."""
        from cnnlab.recipe.search import load_search, run_search

        # Each stage gets its own sampler seed: the same seed would replay the same random
        # draws (mapped into the new ranges) in every stage.
        seed = self.opt.seed * 1000 + sum(1 for k in self.state.steps if k == "coarse" or k.startswith("refine-"))
        folder, name = self.out / "search" / study, self._study_name(study)
        timeout = None if math.isinf(seconds) else max(seconds, 1.0)
        trials = self._trials_left(study, trials)
        if trials == 0:  # killed after its last trial: nothing left to run
            result = load_search(folder, study_name=name)
        else:
            with _quiet_trials():
                result = run_search(self._search_cfg(), space, stage=stage, out_dir=folder, study_name=name,
                                    storage=self.opt.storage, n_trials=trials, timeout=timeout, epochs=epochs,
                                    sampler=self.opt.sampler, pruner=self.opt.pruner, workers=self.opt.workers,
                                    seed=seed, verbose=False, enqueue=[start_from] if start_from else ())  # fmt: skip
        out = result.as_dict()
        out["space"] = space.as_dict()
        done = [t for t in out["trials"] if t.get("state") == "COMPLETE"]
        self._say(f"{study}: {len(out['trials'])} trials ({len(done)} complete), best val acc {_best_value(out):.2%}")
        return out

    def _trials_left(self, study: str, trials: int | None) -> int | None:
        """A stage cut short (killed) continues its study: only the trials it still owes."""
        if trials is None or self.opt.storage is not None:
            return trials
        from cnnlab.recipe.search import load_search
        from cnnlab.recipe.storage import JOURNAL_NAME

        folder = self.out / "search" / study
        if not (folder / JOURNAL_NAME).is_file():
            return trials
        done = sum(t.state in ("COMPLETE", "PRUNED") for t in load_search(folder, study_name=self._study_name(study)).trials)
        return max(trials - done, 0)

    def _study_name(self, stage: str) -> str:
        """Unique per recipe folder: a shared --storage may hold many recipes' studies."""
        import hashlib

        tag = hashlib.sha1(str(self.out.resolve()).encode()).hexdigest()[:8]
        return f"recipe-{self.out.name}-{tag}-{stage}"

    def _diagnose(self, search: dict[str, Any]) -> dict[str, Any]:
        from cnnlab.recipe.diagnose import diagnose_run

        run_dir = (search.get("best") or {}).get("run_dir")
        if not run_dir or not (Path(run_dir) / "metrics.jsonl").is_file():
            return {"findings": [], "summary": "no finished trial to diagnose", "suggestion": {}}
        diagnosis = diagnose_run(run_dir).as_dict()
        self._say(f"diagnosis of {Path(run_dir).name}: {diagnosis.get('summary')}")
        return {**diagnosis, "run_dir": run_dir}

    def _next_space(self, search: dict[str, Any], diagnosis: dict[str, Any], name: str):  # noqa: ANN202 - SearchSpace
        """Narrow around the best trials, then move the ranges as the diagnosis suggests."""
        from cnnlab.recipe.search import SearchSpace, refine_space

        space = SearchSpace.from_dict(search["space"])
        narrowed, why = refine_space(search["trials"], space)
        adjusted, moves = adjust_space(narrowed, diagnosis.get("suggestion") or {})
        atomic_write_json(self.out / "search" / f"{name}-space.json",
                          {"from": space.as_dict(), "narrowed": why, "moves": moves, "space": adjusted.as_dict()})  # fmt: skip
        for move in moves:
            self._say(f"{name}: {move}")
        return adjusted

    def _choose(self, best: dict[str, Any]) -> None:
        """Write best.yaml: the base configuration with the best trial's values."""
        if "chosen" in self.state.steps:
            return
        trial = best.get("best")
        if not trial:
            raise RecipeStopped("no search trial finished within the budget; give a larger --budget")
        chosen = from_dict(RunConfig, trial["config"])
        train = dataclasses.replace(chosen.train, train_subset=self.cfg.train.train_subset,
                                    checkpoint_minutes=self.cfg.train.checkpoint_minutes)  # fmt: skip
        chosen = dataclasses.replace(chosen, train=train)
        atomic_write_text(self.out / "best.yaml", dump_yaml(chosen))
        self.state.steps["chosen"] = {"params": trial["params"], "value": trial["value"], "from": trial.get("run_dir")}
        self.state.order.append("chosen")
        self.state.save(self.out)
        self._say(f"chosen: {_fmt_params(trial['params'])} (val acc {trial['value']:.2%}) -> {self.out / 'best.yaml'}")

    def _final(self) -> dict[str, Any]:
        from cnnlab.config import load_run_config
        from cnnlab.train.run import run_training

        cfg = load_run_config(self.out / "best.yaml")
        epochs = self.opt.final_epochs or self._final_epochs()
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
        run = self.out / "final"
        self._say(f"final: {epochs} epochs on the whole training split -> {run}")
        if (run / "last.pt").is_file():
            summary = run_training(resume=run, verbose=self.verbose)
        else:
            summary = run_training(cfg, run, verbose=self.verbose)
        from cnnlab.recipe.diagnose import diagnose_run

        diagnosis = diagnose_run(run).as_dict()
        return {"test_acc": summary["test_acc"], "best_val_acc": summary["best_val_acc"], "epochs": epochs,
                "summary": summary, "diagnosis": diagnosis}  # fmt: skip

    def _final_epochs(self) -> int:
        """As many epochs as the budget left allows, from the trials' measured training speed."""
        if self.opt.budget_seconds is None:
            return self.cfg.train.epochs
        speeds = [v for s in self._searches() for t in s.get("trials", []) if (v := _images_per_s(t))]
        if not speeds:
            return max(3, min(self.cfg.train.epochs, 10))
        speed = sorted(speeds)[len(speeds) // 2]
        splits = self.splits()
        # training at the trials' speed, evaluation ~3x faster (no backward pass), +5% per-epoch overheads
        seconds = (len(splits.train) / speed + len(splits.val) / (3 * speed)) * 1.05
        return int(min(max(self.clock.left() // seconds, 3), 30))

    def _searches(self) -> list[dict[str, Any]]:
        return [v for k, v in self.state.steps.items() if k == "coarse" or k.startswith("refine-")]

    def write_report(self) -> Path | None:
        from cnnlab.recipe.report import write_recipe_report

        try:
            return write_recipe_report(self.out, self.state)
        except Exception as exc:  # noqa: BLE001 - a report problem must not hide the recipe's result
            log.warning("could not write the report: %s", exc)
            return None


@contextlib.contextmanager
def _quiet_trials() -> Iterator[None]:
    """One line per trial is enough: hide each trial's model line and Optuna's study messages."""
    import optuna

    loggers = [logging.getLogger(name) for name in ("cnnlab.train.run", "cnnlab.transfer.finetune")]
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


def adjust_space(space, suggestion: dict[str, Any]):  # noqa: ANN001, ANN201 - SearchSpace in, (SearchSpace, moves) out
    """Move the search ranges as a diagnosis suggests; returns the new space and what moved.

    ``lr_scale`` multiplies the learning-rate range; ``more_regularisation`` moves weight
    decay up (x3) and dropout up; ``less_regularisation`` moves them down.
    """
    moves: list[str] = []
    lr_scale = float(suggestion.get("lr_scale") or 1.0)
    new = space
    if lr_scale != 1.0:
        lo, hi = space.lr
        new = dataclasses.replace(new, lr=(lo * lr_scale, hi * lr_scale))
        moves.append(f"learning-rate range x{lr_scale:g} -> [{lo * lr_scale:.3g}, {hi * lr_scale:.3g}]")
    for key, factor, dshift in (("more_regularisation", 3.0, 0.1), ("less_regularisation", 1 / 3, -0.1)):
        if suggestion.get(key):
            lo, hi = new.weight_decay
            new = dataclasses.replace(new, weight_decay=(lo * factor, hi * factor))
            moves.append(f"weight-decay range x{factor:.3g} -> [{lo * factor:.3g}, {hi * factor:.3g}] ({key.replace('_', ' ')})")
            if new.dropout is not None:
                lo, hi = new.dropout
                lo, hi = min(max(lo + dshift, 0.0), 0.8), min(max(hi + dshift, 0.05), 0.8)
                new = dataclasses.replace(new, dropout=(lo, hi))
                moves.append(f"dropout range -> [{lo:.2f}, {hi:.2f}]")
    return new, moves


def _images_per_s(trial: dict[str, Any]) -> float | None:
    """A finished trial's training speed, from its run folder's summary.json."""
    import json

    if trial.get("state") != "COMPLETE" or not trial.get("run_dir"):
        return None
    try:
        return float(json.loads((Path(trial["run_dir"]) / "summary.json").read_text())["images_per_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _inside(search: dict[str, Any], space) -> dict[str, Any] | None:  # noqa: ANN001 - SearchSpace
    """The best trial's parameters of ``search`` if every one lies in ``space``'s ranges."""
    params = (search.get("best") or {}).get("params") or {}
    knobs = space.knobs()
    for name, value in params.items():
        knob = knobs.get(name)
        if knob is None or (knob[0] == "cat" and value not in knob[1]) or (knob[0] != "cat" and not knob[1] <= value <= knob[2]):
            return None
    return dict(params) or None


def _has_dropout(cfg: RunConfig) -> bool:
    from cnnlab.models.registry import list_models, model_info

    name = cfg.model.name
    return name in list_models() and "dropout" in model_info(name).options()


def _best_value(search: dict[str, Any]) -> float:
    best = search.get("best") or {}
    return float(best.get("value") or 0.0)


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())

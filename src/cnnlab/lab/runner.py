"""``cnnlab lab run``: run an experiment's arms as normal runs, then table, plot and verdicts.

Every arm and seed is an ordinary run folder (``OUT/runs/<arm>-s<seed>``) trained by
``run_training``; a lab that is stopped resumes where it stopped (finished runs are kept,
a run with a ``last.pt`` continues exactly). Arms run one after the other; with a
``--budget`` the number of epochs is the same for every arm and chosen so that all runs
fit (from a short timing probe of each arm), and it is recorded in ``lab.json`` so a
resumed lab keeps it.

Metrics of a run (accuracies and errors in points, 0-100):

* ``test_acc``: the best-validation weights on the test split;
* ``train_acc`` / ``val_acc``: the same weights on the training (un-augmented, eval mode)
  and validation splits, ``gap`` = train_acc - val_acc;
* ``train_err``: 100 - the last epoch's training accuracy (as measured during training);
* ``params``: trainable parameters; plus what the experiment's probe measures at init.

Outputs: ``results.csv`` (one row per run), ``table.md`` (mean ± sd per arm), ``plot.png``
(the experiment's curve per arm, mean over seeds), ``verdict.md`` (each claim's verdict,
computed from the numbers) and ``lab.json``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnlab.config import Range, RunConfig, TrainConfig, check_model_options, field_range, load_run_config, merge
from cnnlab.errors import CnnlabError, TrainingDiverged, UsageError
from cnnlab.infer.evaluate import evaluate_checkpoint
from cnnlab.io import LOCK_NAME, atomic_write_json, atomic_write_text, folder_lock
from cnnlab.lab.experiments import Experiment, get_experiment
from cnnlab.lab.plot import plot_lab
from cnnlab.lab.verdict import Verdict, judge
from cnnlab.run import build_model, load_data, run_training
from cnnlab.runfolder import RunFolder
from cnnlab.train.loaders import build_loader
from cnnlab.timing import measure_speed
from cnnlab.train.runtime import Runtime

log = logging.getLogger(__name__)

SMOKE_DATA = "synthetic:classes=4,n=400,size=16,channels=1"
STATE_FILE = "lab.json"
METRICS = ("test_acc", "train_acc", "val_acc", "gap", "train_err", "params", "seconds")
MAX_SEEDS = 100  # seeds per arm; more is a typo (each seed is a full run of every arm)
SEEDS_RANGE = Range(integer=True, lo=1, hi=MAX_SEEDS)
BUDGET_RANGE = Range(lo=0, lo_open=True)  # seconds


@dataclass(frozen=True)
class LabSettings:
    """What the user chose: data, length, subset and seeds."""

    data: str = "fashion-mnist"
    epochs: int | None = None
    budget_seconds: float | None = None
    subset: int | None = None
    seeds: int = 1
    batch_size: int = 128
    smoke: bool = False
    model_options: dict[str, Any] = field(default_factory=dict)  # applied to every arm's model, last

    def __post_init__(self) -> None:
        # Checked here, before run_lab creates the lab folder: a refused setting leaves nothing behind.
        SEEDS_RANGE.check(self.seeds, "lab seeds (--seeds)")
        field_range(TrainConfig, "batch_size").check(self.batch_size, "lab batch_size (--batch-size)")
        if self.epochs is not None:
            field_range(TrainConfig, "epochs").check(self.epochs, "lab epochs (--epochs)")
        if self.subset is not None:
            field_range(TrainConfig, "train_subset").check(self.subset, "lab subset (--train-subset)")
        if self.budget_seconds is not None:
            BUDGET_RANGE.check(self.budget_seconds, "lab budget_seconds (--budget)")
        if not isinstance(self.model_options, dict):
            raise UsageError(f"lab model_options must be a mapping, got {self.model_options!r}")
        check_model_options(self.model_options, "--model-opt")


@dataclass
class LabResult:
    experiment: str
    out_dir: Path
    rows: list[dict[str, Any]]
    verdicts: list[Verdict]

    def as_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "out_dir": str(self.out_dir), "rows": self.rows,
                "verdicts": [v.as_dict() for v in self.verdicts]}  # fmt: skip


def arm_config(exp: Experiment, arm: str, settings: LabSettings, seed: int, epochs: int) -> RunConfig:
    """The run configuration of one arm and seed."""
    data = SMOKE_DATA if settings.smoke else settings.data
    base = merge(exp.base, exp.smoke) if settings.smoke else exp.base
    user = {"data": {"source": data},
            "train": {"epochs": epochs, "seed": seed, "train_subset": settings.subset, "batch_size": settings.batch_size,
                      "checkpoint_minutes": 0.0 if settings.smoke else None}}  # fmt: skip
    options = {"model": {"options": dict(settings.model_options)}} if settings.model_options else {}
    return load_run_config(None, merge(merge(merge(user, base), exp.arm(arm).overrides), options))


def run_lab(name: str, settings: LabSettings, out_dir: str | Path, *, verbose: bool = True) -> LabResult:
    """Run (or continue) experiment ``name`` into ``out_dir``; see the module docstring.

    Raises:
        UsageError: a setting that no arm can run with (checked before the folder exists).
        CnnlabError: ``out_dir`` holds another lab, or another process is running this one.
    """
    exp = get_experiment(name)
    out_dir = Path(out_dir)
    # Every arm's config is built (and so validated) before the lab folder is created, so a
    # refused setting leaves no folder that would then refuse the corrected rerun.
    for arm in exp.arms:
        arm_config(exp, arm.name, settings, 0, settings.epochs or 1)
    with folder_lock(out_dir, "lab"):
        return _run_locked(exp, settings, out_dir, verbose)


def default_out_dir(name: str, settings: LabSettings, root: str | Path = "runs") -> tuple[Path, bool]:
    """The lab folder when none is given, and whether it continues an earlier one.

    The newest ``root/lab-NAME-<time>`` folder that has not finished and was started with
    the same settings is continued (so rerunning the same command resumes, as promised);
    otherwise a new folder named by the current time is started.

    Returns:
        ``(folder, continues)``.
    """
    from datetime import datetime

    wanted = asdict(settings)
    # The <time> suffix (YYYYmmdd-HHMMSS) sorts as the start time: newest first.
    for folder in sorted(Path(root).glob(f"lab-{name}-*"), reverse=True):
        try:
            state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue  # not a lab (or a damaged one, which run_lab explains when given as --out)
        if isinstance(state, dict) and state.get("experiment") == name and state.get("settings") == wanted \
                and not state.get("finished"):  # fmt: skip
            return folder, True
    return Path(root) / f"lab-{name}-{datetime.now():%Y%m%d-%H%M%S}", False


def _run_locked(exp: Experiment, settings: LabSettings, out_dir: Path, verbose: bool) -> LabResult:
    """``run_lab`` once the settings are checked and the lab folder is locked."""
    state = _load_state(out_dir, exp, settings)
    if state.get("epochs") is None:
        state["epochs"] = _choose_epochs(exp, settings)
        atomic_write_json(out_dir / STATE_FILE, state)
    epochs = int(state["epochs"])
    rows = []
    for seed in range(settings.seeds):
        for arm in exp.arms:
            rows.append(_run_arm(exp, arm.name, settings, seed, epochs, out_dir, verbose))
    caveat = budget_caveat(exp, settings, epochs)
    verdicts = [_judge(claim, rows, settings.seeds, caveat if claim.needs_training else None) for claim in exp.claims]
    _write_outputs(exp, out_dir, rows, verdicts, settings, epochs)
    state["finished"] = True
    atomic_write_json(out_dir / STATE_FILE, state)
    return LabResult(exp.name, out_dir, rows, verdicts)


def _load_state(out_dir: Path, exp: Experiment, settings: LabSettings) -> dict[str, Any]:
    path = out_dir / STATE_FILE
    if path.is_file():
        reason = "not a JSON object"
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            state, reason = None, str(exc)
        if not isinstance(state, dict):
            # Not ours to repair: the runs next to it may be someone's hours of training.
            raise CnnlabError(f"{path} is damaged ({reason}); "
                              "remove it to start this lab again (finished runs are kept), or choose another --out")  # fmt: skip
        if state.get("experiment") == exp.name and state.get("settings") == asdict(settings):
            return state
        # a start that stopped before any run (a budget too small) has nothing to keep: replaced below
        if state.get("epochs") is not None or (out_dir / "runs").exists():
            raise CnnlabError(f"{out_dir} holds another lab run ({state.get('experiment')}, other settings); "
                              "choose another --out or rerun it with the same settings to resume")  # fmt: skip
    else:
        # A folder that holds anything but our lock is someone else's: the lab's results.csv,
        # table.md, plot.png and runs/ would overwrite or mix with its files.
        others = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_NAME) if out_dir.is_dir() else []
        if others:
            raise UsageError(f"{out_dir} is not empty and holds no lab ({', '.join(others[:3])}"
                             f"{', ...' if len(others) > 3 else ''}); choose a new or empty --out")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {"experiment": exp.name, "settings": asdict(settings), "epochs": settings.epochs, "finished": False}
    atomic_write_json(path, state)
    return state


def _choose_epochs(exp: Experiment, settings: LabSettings) -> int:
    """``--epochs`` as given; else as many as fit the budget, the same for every arm (1-50)."""
    if settings.epochs:
        return settings.epochs
    if settings.smoke:
        return 1
    if not settings.budget_seconds:
        raise CnnlabError("give the lab a length: --epochs N or --budget TIME (e.g. 10m)")
    per_epoch = max(_epoch_seconds(exp, arm.name, settings) for arm in exp.arms)
    runs = len(exp.arms) * settings.seeds
    epochs = int(settings.budget_seconds / (runs * per_epoch))
    if epochs < 1:
        raise CnnlabError(f"a budget of {settings.budget_seconds / 60:.0f} min is less than one epoch per run "
                          f"({runs} runs x ~{per_epoch:.0f} s); give a larger --budget or a smaller --train-subset")  # fmt: skip
    log.info("budget: %d epoch(s) per run (%d runs, ~%.0f s per epoch for the slowest arm)", min(epochs, 50), runs, per_epoch)
    return min(epochs, 50)


def _epoch_seconds(exp: Experiment, arm: str, settings: LabSettings) -> float:
    """Seconds per epoch of an arm, from a few of its own timed training steps (:func:`cnnlab.timing.measure_speed`)."""
    cfg = arm_config(exp, arm, settings, 0, 1)
    splits = load_data(cfg)
    return measure_speed(cfg, splits).epoch_seconds(len(splits.train), len(splits.val))


def _run_arm(exp: Experiment, arm: str, settings: LabSettings, seed: int, epochs: int, out_dir: Path, verbose: bool) -> dict[str, Any]:
    run = out_dir / "runs" / f"{_slug(arm)}-s{seed}"
    diverged = run / "diverged.json"
    if not RunFolder(run).is_finished() and not diverged.is_file():
        if verbose:
            print(f"lab {exp.name}: arm {arm}, seed {seed}, {epochs} epoch(s) -> {run}", flush=True)
        try:
            if RunFolder(run).exists():
                run_training(resume=run, verbose=False)
            else:
                run_training(arm_config(exp, arm, settings, seed, epochs), run, verbose=False)
        except TrainingDiverged as exc:
            # A diverging arm is a result (e.g. init N(0, 1)), not a failure of the lab.
            atomic_write_json(diverged, {"error": str(exc)})
    if diverged.is_file():
        # A diverged model predicts nothing: its accuracies count as chance (100 / classes), so a
        # claim that another arm trains better is judged on it; gap and time are not measured.
        chance = 100.0 / len(load_data(arm_config(exp, arm, settings, seed, 1)).classes)
        row = {"run_dir": str(run), "epochs": 0, **{m: float("nan") for m in METRICS}, "diverged": 1.0,
               "test_acc": chance, "train_acc": chance, "val_acc": chance, "train_err": 100.0 - chance}  # fmt: skip
        if exp.probe is not None:
            row.update(_probe(exp, arm, settings, seed))
        return {"arm": arm, "seed": seed, **row}
    return {"arm": arm, "seed": seed, **_measure(exp, arm, settings, seed, run), "diverged": 0.0}


def _measure(exp: Experiment, arm: str, settings: LabSettings, seed: int, run: Path) -> dict[str, Any]:
    """The run's metrics (cached in ``lab_metrics.json`` next to its summary)."""
    cache = run / "lab_metrics.json"
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            cached = None  # a damaged cache is measured again below
        if isinstance(cached, dict):
            return cached
    folder = RunFolder(run)
    summary = folder.read_summary()
    if summary is None:  # _run_arm measures only finished runs
        raise CnnlabError(f"{run} has not finished (no summary.json); run the lab again to continue it")
    records = folder.read_metrics()
    train = evaluate_checkpoint(run, split="train", device="cpu").metrics.accuracy
    val = evaluate_checkpoint(run, split="val", device="cpu").metrics.accuracy
    row = {
        "run_dir": str(run), "epochs": len(records), "test_acc": 100 * (summary["test_acc"] or 0.0),
        "train_acc": 100 * train, "val_acc": 100 * val, "gap": 100 * (train - val),
        "train_err": 100 * (1 - records[-1]["train_acc"]), "params": summary["params"], "seconds": summary["train_seconds"],
    }  # fmt: skip
    if exp.probe is not None:
        row.update(_probe(exp, arm, settings, seed))
    atomic_write_json(cache, row)
    return row


def _probe(exp: Experiment, arm: str, settings: LabSettings, seed: int) -> dict[str, float]:
    """The experiment's measurements on the arm's freshly initialised model and a real batch (on the CPU)."""
    cfg = arm_config(exp, arm, settings, seed, 1)
    splits = load_data(cfg)
    model = build_model(cfg, splits)
    loader = build_loader(splits.train, splits.stats, Runtime.local("cpu"), batch_size=min(64, len(splits.train)))
    x, y = next(iter(loader))
    with torch.random.fork_rng():
        return exp.probe(model, x, y)


def budget_caveat(exp: Experiment, settings: LabSettings, epochs: int) -> str | None:
    """Why this budget cannot test the experiment's claims about training, or None when it can.

    Too few epochs or training images (below the experiment's ``min_epochs`` /
    ``min_train_images``), or the smoke data (tiny, synthetic: it says nothing about the
    lecture's claims), make any verdict on accuracy a measurement, not the claim's test.
    """
    short = [f"{epochs} epoch{'s' if epochs != 1 else ''}"] if epochs < exp.min_epochs else []
    if settings.smoke:
        short.append("smoke data")
    elif settings.subset is not None and exp.min_train_images is not None and settings.subset < exp.min_train_images:
        short.append(f"{settings.subset:,} training images")
    if not short:
        return None
    images = f" on at least {exp.min_train_images:,} training images" if exp.min_train_images else ""
    return (f"at this budget ({', '.join(short)}) the claim cannot be tested "
            f"(it needs at least {exp.min_epochs} epochs{images})")


def _judge(claim: Any, rows: list[dict[str, Any]], seeds: int, caveat: str | None = None) -> Verdict:
    by = {(r["arm"], r["seed"]): r for r in rows}
    sign = 1.0 if claim.higher_is_better else -1.0
    # log10 of a ratio floored at 1e-30: a gradient that vanished to exactly 0 still counts as tiny
    value = (lambda v: math.log10(max(float(v), 1e-30))) if claim.log_scale else float
    diffs = [sign * (value(by[(claim.treatment, s)][claim.metric]) - value(by[(claim.control, s)][claim.metric]))
             for s in range(seeds) if (claim.treatment, s) in by and (claim.control, s) in by]  # fmt: skip
    return judge(claim.text, diffs, min_effect=claim.min_effect, unit=claim.unit, non_inferior=claim.non_inferior,
                 caveat=caveat)


def _write_outputs(exp: Experiment, out: Path, rows: list[dict[str, Any]], verdicts: list[Verdict], settings: LabSettings, epochs: int) -> None:
    keys = ["arm", "seed"] + [k for k in rows[0] if k not in ("arm", "seed")]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "table.md", table_markdown(exp, rows))
    lines = [f"# {exp.name}: {exp.question}", "", f"Lecture section {exp.section}. Data: "
             f"{SMOKE_DATA if settings.smoke else settings.data}, {epochs} epoch(s) per run, {settings.seeds} seed(s)"
             + (f", training subset {settings.subset}" if settings.subset else "") + ".", ""]  # fmt: skip
    lines += [f"- {v.text}" for v in verdicts]
    atomic_write_text(out / "verdict.md", "\n".join(lines) + "\n")
    plot_lab(exp, rows, out / "plot.png")


def table_markdown(exp: Experiment, rows: list[dict[str, Any]]) -> str:
    """Mean ± sd of every numeric metric per arm (sd only with several seeds)."""
    hide = ("arm", "seed", "run_dir", "epochs") + (() if any(r.get("diverged") for r in rows) else ("diverged",))
    metrics = [k for k in rows[0] if k not in hide and isinstance(rows[0][k], int | float)]
    head = "| arm | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics) + "\n"
    body = []
    for arm in exp.arms:
        mine = [r for r in rows if r["arm"] == arm.name]
        if not mine:
            continue
        cells = []
        for m in metrics:
            values = [float(r[m]) for r in mine if r.get(m) is not None and math.isfinite(float(r[m]))]
            if not values:
                cells.append("diverged" if any(r.get("diverged") for r in mine) else "-")
                continue
            mean = statistics.fmean(values)
            cell = f"{mean:,.0f}" if m == "params" else f"{mean:.3g}" if abs(mean) < 1 else f"{mean:.2f}"
            if len(values) > 1:
                cell += f" ± {statistics.stdev(values):.2f}"
            cells.append(cell)
        body.append(f"| {arm.name} | " + " | ".join(cells) + " |")
    return head + "\n".join(body) + "\n"


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)

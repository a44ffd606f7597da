"""`cnnlab train --time DURATION`: a run planned to end within a wall-clock time (issue 17).

The run's steps are planned from a short timing and, when its first epoch is all warmup,
re-planned once from that epoch's pace (:mod:`cnnlab.train.deadline`, as the recipe's
final run). Its ``config.yaml`` records the steps, so ``--config`` reproduces the run and
``--resume`` continues it exactly.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnlab.checkpoint import load_checkpoint
from cnnlab.cli.common import parse_duration
from cnnlab.cli.main import main
from cnnlab.config import ScheduleConfig
from cnnlab.errors import UsageError
from cnnlab.recipe.planner import SATURATION_EPOCHS
from tests.hostile.hostile_cli import run_cli as _run
from cnnlab.runfolder import RunFolder
from cnnlab.train.deadline import deadline_schedule

DATA = "synthetic:classes=3,n=600,size=12,channels=1"  # 540 training images: 16 steps of 32 per epoch
STEPS_PER_EPOCH = 540 // 32
ARGS = ["--data", DATA, "--model", "simple", "--model-opt", "spec=c16-p-c32-p", "--batch-size", "32", "--device", "cpu",
        "--checkpoint-minutes", "0", "--quiet"]  # fmt: skip
METRIC_KEYS = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


# --------------------------------------------------------------------------- the flag


def test_time_takes_the_budgets_duration_grammar_and_names_itself() -> None:
    assert [parse_duration(t, flag="--time") for t in ("90s", "5m", "1h", "1h30m", "20")] == [90, 300, 3600, 5400, 20]
    with pytest.raises(UsageError, match="^--time expects a duration like 600s"):
        parse_duration("soon", flag="--time")
    with pytest.raises(UsageError, match="^--time must be more than 0 s"):
        parse_duration("0s", flag="--time")
    code, _, err = _run("train", *ARGS, "--time", "10x")
    assert code == 2 and err.strip() == "cnnlab: error: --time expects a duration like 600s, 30m, 2h or 1h30m, got '10x'"


def test_help_states_the_default_cap() -> None:
    code, out, _ = _run("train", "--help")
    text = " ".join(out.split()).split("--time DURATION ")[-1][:900]
    assert code == 0 and f"is then a cap, else {SATURATION_EPOCHS} " in text


@pytest.mark.parametrize("extra, env, message", [
    (["--steps", "5"], {}, "--time plans the run's steps itself; drop --steps (or --time)"),
    ([], {"WORLD_SIZE": "2"}, "--time plans and re-plans one process's run, not a torchrun run; give --epochs or --steps instead"),
    (["--model", "efficientnet_lite0", "--pretrained"], {}, "--time 1m: a transfer run"),
])  # fmt: skip
def test_what_time_cannot_plan_is_refused_in_one_line_before_any_work(
    extra: list[str], env: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, _, err = _run("train", *ARGS, "--time", "1m", "--out", str(tmp_path / "run"), *extra)
    assert code == 2 and err.startswith(f"cnnlab: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_a_time_too_short_for_one_step_is_refused_naming_the_least(tmp_path: Path) -> None:
    # 1 ms: the timing alone (24 steps) takes longer, even with the data cached and torch warm
    # (0.1 s fitted a step of this tiny model once, late in the whole suite)
    code, _, err = _run("train", *ARGS, "--time", "0.001s", "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1, err
    least = re.fullmatch(r"cnnlab: error: --time 0\.001s is too short for one step of this run: .* need about (\d+) s; "
                         r"give --time (\d+)s or more \(or a smaller --val-subset\)\n", err)  # fmt: skip
    assert least is not None and least[1] == least[2] and int(least[1]) >= 1, err
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


# --------------------------------------------------------------------------- the pure rule


def test_the_onecycle_rise_becomes_a_warmup_only_where_it_spans_an_epoch() -> None:
    onecycle = ScheduleConfig()  # pct_start 0.25
    assert deadline_schedule(onecycle, 8).warmup_epochs == 2.0
    assert deadline_schedule(onecycle, 4.5).warmup_epochs == 1.125  # planned in steps: fractional epochs
    assert deadline_schedule(onecycle, 3.9) is None  # a rise shorter than one epoch: no re-plan
    assert deadline_schedule(ScheduleConfig(name="cosine"), 30) is None
    own = ScheduleConfig(name="cosine", warmup_epochs=1.5)
    assert deadline_schedule(own, 2) == own  # an explicit warmup stays as given
    assert deadline_schedule(ScheduleConfig(warmup_epochs=2.0), 1).warmup_epochs == 2.0


# --------------------------------------------------------------------------- runs


def test_epochs_cap_a_timed_run_and_its_config_records_the_steps(tmp_path: Path) -> None:
    """10 minutes but --epochs 2: the cap binds; 2 planned epochs are no warmup of an epoch, so the plan stands."""
    code, _, err = _run("train", *ARGS, "--time", "10m", "--epochs", "2", "--out", str(tmp_path / "run"))
    assert code == 0, err
    folder = RunFolder(tmp_path / "run")
    cfg = folder.read_config()
    assert (cfg.train.steps, cfg.train.epochs, cfg.schedule.warmup_epochs) == (2 * STEPS_PER_EPOCH, 2, 0.0)
    assert [r["step"] for r in folder.read_metrics()] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


def _cnnlab(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnnlab", *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.slow
def test_a_timed_run_ends_within_its_time_and_uses_it(tmp_path: Path) -> None:
    """A whole process, as a user runs it: --time counts from its start, Python's start-up included."""
    seconds = 20.0
    data = "synthetic:classes=3,n=1500,size=12,channels=1"  # 42 steps per epoch: more than 2 epochs fit in 20 s
    start = time.monotonic()
    proc = _cnnlab("train", *ARGS, "--data", data, "--time", "20s", "--out", str(tmp_path / "run"))
    code = proc.wait(timeout=120)
    wall = time.monotonic() - start
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    folder = RunFolder(tmp_path / "run")
    summary, records, cfg = folder.read_summary(), folder.read_metrics(), folder.read_config()
    assert summary is not None and summary["test_acc"] is not None and summary["epochs_run"] >= 2
    # Within the time: the re-plan keeps 3% of the time left after the first epoch; the 5% tolerance is for a
    # shared machine whose pace drops after that epoch (a run ends only at an epoch's end).
    assert wall <= seconds * 1.05, wall
    capped = len(records) == SATURATION_EPOCHS
    assert capped or wall >= 0.6 * seconds, (wall, len(records))  # the time is used, unless the cap came first
    assert cfg.train.steps == records[-1]["step"] and cfg.train.epochs == SATURATION_EPOCHS  # config.yaml reproduces it
    assert load_checkpoint(folder.last_pt)["config"]["train"]["steps"] == cfg.train.steps


def _metrics(run: Path) -> list[dict]:
    return [{k: r[k] for k in METRIC_KEYS} for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_a_killed_timed_run_resumes_its_recorded_plan_exactly(tmp_path: Path) -> None:
    """Killed after its re-plan, resumed with --time again: it ends as a fresh run of its config.yaml does."""
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    # A far deadline capped at 6 epochs: the plan (96 steps, warmup 1.5 epochs, so a re-plan) is deterministic.
    proc = _cnnlab("train", *ARGS, "--epochs", "6", "--time", "10m", "--out", str(run))
    metrics = run / "metrics.jsonl"
    until = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < until, "timed out waiting for 2 epochs"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists(), "the run finished before it could be killed"
    cfg = RunFolder(run).read_config()
    assert (cfg.train.steps, cfg.train.epochs, cfg.schedule.warmup_epochs) == (6 * STEPS_PER_EPOCH, 6, 1.5)
    resumed = _cnnlab("train", "--resume", str(run), "--time", "10m")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read() if resumed.stderr else ""
    again = _cnnlab("train", "--config", str(run / "config.yaml"), "--out", str(fresh), "--quiet")
    assert again.wait(timeout=300) == 0, again.stderr.read() if again.stderr else ""
    assert _metrics(run) == _metrics(fresh) and len(_metrics(run)) == 6
    a, b = load_checkpoint(run / "last.pt")["model"], load_checkpoint(fresh / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert math.isclose(json.loads((run / "summary.json").read_text())["test_acc"],
                        json.loads((fresh / "summary.json").read_text())["test_acc"])  # fmt: skip

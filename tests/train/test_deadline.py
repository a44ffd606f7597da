"""Runs planned in steps (``train.steps``) and runs that re-plan their steps to meet a deadline.

The re-plan must leave the run exact: a run whose deadline set its total to N steps after
its first epoch trains the very weights a fresh run of N steps does, and its config says N.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from cnnlab.checkpoint import load_checkpoint
from cnnlab.run import run_training
from cnnlab.runfolder import RunFolder
from cnnlab.train.deadline import Deadline
from cnnlab.train.schedule import lr_factor

N_TRAIN, BATCH = 486, 32  # the tiny data's 600 images less the held-out splits: 16 steps per epoch (the last one short)


# --------------------------------------------------------------------------- the pure rule


def test_the_time_left_buys_whole_epochs_then_a_part_of_one() -> None:
    # 10 steps per epoch of 10 s (1 s of it validation): a step is 0.9 s.
    d = Deadline(at=100.0, end_seconds=5.0, margin=0.0)
    # 95 s left after the end costs: 9 whole epochs (90 s), 5 s left: (5 - 1 s validation) / 0.9 s = 4 steps
    assert d.total_steps(now=0.0, steps_done=10, steps_per_epoch=10, epoch_seconds=10.0, val_seconds=1.0) == 10 + 90 + 4


def test_a_part_of_an_epoch_shorter_than_its_validation_is_not_trained() -> None:
    # 92 s: 9 whole epochs, then 2 s: one step of 0.9 s and the 1 s validation after it. Not worth it.
    assert Deadline(at=92.0, margin=0.0).total_steps(0.0, 10, 10, 10.0, 1.0) == 10 + 90
    # 93 s: two steps (1.8 s) are worth their validation.
    assert Deadline(at=93.0, margin=0.0).total_steps(0.0, 10, 10, 10.0, 1.0) == 10 + 90 + 2


def test_a_margin_is_kept_and_a_cap_holds() -> None:
    assert Deadline(at=100.0, margin=0.1).total_steps(0.0, 10, 10, 10.0, 1.0) == 10 + 90  # 90 s usable: 9 epochs
    assert Deadline(at=1e9, max_epochs=4).total_steps(0.0, 10, 10, 10.0, 1.0) == 40


def test_a_deadline_already_passed_ends_the_run_where_it_is() -> None:
    assert Deadline(at=50.0).total_steps(now=60.0, steps_done=10, steps_per_epoch=10, epoch_seconds=10.0, val_seconds=1.0) == 10
    # too little time for a partial epoch's validation: no partial epoch
    assert Deadline(at=0.8, margin=0.0).total_steps(0.0, 10, 10, 10.0, 1.0) == 10


def test_warmup_rates_do_not_depend_on_the_total(tiny_config: Callable[..., Any]) -> None:
    """What makes the re-plan exact: during the warmup every schedule's rate ignores the total."""
    for name in ("onecycle", "cosine", "constant", "step"):
        sched = tiny_config(schedule={"name": name, "warmup_epochs": 1.0}).schedule
        for step in range(16):
            assert lr_factor(step, 48, sched, 16) == lr_factor(step, 160, sched, 16), (name, step)


# --------------------------------------------------------------------------- runs


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.pt")["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_a_run_of_steps_ends_part_way_through_its_last_epoch(tmp_path: Path, tiny_config: Callable[..., Any]) -> None:
    steps_per_epoch = math.ceil(N_TRAIN / BATCH)
    steps = 2 * steps_per_epoch + 5
    summary = run_training(tiny_config(train={"steps": steps}), tmp_path / "run", verbose=False)
    records = RunFolder(tmp_path / "run").read_metrics()
    assert [r["step"] for r in records] == [steps_per_epoch, 2 * steps_per_epoch, steps]
    assert all(r["epochs"] == 3 for r in records) and summary["epochs_run"] == 3
    assert records[-1]["val_acc"] is not None  # the part epoch is validated like any other
    assert records[-1]["lr"] == pytest.approx(0.1 * lr_factor(steps - 1, steps, tiny_config().schedule))  # the schedule ran out


@pytest.mark.slow
def test_a_deadline_re_plans_once_and_the_run_equals_a_fresh_run_of_those_steps(
    tmp_path: Path, tiny_config: Callable[..., Any]
) -> None:  # fmt: skip
    base = {"epochs": 6}
    warm = {"warmup_epochs": 1.0}
    # A far deadline capped at 3 epochs: the first epoch's pace cannot change the answer, so the test is deterministic.
    run_training(tiny_config(train=base, schedule=warm), tmp_path / "paced", verbose=False,
                 deadline=Deadline(time.time() + 1e6, max_epochs=3))  # fmt: skip
    paced = RunFolder(tmp_path / "paced")
    steps = paced.read_config().train.steps
    assert steps == 3 * math.ceil(N_TRAIN / BATCH)
    assert [r["epoch"] for r in paced.read_metrics()] == [0, 1, 2]
    assert load_checkpoint(paced.last_pt)["config"]["train"]["steps"] == steps  # a resume continues the re-planned run
    run_training(tiny_config(train={**base, "steps": steps}, schedule=warm), tmp_path / "fresh", verbose=False)
    _assert_same_weights(tmp_path / "paced", tmp_path / "fresh")


class _Recorded(Deadline):
    """A real deadline that also notes the pace each re-plan was given."""

    def total_steps(self, now: float, steps_done: int, steps_per_epoch: int, epoch_seconds: float, val_seconds: float) -> int:
        _PACES.append((steps_done, epoch_seconds))
        return super().total_steps(now, steps_done, steps_per_epoch, epoch_seconds, val_seconds)


_PACES: list[tuple[int, float]] = []


def test_a_deadline_re_plans_after_every_warmup_epoch_from_their_median_pace(
    tmp_path: Path, tiny_config: Callable[..., Any]
) -> None:  # fmt: skip
    base, warm = {"epochs": 6}, {"warmup_epochs": 3.0}
    _PACES.clear()
    run_training(tiny_config(train=base, schedule=warm), tmp_path / "paced", verbose=False,
                 deadline=_Recorded(time.time() + 1e6, max_epochs=4))  # fmt: skip
    spe = math.ceil(N_TRAIN / BATCH)
    # after epochs 1, 2 and 3 (all warmup), never after epoch 4
    assert [done for done, _ in _PACES] == [spe, 2 * spe, 3 * spe]
    paced = RunFolder(tmp_path / "paced")
    times = [r["time"] + r["val_time"] for r in paced.read_metrics()]
    # each re-plan's pace is the median of the epochs so far (each also pays its checkpoint and curves: >= the record's)
    for k, (_, pace) in enumerate(_PACES, start=1):
        assert sorted(times[:k])[(k - 1) // 2] * 0.99 <= pace
    assert paced.read_config().train.steps == 4 * spe
    run_training(tiny_config(train={**base, "steps": 4 * spe}, schedule=warm), tmp_path / "fresh", verbose=False)
    _assert_same_weights(tmp_path / "paced", tmp_path / "fresh")


@pytest.mark.slow
def test_no_re_plan_when_the_first_epoch_was_not_all_warmup(tmp_path: Path, tiny_config: Callable[..., Any]) -> None:
    """Without a warmup of an epoch the rates already depended on the total: the planned epochs stand."""
    run_training(tiny_config(train={"epochs": 3}), tmp_path / "run", verbose=False,
                 deadline=Deadline(time.time() + 1e6, max_epochs=1))  # fmt: skip
    folder = RunFolder(tmp_path / "run")
    assert folder.read_config().train.steps is None and len(folder.read_metrics()) == 3


@pytest.mark.slow
def test_a_passed_deadline_stops_after_the_first_epoch(tmp_path: Path, tiny_config: Callable[..., Any]) -> None:
    summary = run_training(tiny_config(train={"epochs": 4}, schedule={"warmup_epochs": 1.0}), tmp_path / "run",
                           verbose=False, deadline=Deadline(time.time()))  # fmt: skip
    assert summary["epochs_run"] == 1 and summary["test_acc"] is not None

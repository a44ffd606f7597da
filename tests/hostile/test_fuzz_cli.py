"""Property-based fuzzing of the CLI's numeric flags and ``--data`` specs (hypothesis).

Whatever number (finite, nan, inf, negative, zero, huge, not a number) goes into a flag,
and whatever options go into a ``synthetic:`` spec, the CLI either works (exit 0 with a
finite result) or refuses in one line (exit 2 before any work; exit 1 only for a run that
diverged or data that cannot fill a batch), never with a traceback. Values are small, so a
run that is accepted trains 1 epoch on 64 images of 8x8 px in about a second.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hostile_cli import run_cli  # tests/hostile/hostile_cli.py (this folder is on sys.path)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TINY = "synthetic:classes=2,n=64,size=8,channels=1"
BASE = ("--model", "simple", "--model-opt", "spec=c8-p", "--epochs", "1", "--batch-size", "16", "--device", "cpu")
# check, overfit and lr-find take no --epochs (they train no epochs): the flags they share with train.
STEP_BASE = ("--model", "simple", "--model-opt", "spec=c8-p", "--batch-size", "16", "--device", "cpu")

# Numbers as a user types them: the edge cases, and small finite values either side of 0 and 1.
SPECIAL = ["nan", "-nan", "inf", "-inf", "0", "-0", "-1", "1", "1e23", "100000000000000000000000", "1e-300",
           "abc", "", "0x10", "1_0", " 2", "0.5", "0.999", "3"]  # fmt: skip
NUMBER = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(min_value=-3, max_value=5).map(str),
    st.floats(min_value=-2, max_value=2, allow_nan=False).map(repr),
)
# Numeric flags of `cnnlab train` (check/overfit/lr-find share those they use). --epochs,
# --image-size and --train-subset are drawn from NUMBER too, whose values are small.
TRAIN_FLAGS = ["--lr", "--momentum", "--wd", "--warmup", "--epochs", "--seed", "--label-smoothing", "--grad-clip",
               "--ema", "--early-stopping", "--train-subset", "--checkpoint-minutes", "--dropout", "--val-split",
               "--test-split", "--split-seed", "--batch-size", "--image-size"]  # fmt: skip
# Refusals that are exit 1 after reading the data: the value was in range, the data too small for it.
DATA_DEPENDENT = ("fewer than one batch", "smaller than the number of classes", "became NaN/inf", "no images")


def _check(result, out: Path | None) -> None:  # noqa: ANN001 - conftest.Result
    assert "Traceback" not in result.text, result.text
    assert result.code in (0, 1, 2), result.text
    if result.code == 0:
        if out is not None:
            summary = json.loads((out / "summary.json").read_text())
            assert summary["test_acc"] is None or math.isfinite(summary["test_acc"]), summary
        return
    line = result.error_line()
    if result.code == 1:
        assert any(reason in line for reason in DATA_DEPENDENT), line


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(TRAIN_FLAGS), value=NUMBER)
def test_train_numeric_flags(tmp_path_factory: pytest.TempPathFactory, flag: str, value: str) -> None:
    out = tmp_path_factory.mktemp("fuzz") / "run"
    # --epochs and --batch-size are in BASE too: the drawn value comes last, and argparse keeps the last
    result = run_cli("train", "--data", TINY, *BASE, "--quiet", "--out", out, f"{flag}={value}")
    _check(result, out)
    if result.code == 2:
        assert not out.exists(), "a refused run leaves no folder"


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(command=st.sampled_from(["check", "lr-find", "overfit"]),
       flag=st.sampled_from(["--batches", "--steps", "--start-lr", "--end-lr", "--diverge", "--lr", "--seed"]),
       value=NUMBER)  # fmt: skip
def test_recipe_step_numeric_flags(tmp_path_factory: pytest.TempPathFactory, command: str, flag: str, value: str) -> None:
    # check uses no learning rate, and lr-find sweeps its own: neither takes --lr
    valid = {"check": {"--batches", "--seed"}, "overfit": {"--batches", "--steps", "--lr", "--seed"},
             "lr-find": {"--steps", "--start-lr", "--end-lr", "--diverge", "--seed"}}  # fmt: skip
    if flag not in valid[command]:
        flag = "--seed"
    out = tmp_path_factory.mktemp("fuzz") / "out"
    extra = {"lr-find": ("--steps", "13"), "overfit": ("--steps", "5"), "check": ("--batches", "1")}[command]
    result = run_cli(command, "--data", TINY, *STEP_BASE, *extra, "--out", out, f"{flag}={value}")
    assert "Traceback" not in result.text, result.text
    # check and overfit exit 1 when a check fails: that is their verdict, printed, not an error
    assert result.code in (0, 1, 2), result.text
    if result.code == 2:
        result.error_line()


@settings(max_examples=60, deadline=None)
@given(options=st.dictionaries(
    st.sampled_from(["classes", "n", "test", "size", "channels", "noise", "seed", "colour", "", "N"]),
    st.one_of(st.sampled_from(SPECIAL), st.integers(min_value=-5, max_value=300).map(str)),
    max_size=4,
))  # fmt: skip
def test_synthetic_specs(options: dict[str, str]) -> None:
    spec = "synthetic" + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "")
    # `data info` loads the data and prints its table: the whole spec path, without training.
    result = run_cli("data", "info", spec)
    assert "Traceback" not in result.text, result.text
    assert result.code in (0, 2), result.text
    if result.code == 2:
        result.error_line()

"""Flip test-time augmentation: ``train.tta`` off | on | auto, chosen on the validation split.

The choice of ``auto`` is checked on two constructed cases where its answer is known
exactly, not hoped for: images whose class is the side the white patch is on (flipping
turns every image into the other class, so TTA must lose), and images whose class is
top or bottom (a mirror image keeps its class), seen by a model that learned only from the
left half of the picture (so the mirror image tells it what the original hides, and TTA
must win). Both models are fixed functions, so each accuracy is a known fraction.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.cli.main import build_parser, main
from cnnlab.cli.train import run_overrides
from cnnlab.config import RunConfig, TrainConfig, TtaMode, choices, dump_yaml, from_dict, load_run_config, to_dict
from cnnlab.data.imageset import ImageSet, Splits
from cnnlab.errors import UsageError
from cnnlab.run import finish_run, result_line, run_training
from cnnlab.runfolder import RunFolder
from cnnlab.train.fit import History
from cnnlab.train.runtime import resolve_runtime

SIZE = 8  # images are SIZE x SIZE, one channel, black with one white 2x2 patch
N = 40  # images per split: 10 of each (class, side) pair
SCALE = 100.0  # logits of +-400 for a patch: softmax gives exactly 1 and 0, so ties are exact too


def _patch_images(top: np.ndarray, left: np.ndarray, seed: int) -> np.ndarray:
    """(len(top), 1, SIZE, SIZE) uint8: a white 2x2 patch in the quarter that ``top``/``left`` name."""
    rng = np.random.default_rng(seed)
    images = np.zeros((len(top), 1, SIZE, SIZE), np.uint8)
    half = SIZE // 2
    for i, (t, lft) in enumerate(zip(top, left)):
        r = int(rng.integers(0, half - 1)) + (0 if t else half)  # the patch stays inside its half
        c = int(rng.integers(0, half - 1)) + (0 if lft else half)
        images[i, 0, r : r + 2, c : c + 2] = 255
    return images


def _splits(name: str, make: Callable[[int], ImageSet], *, val: bool = True) -> Splits:
    empty = ImageSet(np.zeros((0, 1, SIZE, SIZE), np.uint8), np.zeros(0, np.int64), make(0).classes)
    # "unit": pixels in [0, 1], so no statistics are computed (or cached) for this made-up data
    return Splits(make(1), make(2) if val else empty, make(3), name, f"tta-{name}", normalize="unit")


def orientation_split(seed: int) -> ImageSet:
    """Class 0: the patch is in the left half; class 1: in the right half. A mirror image changes class."""
    left = np.arange(N) % 2 == 0
    top = (np.arange(N) // 2) % 2 == 0
    return ImageSet(_patch_images(top, left, seed), (~left).astype(np.int64), ("left", "right"))


def symmetric_split(seed: int) -> ImageSet:
    """Class 0: the patch is in the top half; class 1: the bottom half, on either side. A mirror image keeps its class.

    Even positions have the patch on the left, odd ones on the right: rank r of 2 evaluates
    positions r, r + 2, ..., so in a 2-process run each process sees only one side.
    """
    left = np.arange(N) % 2 == 0
    top = (np.arange(N) // 2) % 2 == 0
    return ImageSet(_patch_images(top, left, seed), (~top).astype(np.int64), ("top", "bottom"))


class SideModel(nn.Module):
    """Left or right by the white mass of each half: always right on orientation data, and the
    logits of a mirror image are its own swapped, so flip TTA averages every image to a tie
    (class 0): 50%."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1] // 2
        d = x[..., :w].sum((1, 2, 3)) - x[..., w:].sum((1, 2, 3))
        return SCALE * torch.stack([d, -d], 1)


class LeftHalfModel(nn.Module):
    """Top or bottom from the left half of the picture only (as if it had learned from objects
    facing one way): right on the left-side images, a tie (class 0) on the others: 75%; with
    flip TTA the mirror image shows it every patch: 100%."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        left = x[..., :w]
        d = left[..., :h, :].sum((1, 2, 3)) - left[..., h:, :].sum((1, 2, 3))
        return SCALE * torch.stack([d, -d], 1)


class _Logged(logging.Handler):
    """Collects cnnlab's INFO lines (the CLI's logger does not propagate to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self._level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _Logged:
        logger = logging.getLogger("cnnlab")
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("cnnlab")
        logger.removeHandler(self)
        logger.setLevel(self._level)


def _finish(model: nn.Module, splits: Splits, mode: str, tiny_config: Callable[..., Any], run_dir: Path) -> dict[str, Any]:
    """``finish_run`` of a run that trained nothing: ``model`` is the best model, as is."""
    cfg = tiny_config(train={"tta": mode, "eval_batch_size": 16})
    run_dir.mkdir()
    return finish_run(model, splits, cfg, History(), run_dir, resolve_runtime(cfg.train), wall_seconds=0.0, verbose=False)


def test_auto_keeps_flip_tta_off_where_the_side_is_the_class(tiny_config: Callable[..., Any], tmp_path: Path) -> None:
    with _Logged() as logged:
        summary = _finish(SideModel(), _splits("orientation", orientation_split), "auto", tiny_config, tmp_path / "run")
    assert summary["tta"] == {"mode": "auto", "used": False, "val_acc": 1.0, "val_acc_tta": 0.5}
    assert summary["test_acc"] == 1.0  # the test went without TTA, which would have scored 50%
    assert "flip TTA: validation 100.00% -> 50.00%, not used for the test" in logged.messages
    line = result_line(summary)
    assert line is not None and "TTA" not in line
    assert RunFolder(tmp_path / "run").read_summary()["tta"] == summary["tta"]


def test_auto_uses_flip_tta_where_a_mirror_image_keeps_its_class(tiny_config: Callable[..., Any], tmp_path: Path) -> None:
    with _Logged() as logged:
        summary = _finish(LeftHalfModel(), _splits("symmetric", symmetric_split), "auto", tiny_config, tmp_path / "run")
    assert summary["tta"] == {"mode": "auto", "used": True, "val_acc": 0.75, "val_acc_tta": 1.0}
    assert summary["test_acc"] == 1.0  # with TTA; without it the same weights score 75%
    assert "flip TTA: validation 75.00% -> 100.00%, used for the test" in logged.messages
    line = result_line(summary)
    assert line is not None and line.startswith("test accuracy 100.00% (flip TTA) (loss ")
    saved = RunFolder(tmp_path / "run").read_predictions("test")
    assert saved is not None and np.allclose(np.exp(saved[0]).sum(1), 1.0)  # TTA saves log-probabilities


@pytest.mark.parametrize(("mode", "used", "test_acc"), [("on", True, 1.0), ("off", False, 0.75)])
def test_on_and_off_are_not_measured(mode: str, used: bool, test_acc: float, tiny_config: Callable[..., Any],
                                     tmp_path: Path) -> None:  # fmt: skip
    with _Logged() as logged:
        summary = _finish(LeftHalfModel(), _splits("symmetric", symmetric_split), mode, tiny_config, tmp_path / "run")
    assert summary["tta"] == {"mode": mode, "used": used} and summary["test_acc"] == test_acc
    assert not any("flip TTA" in m for m in logged.messages)


def test_auto_without_a_validation_split_is_off_and_says_why(tiny_config: Callable[..., Any], tmp_path: Path) -> None:
    splits = _splits("symmetric", symmetric_split, val=False)
    with _Logged() as logged:
        summary = _finish(LeftHalfModel(), splits, "auto", tiny_config, tmp_path / "run")
    assert summary["tta"] == {"mode": "auto", "used": False, "reason": "no validation split"}
    assert summary["test_acc"] == 0.75
    assert any(m.startswith("flip TTA: no validation split") for m in logged.messages)


def test_an_untested_run_records_that_no_tta_was_used(tiny_config: Callable[..., Any], tmp_path: Path) -> None:
    """A search trial is not tested, so nothing is evaluated for TTA either."""
    cfg = tiny_config(train={"tta": "auto"})
    (tmp_path / "run").mkdir()
    with _Logged() as logged:
        summary = finish_run(LeftHalfModel(), _splits("symmetric", symmetric_split), cfg, History(), tmp_path / "run",
                             resolve_runtime(cfg.train), wall_seconds=0.0, evaluate_test=False, verbose=False)  # fmt: skip
    assert summary["tta"] == {"mode": "auto", "used": False} and summary["test_acc"] is None
    assert not any("flip TTA" in m for m in logged.messages)


def test_a_trained_run_chooses_on_its_own_validation_accuracy(tiny_config: Callable[..., Any], tmp_path: Path) -> None:
    """The plain validation accuracy of the best weights is the run's own best_val_acc: the same images, the same weights."""
    summary = run_training(tiny_config(epochs=2, train={"tta": "auto", "val_subset": 40}), tmp_path / "run", verbose=False)
    tta = summary["tta"]
    assert tta["mode"] == "auto" and tta["used"] == (tta["val_acc_tta"] > tta["val_acc"])
    assert tta["val_acc"] == pytest.approx(summary["best_val_acc"], abs=1e-12)
    assert load_run_config(tmp_path / "run" / "config.yaml").train.tta == "auto"


def test_the_recipe_trains_its_final_model_with_auto_and_reports_the_choice(tiny_config: Callable[..., Any],
                                                                            tmp_path: Path) -> None:  # fmt: skip
    import dataclasses

    from cnnlab.recipe.state import RecipeOptions, RecipeState
    from cnnlab.recipe.step import RecipeContext, ReportContext
    from cnnlab.recipe.steps import RECIPE_STEPS
    from cnnlab.recipe.steps.chosen import BEST_YAML
    from cnnlab.recipe.steps.final import FinalStep

    base = tiny_config(epochs=1)  # tta: off, as a search's trials leave it
    options = RecipeOptions(budget_seconds=None, coarse_trials=1, final_epochs=1)
    state = RecipeState(config=to_dict(base), options=dataclasses.asdict(options))
    (tmp_path / BEST_YAML).write_text(dump_yaml(base))
    ctx = RecipeContext(base, options, tmp_path, state, RECIPE_STEPS, verbose=False)
    step = FinalStep()
    result = step.run(ctx, "final")
    tta = result.summary["tta"]
    assert tta["mode"] == "auto" and tta["used"] == (tta["val_acc_tta"] > tta["val_acc"])
    assert load_run_config(tmp_path / BEST_YAML).train.tta == "auto"  # best.yaml reproduces the final run
    (tmp_path / "figs").mkdir()
    html = step.report_section([("final", result)], ReportContext(tmp_path, tmp_path / "figs", state, ctx.records))
    verdict = "raised" if tta["used"] else "did not raise"
    assert (f"Flip TTA {verdict} the validation accuracy of the final weights ({tta['val_acc']:.2%} without, "
            f"{tta['val_acc_tta']:.2%} with)") in html  # fmt: skip


# --------------------------------------------------------------------------- config and CLI


def test_the_choices_are_declared_once() -> None:
    assert choices(TtaMode) == ("off", "on", "auto") and TrainConfig().tta == "off"
    with pytest.raises(UsageError, match="train.tta must be one of off, on, auto, got 'maybe'"):
        from_dict(RunConfig, {"train": {"tta": "maybe"}})
    with pytest.raises(UsageError, match="train.tta must be one of"):
        from_dict(RunConfig, {"train": {"tta": 1}})  # 1 is no old switch value


@pytest.mark.parametrize(("old", "new"), [(False, "off"), (True, "on")])
def test_old_tta_switches_still_load(old: bool, new: str, tmp_path: Path) -> None:
    assert from_dict(RunConfig, {"train": {"tta": old}}).train.tta == new
    path = tmp_path / "old.yaml"
    path.write_text(f"train:\n  tta: {str(old).lower()}\n")
    assert load_run_config(path).train.tta == new


def test_yaml_on_and_off_read_as_the_choices(tmp_path: Path) -> None:
    """YAML 1.1 reads an unquoted on/off as true/false; they mean the choices of the same name."""
    for text, mode in (("on", "on"), ("off", "off"), ("auto", "auto"), ("'on'", "on")):
        path = tmp_path / "run.yaml"
        path.write_text(f"train: {{tta: {text}}}\n")
        assert load_run_config(path).train.tta == mode


@pytest.mark.parametrize(("argv", "mode"), [
    ([], None), (["--tta"], "on"), (["--tta", "auto"], "auto"), (["--tta", "off"], "off"), (["--tta", "on"], "on"),
    (["--tta=AUTO"], "auto"), (["--tta", "--epochs", "1"], "on"),
])  # fmt: skip
def test_the_tta_flag(argv: list[str], mode: str | None) -> None:
    args = build_parser().parse_args(["train", *argv])
    assert args.tta == mode
    cfg = load_run_config(None, run_overrides(args))
    assert cfg.train.tta == (mode or "off")


def test_a_wrong_tta_value_is_refused_with_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--tta", "maybe"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --tta: invalid choice: 'maybe'" in err and "auto" in err


def test_eval_tta_stays_a_switch() -> None:
    assert build_parser().parse_args(["eval", "runs/x", "--tta"]).tta is True
    assert build_parser().parse_args(["eval", "runs/x"]).tta is False


def test_train_help_states_the_choices_and_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--tta [{off,on,auto}]" in text and "bare --tta is on; auto: used only if it raises" in text
    assert "validation accuracy of the best weights (default: off)" in text


def _as_old_run(run: Path, tta: bool) -> None:
    """Make a run folder look written before ``tta`` had choices: ``tta: true/false`` in its config and checkpoint."""
    folder = RunFolder(run)
    folder.summary_path.unlink()  # unfinished, so it can be resumed
    state = load_checkpoint(folder.last_pt)
    state["config"]["train"]["tta"] = tta
    save_checkpoint(folder.last_pt, state)
    folder.config_path.write_text(folder.config_path.read_text().replace("tta: 'off'", f"tta: {str(tta).lower()}"))
    assert f"tta: {str(tta).lower()}" in folder.config_path.read_text()


def test_an_old_run_resumes_without_a_changed_setting(tiny_run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _as_old_run(tiny_run_copy, False)
    assert RunFolder(tiny_run_copy).read_config().train.tta == "off"
    # the same setting, spelt the new way, is no change; another one is refused, naming both
    assert main(["train", "--resume", str(tiny_run_copy), "--tta", "--quiet"]) == 2
    assert "--tta (train.tta: run 'off', given 'on')" in capsys.readouterr().err
    assert main(["train", "--resume", str(tiny_run_copy), "--tta", "off", "--quiet"]) == 0
    summary = RunFolder(tiny_run_copy).read_summary()
    assert summary is not None and summary["tta"] == {"mode": "off", "used": False}


def test_an_old_run_with_tta_resumes_with_tta(tiny_run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _as_old_run(tiny_run_copy, True)
    assert main(["train", "--resume", str(tiny_run_copy), "--tta", "--quiet"]) == 0
    assert "(flip TTA)" in capsys.readouterr().out
    summary = RunFolder(tiny_run_copy).read_summary()
    assert summary is not None and summary["tta"] == {"mode": "on", "used": True}


def test_a_result_line_of_an_old_summary() -> None:
    """Summaries written before the choice hold ``"tta": true/false``."""
    base = {"test_acc": 0.9, "test_loss": 0.3, "best_epoch": 2, "run_dir": "runs/x"}
    assert "(flip TTA)" in (result_line({**base, "tta": True}) or "")
    assert "TTA" not in (result_line({**base, "tta": False}) or "")


# --------------------------------------------------------------------------- distributed

_RANK_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from test_tta import LeftHalfModel, _splits, symmetric_split
from cnnlab.config import load_run_config
from cnnlab.run import choose_tta
from cnnlab.train.runtime import resolve_runtime

cfg = load_run_config(None, {{"train": {{"tta": "auto", "device": "cpu", "eval_batch_size": 4}}}})
runtime = resolve_runtime(cfg.train)
decision, _ = choose_tta(LeftHalfModel(), _splits("symmetric", symmetric_split), cfg, runtime, verbose=False)
with open(os.path.join({out!r}, f"rank{{runtime.rank}}.json"), "w") as f:
    json.dump(decision, f)
import torch.distributed as dist
dist.barrier()  # both ranks done before either tears the group down: an exit mid-collective aborts gloo
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_every_process_of_a_distributed_run_makes_the_same_choice(tmp_path: Path) -> None:
    """Rank 0 sees only left-side patches (TTA ties: alone it would say no), rank 1 only right-side
    ones (TTA wins); the all-reduced accuracies (75% -> 100%) decide, alike on both."""
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(_RANK_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path))))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run([*torchrun, str(script)], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    decisions = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert decisions[0] == decisions[1] == {"mode": "auto", "used": True, "val_acc": 0.75, "val_acc_tta": 1.0}

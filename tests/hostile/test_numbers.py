"""Numbers, data specs and options a user types: refused before any work (exit 2, one line),
never a traceback, never a folder left behind, never silently accepted.

Each refusal names the flag or field, the value and the allowed range; ``--help`` states the
same ranges, read from the same table (``cnnlab.config.Range`` on the config fields).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import pytest

from cnnlab import config as c
from cnnlab.cli.common import Number
from cnnlab.errors import CnnlabError, UsageError
from hostile_cli import assert_unchanged, run_cli, snapshot  # tests/hostile/hostile_cli.py (this folder is on sys.path)

# Two classes of 8x8 grayscale images: a run on it takes about a second.
TINY = "synthetic:classes=2,n=64,size=8,channels=1"
TINY_RUN = ("--data", TINY, "--model", "simple", "--model-opt", "spec=c8-p", "--epochs", "1", "--batch-size", "16",
            "--device", "cpu", "--quiet")  # fmt: skip


# --------------------------------------------------------------------------- train flags


@pytest.mark.parametrize(("flag", "value", "allowed"), [
    ("--grad-clip", "-1", "> 0"),  # reversed the gradient: loss 12 -> 468, exit 0
    ("--grad-clip", "0", "> 0"),
    ("--grad-clip", "nan", "> 0"),
    ("--early-stopping", "-3", "[1, 2^31-1]"),
    ("--warmup", "nan", ">= 0"),
    ("--wd", "nan", ">= 0"),
    ("--wd", "-1e-4", ">= 0"),
    ("--lr", "inf", "> 0"),
    ("--momentum", "1", "[0, 1)"),
    ("--label-smoothing", "-0.1", "[0, 1)"),
    ("--ema", "1", "(0, 1)"),
    ("--epochs", "0", "[1, 100000]"),
    ("--seed", "1e23", "[0, 2^32-1]"),
    ("--seed", "100000000000000000000000", "[0, 2^32-1]"),  # was a traceback in torch.manual_seed
    ("--seed", "-1", "[0, 2^32-1]"),
    ("--split-seed", "-2", "[0, 2^32-1]"),
    ("--val-split", "1", "[0, 1)"),
    ("--image-size", "2", "[4, 2^31-1]"),
    ("--train-subset", "0", "[1, 2^31-1]"),
    ("--checkpoint-minutes", "-inf", ">= 0"),
    ("--dropout", "1.5", "[0, 1)"),
    ("--backbone-lr-ratio", "nan", "[0, 1]"),
    ("--freeze-epochs", "-1", "[0, 100000]"),
])  # fmt: skip
def test_train_refuses_out_of_range_numbers_before_any_work(tmp_path: Path, flag: str, value: str, allowed: str) -> None:
    out = tmp_path / "run"
    result = run_cli("train", *TINY_RUN, "--out", out, f"{flag}={value}")  # "=": argparse reads -1e-4 as a flag
    assert result.code == 2, result.text
    line = result.error_line()
    assert flag in line and allowed in line and value in line, line
    assert not out.exists(), "a refused run must leave no folder behind"


@pytest.mark.parametrize(("yaml_text", "field", "allowed"), [
    ("train: {grad_clip: -1}", "train.grad_clip", "> 0"),
    ("train: {seed: 1.0e+23}", "train.seed", "[0, 2^32-1]"),
    ("train: {early_stopping: 2.5}", "train.early_stopping", "integer"),
    ("schedule: {warmup_epochs: .nan}", "schedule.warmup_epochs", ">= 0"),
    ("optim: {weight_decay: .inf}", "optim.weight_decay", ">= 0"),
    ("optim: {lr: 100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000}", "optim.lr", "finite"),  # an int beyond any float
    ("optim: {betas: [0.9, 1.5]}", "optim.betas[1]", "[0, 1)"),
    ("optim: {betas: [0.9]}", "optim.betas", "two numbers"),
    ("schedule: {milestones: [0.5, 2]}", "schedule.milestones[1]", "(0, 1)"),
    ("schedule: {gamma: 0}", "schedule.gamma", "(0, 1]"),
    ("data: {class_subset: [0, -1]}", "data.class_subset[1]", "[0, 2^31-1]"),
    ("train: {eval_batch_size: true}", "train.eval_batch_size", "integer"),
])  # fmt: skip
def test_config_file_values_are_checked_with_the_same_ranges(tmp_path: Path, yaml_text: str, field: str, allowed: str) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml_text + "\n")
    before = snapshot(tmp_path)
    out = tmp_path / "run"
    result = run_cli("train", "--config", cfg, *TINY_RUN, "--out", out)
    assert result.code == 2, result.text
    line = result.error_line()
    assert field in line and allowed in line, line
    assert not out.exists()
    assert_unchanged(before, tmp_path)


def test_a_config_section_built_in_code_is_checked_too() -> None:
    with pytest.raises(UsageError, match=r"train.grad_clip must be a finite number > 0, got -1"):
        c.TrainConfig(grad_clip=-1)
    with pytest.raises(UsageError, match="train.seed must be an integer"):
        c.TrainConfig(seed=2.0)  # type: ignore[arg-type]  # no silent rounding when built directly
    with pytest.raises(UsageError, match="optim.lr"):
        c.OptimConfig(lr=float("nan"))


def _numeric(tp: typing.Any) -> bool:
    args = typing.get_args(tp) or (tp,)
    return any(a in (int, float) or typing.get_origin(a) is tuple and set(typing.get_args(a)) & {int, float}
               for a in args)  # fmt: skip


@pytest.mark.parametrize("section", [c.DataConfig, c.ModelConfig, c.OptimConfig, c.ScheduleConfig, c.TrainConfig, c.TransferConfig])
def test_every_numeric_config_field_has_a_range(section: type) -> None:
    hints = typing.get_type_hints(section)
    missing = [f.name for f in dataclasses.fields(section) if _numeric(hints[f.name]) and "range" not in f.metadata
               and typing.get_origin(hints[f.name]) is not typing.Literal and hints[f.name] is not c.Channels]  # fmt: skip
    assert not missing, f"{section.__name__}: numeric fields without a Range: {missing}"
    for f in dataclasses.fields(section):  # each default is inside its own range
        if "range" in f.metadata and f.default is not None:
            for v in f.default if isinstance(f.default, tuple) else (f.default,):
                assert f.metadata["range"].contains(v), (section.__name__, f.name)


# --------------------------------------------------------------------------- help and flags


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    from cnnlab.cli.main import build_parser

    found, todo = [], [("cnnlab", build_parser())]
    while todo:
        name, parser = todo.pop()
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {n}", p) for n, p in action.choices.items()]
    return found


def test_every_numeric_flag_of_every_command_is_checked_and_its_range_is_in_help() -> None:
    for name, parser in _parsers():
        for action in parser._actions:
            assert action.type not in (int, float) or action.choices, f"`{name} {action.option_strings}` takes any {action.type.__name__}"
            if isinstance(action.type, Number) and action.help is not argparse.SUPPRESS:  # an old name: hidden, same type
                assert f"(allowed: {action.type.range})" in (action.help or ""), (name, action.option_strings)


def test_train_help_states_the_config_ranges() -> None:
    result = run_cli("train", "--help")
    assert result.code == 0
    text = " ".join(result.out.split())  # argparse wraps lines
    for section, field, flag in [(c.TrainConfig, "grad_clip", "--grad-clip NORM"), (c.OptimConfig, "lr", "--lr LR"),
                                 (c.ScheduleConfig, "warmup_epochs", "--warmup EPOCHS")]:  # fmt: skip
        assert f"(allowed: {c.field_range(section, field)})" in text.split(flag)[-1][:300], flag  # [-1]: not the usage


def test_lr_find_steps_range_is_what_the_sweep_needs() -> None:
    from cnnlab.recipe.lrfind import MIN_SKIP

    lrf = dict(_parsers())["cnnlab lr-find"]
    steps = next(a for a in lrf._actions if "--steps" in a.option_strings)
    assert steps.type.range.lo == MIN_SKIP + 10


@pytest.mark.parametrize("argv", [
    ("lr-find", "--start-lr", "0"), ("lr-find", "--diverge", "nan"), ("lr-find", "--steps", "5"),
    ("overfit", "--steps", "0"), ("check", "--batches", "-1"), ("models", "--num-classes", "0"),
    ("inspect", "simple", "--batch-size", "0"), ("inspect", "simple", "--seed", "-5"),
    ("inspect", "simple", "--input", "3x100000x100000"), ("search", "--trials", "0"), ("search", "--workers", "0"),
    ("search", "--lr-range", "nan", "1"), ("recipe", "--rounds", "0"), ("recipe", "--budget", "0s"),
    ("search", "--budget", "10x"), ("eval", "RUN", "--batch-size", "0"), ("predict", "RUN", "x.png", "--topk", "0"),
    ("data", "show", TINY, "--views", "0"), ("diagnose", "RUN", "--classes", "1"),
    ("lab", "run", "norm", "--seeds", "0"), ("lab", "run", "norm", "--budget", "-5m"),
])  # fmt: skip
def test_numeric_options_of_other_commands_are_refused_in_one_line(tmp_path: Path, argv: tuple[str, ...]) -> None:
    before = snapshot(tmp_path)
    result = run_cli(*argv, "--out", tmp_path / "out") if argv[0] in ("lr-find", "overfit", "check", "search", "recipe", "lab") \
        else run_cli(*argv)  # fmt: skip
    assert result.code == 2, result.text
    result.error_line()
    assert not (tmp_path / "out").exists()
    assert_unchanged(before, tmp_path)


def test_lr_find_refuses_an_empty_range_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "lrf"
    # TINY_RUN less --epochs and --quiet, which lr-find does not take (it trains no epochs)
    sweep = ("--data", TINY, "--model", "simple", "--model-opt", "spec=c8-p", "--batch-size", "16", "--device", "cpu")
    result = run_cli("lr-find", *sweep, "--start-lr", "1", "--end-lr", "0.1", "--out", out)
    assert result.code == 2 and "--start-lr < --end-lr" in result.error_line()
    assert not out.exists()


# --------------------------------------------------------------------------- model options


@pytest.mark.parametrize("key", ["num_classes", "in_chans", "input_size", "name"])
def test_model_options_the_data_decides_are_refused(tmp_path: Path, key: str) -> None:
    # was: TypeError: ... got multiple values for keyword argument 'num_classes'
    out = tmp_path / "run"
    result = run_cli("train", *TINY_RUN, "--model-opt", f"{key}=2", "--out", out)
    assert result.code == 2, result.text
    line = result.error_line()
    assert f"'{key}' cannot be set as a model option" in line and ("data" in line or "--model" in line)
    assert not out.exists()
    inspect = run_cli("inspect", "simple", "--model-opt", f"{key}=2")
    assert inspect.code == 2 and "--model-opt" in inspect.error_line()


def test_the_unknown_option_message_lists_only_settable_options() -> None:
    result = run_cli("inspect", "simple", "--model-opt", "widht=8")
    line = result.error_line()
    assert result.code == 2 and "did you mean 'width'" in line
    assert not any(k in line for k in ("num_classes", "in_chans", "input_size"))


@pytest.mark.parametrize(("option", "message"), [
    ("width=-5", "width must be an integer >= 1"),
    ("width=1e9", "width must be an integer >= 1"),  # YAML reads 1e9 as text
    ("kernel_size=0", "kernel_size must be an integer >= 1"),
    ("depth=abc", "cannot be built with"),
    ("spec=[unclosed", "cannot read the value"),
    ("=3", "expects KEY=VALUE"),
])  # fmt: skip
def test_model_option_values_of_the_wrong_kind_are_one_line(option: str, message: str) -> None:
    result = run_cli("inspect", "simple", "--model-opt", option)
    assert result.code == 2, result.text
    assert message in result.error_line()


# --------------------------------------------------------------------------- --data specs


@pytest.mark.parametrize(("spec", "message"), [
    ("synthetic:noise=-5", "synthetic:noise must be a number in [0, 255], got -5"),
    ("synthetic:n=1e8", "synthetic:n must be an integer in [2, 2^31-1], got '1e8'"),
    ("synthetic:n=abc", "synthetic:n must be an integer"),
    ("synthetic:noise=nan", "synthetic:noise must be a number in [0, 255]"),
    ("synthetic:colour=red", "has no option 'colour'; valid: classes (in [2, 1000]), n"),
    ("synthetic:channels=2", "synthetic:channels must be an integer 1 or 3"),
    ("synthetic:classes=5,n=3", "must be at least the number of classes"),
    ("synthetic:n=1000000,size=512", "GiB is more than the 1 GiB allowed"),
    ("synthetic:n=10,n=20", "given twice"),
    ("synthetic:n", "write name:key=value"),
    ("synthetic:n=", "write name:key=value"),
    ("cifar10:download=no", "data source 'cifar10' has no option 'download' (it takes no options)"),
    ("fashion-mnist:n=5", "takes no options"),
    ("", "data.source (--data) is empty"),
    ("  ", "data.source (--data) is empty"),  # was: the current folder read as an image folder
])  # fmt: skip
def test_malformed_data_specs_are_refused_with_the_allowed_values(tmp_path: Path, spec: str, message: str) -> None:
    out = tmp_path / "run"
    result = run_cli("train", *TINY_RUN, "--data", spec, "--out", out)
    assert result.code == 2, result.text
    assert message in result.error_line()
    assert not out.exists()
    info = run_cli("data", "info", spec)
    assert info.code == 2 and message in info.error_line()


def test_builtin_dataset_names_are_the_config_list() -> None:
    from cnnlab.data.builtin import SOURCES

    assert set(SOURCES) == set(c.BUILTIN_DATASETS)


def test_a_valid_synthetic_spec_still_loads_the_same_data() -> None:
    from cnnlab.data.sources import load_splits

    a = load_splits(c.DataConfig(source="synthetic:classes=3,n=30,size=8,channels=1,noise=5,seed=2"))
    assert a.image_shape == (1, 8, 8) and a.classes == ("class0", "class1", "class2")
    assert a.name == "synthetic:3,30,7,8,1,5.0,2"  # the key (and fingerprint) of existing runs is unchanged


# --------------------------------------------------------------------------- lab


@pytest.mark.parametrize("seeds", ["0", "-1"])
def test_lab_refuses_bad_seeds_before_creating_its_folder(tmp_path: Path, seeds: str) -> None:
    out = tmp_path / "lab"
    result = run_cli("lab", "run", "kernels", "--smoke", "--seeds", seeds, "--out", out)
    assert result.code == 2 and "--seeds" in result.error_line()  # was: IndexError
    assert not out.exists()


def test_lab_settings_are_validated_before_the_folder_exists(tmp_path: Path) -> None:
    from cnnlab.lab.runner import LabSettings, run_lab

    with pytest.raises(UsageError, match="lab seeds"):
        LabSettings(smoke=True, seeds=0)
    out = tmp_path / "lab"
    bad = LabSettings(data="synthetic:noise=-5", epochs=1)
    with pytest.raises(UsageError, match="synthetic:noise"):
        run_lab("kernels", bad, out, verbose=False)
    with pytest.raises(UsageError, match="num_classes"):
        run_lab("kernels", LabSettings(smoke=True, model_options={"num_classes": 3}), out, verbose=False)
    assert not out.exists(), "a refused lab leaves no folder that would refuse the corrected rerun"


def test_lab_refuses_a_folder_that_holds_other_files(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.csv").write_text("my own results\n")
    before = snapshot(out)
    result = run_cli("lab", "run", "kernels", "--smoke", "--out", out)
    assert result.code == 2 and "not empty and holds no lab" in result.error_line()
    assert_unchanged(before, out)
    assert not (out / "lab.json").exists()


def test_a_damaged_lab_json_is_named_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "lab"
    out.mkdir()
    (out / "lab.json").write_text('{"experiment": "kern')  # a truncated write by another tool
    before = snapshot(out)
    result = run_cli("lab", "run", "kernels", "--smoke", "--out", out)
    assert result.code == 1 and "lab.json is damaged" in result.error_line()
    assert_unchanged(before, out)


def test_a_lab_folder_in_use_is_refused(tmp_path: Path) -> None:
    from cnnlab.io import folder_lock
    from cnnlab.lab.runner import LabSettings, run_lab

    out = tmp_path / "lab"
    with folder_lock(out, "lab"):  # as if another `cnnlab lab run` held it
        with pytest.raises(CnnlabError, match="in use by another cnnlab process"):
            run_lab("kernels", LabSettings(smoke=True, batch_size=32), out, verbose=False)
    assert not (out / "lab.json").exists()


"""One CLI grammar: every command's --help states its defaults, and shared ideas have one flag name.

The tests walk every sub-command of the real parser, so a command added later is held to
the same grammar without a test of its own.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from cnnlab import config as c
from cnnlab.cli.main import build_parser, main
from cnnlab.errors import UsageError
from tests.hostile.hostile_cli import run_cli as _run

#: Old spellings, kept hidden for one release: none may show in any --help.
OLD_NAMES = ("--output", "--verbose", "--subset", "--plot")
#: The one spelling of each shared idea, by the dest it sets.
CANONICAL = {"out": "--out", "data": "--data", "quiet": "--quiet", "train_subset": "--train-subset"}


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """(command, parser) of the top level and every sub-command, recursively."""
    found, todo = [], [("cnnlab", build_parser())]
    while todo:
        name, parser = todo.pop()
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {n}", p) for n, p in action.choices.items()]
    return found


PARSERS = dict(_parsers())


def _visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)]


def _help_of(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help lines --help prints for one option, whitespace collapsed (argparse wraps them)."""
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


def _shown(value: object) -> str:
    if value == "":
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


# --------------------------------------------------------------------------- stated defaults


def test_the_walk_reaches_every_command() -> None:
    expected = {"cnnlab train", "cnnlab data info", "cnnlab data show", "cnnlab lab run", "cnnlab inspect",
                "cnnlab export", "cnnlab search", "cnnlab recipe", "cnnlab check", "cnnlab overfit", "cnnlab lr-find"}  # fmt: skip
    assert expected <= set(PARSERS)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_option_with_a_default_states_it(command: str) -> None:
    parser = PARSERS[command]
    for action in _visible(parser):
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or default == [] or not action.option_strings:
            continue
        text = _help_of(parser, action)
        assert f"(default: {_shown(default)})" in text, f"`{command} {action.option_strings[0]}`: {text}"


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_no_option_states_two_defaults(command: str) -> None:
    # a default typed by hand in the help and the stated one would disagree sooner or later
    parser = PARSERS[command]
    for action in _visible(parser):
        text = _help_of(parser, action)
        assert text.count("(default") <= 1, f"`{command} {action.option_strings}`: {text}"


# Flag -> the config field it sets: --help must state the field's default, read from config.py.
RUN_FLAGS = {
    "--data": (c.DataConfig, "source"), "--augment": (c.DataConfig, "augment"),
    "--val-split": (c.DataConfig, "val_split"), "--test-split": (c.DataConfig, "test_split"),
    "--split-seed": (c.DataConfig, "split_seed"), "--normalize": (c.DataConfig, "normalize"),
    "--model": (c.ModelConfig, "name"), "--optimizer": (c.OptimConfig, "name"), "--lr": (c.OptimConfig, "lr"),
    "--momentum": (c.OptimConfig, "momentum"), "--wd": (c.OptimConfig, "weight_decay"),
    "--schedule": (c.ScheduleConfig, "name"), "--warmup": (c.ScheduleConfig, "warmup_epochs"),
    "--epochs": (c.TrainConfig, "epochs"), "--batch-size": (c.TrainConfig, "batch_size"),
    "--seed": (c.TrainConfig, "seed"), "--label-smoothing": (c.TrainConfig, "label_smoothing"),
    "--device": (c.TrainConfig, "device"), "--amp": (c.TrainConfig, "amp"),
    "--channels-last": (c.TrainConfig, "channels_last"), "--checkpoint-minutes": (c.TrainConfig, "checkpoint_minutes"),
    "--mixup": (c.TrainConfig, "mixup"), "--cutmix": (c.TrainConfig, "cutmix"), "--mix-prob": (c.TrainConfig, "mix_prob"),
    "--feature-views": (c.TransferConfig, "feature_views"), "--freeze-epochs": (c.TransferConfig, "freeze_epochs"),
    "--backbone-lr-ratio": (c.TransferConfig, "backbone_lr_ratio"), "--finetune-norm": (c.TransferConfig, "norm"),
}  # fmt: skip


def _field_default(section: type, name: str) -> object:
    field = next(f for f in dataclasses.fields(section) if f.name == name)
    return field.default


@pytest.mark.parametrize("command", ["train", "check", "overfit", "lr-find", "recipe"])
def test_run_flags_state_the_config_defaults(command: str) -> None:
    parser = PARSERS[f"cnnlab {command}"]
    flags = {s: a for a in _visible(parser) for s in a.option_strings}
    checked = 0
    for flag, (section, name) in RUN_FLAGS.items():
        if flag not in flags:
            continue
        assert flags[flag].default is None, f"{flag}: an unset flag must not hide the YAML's value"
        text = _help_of(parser, flags[flag])
        assert f"(default: {_shown(_field_default(section, name))})" in text, f"`{command} {flag}`: {text}"
        checked += 1
    assert checked >= 10


def test_train_help_states_the_defaults_the_issue_names() -> None:
    code, out, _ = _run("train", "--help")
    text = " ".join(out.split())
    assert code == 0
    for flag, value in [("--epochs EPOCHS", "5"), ("--batch-size BATCH_SIZE", "128"), ("--optimizer {sgd,adamw}", "sgd"),
                        ("--schedule {onecycle,cosine,step,constant}", "onecycle"), ("--wd WEIGHT_DECAY", "0.0005"),
                        ("--momentum MOMENTUM", "0.9"), ("--seed SEED", "0"), ("--augment SPEC", "flip")]:  # fmt: skip
        after = text.split(flag)[-1][:400]  # [-1]: the option's help, not the usage line
        assert f"(default: {value})" in after, (flag, after)
    assert "(default: fashion-mnist)" in text.split("--data DATA ")[-1][:400]


# --------------------------------------------------------------------------- one name per idea


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_shared_ideas_have_one_flag_name(command: str) -> None:
    parser = PARSERS[command]
    visible = {s for a in _visible(parser) for s in a.option_strings}
    assert not visible & set(OLD_NAMES), f"`{command}` shows an old name: {visible & set(OLD_NAMES)}"
    assert not any("output" in s or "verbose" in s for s in visible), visible
    for action in _visible(parser):
        if action.dest in CANONICAL and action.option_strings:
            assert CANONICAL[action.dest] in action.option_strings, (command, action.option_strings)
        if "-o" in action.option_strings:
            assert action.dest == "out", (command, action.option_strings)
    assert parser.allow_abbrev is False, f"`{command}` takes abbreviated flags"


@pytest.mark.parametrize("argv, dest, value, old", [
    (["lab", "run", "norm", "--subset", "500"], "train_subset", 500, "--subset"),
    (["data", "show", "mnist", "--output", "grid.png"], "out", "grid.png", "--output"),
    (["export", "runs/x", "--format", "onnx", "--output", "m.onnx"], "out", "m.onnx", "--output"),
    (["inspect", "plain20", "--activations", "--plot", "act.png"], "out", "act.png", "--plot"),
    (["search", "--verbose"], "quiet", False, "--verbose"),
])  # fmt: skip
def test_old_names_still_work_for_a_release_and_say_the_new_one(argv: list[str], dest: str, value: object, old: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cnnlab: note: {old} is deprecated" in err, err


def test_short_o_is_out() -> None:
    assert build_parser().parse_args(["data", "show", "mnist", "-o", "g.png"]).out == "g.png"


@pytest.mark.parametrize("command", ["info", "stats", "show"])
def test_data_commands_take_the_dataset_as_data_flag_or_positional(command: str) -> None:
    parser = build_parser()
    flag = parser.parse_args(["data", command, "--data", "fashion-mnist"])
    positional = parser.parse_args(["data", command, "fashion-mnist"])
    assert flag.data == positional.data == "fashion-mnist" and flag.data_root is None


@pytest.mark.parametrize("argv, message", [
    (["data", "info"], "one of the arguments DATA --data is required"),
    (["data", "info", "mnist", "--data", "cifar10"], "not allowed with"),
])  # fmt: skip
def test_data_commands_need_the_dataset_once(argv: list[str], message: str) -> None:
    code, _, err = _run(*argv)
    assert code == 2 and message in err and err.startswith("usage: cnnlab data info")


def test_no_flag_is_silently_another() -> None:
    # --data-r was read as --data-root, --epoch as --epochs
    code, _, err = _run("train", "--epoch", "3")
    assert code == 2 and "did you mean --epochs?" in err


# --------------------------------------------------------------------------- unknown flags


@pytest.mark.parametrize("argv, usage, suggestion", [
    (["train", "--train_subset", "5"], "usage: cnnlab train", "did you mean --train-subset?"),
    (["data", "show", "mnist", "--sample", "3"], "usage: cnnlab data show", "did you mean --samples?"),
    (["lab", "run", "norm", "--seed", "3"], "usage: cnnlab lab run", "did you mean --seeds?"),
    (["eval", "runs/x", "--top-loss=5"], "usage: cnnlab eval", "did you mean --top-losses?"),
])  # fmt: skip
def test_an_unknown_flag_gets_the_subcommands_usage_and_the_closest_flag(argv: list[str], usage: str, suggestion: str) -> None:
    code, _, err = _run(*argv)
    assert code == 2 and err.startswith(usage), err
    error = err.strip().splitlines()[-1]  # one line: the error and the suggestion
    assert error.startswith(f"{usage.removeprefix('usage: ')}: error: unrecognized arguments") and error.endswith(suggestion)


def test_no_suggestion_for_a_flag_like_no_other() -> None:
    code, _, err = _run("train", "--zzzz")
    assert code == 2 and "did you mean" not in err and "unrecognized arguments: --zzzz" in err


# --------------------------------------------------------------------------- only the flags a command uses


IGNORED_BY_THE_STEPS = ("--epochs", "--tta", "--checkpoint-minutes", "--ema", "--early-stopping", "--schedule",
                        "--warmup", "--compile", "--transfer", "--freeze-epochs")  # fmt: skip


@pytest.mark.parametrize("command, uses, ignores", [
    ("check", ("--wd", "--batch-size", "--seed", "--device", "--model", "--data"), ("--lr", "--augment", "--amp")),
    ("overfit", ("--optimizer", "--lr", "--momentum", "--batch-size", "--amp"), ("--wd", "--augment", "--label-smoothing")),
    ("lr-find", ("--augment", "--wd", "--label-smoothing", "--grad-clip", "--class-weights"), ("--lr",)),
])  # fmt: skip
def test_recipe_steps_take_only_the_flags_they_use(command: str, uses: tuple[str, ...], ignores: tuple[str, ...]) -> None:
    parser = PARSERS[f"cnnlab {command}"]
    flags = {s for a in parser._actions for s in a.option_strings}
    assert set(uses) <= flags
    assert not flags & {*IGNORED_BY_THE_STEPS, *ignores}, flags & {*IGNORED_BY_THE_STEPS, *ignores}
    code, _, err = _run(command, "--tta")
    assert code == 2 and f"--tta is a `cnnlab train` flag that {command} does not use" in err


def test_a_step_builds_its_config_from_the_flags_it_has() -> None:
    from cnnlab.cli.train import run_overrides

    args = build_parser().parse_args(["check", "--data", "mnist", "--wd", "0.01", "--batch-size", "32"])
    cfg = c.load_run_config(None, run_overrides(args))
    assert (cfg.data.source, cfg.optim.weight_decay, cfg.train.batch_size) == ("mnist", 0.01, 32)
    assert cfg.train.epochs == c.TrainConfig().epochs  # not a flag of check: the config's own


# --------------------------------------------------------------------------- quiet, config typos, piped output


def test_quiet_prints_the_result_but_no_header(tmp_path: Path) -> None:
    argv = ["train", "--data", "synthetic:classes=2,n=64,size=8,channels=1", "--model", "simple", "--model-opt",
            "spec=c8-p", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]  # fmt: skip
    code, out, err = _run(*argv, "--out", str(tmp_path / "loud"))
    assert code == 0 and "parameters)" in err  # the header names the model and its size
    code, out, err = _run(*argv, "--out", str(tmp_path / "quiet"), "--quiet")
    assert code == 0 and "parameters)" not in err + out
    assert "test acc" in out.lower() and len(out.strip().splitlines()) == 1, out  # no epoch lines: the result only


def test_a_config_typo_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  epoch: 3\n")
    code, _, err = _run("train", "--config", str(config))
    assert code == 2 and f"config file {config}" in err and "did you mean 'train.epochs'" in err.lower()


def test_a_flag_mistake_does_not_blame_the_file(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  epochs: 3\n")
    with pytest.raises(UsageError) as info:
        c.load_run_config(config, {"model": {"options": {"num_classes": 3}}})
    assert str(config) not in str(info.value)


def test_piped_tables_are_not_wrapped() -> None:
    # rich wraps at 80 columns when it cannot ask a terminal; a pipe gets each row on one line
    from cnnlab.models import list_models, model_info

    code, out, _ = _run("models")
    assert code == 0
    lines = out.splitlines()
    for name in list_models():
        rows = [line for line in lines if line.startswith(f"│ {name} ")]
        assert len(rows) == 1 and model_info(name).description in rows[0], name
    assert max(map(len, lines)) > 120

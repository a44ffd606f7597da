"""Run configuration: parsing, merging, validation, YAML round trips and the one list of choices."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from cnnlab import config as c
from cnnlab.config import (
    DataConfig, ModelConfig, OptimConfig, RunConfig, ScheduleConfig, TrainConfig, TransferConfig,
    dump_yaml, from_dict, load_run_config, load_yaml, merge, to_dict,
)  # fmt: skip
from cnnlab.errors import CnnlabError


def test_nothing_given_is_the_defaults() -> None:
    assert load_run_config() == RunConfig()
    assert load_run_config(None, {"optim": {"lr": None}, "train": None}) == RunConfig()


def test_merge_drops_none_and_merges_nested_mappings() -> None:
    base = {"optim": {"name": "sgd", "lr": 0.1}, "train": {"epochs": 3}, "model": {"options": {"depth": 4}}}
    over = {"optim": {"lr": 0.05, "momentum": None}, "train": None, "model": {"options": {"width": 8}}}
    assert merge(base, over) == {"optim": {"name": "sgd", "lr": 0.05}, "train": {"epochs": 3},
                                 "model": {"options": {"depth": 4, "width": 8}}}  # fmt: skip
    assert base["optim"]["lr"] == 0.1, "merge must not change its input"
    assert merge({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}  # a mapping replaces a scalar


def test_flags_win_over_the_file_and_missing_flags_keep_it(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("optim: {name: adamw, lr: 0.003}\ntrain: {epochs: 7, batch_size: 64}\n")
    cfg = load_run_config(path, {"train": {"epochs": 2, "batch_size": None}})
    assert (cfg.optim.name, cfg.optim.lr, cfg.train.epochs, cfg.train.batch_size) == ("adamw", 0.003, 2, 64)


def test_yaml_round_trip_is_exact(tmp_path: Path) -> None:
    cfg = RunConfig(
        data=DataConfig(source="synthetic:classes=4", augment="flip,crop:4", class_subset=(3, 1), channels=3),
        model=ModelConfig(name="simple", norm="group:4", options={"spec": "c8-p", "depth": 2}),
        optim=OptimConfig(name="adamw", lr=3e-3, betas=(0.8, 0.99)),
        schedule=ScheduleConfig(name="step", milestones=(0.3, 0.6)),
        train=TrainConfig(epochs=2, grad_clip=1.0, amp="off"),
        transfer=TransferConfig(mode="finetune", norm="frozen"),
    )
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_run_config(path) == cfg
    assert to_dict(cfg)["data"]["class_subset"] == [3, 1]  # plain lists in YAML, tuples in the dataclass


@pytest.mark.parametrize(("data", "message"), [
    ({"optim": {"lrr": 0.1}}, "unknown config key 'optim.lrr'. Did you mean 'optim.lr'"),
    ({"trian": {}}, "unknown config key 'trian'. Did you mean 'train'"),
    ({"train": {"epochs": "3"}}, "train.epochs must be an integer"),
    ({"train": {"epochs": True}}, "train.epochs must be an integer"),
    ({"train": {"compile": 1}}, "train.compile must be true or false"),
    ({"optim": {"lr": "fast"}}, "optim.lr must be a number"),
    ({"optim": {"betas": 0.9}}, "optim.betas must be a list"),
    ({"model": {"options": [1]}}, "model.options must be a mapping"),
    ({"optim": {"name": "adam"}}, "optim.name must be one of sgd, adamw, got 'adam' (did you mean 'adamw'?)"),
    ({"schedule": {"name": "linear"}}, "schedule.name must be one of onecycle, cosine, step, constant"),
    ({"data": {"channels": 2}}, "data.channels must be one of 1, 3"),
    ({"data": {"channels": True}}, "data.channels must be one of 1, 3"),  # True == 1, but it is no channel count
    ({"data": {"normalize": "unit8"}}, "did you mean 'unit'"),
    ({"train": {"amp": "fp8"}}, "train.amp must be one of auto, bf16, fp16, off"),
    ({"transfer": {"mode": "fine"}}, "did you mean 'finetune'"),
    ({"data": {"val_split": 1.0}}, "data.val_split must be a number in [0, 1), got 1.0"),
    ({"data": {"val_split": 0.5, "test_split": 0.5}}, "must leave some training data"),
    ({"optim": {"lr": 0}}, "optim.lr must be a finite number > 0, got 0"),
    ({"train": {"ema": 1.0}}, "train.ema must be a number in (0, 1), got 1.0"),
    ({"transfer": {"backbone_lr_ratio": 2}}, "transfer.backbone_lr_ratio must be a number in [0, 1], got 2.0"),
])  # fmt: skip
def test_bad_values_are_one_clear_error(data: dict, message: str) -> None:
    with pytest.raises(CnnlabError) as info:
        load_run_config(None, data)
    assert message in str(info.value)


def test_safe_conversions() -> None:
    cfg = load_run_config(None, {"optim": {"lr": 1}, "train": {"epochs": 3.0}, "data": {"class_subset": [2, 0]}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.data.class_subset == (2, 0)


def test_a_section_built_directly_is_validated_too() -> None:
    # Code that builds a section without YAML (recipe steps, the lab) gets the same checks.
    with pytest.raises(CnnlabError, match="optim.name must be one of"):
        OptimConfig(name="lion")
    with pytest.raises(CnnlabError, match="transfer.norm must be one of train, frozen"):
        dataclasses.replace(TransferConfig(), norm="eval")
    assert TransferConfig(mode=None).mode is None  # optional choices accept None


def test_from_dict_builds_one_section() -> None:
    assert from_dict(OptimConfig, {"name": "adamw"}, where="optim") == OptimConfig(name="adamw")
    with pytest.raises(CnnlabError, match="'optim.nme'"):
        from_dict(OptimConfig, {"nme": "adamw"}, where="optim")


@pytest.mark.parametrize(("text", "message"), [
    (None, "cannot read config file"),
    ("optim: [unclosed", "is not valid YAML"),
    ("- a list", "must hold a mapping"),
])  # fmt: skip
def test_load_yaml_errors_name_the_file(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "cfg.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(CnnlabError, match=message) as info:
        load_yaml(path)
    assert str(path) in str(info.value)


def test_an_empty_yaml_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_run_config(path) == RunConfig()


# --------------------------------------------------------------------------- one list of choices


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: a for a in parser._actions for opt in a.option_strings}


def _subparser(command: str) -> argparse.ArgumentParser:
    from cnnlab.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def test_cli_choices_are_the_config_choices() -> None:
    train = _actions(_subparser("train"))
    expected = {
        "--optimizer": c.OptimizerName, "--schedule": c.ScheduleName, "--amp": c.AmpMode,
        "--channels-last": c.ChannelsLast, "--transfer": c.TransferMode, "--finetune-norm": c.TransferNorm,
        "--normalize": c.Normalize, "--channels": c.Channels, "--act": c.Activation,
    }  # fmt: skip
    for flag, literal in expected.items():
        assert tuple(train[flag].choices) == c.choices(literal), flag
    assert tuple(_actions(_subparser("inspect"))["--act"].choices) == c.choices(c.Activation)


def test_config_choices_are_what_the_models_build() -> None:
    # The models own what each name builds; the config's lists must name exactly those.
    from cnnlab.models.init import INITS
    from cnnlab.models.layers import ACTIVATIONS, NORMS

    assert set(ACTIVATIONS) == set(c.choices(c.Activation))
    assert set(NORMS) == set(c.choices(c.NormName))
    assert {i.partition(":")[0] for i in INITS} == set(c.choices(c.InitName))


def test_every_choice_is_accepted() -> None:
    for name in c.choices(c.OptimizerName):
        assert load_run_config(None, {"optim": {"name": name}}).optim.name == name
    for name in c.choices(c.ScheduleName):
        assert load_run_config(None, {"schedule": {"name": name}}).schedule.name == name
    for mode in c.choices(c.TransferMode):
        assert TransferConfig(mode=mode).mode == mode

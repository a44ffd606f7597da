"""Your own model from the command line: ``--model FILE.py:FACTORY`` / ``MODULE:FACTORY``.

A real file of user code is trained, evaluated, predicted with and exported through the CLI;
the run folder keeps a copy of it and the checkpoints its sha256. Loading the saved model
needs the code named again (``--model``) or the copy trusted (``--trust-code``): a
checkpoint that names code, however it was made or edited, never runs it. Each mistake a
user can make in the file is one line naming the factory and the fix.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.cli.main import main
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.infer.saved import read_saved_model
from cnnlab.models import create_model, model_from_args
from cnnlab.models.user import allow_user_code, is_user_model, parse_user_spec

DATA = "synthetic:classes=3,n=240,size=12,channels=1"

SMALL = '''
import torch
from torch import nn


def build(num_classes, in_chans, width=8):
    """A small CNN of the user's own: conv, pool, linear."""
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def channels_word(num_classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def wrong_type(num_classes, in_chans):
    return "a model"


def wrong_classes(num_classes, in_chans):
    return nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes + 1))


def rgb_only(num_classes, in_chans):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def raises(num_classes, in_chans):
    width = num_classes // 0
    return width


def no_data_args():
    return nn.Linear(2, 2)
'''

# Imported only if something runs it: it leaves a file behind (the test looks for it).
EVIL = '''
from pathlib import Path
Path(__file__).with_name("RAN").write_text("code ran")


def build(num_classes, in_chans, **options):
    import torch.nn as nn
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 144, num_classes))
'''


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
    return int(code), out.getvalue(), err.getvalue()


@pytest.fixture()
def nets(tmp_path: Path) -> Path:
    folder = tmp_path / "nets"
    folder.mkdir()
    (folder / "small.py").write_text(SMALL)
    return folder


def _build(spec: str, **options: object) -> torch.nn.Module:
    return create_model(spec, num_classes=3, in_chans=1, input_size=12, **options)


# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize("name, user", [
    ("resnet9s", False), ("timm:resnet18", False), ("torchvision:resnet18", False), ("efficientnet_lite0", False),
    ("nets/small.py:build", True), ("small.py:build", True), ("mypkg.models:build", True), ("mymodels:build", True),
])  # fmt: skip
def test_specs_of_user_code_are_told_from_registered_models_and_backbones(name: str, user: bool) -> None:
    assert is_user_model(name) is user


def test_a_spec_names_a_file_or_a_module_and_a_factory() -> None:
    spec = parse_user_spec("nets/small.py:build")
    assert (spec.target, spec.factory, spec.is_file, spec.copy_name, spec.label) == ("nets/small.py", "build", True, "small.py", "small-build")
    spec = parse_user_spec("mypkg.models:make")
    assert (spec.target, spec.factory, spec.is_file, spec.copy_name) == ("mypkg.models", "make", False, "models.py")
    with pytest.raises(UsageError, match="factory's name"):
        parse_user_spec("nets/small.py:build-it")
    with pytest.raises(UsageError, match="is not a .py file"):
        parse_user_spec("nets/small.txt:build")


# --------------------------------------------------------------------------- building and its errors


def test_the_factory_gets_the_data_arguments_and_the_options(nets: Path) -> None:
    model = _build(f"{nets}/small.py:build", width=5)
    assert model[0].in_channels == 1 and model[0].out_channels == 5 and model[-1].out_features == 3
    args = model.model_args
    assert args["name"] == f"{nets}/small.py:build" and args["options"] == {"width": 5}
    assert (args["num_classes"], args["in_chans"], args["input_size"]) == (3, 1, 12)
    assert args["code"]["sha256"] == hashlib.sha256(SMALL.encode()).hexdigest() and args["code"]["file"] == "small.py"
    # a factory that calls the channels in_channels (torch's word) gets them under that name
    assert _build(f"{nets}/small.py:channels_word")[0].in_channels == 1


def test_a_module_factory_is_imported_from_the_path(nets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = nets.parent / "userpkg_h4"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(SMALL)
    monkeypatch.syspath_prepend(str(nets.parent))
    try:
        model = _build("userpkg_h4.models:build")
        assert model.model_args["code"]["file"] == "models.py"
        assert model.model_args["code"]["origin"] == str(package / "models.py")
    finally:
        for name in [n for n in sys.modules if n.startswith("userpkg_h4")]:
            del sys.modules[name]


@pytest.mark.parametrize("factory, error, match", [
    ("nope", CnnlabError, r"the factory 'nope' in .*small.py does not exist; .*its functions: build, channels_word"),
    ("buld", CnnlabError, r"did you mean 'build'\?"),
    ("wrong_type", CnnlabError, r"returned a str, not a torch.nn.Module; return the model"),
    ("wrong_classes", CnnlabError, r"returns shape \(2, 4\) for 2 images of 1x12x12; it must return logits of shape \(2, 3\)"),
    ("rgb_only", CnnlabError, r"fails on a batch of 2 images of 1x12x12 .*it must take in_chans=1 channel\(s\) at 12 px"),
    ("raises", CnnlabError, r"the factory .*:raises raised \(line \d+ of small.py\) ZeroDivisionError"),
    ("no_data_args", CnnlabError, r"must take num_classes \(and in_chans\)"),
])  # fmt: skip
def test_each_mistake_in_the_user_code_is_one_line_naming_it(nets: Path, factory: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match) as info:
        _build(f"{nets}/small.py:{factory}")
    assert "\n" not in str(info.value)


def test_missing_files_modules_and_unknown_options_are_named(nets: Path) -> None:
    with pytest.raises(CnnlabError, match=r"model file .*missing.py does not exist; check the path in --model"):
        _build(f"{nets}/missing.py:build")
    with pytest.raises(CnnlabError, match=r"cannot import module no_such_pkg_h4.models .*no module named 'no_such_pkg_h4'"):
        _build("no_such_pkg_h4.models:build")
    with pytest.raises(UsageError, match=r"has no option 'widht'; did you mean 'width'\?"):
        _build(f"{nets}/small.py:build", widht=4)
    (nets / "broken.py").write_text("import torch\n\ndef build(num_classes, in_chans)\n    pass\n")
    with pytest.raises(CnnlabError, match=r"importing .*broken.py .*failed \(line 3 of broken.py\): SyntaxError"):
        _build(f"{nets}/broken.py:build")


def test_a_run_builds_it_with_the_prior_bias_on_its_last_linear(nets: Path, tiny_config) -> None:
    from cnnlab.run import build_model, default_run_dir, load_data

    cfg = tiny_config(DATA, model={"name": f"{nets}/small.py:build", "options": {"width": 4}})
    splits = load_data(cfg)
    model = build_model(cfg, splits)
    counts = torch.as_tensor(splits.train.class_counts() + 1, dtype=torch.float64)
    torch.testing.assert_close(model[-1].bias, (counts / counts.sum()).log().float())
    assert default_run_dir(cfg).name.startswith("small-build-synthetic-")  # no path separators in the folder name


# --------------------------------------------------------------------------- never because a file says so


def _checkpoint_naming(tmp_path: Path, tiny_run: Path, model_args: dict) -> Path:
    state = load_checkpoint(tiny_run / "best.pt")
    folder = tmp_path / "crafted"
    folder.mkdir()
    return save_checkpoint(folder / "best.pt", {**state, "model_args": model_args})


@pytest.mark.parametrize("with_record", [True, False], ids=["with-code-record", "without"])
def test_a_checkpoint_that_names_code_never_runs_it(tmp_path: Path, tiny_run: Path, with_record: bool) -> None:
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL)
    args = {"name": f"{evil}:build", "num_classes": 3, "in_chans": 1, "input_size": 12, "options": {}}
    if with_record:
        args["code"] = {"sha256": hashlib.sha256(EVIL.encode()).hexdigest(), "file": "evil.py", "origin": str(evil)}
    ckpt = _checkpoint_naming(tmp_path, tiny_run, args)
    with pytest.raises(UsageError, match=r"cnnlab does not run code because a saved model names it: pass --model"):
        read_saved_model(ckpt)
    with pytest.raises(UsageError, match="pass --model"):
        model_from_args(args)
    # a module spec (something installed) is not imported either
    with pytest.raises(UsageError, match="pass --model"):
        model_from_args({**args, "name": "antigravity:build"})
    # a copy in the run folder runs only when trusted: here it is not
    (ckpt.parent / "code").mkdir()
    shutil.copy(evil, ckpt.parent / "code" / "evil.py")
    with pytest.raises(UsageError, match=r"or --trust-code to run the copy kept in"):
        read_saved_model(ckpt)
    assert "antigravity" not in sys.modules
    assert not (tmp_path / "RAN").exists() and not (ckpt.parent / "code" / "RAN").exists()


def test_trust_code_refuses_a_copy_that_is_not_the_code_the_model_was_trained_with(tmp_path: Path, tiny_run: Path) -> None:
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL)
    record = {"sha256": hashlib.sha256(b"the trained code").hexdigest(), "file": "evil.py", "origin": str(evil)}
    args = {"name": f"{evil}:build", "num_classes": 3, "in_chans": 1, "input_size": 12, "options": {}, "code": record}
    ckpt = _checkpoint_naming(tmp_path, tiny_run, args)
    (ckpt.parent / "code").mkdir()
    shutil.copy(evil, ckpt.parent / "code" / "evil.py")
    with allow_user_code(trust_copies=True), pytest.raises(CnnlabError, match=r"--trust-code: .*evil.py is not the code"):
        read_saved_model(ckpt)
    assert not (ckpt.parent / "code" / "RAN").exists()


# --------------------------------------------------------------------------- the whole path, through the CLI


def _png(path: Path, seed: int) -> Path:
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 12), dtype=np.uint8), mode="L").save(path)
    return path


@pytest.mark.slow
def test_a_user_model_trains_evaluates_predicts_exports_and_resumes(tmp_path: Path, nets: Path) -> None:
    spec = f"{nets}/small.py:build"
    run = tmp_path / "run"
    code, out, err = _cli("train", "--data", DATA, "--model", spec, "--model-opt", "width=6", "--epochs", "2",
                          "--batch-size", "16", "--lr", "0.05", "--augment", "none", "--device", "cpu",
                          "--checkpoint-minutes", "0", "--out", str(run), "--quiet")  # fmt: skip
    assert code == 0, err
    assert "test accuracy" in out
    # the run folder keeps the exact code; the checkpoint its hash, the spec and the user's own layer names
    assert (run / "code" / "small.py").read_text() == SMALL
    state = load_checkpoint(run / "best.pt")
    assert state["model_args"]["name"] == spec and state["model_args"]["options"] == {"width": 6}
    assert state["model_args"]["code"]["sha256"] == hashlib.sha256(SMALL.encode()).hexdigest()
    assert set(state["model"]) == {"0.weight", "0.bias", "4.weight", "4.bias"}

    # loading it needs the code named, or the copy trusted
    code, _, err = _cli("eval", str(run), "--device", "cpu")
    assert code == 2 and "pass --model" in err and "--trust-code" in err and len(err.strip().splitlines()) == 1
    code, out, err = _cli("eval", str(run), "--device", "cpu", "--model", spec, "--out", str(tmp_path / "ev1"))
    assert code == 0, err
    assert "accuracy" in out

    # the user's file moves away: the copy the run keeps still loads the model, when trusted
    shutil.move(nets / "small.py", tmp_path / "moved.py")
    image = _png(tmp_path / "x.png", 0)
    code, out, err = _cli("predict", str(run), str(image), "--device", "cpu", "--trust-code", "--json")
    assert code == 0, err
    assert '"predictions"' in out
    code, out, err = _cli("predict", str(run), str(image), "--device", "cpu", "--model", f"{tmp_path}/moved.py:build", "--json")
    assert code == 0, err
    code, out, err = _cli("export", str(run), "--format", "safetensors", "--out", str(tmp_path / "m.safetensors"), "--trust-code")
    assert code == 0, err
    # the export alone has no copy to trust: its code is named
    code, _, err = _cli("predict", str(tmp_path / "m.safetensors"), str(image), "--device", "cpu", "--trust-code")
    assert code == 1 and "has no copy of its code" in err
    code, out, err = _cli("predict", str(tmp_path / "m.safetensors"), str(image), "--device", "cpu", "--json",
                          "--model", f"{tmp_path}/moved.py:build")  # fmt: skip
    assert code == 0, err

    # --resume (here of a run whose summary is gone, so it tests again) needs the same naming
    (run / "summary.json").unlink()
    code, _, err = _cli("train", "--resume", str(run), "--quiet")
    assert code == 2 and "pass --model" in err
    code, out, err = _cli("train", "--resume", str(run), "--quiet", "--trust-code")
    assert code == 0, err
    assert "test accuracy" in out

"""Hostile inputs to the commands that use saved models (eval, predict, export) and `data show`.

What they write must never replace a run's files, another evaluation's results or an
existing file the user did not ask to replace; what they read may be anything (text, JSON,
an empty file, a folder, a pickle of a list, a checkpoint with impossible fields), and gets
one line naming the file. Each test snapshots the files that exist and checks that none
changed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch


from hostile_cli import assert_unchanged, run_cli, snapshot  # tests/hostile/hostile_cli.py (this folder is on sys.path)

SMALL_DATA = "synthetic:classes=3,n=60,size=8,channels=1"


def _refused(result, *words: str) -> str:  # noqa: ANN001 - Result
    """The one error line of an exit-2 refusal, checked to contain ``words``."""
    assert result.code == 2, result.text
    line = result.error_line()
    assert len(result.err.strip().splitlines()) == 1, result.err
    for word in words:
        assert word in line, line
    return line


def _failed(result, *words: str) -> str:  # noqa: ANN001 - Result
    """The one error line of an exit-1 failure, checked to contain ``words``."""
    assert result.code == 1, result.text
    line = result.error_line()
    assert len(result.err.strip().splitlines()) == 1, result.err
    for word in words:
        assert word in line, line
    return line


# --------------------------------------------------------------------------- export -o


@pytest.mark.parametrize("fmt", ["torchscript", "safetensors", "onnx"])
@pytest.mark.parametrize("name", ["best.pt", "last.pt", "config.yaml", "metrics.jsonl", "summary.json",
                                  "predictions-test.npz", "curves.png"])  # fmt: skip
@pytest.mark.parametrize("force", [False, True])
def test_export_never_writes_a_run_file_into_another_run(
    tiny_run: Path, tiny_run_copy: Path, fmt: str, name: str, force: bool
) -> None:
    # The issue: `export RUN --format torchscript -o OTHER/best.pt` replaced OTHER's checkpoint
    # (exit 0); `--format safetensors -o OTHER/last.pt` made OTHER unresumable.
    other = tiny_run_copy
    before = snapshot(tiny_run, other)
    result = run_cli("export", tiny_run, "--format", fmt, "-o", other / name, *(["--force"] if force else []))
    _refused(result, name, "run")
    assert_unchanged(before, tiny_run, other)


@pytest.mark.parametrize("name", ["best.pt", "last.pt", "summary.json", "config.yaml"])
def test_export_never_replaces_its_own_runs_files(tiny_run_copy: Path, name: str) -> None:
    before = snapshot(tiny_run_copy)
    _refused(run_cli("export", tiny_run_copy, "--format", "torchscript", "-o", tiny_run_copy / name, "--force"), name)
    assert_unchanged(before, tiny_run_copy)


def test_export_never_replaces_the_checkpoint_it_reads(tiny_run: Path, tmp_path: Path) -> None:
    ckpt = Path(shutil.copy(tiny_run / "best.pt", tmp_path / "model.pt"))  # outside any run folder
    before = snapshot(tmp_path)
    _refused(run_cli("export", ckpt, "--format", "torchscript", "-o", ckpt, "--force"), "checkpoint")
    assert_unchanged(before, tmp_path)


def test_export_into_another_runs_folder_under_its_export_names(tiny_run: Path, tiny_run_copy: Path) -> None:
    # OTHER/best.safetensors would pass for OTHER's own export (and `eval OTHER/best.safetensors`
    # would evaluate the wrong model); a folder as -o gets exactly that default name.
    before = snapshot(tiny_run, tiny_run_copy)
    _refused(run_cli("export", tiny_run, "--format", "safetensors", "-o", tiny_run_copy), "another run")
    _refused(run_cli("export", tiny_run, "--format", "onnx", "-o", tiny_run_copy / "last.onnx", "--force"), "another run")
    assert_unchanged(before, tiny_run, tiny_run_copy)


def test_export_replaces_an_existing_file_only_with_force(tiny_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    target = tmp_path / "mine.safetensors"
    target.write_bytes(b"my own file")
    before = snapshot(tmp_path)
    _refused(run_cli("export", tiny_run, "--format", "safetensors", "-o", target), "already exists", "--force")
    assert_unchanged(before, tmp_path)
    result = run_cli("export", tiny_run, "--format", "safetensors", "-o", target, "--force")
    assert result.code == 0, result.text
    assert target.read_bytes() != b"my own file"
    # and the default place next to the checkpoint: a second export is refused the same way
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    assert run_cli("export", run, "--format", "safetensors").code == 0
    before = snapshot(run)
    _refused(run_cli("export", run, "--format", "safetensors"), "best.safetensors", "already exists")
    assert_unchanged(before, run)


def test_export_to_a_folder_path_that_does_not_exist_yet(tiny_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    # `-o new/` is a folder (it used to write a file named "new")
    result = run_cli("export", tiny_run, "--format", "safetensors", "-o", f"{tmp_path / 'new'}{os.sep}")
    assert result.code == 0, result.text
    assert (tmp_path / "new" / "best.safetensors").is_file()


def _file_in_the_way(tmp_path: Path) -> Path:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a regular file")
    return blocker


@pytest.mark.parametrize("where", ["empty", "under-a-file"])
def test_export_bad_output_paths(tiny_run: Path, tmp_path: Path, where: str) -> None:
    output = "" if where == "empty" else str(_file_in_the_way(tmp_path) / "model.safetensors")
    before = snapshot(tmp_path, tiny_run)
    _refused(run_cli("export", tiny_run, "--format", "safetensors", "-o", output), "-o")
    assert_unchanged(before, tmp_path, tiny_run)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_export_into_a_read_only_folder(tiny_run: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        _refused(run_cli("export", tiny_run, "--format", "safetensors", "-o", locked / "m.safetensors"), "permission")
    finally:
        locked.chmod(0o755)


# --------------------------------------------------------------------------- eval outputs


@pytest.mark.parametrize(
    ("model", "flags", "folder"),
    [
        ("", ["--image-size", "16"], "eval-test-size16"),
        ("", ["--tta"], "eval-test-tta"),
        ("", ["--split", "val", "--image-size", "16"], "eval-val-size16"),
        ("last.pt", [], "eval-last-test"),
    ],
)
def test_eval_of_another_setting_keeps_the_runs_own_results(
    tiny_run_copy: Path, model: str, flags: list[str], folder: str
) -> None:
    # The issue: `eval RUN --image-size 64` replaced RUN/eval.json with that setting's result;
    # evaluating RUN/last.pt did the same with another model's.
    run = tiny_run_copy
    assert run_cli("eval", run, "--device", "cpu").code == 0
    own = json.loads((run / "eval.json").read_text())
    assert own["settings"] == {} and own["split"] == "test"
    before = snapshot(run)
    result = run_cli("eval", run / model, "--device", "cpu", *flags)
    assert result.code == 0, result.text
    assert_unchanged(before, run)
    other = json.loads((run / folder / "eval.json").read_text())
    assert other["settings"] == ({"image_size": 16} if "--image-size" in flags else {})
    # the same evaluation again replaces its own result (exit 0)
    assert run_cli("eval", run / model, "--device", "cpu", *flags).code == 0


def test_eval_of_two_other_data_sources_of_one_kind_keeps_both(tiny_run_copy: Path) -> None:
    # Every `--data synthetic:...` went to RUN/eval-synthetic-test: the second replaced the first.
    first, second = (f"synthetic:classes=3,n={n},size=12,channels=1" for n in (60, 90))
    assert run_cli("eval", tiny_run_copy, "--device", "cpu", "--data", first).code == 0
    before = snapshot(tiny_run_copy)
    assert run_cli("eval", tiny_run_copy, "--device", "cpu", "--data", second).code == 0
    assert_unchanged(before, tiny_run_copy)
    sources = sorted(json.loads(p.read_text())["source"] for p in tiny_run_copy.glob("eval-synthetic-*-test/eval.json"))
    assert sources == sorted([first, second])


def test_eval_setting_equal_to_the_training_one_is_the_default(tiny_run_copy: Path) -> None:
    # --image-size 12 is the run's own size: the default evaluation, into the run folder
    assert run_cli("eval", tiny_run_copy, "--device", "cpu", "--image-size", "12").code == 0
    assert json.loads((tiny_run_copy / "eval.json").read_text())["settings"] == {}


def test_eval_out_refusals(tiny_run: Path, tiny_run_copy: Path, tmp_path: Path) -> None:
    before = snapshot(tiny_run, tiny_run_copy, tmp_path)
    # another run's folder: its eval.json is that run's
    _refused(run_cli("eval", tiny_run, "--device", "cpu", "--out", tiny_run_copy), "another run")
    _refused(run_cli("eval", tiny_run, "--device", "cpu", "--out", tiny_run_copy, "--force"), "another run")
    # its own run folder, for a non-default evaluation
    _refused(run_cli("eval", tiny_run_copy, "--device", "cpu", "--image-size", "16", "--out", tiny_run_copy, "--force"),
             "own run folder", "eval-test-size16")  # fmt: skip
    # a file where a folder is wanted, or in the way of one
    blocker = _file_in_the_way(tmp_path)
    before[str(blocker)] = snapshot(blocker)[str(blocker)]
    _refused(run_cli("eval", tiny_run, "--device", "cpu", "--out", blocker), "not a folder")
    _refused(run_cli("eval", tiny_run, "--device", "cpu", "--out", blocker / "sub"), "not a folder")
    _refused(run_cli("eval", tiny_run, "--device", "cpu", "--out", ""), "empty")
    assert_unchanged(before, tiny_run, tiny_run_copy, tmp_path)


def test_eval_out_replaces_an_earlier_result_only_with_force(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert run_cli("eval", tiny_run, "--device", "cpu", "--out", out).code == 0
    before = snapshot(out)
    _refused(run_cli("eval", tiny_run, "--device", "cpu", "--split", "val", "--out", out), "eval.json", "--force")
    assert_unchanged(before, out)
    assert run_cli("eval", tiny_run, "--device", "cpu", "--split", "val", "--out", out, "--force").code == 0
    assert json.loads((out / "eval.json").read_text())["split"] == "val"


# --------------------------------------------------------------------------- predict


def _scaled_checkpoint(tiny_run: Path, tmp_path: Path, scale: float) -> Path:
    """The tiny run's best.pt with every weight multiplied by ``scale`` (finite, but the logits overflow)."""
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    state["model"] = {k: v * scale if v.is_floating_point() and k.endswith("weight") else v for k, v in state["model"].items()}
    path = tmp_path / "overflow.pt"
    torch.save(state, path)
    return path


def _strict_json(line: str) -> dict:
    def refuse(token: str) -> None:
        raise AssertionError(f"not strict JSON: {token} in {line}")

    return json.loads(line, parse_constant=refuse)


def test_predict_json_is_strict_when_the_model_overflows(tiny_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    ckpt = _scaled_checkpoint(tiny_run, tmp_path, 1e30)
    Image.new("L", (12, 12), 200).save(tmp_path / "a.png")
    result = run_cli("predict", ckpt, tmp_path / "a.png", "--json")
    assert "Traceback" not in result.text
    lines = [_strict_json(line) for line in result.out.splitlines()]
    assert len(lines) == 1
    # an output that is NaN/inf names no class: a per-file error, exit 1
    assert "not finite" in lines[0]["error"] and result.code == 1


def test_predict_shows_a_non_utf8_file_name_escaped(tiny_run: Path, tmp_path: Path) -> None:
    # Python hands such names over as lone surrogates; JSON text must not carry them (strict
    # parsers reject "\udcff"), and the table must print them without an encoding error.
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")
    Image.new("L", (12, 12), 200).save(folder / name)
    table = run_cli("predict", tiny_run, folder)
    assert table.code == 0 and "Traceback" not in table.text, table.text
    assert "caf\\xe9.png" in table.out
    result = run_cli("predict", tiny_run, folder, "--json")
    assert result.code == 0 and "\\udc" not in result.out, result.text
    assert _strict_json(result.out.splitlines()[0])["file"].endswith("caf\\xe9.png")


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_nan_weights_are_refused_with_one_line(tiny_run: Path, tmp_path: Path, command: str) -> None:
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] = torch.full_like(state["model"][first], float("nan"))
    ckpt = tmp_path / "diverged.pt"
    torch.save(state, ckpt)
    before = snapshot(tmp_path)
    _failed(run_cli(*_command(command, ckpt, tmp_path)), "diverged.pt", "not finite")
    assert_unchanged(before, tmp_path)


def test_predict_refuses_a_pipe(tiny_run: Path, tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    _failed(run_cli("predict", tiny_run, fifo), "not a regular file")


# --------------------------------------------------------------------------- files that are not checkpoints


def _command(command: str, model: Path, tmp_path: Path) -> list[str]:
    if command == "eval":
        return ["eval", str(model), "--device", "cpu", "--out", str(tmp_path / "eval-out")]
    if command == "predict":
        from PIL import Image

        Image.new("L", (12, 12)).save(tmp_path / "img.png")
        return ["predict", str(model), str(tmp_path / "img.png")]
    return ["export", str(model), "--format", "torchscript", "-o", str(tmp_path / "out.torchscript.pt")]


def _not_a_checkpoint(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"model-{kind}"
    if kind == "text":
        path.write_bytes(b"iab")  # the 3 bytes: KeyError: 105
    elif kind == "json":
        path.write_text(json.dumps({"model": {"w": [1, 2]}, "model_args": {"name": "simple"}}))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
        (path / "notes.txt").write_text("no checkpoint here")
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "bare-state-dict":
        torch.save({"model": {"w": torch.zeros(2)}}, path)
    return path


@pytest.mark.parametrize("kind", ["text", "json", "empty", "folder", "list", "bare-state-dict"])
@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_a_file_that_is_not_a_checkpoint_gets_one_line_naming_it(tmp_path: Path, kind: str, command: str) -> None:
    model = _not_a_checkpoint(kind, tmp_path)
    before = snapshot(tmp_path)
    _failed(run_cli(*_command(command, model, tmp_path)), model.name)
    assert_unchanged(before, tmp_path)


def _edited_checkpoint(tiny_run: Path, tmp_path: Path, edit: str) -> Path:
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    if edit == "fewer-classes":
        state["data"]["classes"] = ["a", "b"]
    elif edit == "bad-option":
        state["model_args"]["width"] = "wide"
    elif edit == "unknown-option":
        state["model_args"]["colour"] = "red"
    elif edit == "wrong-channels":
        state["model_args"]["in_chans"] = 3
    elif edit == "bad-mean":
        state["data"]["mean"] = [float("nan")]
    elif edit == "bad-config":
        state["config"] = {"data": 5}
    elif edit == "bad-data-config":
        state["config"]["data"]["bogus"] = 1
    elif edit == "shapes":
        state["model"] = {k: v[:1] if v.ndim else v for k, v in state["model"].items()}
    path = tmp_path / f"{edit}.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "edit", ["fewer-classes", "bad-option", "unknown-option", "wrong-channels", "bad-mean", "bad-config", "shapes"]
)
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_checkpoint_with_impossible_fields_gets_one_line_naming_it(tiny_run: Path, tmp_path: Path, edit: str, command: str) -> None:
    model = _edited_checkpoint(tiny_run, tmp_path, edit)
    before = snapshot(tmp_path)
    _failed(run_cli(*_command(command, model, tmp_path)), model.name)
    assert_unchanged(before, tmp_path)


def test_eval_names_a_recorded_data_config_it_cannot_use(tiny_run: Path, tmp_path: Path) -> None:
    model = _edited_checkpoint(tiny_run, tmp_path, "bad-data-config")
    _failed(run_cli(*_command("eval", model, tmp_path)), model.name, "bogus")


@pytest.mark.parametrize("header", ["none", "not-json", "list", "no-data", "fewer-classes"])
def test_a_safetensors_file_with_bad_metadata(tiny_run: Path, tmp_path: Path, header: str) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    meta = {"model_args": state["model_args"], "data": dict(state["data"]), "config": state["config"]}
    if header == "fewer-classes":
        meta["data"]["classes"] = ["a", "b"]
    text = {"none": None, "not-json": "{not json", "list": "[1, 2]", "no-data": json.dumps({"model_args": {}})}.get(
        header, json.dumps(meta)
    )
    path = tmp_path / f"{header}.safetensors"
    tensors = {k: v.contiguous() for k, v in state["model"].items()}
    safetensors_torch.save_file(tensors, str(path), metadata=None if text is None else {"cnnlab": text})
    before = snapshot(tmp_path)
    _failed(run_cli(*_command("predict", path, tmp_path)), path.name)
    assert_unchanged(before, tmp_path)


# --------------------------------------------------------------------------- data show -o


@pytest.mark.parametrize(
    ("output", "words"),
    [
        ("{tmp}/notes.txt/grid.png", ["not a folder"]),
        ("{tmp}/grid.pt", ["suffix", ".png"]),
        ("{run}/curves.png", ["curves.png", "run"]),
        ("{run}/confusion.png", ["another run"]),
        ("{tmp}/existing.png", ["already exists", "--force"]),
        ("", ["empty"]),
    ],
)
def test_data_show_output_refusals(tiny_run_copy: Path, tmp_path: Path, output: str, words: list[str]) -> None:
    _file_in_the_way(tmp_path)
    (tmp_path / "existing.png").write_bytes(b"not yours to replace")
    output = output.format(tmp=tmp_path, run=tiny_run_copy)
    before = snapshot(tmp_path, tiny_run_copy)
    _refused(run_cli("data", "show", SMALL_DATA, "-o", output), *words)
    assert_unchanged(before, tmp_path, tiny_run_copy)


def test_data_show_never_replaces_a_run_file_even_with_force(tiny_run_copy: Path) -> None:
    before = snapshot(tiny_run_copy)
    _refused(run_cli("data", "show", SMALL_DATA, "-o", tiny_run_copy / "curves.png", "--force"), "curves.png")
    assert_unchanged(before, tiny_run_copy)


def test_data_show_into_a_folder_and_over_its_own_picture(tmp_path: Path) -> None:
    assert run_cli("data", "show", SMALL_DATA, "-o", tmp_path, "-n", "2", "--views", "2").code == 0
    assert (tmp_path / "augment.png").is_file()
    assert run_cli("data", "show", SMALL_DATA, "-o", tmp_path, "-n", "2", "--views", "2", "--force").code == 0

"""`cnnlab eval | predict | export`, called in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnlab.cli.main import main


def test_eval_prints_the_table_and_writes_files(gray_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    assert main(["eval", str(gray_run), "--out", str(out), "--device", "cpu", "--top-losses", "4"]) == 0
    text = capsys.readouterr().out
    saved = json.loads((out / "eval.json").read_text())
    assert f"accuracy {saved['accuracy']:.2%}" in text
    assert "class0" in text and "macro average" in text and "recall (acc)" in text
    assert (out / "confusion.png").is_file() and (out / "top_losses.png").is_file()
    assert not (gray_run / "eval.json").exists()  # --out was honoured


def test_eval_top5_on_seven_classes(rgb_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(rgb_run), "--out", str(tmp_path), "--split", "val"]) == 0
    assert "top-5" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["top5"] >= json.loads((tmp_path / "eval.json").read_text())["accuracy"]


def test_predict_table_and_json(gray_run: Path, gray_test, write_pngs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    images, labels, classes = gray_test
    write_pngs(images[:4], labels[:4], tmp_path / "imgs", classes)
    assert main(["predict", str(gray_run), str(tmp_path / "imgs"), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "#3" in table and "%" in table and "0003.png" in table
    assert main(["predict", str(gray_run / "best.pt"), str(tmp_path / "imgs"), "--json", "--topk", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4 and all(len(line["predictions"]) == 1 for line in lines)
    assert lines[0]["predictions"][0]["class"] in classes


def test_predict_reports_a_bad_file_and_goes_on(gray_run: Path, gray_test, write_pngs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    good = write_pngs(gray_test[0][:1], gray_test[1][:1], tmp_path)[0]
    bad = tmp_path / "notes.jpg"
    bad.write_text("plain text")
    assert main(["predict", str(gray_run), str(bad), str(good), "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"file": str(bad), "error": "not an image (unknown or unsupported format)"}
    assert "predictions" in lines[1]
    assert main(["predict", str(gray_run), str(bad)]) == 1
    assert "could not be read" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "{tmp}/missing-run"], "does not exist"),
        (["predict", "{run}", "{tmp}/missing.png"], "does not exist"),
        (["predict", "{tmp}", "{run}"], "holds no checkpoint"),
        (["export", "{run}/summary.json", "--format", "safetensors"], "checkpoint"),
        (["eval", "{run}", "--data", "synthetic:classes=5,n=50,size=12,channels=1"], "3 classes but"),
    ],
)
def test_bad_paths_exit_1_with_one_line(argv: list[str], message: str, gray_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(tmp=tmp_path, run=gray_run) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cnnlab: error: ") and message in err[0]


def test_export_cli_writes_next_to_the_checkpoint(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("safetensors", reason="needs the safetensors package (pip install safetensors)")
    assert main(["export", str(run_copy / "last.pt"), "--format", "safetensors"]) == 0
    assert (run_copy / "last.safetensors").is_file()
    out = capsys.readouterr().out
    # same weights; only the conv kernels' memory format may differ (float rounding)
    assert float(out.split("max |diff| vs PyTorch ")[1].split(")")[0]) < 1e-5
    # the export is a model file of its own: eval and predict accept it
    assert main(["eval", str(run_copy / "last.safetensors"), "--split", "val"]) == 0
    # its results get a folder of their own: the run's eval.json is the default evaluation's (best.pt)
    assert (run_copy / "eval-last.safetensors-val" / "eval.json").is_file()


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"cnnlab {command} runs/" in text

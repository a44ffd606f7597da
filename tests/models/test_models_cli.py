"""`cnnlab models` and `cnnlab inspect`, called in-process."""

from __future__ import annotations

import pytest

from cnnlab.cli.main import main


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--family", "resnet-cifar"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "270K" in out and "vgg16" not in out


def test_models_markdown_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--markdown", "--family", "plain-cifar", "--input", "1x28x28,3x32x32"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| model | family | params 1x28x28 | MACs 1x28x28 | params 3x32x32 | MACs 3x32x32 |"
    assert len(lines) == 2 + 5 and lines[2].startswith("| plain20 | plain-cifar | 269K | 30.8M | 270K | 40.6M")


def test_models_norms(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--norms"]) == 0
    assert "layer: mean/var over (C, H, W)" in capsys.readouterr().out


def test_inspect_layer_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "resnet20", "--input", "3x32x32"]) == 0
    out = capsys.readouterr().out
    assert "layer3.2.conv2" in out and "269,722 parameters" in out and "81 / 4" in out


def test_inspect_activations_and_gradients(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # noqa: ANN001
    png = tmp_path / "act.png"
    argv = ["inspect", "simple", "--model-opt", "depth=6", "--model-opt", "width=16", "--norm", "none",
            "--init", "normal:0.01", "--input", "1x28x28", "--batch-size", "8", "--activations", "--gradients",
            "--out", str(png)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "vanishing" in out and "|dL/dW|" in out and png.exists()


def test_inspect_activations_writes_no_file_unless_asked(capsys: pytest.CaptureFixture[str], tmp_path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)  # a stray picture would land here
    argv = ["inspect", "simple", "--model-opt", "depth=3", "--model-opt", "width=8", "--input", "1x12x12",
            "--batch-size", "4", "--activations"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "std/input" in out and "--out FILE.png" in out
    assert list(tmp_path.iterdir()) == []


def test_inspect_act_choices_come_from_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["inspect", "resnet20", "--act", "swish"])
    assert "gelu" in capsys.readouterr().err


def test_unknown_model_is_one_line_and_exit_code_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "resnet21"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown model 'resnet21'" in err and "resnet20" in err


def test_bad_input_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "resnet20", "--input", "32x32"]) == 2  # refused before any work
    assert "CxHxW" in capsys.readouterr().err


def test_inspect_with_real_images(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # noqa: ANN001
    png = tmp_path / "real.png"
    argv = ["inspect", "simple", "--data", "synthetic:classes=3,n=60,size=12,channels=1", "--batch-size", "16",
            "--activations", "--gradients", "--out", str(png)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1x12x12 input, 3 classes" in out and "the data's labels" in out and png.exists()


def test_inspect_says_when_a_norm_layer_hides_the_init_scale(capsys: pytest.CaptureFixture[str]) -> None:
    # The README's example once flagged nothing: batch norm (the default) renormalised every layer.
    argv = ["inspect", "plain20", "--init", "normal:0.01", "--batch-size", "4", "--activations"]
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console may wrap the line
    assert "vanishing: 0 layer(s)" in out and "hides the init scale" in out and "--norm none" in out
    assert main([*argv, "--norm", "none"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "hides the init scale" not in out and "vanishing: 0 layer(s)" not in out

"""Predicting image files: same numbers as evaluating the in-memory images, folders, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnlab.errors import CnnlabError
from cnnlab.infer.evaluate import evaluate_checkpoint
from cnnlab.infer.predict import find_images, load_predictor, read_image


@pytest.mark.parametrize("which", ["gray", "rgb"])
def test_png_files_predict_like_the_in_memory_test_split(which: str, request: pytest.FixtureRequest, write_pngs, tmp_path: Path) -> None:  # noqa: ANN001
    """Decoding + normalisation of files matches training: the probabilities are the same."""
    run = request.getfixturevalue(f"{which}_run")
    images, labels, classes = request.getfixturevalue(f"{which}_test")
    paths = write_pngs(images, labels, tmp_path)
    expected = evaluate_checkpoint(run, device="cpu").probs  # the DeviceLoader path of training
    predictor = load_predictor(run, device="cpu")
    predictions = list(predictor.predict_files(paths, topk=len(classes), batch_size=37))  # batches cross files
    assert [p.path for p in predictions] == [str(p) for p in paths] and all(p.error is None for p in predictions)
    got = np.zeros_like(expected)
    for row, p in zip(got, predictions):
        row[list(p.indices)] = p.probs
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [p.indices[0] for p in predictions] == expected.argmax(1).tolist()
    assert predictions[0].classes[0] == classes[predictions[0].indices[0]]


def test_read_image_and_predict_images(gray_run: Path, gray_test, write_pngs, tmp_path: Path) -> None:  # noqa: ANN001
    images, labels, _ = gray_test
    path = write_pngs(images[:1], labels[:1], tmp_path)[0]
    arr = read_image(path, (1, 12, 12))
    np.testing.assert_array_equal(arr, images[0])  # a 12 px PNG decodes to itself
    predictor = load_predictor(gray_run, device="cpu")
    probs = predictor.predict_images(images[:5])
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    with pytest.raises(CnnlabError, match="expected uint8 images of shape N x 1x12x12"):
        predictor.predict_images(images[:5].astype(np.float32))


def test_folder_is_searched_recursively(tmp_path: Path, write_pngs, gray_test) -> None:  # noqa: ANN001
    images, labels, classes = gray_test
    write_pngs(images[:6], labels[:6], tmp_path / "photos", classes)  # photos/<class>/NNNN.png
    (tmp_path / "photos" / "notes.txt").write_text("not an image, and not named like one")
    (tmp_path / "photos" / ".hidden").mkdir()
    write_pngs(images[:1], labels[:1], tmp_path / "photos" / ".hidden")
    single = write_pngs(images[6:7], labels[6:7], tmp_path / "single")[0]
    found = find_images([tmp_path / "photos", single])
    assert len(found) == 7 and found[-1] == single
    assert all(p.suffix == ".png" and ".hidden" not in p.parts for p in found)
    assert found[:6] == sorted(found[:6])


def test_not_an_image_is_a_per_file_error(gray_run: Path, gray_test, write_pngs, tmp_path: Path) -> None:  # noqa: ANN001
    images, labels, _ = gray_test
    good = write_pngs(images[:2], labels[:2], tmp_path)
    fake = tmp_path / "fake.png"
    fake.write_text("hello")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:-30])  # header intact, pixel data cut
    predictions = list(load_predictor(gray_run, device="cpu").predict_files([good[0], fake, truncated, good[1]], topk=2))
    assert [p.error is None for p in predictions] == [True, False, False, True]
    assert predictions[1].error == "not an image (unknown or unsupported format)"
    assert "truncated" in predictions[2].error or "corrupt" in predictions[2].error
    assert predictions[1].as_dict() == {"file": str(fake), "error": predictions[1].error}
    assert len(predictions[3].as_dict()["predictions"]) == 2


def test_missing_paths_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="does not exist"):
        find_images([tmp_path / "nope.png"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(CnnlabError, match="no image files"):
        find_images([tmp_path / "empty"])
    with pytest.raises(CnnlabError, match="holds no checkpoint"):
        load_predictor(tmp_path / "empty")


def test_many_files_are_decoded_in_worker_processes(gray_run: Path, gray_test, write_pngs, tmp_path: Path) -> None:  # noqa: ANN001
    """From 256 files on, decoding runs in a process pool; order and results must not change."""
    images, labels, _ = gray_test
    many = np.concatenate([images, images])[:300]
    paths = write_pngs(many, np.zeros(len(many), np.int64), tmp_path)
    predictor = load_predictor(gray_run, device="cpu")
    predictions = list(predictor.predict_files(paths, topk=1, batch_size=128))
    assert [p.path for p in predictions] == [str(p) for p in paths]
    expected = predictor.predict_images(many).argmax(1)
    assert [p.indices[0] for p in predictions] == expected.tolist()


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    from PIL import Image

    Image.fromarray(array, mode).save(path)
    return path


def test_predict_says_what_it_converted_and_warns_far_from_the_training_size(gray_run: Path, tmp_path: Path) -> None:
    """The model takes 1x12x12: each file below needs something done to it, and the far ones are flagged."""
    rng = np.random.default_rng(0)
    files = [
        _save(tmp_path / "tiny.png", rng.integers(0, 255, (2, 2), dtype=np.uint8)),  # a side under 12/4
        _save(tmp_path / "wide16.png", rng.integers(0, 65535, (100, 300), dtype=np.uint16)),  # 16-bit, over 8 x 12 wide
        _save(tmp_path / "rgba.png", rng.integers(0, 255, (12, 12, 4), dtype=np.uint8), "RGBA"),
        _save(tmp_path / "ok.png", rng.integers(0, 255, (12, 12), dtype=np.uint8)),  # as trained: nothing to say
        _save(tmp_path / "small.png", rng.integers(0, 255, (6, 6), dtype=np.uint8)),  # enlarged, not far
    ]
    tiny, wide, rgba, ok, small = load_predictor(gray_run, device="cpu").predict_files(files)
    assert tiny.converted == ("size 2x2 -> 12x12 (enlarged)",) and "far smaller" in tiny.warning
    assert wide.converted == ("mode I;16 -> L (16-bit scaled to 8-bit)", "size 300x100 -> 12x12 (shrunk, centre-cropped to a square)")
    assert "far larger" in wide.warning
    assert rgba.converted == ("mode RGBA -> L (transparency composited onto white)",) and rgba.warning is None
    assert ok.converted == () and ok.warning is None
    assert small.converted == ("size 6x6 -> 12x12 (enlarged)",) and small.warning is None
    line = tiny.as_dict()  # the --json line says the same
    assert line["converted"] == list(tiny.converted) and line["warning"] == tiny.warning
    assert ok.as_dict()["converted"] == [] and ok.as_dict()["warning"] is None


def test_predict_cli_prints_conversions_and_warnings(gray_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cnnlab.cli.main import main

    tiny = _save(tmp_path / "tiny.png", np.zeros((2, 2), np.uint8))
    assert main(["predict", str(gray_run), str(tiny), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "converted" in out and "2x2 -> 12x12" in out and "warning:" in out and "far smaller" in out
    assert main(["predict", str(gray_run), str(tiny), "--device", "cpu", "--json"]) == 0
    import json

    line = json.loads(capsys.readouterr().out)
    assert line["converted"] == ["size 2x2 -> 12x12 (enlarged)"] and "far smaller" in line["warning"]

"""Hostile input for `cnnlab search` and `cnnlab recipe`: damaged journals and records, a study
continued with other data, passwords, bad storage URLs, Ctrl-C, and two processes on one folder.

Every search here is real: tiny synthetic data, one-epoch trials, the study in a journal file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostile_cli import assert_unchanged, run_cli, run_cli_process, snapshot

DATA = "synthetic:classes=3,n=300,size=12,channels=1"
RUN = ["--data", DATA, "--model", "simple", "--model-opt", "spec=c8-p", "--batch-size", "32", "--device", "cpu"]
SEARCH = ["search", *RUN, "--epochs", "1", "--pruner", "none", "--sampler", "random", "--quiet"]


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A search folder with two finished trials (copy it before damaging it)."""
    out = tmp_path_factory.mktemp("search") / "s"
    result = run_cli(*SEARCH, "--trials", "2", "--out", out)
    assert result.code == 0, result.text
    return out


@pytest.fixture
def search_copy(finished_search: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "s"
    shutil.copytree(finished_search, out)
    return out


def _journal(out: Path) -> Path:
    return out / "study.journal"


def _trials(out: Path) -> list[dict]:
    return json.loads((out / "search.json").read_text())["trials"]


# --------------------------------------------------------------------------- damaged journals


def test_a_torn_last_journal_record_is_dropped_backed_up_and_the_study_continues(search_copy: Path) -> None:
    journal = _journal(search_copy)
    original = journal.read_bytes() + b'{"op_code": 5, "worker_id": "x", "tri'  # a kill in the middle of a write
    journal.write_bytes(original)
    before = snapshot(search_copy / "trials")
    result = run_cli(*SEARCH, "--trials", "1", "--out", search_copy)
    assert result.code == 0, result.text  # before: AssertionError: Should not reach.
    assert "Traceback" not in result.text
    assert re.search(r"study\.journal ended in a cut-off record .* kept its \d+ complete record\(s\)", result.err)
    backups = list(search_copy.glob("study.journal.damaged-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == original, "the original is kept next to it, byte for byte"
    assert [t["number"] for t in _trials(search_copy)] == [0, 1, 2], "the earlier trials were kept"
    assert_unchanged(before, search_copy / "trials")


@pytest.mark.parametrize("garbage", [b"\xff\xfe not utf-8 at all", b'{"not": "a journal record"}', b"[1, 2"])
def test_garbage_inside_a_journal_is_refused_naming_the_file_and_line(search_copy: Path, garbage: bytes) -> None:
    journal = _journal(search_copy)
    lines = journal.read_bytes().split(b"\n")
    lines[3] = garbage
    journal.write_bytes(b"\n".join(lines))
    before = snapshot(search_copy)
    result = run_cli(*SEARCH, "--trials", "1", "--out", search_copy)
    assert result.code == 1
    line = result.error_line()
    assert f"{journal} is damaged: line 4 of" in line and "another --out" in line
    assert_unchanged(before, search_copy)
    assert not (search_copy / "trials" / "coarse-002").exists()


def test_an_emptied_journal_is_refused_instead_of_starting_over(search_copy: Path) -> None:
    _journal(search_copy).write_bytes(b"")
    before = snapshot(search_copy)
    result = run_cli(*SEARCH, "--trials", "1", "--out", search_copy)
    assert result.code == 1  # before: trial 0 started again and crashed on the existing coarse-000
    line = result.error_line()
    assert "has lost trials" in line and "search.json records 2 trial(s), the study holds 0" in line
    assert_unchanged(before, search_copy)


def test_a_deleted_journal_and_record_with_trial_folders_left_is_refused(search_copy: Path) -> None:
    _journal(search_copy).unlink()
    (search_copy / "search.json").unlink()
    before = snapshot(search_copy)
    result = run_cli(*SEARCH, "--trials", "1", "--out", search_copy)
    assert result.code == 1
    assert "holds 2 trial folder(s), the study holds 0" in result.error_line()
    assert_unchanged(before, search_copy)


def test_a_new_trial_never_writes_into_a_folder_that_exists(search_copy: Path) -> None:
    # A folder of the next trial's name that is not this study's (a lost study's run, a user's files).
    foreign = search_copy / "trials" / "coarse-002"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    before = snapshot(search_copy / "trials")
    result = run_cli(*SEARCH, "--trials", "1", "--out", search_copy)
    assert result.code == 0, result.text
    assert_unchanged(before, search_copy / "trials")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert _trials(search_copy)[-1]["run_dir"] == str(search_copy.resolve() / "trials" / "coarse-002-2")


# --------------------------------------------------------------------------- a study is bound to what it measures


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--data", "synthetic:classes=3,n=200,size=12,channels=1"], "data.source: 'synthetic:classes=3,n=300"),
        (["--model-opt", "spec=c16-p"], "model.options.spec: 'c8-p' -> 'c16-p'"),
        (["--lr-center", "0.3"], "space optim.lr"),
        (["--epochs", "2"], "epochs per trial: 1 -> 2"),
    ],
)
def test_continuing_a_study_with_other_data_model_or_space_is_refused(search_copy: Path, change: list[str], named: str) -> None:
    argv = [*SEARCH, "--trials", "1", "--out", search_copy]
    for flag, value in zip(change[::2], change[1::2]):  # the later flag wins in argparse: append the change
        argv += [flag, value]
    before = snapshot(search_copy)
    result = run_cli(*argv)
    assert result.code == 2  # before: exit 0, one "best" picked across two datasets
    line = result.error_line()
    assert "was run with other settings" in line and named in line
    assert_unchanged(before, search_copy)


def test_another_study_in_a_search_folder_is_refused(search_copy: Path) -> None:
    before = snapshot(search_copy)
    result = run_cli(*SEARCH, "--trials", "1", "--out", search_copy, "--study", "other")
    assert result.code == 2
    assert "holds the search of study cnnlab-coarse-s" in result.error_line()
    assert_unchanged(before, search_copy)


# --------------------------------------------------------------------------- records the search and recipe read


@pytest.mark.parametrize("text", ["{", '{"study_name": 3}', "[]", '{"study_name": "x", "storage": "y", "settings": {}, "trials": []}'])
def test_a_damaged_search_json_is_one_line_for_refine_from(tmp_path: Path, text: str) -> None:
    coarse = tmp_path / "coarse"
    coarse.mkdir()
    (coarse / "search.json").write_text(text)
    before = snapshot(coarse)
    result = run_cli("search", "--stage", "refine", "--from", coarse, "--trials", "1", "--out", tmp_path / "r")
    assert result.code == 1
    assert "search.json is not a readable search record" in result.error_line()
    assert_unchanged(before, coarse)
    assert not (tmp_path / "r").exists()


def _recipe_folder(tmp_path: Path, state: object) -> Path:
    folder = tmp_path / "recipe"
    folder.mkdir()
    (folder / "recipe.json").write_text(state if isinstance(state, str) else json.dumps(state))
    return folder


GOOD_STATE = {"config": {"data": {"source": DATA}}, "options": {"budget_seconds": 600}, "steps": {}, "order": []}


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ("{", "not a readable recipe state"),
        ("[1]", "not a readable recipe state"),
        ({**GOOD_STATE, "order": ["check"]}, "names steps without a result"),
        ({**GOOD_STATE, "steps": {"check": {"items": 5}}, "order": ["check"]}, "the record of step 'check' does not read"),
        ({**GOOD_STATE, "steps": {"bogus": {}}, "order": ["bogus"]}, "the record of step 'bogus' does not read"),
        ({**GOOD_STATE, "version": 7}, "of version 7"),
        ({**GOOD_STATE, "spent_seconds": "lots"}, "'spent_seconds' is a str"),
    ],
)
@pytest.mark.parametrize("command", ["--resume", "--report"])
def test_a_damaged_or_foreign_recipe_json_is_one_line(tmp_path: Path, state: object, why: str, command: str) -> None:
    folder = _recipe_folder(tmp_path, state)
    before = snapshot(folder)
    result = run_cli("recipe", command, folder)
    assert result.code == 1, result.text
    assert why in result.error_line()
    assert_unchanged(before, folder)


def test_a_new_recipe_refuses_a_folder_that_holds_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "best.yaml").write_text("my own notes\n")
    (folder / "report.html").write_text("<p>my report</p>")
    before = snapshot(folder)
    result = run_cli("recipe", *RUN, "--budget", "1m", "--out", folder)
    assert result.code == 2
    assert "is not empty (best.yaml, report.html) and holds no recipe" in result.error_line()
    assert_unchanged(before, folder)


# --------------------------------------------------------------------------- storage URLs and passwords


def test_a_bad_storage_url_fails_before_any_recipe_step_and_hides_the_password(tmp_path: Path) -> None:
    out = tmp_path / "r"
    result = run_cli("recipe", *RUN, "--budget", "1m", "--storage", "postgresql://me:s3cret@127.0.0.1:1/x", "--out", out)
    assert result.code == 1
    line = result.error_line()
    assert "cannot open the study storage postgresql://me:***@127.0.0.1:1/x" in line
    assert "step check" not in result.text, "the storage is checked before step 1"  # before: after check, overfit, lr-find
    assert "s3cret" not in result.text
    assert not out.exists()


def test_a_storage_url_that_is_no_url_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("recipe", *RUN, "--budget", "1m", "--storage", "my-db", "--out", tmp_path / "r")
    assert result.code == 2
    assert "unknown study storage 'my-db'" in result.error_line()
    assert not (tmp_path / "r").exists()


def test_resuming_a_recipe_whose_storage_password_was_masked_needs_the_url_again(tmp_path: Path) -> None:
    options = {**GOOD_STATE["options"], "storage": "postgresql://me:***@db:5432/optuna"}
    folder = _recipe_folder(tmp_path, {**GOOD_STATE, "options": options})
    before = snapshot(folder)
    missing = run_cli("recipe", "--resume", folder)
    assert missing.code == 2
    assert "whose password is not stored; give the URL again: --storage URL" in missing.error_line()
    other = run_cli("recipe", "--resume", folder, "--storage", "postgresql://me:pw@elsewhere:5432/optuna")
    assert other.code == 2
    line = other.error_line()
    assert "not in postgresql://me:***@elsewhere:5432/optuna" in line and "pw@" not in other.text
    assert_unchanged(before, folder)


def test_storage_urls_are_masked_wherever_they_are_written() -> None:
    from cnnlab.recipe.state import RecipeOptions
    from cnnlab.recipe.storage import redact

    assert redact("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert "s3cret" not in redact("postgresql://me@db/x?sslmode=require&password=s3cret")
    assert RecipeOptions(storage="postgresql://me:s3cret@db/x").masked().storage == "postgresql://me:***@db/x"


# --------------------------------------------------------------------------- Ctrl-C and a second process


def _start_recipe(out: Path) -> subprocess.Popen:
    # Trials long enough (many epochs on 3,000 images) that the interrupt lands inside one.
    argv = ["recipe", "--data", "synthetic:classes=3,n=3000,size=16,channels=1", "--model", "simple",
            "--model-opt", "spec=c16-p-c32-p", "--batch-size", "32", "--device", "cpu", "--budget", "10m",
            "--trials", "2", "--coarse-epochs", "50", "--rounds", "1", "--quiet", "--out", str(out)]  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "cnnlab", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_in_a_recipe_is_one_line_naming_recipe_resume_and_a_second_recipe_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "r"
    proc = _start_recipe(out)
    try:
        seen = []
        deadline = time.monotonic() + 240
        while not any("step coarse" in line for line in seen):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(seen) + proc.stderr.read()
            seen.append(proc.stdout.readline())
        trials = out / "search" / "coarse" / "trials"
        while not list(trials.glob("coarse-000/metrics.jsonl")):  # inside the first trial, one epoch done
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)

        before = snapshot(out / "recipe.json")
        second = run_cli_process("recipe", "--resume", out, timeout=60)
        assert second.code == 1
        assert "is in use by another cnnlab process" in second.error_line()
        assert_unchanged(before, out / "recipe.json")

        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "cnnlab train --resume" not in stderr + stdout, stderr
    interrupted = [line for line in stderr.splitlines() if "interrupt" in line.lower()]
    assert interrupted == [f"cnnlab: interrupted; finished steps are saved: continue with `cnnlab recipe --resume {out}`"], stderr
    state = json.loads((out / "recipe.json").read_text())
    assert state["order"] == ["check", "overfit", "plan", "lr_find"], "the steps before the search stay recorded"


@pytest.mark.slow
def test_a_second_owner_of_a_search_folder_is_refused_while_workers_share_it(tmp_path: Path) -> None:
    out = tmp_path / "s"
    argv = [*SEARCH, "--data", "synthetic:classes=3,n=3000,size=16,channels=1", "--epochs", "30", "--trials", "4",
            "--workers", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        # Both workers (this owner and the `--join` process it started) are inside a trial: the lock did not stop the joiner.
        while len(list((out / "trials").glob("coarse-*/metrics.jsonl"))) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
            time.sleep(0.2)
        # The trials are being written by the running search, so their contents cannot be compared
        # (snapshotting them raced with its temporaries); what matters is the one-line refusal.
        trials_before = sorted(p.name for p in (out / "trials").iterdir())
        second = run_cli(*SEARCH, "--trials", "1", "--out", out)
        assert second.code == 1
        assert "the search folder" in second.error_line() and "in use by another cnnlab process" in second.error_line()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert "run the same command again to continue it" in stderr
    assert trials_before  # the trials of the running search were there to protect

"""A live view of studies: `cnnlab search|recipe --dashboard` and `cnnlab dashboard` (optuna-dashboard).

Everything is real: searches train tiny models on synthetic data with their study in a
journal, the dashboard is optuna-dashboard's own app on a real port, its JSON API is read
over HTTP, and the page is rendered by headless Chromium (like the report test in
test_recipe.py). What is checked: the study and its trials show, with the validation
accuracy each epoch reported (the intermediate values) equal to the journal's; a recipe
shows each search stage (one journal each) as it starts; a database study shows too; the
view is read-only; a busy port is a one-line error naming the port and the fix, before anything
runs; and the server is gone (the port refuses connections) once the command ends, also
after Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="the search needs optuna (pip install 'cnnlab[recipe]')")
pytest.importorskip("optuna_dashboard", reason="the dashboard needs optuna-dashboard (pip install 'cnnlab[dashboard]')")

from optuna.storages import JournalStorage  # noqa: E402 - after the skips above
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock  # noqa: E402

from cnnlab.cli.main import main  # noqa: E402
from cnnlab.errors import CnnlabError, UsageError  # noqa: E402
from cnnlab.recipe import storage as st  # noqa: E402
from cnnlab.recipe.dashboard import find_source, recipe_source, serving  # noqa: E402
from cnnlab.recipe.journal_view import MAX_JOURNALS, JournalView  # noqa: E402

DATA = "synthetic:classes=3,n=120,size=8,channels=1"
CLI_RUN = ["--data", DATA, "--model", "simple", "--model-opt", "spec=c8-p", "--batch-size", "32", "--device", "cpu"]
ROOT = Path(__file__).resolve().parents[2]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def _browser() -> str:
    browser = _chromium()
    if browser is None:
        if os.environ.get("CNNLAB_REQUIRE_SYSTEM_TESTS") == "1":
            pytest.fail("chromium is missing; bash scripts/ensure-system-deps.sh installs it")
        pytest.skip("needs chromium (bash scripts/ensure-system-deps.sh installs it)")
    return browser


def _dom(browser: str, url: str) -> str:
    """The page after its scripts ran: the dashboard is a single-page app that fetches the study from its API."""
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", url], capture_output=True, text=True, timeout=120)  # fmt: skip
    return proc.stdout


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - a local test server
        return json.loads(response.read())


def _api(url: str) -> str:
    """``http://H:P/dashboard`` -> ``http://H:P/api``."""
    return url.rsplit("/dashboard", 1)[0] + "/api"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _refuses(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture()
def busy_port() -> Iterator[int]:
    """A port another server listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _journal_trials(journal: Path) -> list[optuna.trial.FrozenTrial]:
    storage = JournalStorage(JournalFileBackend(str(journal), lock_obj=JournalFileOpenLock(str(journal))))
    (study,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=study.study_name, storage=storage).get_trials()


def _study_journal(path: Path, name: str, values: list[list[float]]) -> None:
    """A journal with one study whose trials reported ``values`` (one list per trial)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for curve in values:
        trial = study.ask()
        for step, value in enumerate(curve, start=1):
            trial.report(value, step)
        study.tell(trial, curve[-1])


@pytest.fixture()
def journal_dir(tmp_path: Path) -> Path:
    """A folder with a study journal of 2 trials (what `cnnlab search` keeps; made with Optuna in milliseconds)."""
    _study_journal(tmp_path / "s" / "study.journal", "s-study", [[0.5, 0.6], [0.4, 0.7]])
    return tmp_path / "s"


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "cnnlab", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _ctrl_c(proc: subprocess.Popen, tries: int = 6) -> tuple[str, str]:
    """Ctrl-C, and again every 15 s while the command still runs (as a person would); its (stdout, stderr).

    Once is not always enough for a search: a Ctrl-C that lands after a trial's last training
    step (in its last validation pass) only asks the training loop to stop, which has
    nothing left to stop, and the search goes on with its next trial.
    """
    for _ in range(tries):
        proc.send_signal(signal.SIGINT)
        try:
            return proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:  # retrying communicate() loses no output
            continue
    proc.kill()
    pytest.fail(f"{tries} Ctrl-C did not stop the command")


def _dashboard_line(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The URL of the ``dashboard: URL ...`` line the command prints first."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=1):
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("dashboard: "):
                return line.split()[1]
    proc.kill()
    pytest.fail(f"no dashboard line; stderr: {proc.communicate(timeout=30)[1][-2000:]}")


def test_the_view_is_read_only(journal_dir: Path) -> None:
    with serving(find_source(str(journal_dir)), host="127.0.0.1", port=0) as url:
        request = urllib.request.Request(f"{_api(url)}/studies/0", method="DELETE")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)  # noqa: S310 - a local test server
        assert caught.value.code == 403 and "read-only" in json.loads(caught.value.read())["reason"]
        assert len(_get(f"{_api(url)}/studies")["study_summaries"]) == 1  # still there


# --------------------------------------------------------------------------- live, through the command line


@pytest.mark.slow
def test_search_dashboard_is_live_while_the_search_runs_and_gone_after_ctrl_c(tmp_path: Path) -> None:
    browser = _browser()
    out = tmp_path / "live"
    proc = _start(["search", *CLI_RUN, "--trials", "500", "--epochs", "2", "--pruner", "none", "--out", str(out),
                   "--dashboard", "0", "--quiet"])  # fmt: skip
    try:
        url = _dashboard_line(proc)
        api, deadline = _api(url), time.monotonic() + 120
        while time.monotonic() < deadline:  # wait for a finished trial: its whole curve is in the study
            studies = _get(f"{api}/studies")["study_summaries"]
            trials = _get(f"{api}/studies/0")["trials"] if studies else []
            if any(t["state"] == "Complete" for t in trials):
                break
            time.sleep(0.5)
        else:
            pytest.fail("no trial finished within 120 s")
        assert studies[0]["study_name"] == f"cnnlab-coarse-{out.name}"
        dom = _dom(browser, f"{url}/studies/0/trials")
        assert proc.poll() is None, "the search ended before the page was read"
        assert f"cnnlab-coarse-{out.name} (id=0)" in dom and "Trial 0 (trial_id=" in dom, dom[-1500:]
        first = trials[0]["intermediate_values"][0]
        assert "Intermediate Values" in dom and f">{first['step']} {first['value']!r}<" in dom  # epoch 1's val acc, as printed
        stdout, stderr = _ctrl_c(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-2000:]
    assert "dashboard: " not in stdout  # the URL is printed once (read above)
    assert "GET /" not in stderr and "Traceback" not in stderr  # no access log, no error over the search's lines
    assert _refuses(_port_of(url))
    # what the page showed of trial 0 is what the search reported to Optuna: its validation accuracy after each epoch
    written = _journal_trials(out / "study.journal")[0]
    assert written.state.name == "COMPLETE" and len(written.intermediate_values) == 2
    assert [(v["step"], v["value"]) for v in trials[0]["intermediate_values"]] == sorted(written.intermediate_values.items())


@pytest.mark.slow
def test_recipe_dashboard_shows_each_search_stage_while_the_recipe_runs(tmp_path: Path) -> None:
    port, seen, done = _free_port(), {}, threading.Event()

    def watch() -> None:  # a browser's view of the page data, polled while the recipe runs
        while not done.is_set():
            try:
                for study in _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]:
                    trials = _get(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}")["trials"]
                    seen[re.sub(r"^recipe-r-[0-9a-f]{8}-", "", study["study_name"])] = trials  # the stage's key
            except OSError:  # not serving yet, or no more
                pass
            time.sleep(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        code = main(["recipe", "--data", "synthetic:classes=3,n=300,size=8,channels=1", "--model", "simple", "--model-opt",
                     "spec=c16-p-c32-p", "--batch-size", "16", "--device", "cpu", "--budget", "3m", "--trials", "2",
                     "--coarse-epochs", "1", "--refine-epochs", "1", "--final-epochs", "1", "--rounds", "1",
                     "--search-subset", "200", "--keep-going", "--out", str(tmp_path / "r"), "--dashboard", str(port),
                     "--quiet"])  # fmt: skip
    finally:
        done.set()
        watcher.join()
    assert code == 0
    ran = [key for key in json.loads((tmp_path / "r" / "recipe.json").read_text())["order"] if key in ("coarse", "refine-1")]
    assert ran, "the budget plan skipped the search: nothing to watch"
    assert sorted(seen) == ran  # each stage's own journal; a later one is found when its stage starts
    # epoch 1's validation accuracy, seen live (a stage's last trial may end between two polls and the server with
    # the recipe, so not every stage's curve is caught; the coarse stage's first one is, while its second trial runs)
    assert any(len(t["intermediate_values"]) == 1 for trials in seen.values() for t in trials)
    assert _refuses(port)


@pytest.mark.slow
def test_dashboard_command_serves_until_ctrl_c(journal_dir: Path) -> None:
    proc = _start(["dashboard", str(journal_dir), "--port", "0"])
    try:
        url = _dashboard_line(proc)
        assert url.startswith("http://127.0.0.1:")  # this machine only, by default
        assert len(_get(f"{_api(url)}/studies/0")["trials"]) == 2
        # A connection that sends nothing (a browser opens such spare ones ahead of need) must not hold the stop.
        idle = socket.create_connection(("127.0.0.1", _port_of(url)), timeout=5)
        time.sleep(0.3)  # accepted: its handler thread waits for a request line
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        idle.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-2000:]
    assert "dashboard stopped" in stdout and "Traceback" not in stderr
    assert _refuses(_port_of(url))


def test_a_busy_port_is_one_line_naming_the_port_and_the_fix(journal_dir: Path, busy_port: int,
                                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["dashboard", str(journal_dir), "--port", str(busy_port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"port {busy_port} on 127.0.0.1 is in use" in err and "--port" in err, err


def test_search_with_a_busy_dashboard_port_fails_before_any_trial(tmp_path: Path, busy_port: int,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "s"
    assert main(["search", *CLI_RUN, "--trials", "1", "--out", str(out), "--dashboard", str(busy_port), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"port {busy_port}" in err and "--dashboard 0" in err, err
    assert not (out / "trials").exists() and not (out / "study.journal").exists()


def test_recipe_with_a_busy_dashboard_port_fails_before_any_step(tmp_path: Path, busy_port: int,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "r"
    assert main(["recipe", *CLI_RUN, "--budget", "1m", "--out", str(out), "--dashboard", str(busy_port), "--quiet"]) == 1
    assert f"port {busy_port}" in capsys.readouterr().err
    assert not (out / "recipe.json").exists()


def test_help_names_the_flag_and_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["search"], ["recipe"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "--dashboard [PORT]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["dashboard", "--help"])
    text = capsys.readouterr().out
    assert "FOLDER|STORAGE" in text and "--port" in text and "read-only" in text


# --------------------------------------------------------------------------- where the studies are


def test_a_recipe_folder_shows_every_stage_journal_also_one_started_later(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe"
    _study_journal(recipe / "search" / "coarse" / "study.journal", "coarse", [[0.5, 0.6], [0.4, 0.7]])
    view = JournalView(recipe_source(recipe).journals)
    assert [s.study_name for s in view.get_all_studies()] == ["coarse"]
    _study_journal(recipe / "search" / "refine-1" / "study.journal", "refine-1", [[0.8]])
    studies = view.get_all_studies()
    assert [(s.study_name, s._study_id) for s in studies] == [("coarse", 0), ("refine-1", 1)]
    coarse, refine = view.get_all_trials(0), view.get_all_trials(1)
    assert [t.intermediate_values for t in coarse] == [{1: 0.5, 2: 0.6}, {1: 0.4, 2: 0.7}]
    ids = [t._trial_id for t in coarse + refine]
    assert len(set(ids)) == 3  # both journals number their trials from 0; the view keeps them apart
    assert refine[0]._trial_id % MAX_JOURNALS == 1 and view.get_trial(refine[0]._trial_id).value == 0.8
    assert view.get_trial_id_from_study_id_trial_number(1, 0) == refine[0]._trial_id
    assert view.get_study_id_from_name("refine-1") == 1 and view.get_best_trial(0).value == 0.7
    with pytest.raises(CnnlabError, match="read-only"):
        view.delete_study(0)
    with pytest.raises(CnnlabError, match="read-only"):
        view.create_new_trial(0)
    with pytest.raises(KeyError):
        view.get_all_trials(2)
    (recipe / "recipe.json").write_text(json.dumps({"config": {}, "options": {"storage": None}}))
    with serving(find_source(str(recipe)), host="127.0.0.1", port=0) as url:  # what `cnnlab dashboard RECIPE` serves
        names = [s["study_name"] for s in _get(f"{_api(url)}/studies")["study_summaries"]]
        assert names == ["coarse", "refine-1"]
        assert [v["value"] for v in _get(f"{_api(url)}/studies/1")["trials"][0]["intermediate_values"]] == [0.8]


def test_a_journal_optuna_cannot_read_is_left_out_with_a_warning(tmp_path: Path, cnnlab_warnings: type) -> None:
    recipe = tmp_path / "recipe"
    _study_journal(recipe / "search" / "coarse" / "study.journal", "coarse", [[0.5]])
    bad = recipe / "search" / "refine-1" / "study.journal"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"op_code": 99, "worker_id": "x"}\n')
    view = JournalView(recipe_source(recipe).journals)
    with cnnlab_warnings() as warnings:
        assert [s.study_name for s in view.get_all_studies()] == ["coarse"]
        assert [s.study_name for s in view.get_all_studies()] == ["coarse"]
    (warning,) = warnings.messages  # once, not at every request
    assert "leaves out the study journal" in warning and "refine-1" in warning


def test_find_source_reads_where_each_folder_keeps_its_studies(tmp_path: Path, journal_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("CNNLAB_STORAGE", raising=False)
    journal = journal_dir.resolve() / "study.journal"
    assert find_source(str(journal_dir)).journals() == [journal]  # no search.json (yet): the folder's journal
    assert find_source(str(journal_dir / "study.journal")).journals() == [journal]
    (journal_dir / "search.json").write_text(json.dumps({"storage": f"journal:{journal}"}))  # as a search records it
    assert find_source(str(journal_dir)).journals() == [journal]
    moved = Path(shutil.move(journal_dir, tmp_path / "moved"))  # search.json now names a journal that is gone
    assert find_source(str(moved)).journals() == [moved.resolve() / "study.journal"]
    assert find_source("postgresql://me@db:5432/optuna").database == "postgresql://me@db:5432/optuna"

    # a search whose study is in a database with a password: search.json keeps it masked
    db_search = tmp_path / "db-search"
    db_search.mkdir()
    (db_search / "search.json").write_text(json.dumps({"storage": "postgresql://me:***@db:5432/optuna"}))
    with pytest.raises(UsageError, match="password is not stored.*CNNLAB_STORAGE"):
        find_source(str(db_search))
    monkeypatch.setenv("CNNLAB_STORAGE", "postgresql://me:secret@db:5432/optuna")
    found = find_source(str(db_search))
    assert found.database == "postgresql://me:secret@db:5432/optuna" and "secret" not in found.describe()

    # a recipe folder without --storage: the journals of its stages
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "recipe.json").write_text(json.dumps({"config": {}, "options": {"storage": None}}))
    assert find_source(str(recipe)).patterns == ("search/*/study.journal",)

    with pytest.raises(UsageError, match="does not exist"):
        find_source(str(tmp_path / "nowhere"))
    with pytest.raises(UsageError, match="holds no study"):
        find_source(str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="no study journal"):
        find_source(str(tmp_path / "notes.txt"))


@pytest.mark.slow
def test_a_study_in_postgresql_shows_with_its_curves(postgres_url: str) -> None:
    study = optuna.create_study(study_name="dashboard-pg", storage=st.open_storage(postgres_url, heartbeat=None),
                                direction="maximize")  # fmt: skip
    trial = study.ask()
    for step, value in ((1, 0.25), (2, 0.5)):
        trial.report(value, step)
    study.tell(trial, 0.5)
    with serving(find_source(postgres_url), host="127.0.0.1", port=0) as url:
        shown = {s["study_name"]: s["study_id"] for s in _get(f"{_api(url)}/studies")["study_summaries"]}
        (trial_shown,) = _get(f"{_api(url)}/studies/{shown['dashboard-pg']}")["trials"]
    assert [(v["step"], v["value"]) for v in trial_shown["intermediate_values"]] == [(1, 0.25), (2, 0.5)]

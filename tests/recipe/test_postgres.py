"""A study in a real PostgreSQL server survives a worker killed in the middle of a trial.

Two `cnnlab search --join` worker processes share one study; one is SIGKILLed while it
trains. Its running trial must end FAIL (its heartbeat stops), every trial finished before
the kill must stay as it was, and the survivor must re-run the lost slot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from cnnlab.config import load_run_config
from cnnlab.recipe import storage as st
from cnnlab.recipe.search import SearchSpace, prepare_search

BASE = {
    "data": {"source": "synthetic:classes=3,n=600,size=12,channels=1"},
    "model": {"name": "simple", "options": {"spec": "c16-p-c32-p"}},
    "train": {"batch_size": 32, "device": "cpu"}, "schedule": {"name": "constant"},
}  # fmt: skip
N_TRIALS = 4
EPOCHS = 4


def _worker(study: str, url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "search", "--join", study, "--storage", url, "--quiet"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _running_trial_of(study: optuna.Study, procs: list[subprocess.Popen]) -> tuple[subprocess.Popen, int] | None:
    """A worker that is inside a trial (once some trial has finished), and that trial's number."""
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return None
    for trial in trials:
        # Well into training (one epoch done) yet far from its end (two epochs left), so the
        # trial cannot finish between this look and the kill, even on a loaded machine.
        if trial.state != TrialState.RUNNING or trial.last_step is None or trial.last_step > EPOCHS - 3:
            continue
        for proc in procs:
            if trial.user_attrs.get(st.WORKER_ATTR, "").endswith(f":{proc.pid}"):
                return proc, trial.number
    return None


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_running_trial(postgres_url, tmp_path) -> None:
    cfg = load_run_config(None, BASE)
    name, url = prepare_search(cfg, SearchSpace(lr=(0.01, 0.1), weight_decay=None), out_dir=tmp_path / "s",
                               storage=postgres_url, n_trials=N_TRIALS, epochs=EPOCHS, sampler="random", pruner="none",
                               heartbeat=1)  # fmt: skip
    study = optuna.load_study(study_name=name, storage=st.open_storage(url, heartbeat=None))
    procs = [_worker(name, url), _worker(name, url)]
    try:
        deadline, target = time.monotonic() + 180, None
        while target is None:
            assert time.monotonic() < deadline, "no worker got into a trial after a finished one"
            assert all(p.poll() is None for p in procs), procs[0].stderr.read() + procs[1].stderr.read()
            target = _running_trial_of(study, procs)
            time.sleep(0.05)
        victim, lost = target
        finished = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        survivor = next(p for p in procs if p is not victim)
        assert survivor.wait(timeout=240) == 0, survivor.stderr.read()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    trials = {t.number: t for t in study.get_trials()}
    assert trials[lost].state == TrialState.FAIL, "the killed trial is failed by its stopped heartbeat"
    assert {n: trials[n].value for n in finished} == finished, "no trial finished before the kill was lost"
    assert all(trials[n].state == TrialState.COMPLETE for n in finished)
    assert not [t for t in trials.values() if t.state == TrialState.RUNNING]
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == N_TRIALS, "the lost slot was re-run"
    assert (tmp_path / "s" / "search.json").is_file()


def _with_password(url: str, password: str) -> str:
    """The server trusts local connections, so any password connects: enough to see where it is written."""
    return url.replace("postgres@", f"postgres:{password}@", 1)


@pytest.mark.slow
def test_a_storage_password_is_written_nowhere(postgres_url, tmp_path, monkeypatch) -> None:
    from cnnlab.recipe.search import load_search, run_search

    secret = "s3cret-pw"
    url = _with_password(postgres_url, secret)
    cfg = load_run_config(None, BASE)
    result = run_search(cfg, SearchSpace(lr=(0.01, 0.1), weight_decay=None), out_dir=tmp_path / "s", storage=url,
                        study_name="masked", n_trials=1, epochs=1, pruner="none")  # fmt: skip
    assert result.storage == url.replace(secret, "***")
    leaks = [p for p in (tmp_path / "s").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaks, f"the password was written to {leaks}"
    # Reading the search back with the real URL in the environment reaches the study again.
    monkeypatch.setenv("CNNLAB_STORAGE", url)
    assert [t.number for t in load_search(tmp_path / "s").trials] == [0]

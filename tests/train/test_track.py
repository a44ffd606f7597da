"""Experiment tracking (``--track mlflow[:URI]``) against a real MLflow tracking server.

One ``mlflow server`` per module (SQLite backend, artifacts proxied into a temporary folder,
a free loopback port), started once, waited for until it answers, stopped at the end. Runs
are trained for real on tiny synthetic data and read back with ``MlflowClient``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("mlflow", reason="needs mlflow (pip install 'cnnlab[mlflow]')")

import mlflow  # noqa: E402 - after the skip
from mlflow import MlflowClient  # noqa: E402

from cnnlab import __version__  # noqa: E402
from cnnlab.infer.saved import read_saved_model  # noqa: E402
from cnnlab.cli.main import main  # noqa: E402
from cnnlab.run import run_training  # noqa: E402
from cnnlab.runfolder import RunFolder  # noqa: E402
from cnnlab.train.track import flat_params  # noqa: E402

DATA = "synthetic:classes=3,n=60,size=8,channels=1"
SERVER_START_SECONDS = 120  # a cold start migrates the SQLite schema: seconds on a 2-core machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI of a real MLflow tracking server, shared by the module's tests."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlflow"]
    command += ["server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
                str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    log = root / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner process: tracking needs none
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not _answers(f"{uri}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the MLflow server did not answer at {uri}: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker: the process group this fixture started
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture(autouse=True)
def _no_mlflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)


def _run_id(run: Path) -> str:
    info = json.loads((run / RunFolder.TRACKING).read_text())
    assert info["tracker"] == "mlflow"
    return str(info["run_id"])


def _steps(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_a_tracked_run_logs_params_epochs_artifacts_and_registers_its_model(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    run = tmp_path / "run"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)  # bare --track mlflow: MLflow's own variable names the server
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "cnnlab-test")
    assert main(["train", "--data", DATA, "--model", "simple", "--model-opt", "spec=c8-p-c16-p", "--epochs", "2",
                 "--batch-size", "16", "--device", "cpu", "--checkpoint-minutes", "0", "--out", str(run),
                 "--track", "mlflow", "--track-register", "cnnlab-tiny"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "registered the best weights as version 1 of the model cnnlab-tiny" in err and "failed" not in err, err
    client = MlflowClient(server)
    folder = RunFolder(run)
    got = client.get_run(_run_id(run))
    assert got.info.status == "FINISHED" and got.info.run_name == "run"
    assert client.get_experiment(got.info.experiment_id).name == "cnnlab-test"
    # params: the resolved config, flattened
    assert got.data.params == flat_params(folder.read_config())
    assert got.data.params["optim.lr"] == "0.1" and got.data.params["model.options.spec"] == "c8-p-c16-p"
    # per-epoch metrics at step = epoch (from 1), equal to metrics.jsonl
    records = folder.read_metrics()
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
        assert _steps(client, got.info.run_id, key) == [(r["epoch"] + 1, pytest.approx(r[key], rel=1e-12)) for r in records]
    summary = folder.read_summary()
    assert summary is not None and got.data.metrics["test_acc"] == pytest.approx(summary["test_acc"])
    assert got.data.tags["cnnlab.version"] == __version__ and got.data.tags["cnnlab.run_dir"] == str(run.absolute())
    assert got.data.tags["cnnlab.registered"] == "cnnlab-tiny/1"
    # artifacts: the pictures, summary.json (the same bytes), config.yaml, metrics.jsonl, the model
    names = {f.path for f in client.list_artifacts(got.info.run_id)}
    assert {"curves.png", "summary.json", "config.yaml", "metrics.jsonl", "model"} <= names
    copy = Path(client.download_artifacts(got.info.run_id, "summary.json", str(tmp_path)))
    assert copy.read_bytes() == folder.summary_path.read_bytes()
    # the registered version is the run's best weights, loaded by MLflow from the registry (a torch.export graph)
    (version,) = client.search_model_versions("name='cnnlab-tiny'")
    assert version.run_id == got.info.run_id and version.source.endswith("/model")
    with monkeypatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", server)
        loaded = mlflow.pytorch.load_model("models:/cnnlab-tiny/1")
    ours = read_saved_model(run).model  # best.pt, as cnnlab predict reads it
    images = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(images), ours(images), atol=1e-5)


@pytest.mark.slow
def test_resume_continues_the_same_mlflow_run_without_logging_an_epoch_twice(
    server: str, tmp_path: Path, tiny_config: Callable[..., Any],
) -> None:  # fmt: skip
    run = tmp_path / "run"
    cfg = tiny_config(DATA, epochs=3, train={"track": f"mlflow:{server}"})

    def interrupt(record: dict[str, Any]) -> None:
        if record["epoch"] == 1:  # epoch 2 is logged, its checkpoint not yet written: the resumed run trains it again
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, run, on_epoch_end=interrupt, verbose=False)
    client = MlflowClient(server)
    run_id = _run_id(run)
    assert client.get_run(run_id).info.status == "KILLED"
    assert [step for step, _ in _steps(client, run_id, "train_loss")] == [1, 2]
    run_training(resume=run, verbose=False)
    assert _run_id(run) == run_id
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and "test_acc" in got.data.metrics
    records = RunFolder(run).read_metrics()
    assert _steps(client, run_id, "val_loss") == [(r["epoch"] + 1, pytest.approx(r["val_loss"], rel=1e-12)) for r in records]


@pytest.mark.slow
def test_a_server_that_is_down_warns_once_and_the_run_finishes(tmp_path: Path, tiny_config: Callable[..., Any], cnnlab_warnings: type) -> None:
    port = _free_port()  # nothing listens there
    cfg = tiny_config(DATA, epochs=2, train={"track": f"mlflow:http://127.0.0.1:{port}", "track_register": "never"})
    start = time.monotonic()
    with cnnlab_warnings() as warnings:
        summary = run_training(cfg, tmp_path / "run", verbose=False)
    seconds = time.monotonic() - start
    assert summary["test_acc"] is not None and RunFolder(tmp_path / "run").is_finished()
    tracking = [m for m in warnings.messages if "MLflow" in m]
    assert len(tracking) == 1, warnings.messages
    assert f"127.0.0.1:{port}" in tracking[0] and "goes on untracked" in tracking[0] and "starting the run" in tracking[0]
    assert not (tmp_path / "run" / RunFolder.TRACKING).exists()
    assert seconds < 60  # MLflow's own retries would wait minutes


@pytest.mark.slow
def test_a_search_trial_is_tracked_but_not_registered(server: str, tmp_path: Path, tiny_config: Callable[..., Any]) -> None:
    cfg = tiny_config(DATA, epochs=1, train={"track": f"mlflow:{server}", "track_register": "cnnlab-trial"})
    run_training(cfg, tmp_path / "trial", verbose=False, evaluate_test=False)  # as a search trial runs
    client = MlflowClient(server)
    got = client.get_run(_run_id(tmp_path / "trial"))
    assert got.info.status == "FINISHED" and "val_acc" in got.data.metrics and "test_acc" not in got.data.metrics
    assert client.search_model_versions("name='cnnlab-trial'") == []


@pytest.mark.slow
def test_the_recipes_final_model_is_a_tracked_registered_run(server: str, tmp_path: Path, tiny_config: Callable[..., Any]) -> None:
    pytest.importorskip("optuna", reason="the recipe needs optuna (pip install 'cnnlab[recipe]')")
    from cnnlab.config import dump_yaml, to_dict
    from cnnlab.io import atomic_write_text
    from cnnlab.recipe.recipe import RecipeOptions, RecipeState
    from cnnlab.recipe.step import RecipeContext
    from cnnlab.recipe.steps import RECIPE_STEPS
    from cnnlab.recipe.steps.chosen import BEST_YAML

    cfg = tiny_config(DATA, epochs=1, train={"track": f"mlflow:{server}", "track_register": "cnnlab-recipe"})
    atomic_write_text(tmp_path / BEST_YAML, dump_yaml(cfg))  # the configuration the search chose
    options = RecipeOptions(budget_seconds=None, coarse_trials=1, final_epochs=1)
    state = RecipeState(config=to_dict(cfg), options=dataclasses.asdict(options))
    ctx = RecipeContext(cfg, options, tmp_path, state, RECIPE_STEPS, verbose=False)
    final = ctx.run(RECIPE_STEPS["final"], "final")
    client = MlflowClient(server)
    got = client.get_run(_run_id(tmp_path / "final"))
    assert got.info.status == "FINISHED" and got.data.metrics["test_acc"] == pytest.approx(final.test_acc)
    (version,) = client.search_model_versions("name='cnnlab-recipe'")
    assert version.run_id == got.info.run_id


@pytest.mark.parametrize(
    ("flags", "code", "says"),
    [
        (["--track", "wandb"], 2, "must be mlflow or mlflow:URI"),
        (["--track", "mlflow"], 2, "MLFLOW_TRACKING_URI"),  # no URI and none in the environment
        (["--track-register", "m"], 2, "needs a model name and train.track"),
        (["--track", "mlflow:http://me:secret@127.0.0.1:5000"], 2, "MLFLOW_TRACKING_PASSWORD"),  # config.yaml keeps the URI
    ],
)
def test_bad_tracking_settings_are_refused_in_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], code: int, says: str,
) -> None:  # fmt: skip
    assert main(["train", "--data", DATA, "--out", str(tmp_path / "run"), *flags]) == code
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_without_mlflow_the_error_gives_the_pip_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    assert main(["train", "--data", DATA, "--out", str(tmp_path / "run"), "--track", "mlflow:http://127.0.0.1:1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "pip install 'cnnlab[mlflow]'" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()

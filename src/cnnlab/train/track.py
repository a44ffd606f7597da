"""Experiment tracking: a run also logged to MLflow (``--track mlflow[:URI]``).

The run folder stays the record (:class:`~cnnlab.runfolder.RunFolder`); the tracker sends a
copy of what the run writes to an MLflow tracking server or store, where runs are
compared side by side. A tracked run (:class:`MlflowTracker`) sends

- at its start: the resolved config as params, flattened (``optim.lr``, ``train.epochs``,
  ...), and the tags ``cnnlab.version``, ``cnnlab.run_dir``, ``cnnlab.data``,
  ``cnnlab.model``; into the experiment ``MLFLOW_EXPERIMENT_ID`` or
  ``MLFLOW_EXPERIMENT_NAME`` names, else ``cnnlab``;
- after every epoch: the epoch's training and validation loss and accuracy, learning
  rate and images/s, at ``step`` = the epoch counted from 1 (as the epoch lines and
  TensorBoard count it);
- at its end: the test results and best validation accuracy, the run folder's pictures,
  ``summary.json``, ``config.yaml`` and ``metrics.jsonl`` as artifacts and, when asked
  (``train.track_register``) and the run was tested, the best weights as an MLflow PyTorch
  model (artifact ``model/``) registered as a new version of that model name.

The tracker's run id is kept in the run folder (``tracking.json``), so ``--resume``
continues the same MLflow run; epochs it had logged are not logged twice.

Tracking never costs the training: the first call that fails (a server that is down or
goes away, a refused request) is warned about once, with what failed, and the run goes on
untracked; its folder still holds every result. cnnlab's calls retry a failing server
twice (MLflow's own default waits minutes) unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` or ``MLFLOW_HTTP_REQUEST_TIMEOUT`` say otherwise.

``mlflow`` is optional (``pip install 'cnnlab[mlflow]'``) and imported only by a tracked
run; without it a tracked run is refused before any work, with the command that installs it.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import torch

from cnnlab import __version__
from cnnlab.config import RunConfig, to_dict, track_target
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.runfolder import RunFolder

log = logging.getLogger(__name__)

T = TypeVar("T")

INSTALL = "pip install 'cnnlab[mlflow]'"
#: The experiment of a tracked run when neither MLFLOW_EXPERIMENT_ID nor MLFLOW_EXPERIMENT_NAME names one.
EXPERIMENT = "cnnlab"
#: What each epoch logs (the keys of an epoch record that are present and numeric).
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "images_per_s")
#: What the end of a run logs, from ``summary.json``.
FINAL_METRICS = ("test_acc", "test_loss", "test_top5", "best_val_acc", "best_epoch", "epochs_run", "train_seconds",
                 "wall_seconds")  # fmt: skip
#: The run folder's files sent as artifacts at the end (when present), besides every picture (``*.png``).
ARTIFACTS = (RunFolder.SUMMARY, RunFolder.CONFIG, RunFolder.METRICS, RunFolder.SKIPPED)
#: The artifact folder of a registered model.
MODEL_ARTIFACT = "model"
#: cnnlab's calls give up on a failing server after seconds, unless the user set these.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}  # fmt: skip
#: MLflow refuses longer param values; batches hold at most this many params.
PARAM_VALUE_MAX, PARAMS_PER_BATCH = 6000, 100


def _import_mlflow() -> Any:
    try:
        import mlflow  # optional and heavy: imported by tracked runs only
    except ImportError as exc:
        raise CnnlabError(f"--track mlflow needs the mlflow package ({_one_line(exc)}): {INSTALL}") from None
    return mlflow


def masked(uri: str) -> str:
    """``uri`` with a password in it (from ``MLFLOW_TRACKING_URI``) replaced by ``***``, for messages and files."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def tracking_uri(spec: str, stored: str | None = None) -> str:
    """The tracking URI of ``train.track``: its own, else ``stored`` (a resumed run's), else ``MLFLOW_TRACKING_URI``.

    cnnlab does not fall back to MLflow's ``./mlruns``: it writes nothing into the current
    folder unasked.

    Raises:
        UsageError: none of the three gives one.
    """
    _, uri = track_target(spec)
    stored = stored if stored and "***" not in stored else None  # a masked password cannot be used again
    uri = uri or stored or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        raise UsageError("--track mlflow needs a tracking URI: give --track mlflow:URI (e.g. mlflow:http://127.0.0.1:5000 "
                         "or mlflow:sqlite:///runs/mlflow.db) or set MLFLOW_TRACKING_URI")  # fmt: skip
    return uri


def check_tracking(cfg: RunConfig, folder: RunFolder | None = None) -> None:
    """Refuse, before any work, a tracked run that could not track: no URI, or mlflow not installed.

    Raises:
        UsageError: ``train.track`` without a URI and none in the environment.
        CnnlabError: mlflow is not installed (the message gives the pip command).
    """
    if cfg.train.track is None:
        return
    try:
        stored = folder.read_tracking() if folder is not None else None
    except CnnlabError:  # damaged: MlflowTracker.start warns about it and starts a new MLflow run
        stored = None
    tracking_uri(cfg.train.track, (stored or {}).get("uri"))
    _import_mlflow()


def _stored(folder: RunFolder) -> dict[str, Any] | None:
    try:
        return folder.read_tracking()
    except CnnlabError as exc:  # a damaged tracking.json: the resumed run starts a new tracker run
        log.warning("%s; the resumed run starts a new MLflow run", exc)
        return None


def flat_params(cfg: RunConfig) -> dict[str, str]:
    """The resolved config as MLflow params: ``{"optim.lr": "0.1", "model.options.spec": "c16-p", ...}``.

    Lists read ``[0.9, 0.999]``, unset values ``None`` (``train.track`` never holds a
    password: the config refuses one).
    """
    out: dict[str, str] = {}

    def walk(data: Any, prefix: str) -> None:
        if isinstance(data, Mapping) and data:
            for key, value in data.items():
                walk(value, f"{prefix}{key}.")
            return
        text = str(list(data)) if isinstance(data, (list, tuple)) else str(data)
        out[prefix[:-1]] = text[:PARAM_VALUE_MAX]

    walk(to_dict(cfg), "")
    return out


def _one_line(exc: BaseException) -> str:
    """The error on one line; a long one keeps its start (what was asked) and its end (the cause)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else f"{text[:150]} ... {text[-140:]}"


@contextlib.contextmanager
def _http_limits() -> Iterator[None]:
    """Few retries for cnnlab's calls (unless the user set them), and no retry chatter from urllib3."""
    added = {key: value for key, value in HTTP_LIMITS.items() if key not in os.environ}
    os.environ.update(added)
    chatter = logging.getLogger("urllib3.connectionpool")
    level = chatter.level
    chatter.setLevel(logging.ERROR)  # each retry would print a warning; the tracker warns once, with the cause
    try:
        yield
    finally:
        chatter.setLevel(level)
        for key in added:
            os.environ.pop(key, None)


def _local_artifacts(uri: str) -> str | None:
    """Where a new experiment of a database file keeps its artifacts: beside the file (MLflow's own: ./mlruns)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):])
    return (database.absolute().parent / "mlartifacts").as_uri()


def _requirements(graph: bool) -> list[str]:
    """What serving the model needs: torch; a pickled model (older MLflow) also needs cnnlab's classes."""
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    return [torch_pin] if graph else [torch_pin, f"cnnlab=={__version__}"]


class MlflowTracker:
    """One cnnlab run logged as one MLflow run; every call is guarded (see the module docstring).

    Build it with :meth:`start`, chain its :meth:`on_epoch_end` before the run's own
    callback (:meth:`chain`), and close it with :meth:`finish` (a finished run) or
    :meth:`end` (an interrupted or failed one).

    Args:
        folder: the run folder (its ``tracking.json`` keeps the MLflow run id).
        uri: the tracking URI.
        register: the model name to register the tested best weights under, if any.
    """

    def __init__(self, folder: RunFolder, uri: str, register: str | None = None) -> None:
        self.folder, self.uri, self.register = folder, uri, register
        self.client: Any = None
        self.run_id: str | None = None
        self.failed = False
        self.logged_through = 0  # the last epoch (from 1) whose metrics are in MLflow
        self._entities: Any = None

    @classmethod
    def start(cls, cfg: RunConfig, folder: RunFolder) -> MlflowTracker | None:
        """The tracker of a run (None when ``train.track`` is not set), with its MLflow run open.

        A run folder whose ``tracking.json`` names a run at the same URI continues that run
        (``--resume``); otherwise a new MLflow run is created and recorded there.
        """
        if cfg.train.track is None:
            return None
        stored = _stored(folder)
        tracker = cls(folder, tracking_uri(cfg.train.track, (stored or {}).get("uri")), cfg.train.track_register)
        tracker._safely("starting the run", lambda: tracker._open(cfg, stored))
        return tracker

    # ------------------------------------------------------------------ the run's life

    def chain(self, callback: Callable[[dict[str, Any]], bool | None] | None) -> Callable[[dict[str, Any]], bool | None]:
        """An ``on_epoch_end`` that logs the epoch, then calls ``callback`` (whose answer it returns)."""

        def on_epoch_end(record: dict[str, Any]) -> bool | None:
            self.on_epoch_end(record)
            return callback(record) if callback is not None else None

        return on_epoch_end

    def on_epoch_end(self, record: Mapping[str, Any]) -> None:
        """Log one epoch's metrics at step = its epoch counted from 1 (once: a resumed run skips logged ones)."""
        step = int(record["epoch"]) + 1
        if step <= self.logged_through or self.run_id is None:
            return
        values = {key: record.get(key) for key in EPOCH_METRICS}
        self._safely(f"logging epoch {step}", lambda: self._log_metrics(values, step))
        self.logged_through = step

    def finish(self, summary: Mapping[str, Any], model: torch.nn.Module, input_shape: tuple[int, ...]) -> None:
        """Log the results and the run folder's pictures and summary, register the model if asked, end the run.

        Args:
            summary: the run's ``summary.json``.
            model: the trained model holding the best weights (what is registered).
            input_shape: one image's shape ``(C, H, W)``, as the model takes it.
        """
        if self.run_id is None:
            return
        self._safely("logging the results", lambda: self._log_metrics({key: summary.get(key) for key in FINAL_METRICS}, 0))
        self._safely("uploading the run folder's pictures and summary", self._log_artifacts)
        if self.register and summary.get("test_acc") is not None:
            # A model that cannot be registered (one torch.export cannot trace) still ends its run FINISHED.
            self._safely(f"registering the model {self.register}", lambda: self._register(model, input_shape), stop=False)
        elif self.register:
            log.info("MLflow: the run was not tested (a search trial), so it is not registered as %s", self.register)
        self._safely("ending the run", lambda: self.client.set_terminated(self.run_id, "FINISHED"))

    def end(self, exc: BaseException) -> None:
        """End the MLflow run of a run that stopped: KILLED when interrupted (resumable), else FAILED."""
        if self.run_id is None:
            return
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        if status == "FAILED":
            self._safely("recording the error", lambda: self.client.set_tag(self.run_id, "cnnlab.error", _one_line(exc)))
        self._safely("ending the run", lambda: self.client.set_terminated(self.run_id, status))

    # ------------------------------------------------------------------ guarded calls

    def _safely(self, what: str, call: Callable[[], T], *, stop: bool = True) -> T | None:
        """``call()``; a failure is warned about and (``stop``) ends the tracking: nothing more is tried."""
        if self.failed:
            return None
        try:
            with _http_limits():
                return call()
        except Exception as exc:  # any failure of the tracker: the training goes on (warned, never silent)
            self.failed = stop
            goes_on = "the training goes on untracked" if stop else "the tracking goes on"
            log.warning("MLflow tracking at %s failed while %s (%s); %s, and the run folder %s keeps every result",
                        masked(self.uri), what, _one_line(exc), goes_on, self.folder.path)  # fmt: skip
            return None

    def _open(self, cfg: RunConfig, stored: Mapping[str, Any] | None) -> None:
        mlflow = _import_mlflow()
        from mlflow import entities

        self._entities = entities
        self.client = mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        if stored and stored.get("tracker") == "mlflow" and stored.get("uri") == masked(self.uri) and stored.get("run_id"):
            self.run_id = self.client.get_run(stored["run_id"]).info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.logged_through = max((m.step for m in self.client.get_metric_history(self.run_id, "train_loss")), default=0)
            log.info("MLflow: continuing run %s at %s (epochs 1-%d logged)", self.run_id, masked(self.uri), self.logged_through)
            return
        if stored:
            log.info("MLflow: this run was tracked at %s before; it is now logged as a new MLflow run at %s",
                     masked(str(stored.get("uri"))), masked(self.uri))  # fmt: skip
        experiment_id = self._experiment()
        run = self.client.create_run(experiment_id, run_name=self.folder.path.name, tags=self._tags(cfg))
        self.run_id = run.info.run_id
        self.folder.write_tracking({"tracker": "mlflow", "uri": masked(self.uri), "experiment_id": experiment_id, "run_id": self.run_id})
        params = [entities.Param(key, value) for key, value in flat_params(cfg).items()]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + PARAMS_PER_BATCH])
        log.info("MLflow: logging to run %s (experiment %s) at %s", self.run_id, experiment_id, masked(self.uri))

    def _experiment(self) -> str:
        """The experiment id: MLFLOW_EXPERIMENT_ID, else the experiment MLFLOW_EXPERIMENT_NAME (or ``cnnlab``) names, created if new."""
        given = os.environ.get("MLFLOW_EXPERIMENT_ID", "").strip()
        if given:
            return given
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name, artifact_location=_local_artifacts(self.uri)))
        except Exception:  # another process (a search worker) may have created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _tags(self, cfg: RunConfig) -> dict[str, str]:
        return {"cnnlab.version": __version__, "cnnlab.run_dir": str(self.folder.path.absolute()),
                "cnnlab.data": cfg.data.source, "cnnlab.model": cfg.model.name, "mlflow.source.name": "cnnlab",
                "mlflow.source.type": "LOCAL"}  # fmt: skip

    def _log_metrics(self, values: Mapping[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._entities.Metric(key, float(value), now, step) for key, value in values.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)]  # fmt: skip
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def _log_artifacts(self) -> None:
        path = self.folder.path
        files = sorted(path.glob("*.png")) + [path / name for name in ARTIFACTS if (path / name).is_file()]
        for file in files:
            self.client.log_artifact(self.run_id, str(file))

    def _register(self, model: torch.nn.Module, input_shape: tuple[int, ...]) -> None:
        """Log the best weights as an MLflow PyTorch model (``model/``) and register it as a new version.

        The model is saved as a ``torch.export`` graph with its weights (MLflow's ``pt2``),
        so loading it needs neither cnnlab nor unpickling code; its signature is a float
        tensor ``(N, C, H, W)`` of preprocessed images in, logits out. An MLflow without
        ``pt2`` (older 2.x) pickles the model instead, which then needs cnnlab to load.
        """
        import mlflow.pytorch  # optional, heavy
        from mlflow.exceptions import MlflowException
        from mlflow.models import infer_signature

        # contiguous weights (a run trains channels-last): the exported archive stores each tensor whole
        network = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
        example = torch.zeros((2, *input_shape))  # a batch of 2: the batch dimension stays dynamic
        with torch.no_grad():
            signature = infer_signature(example.numpy(), network(example).numpy())
        graph = "serialization_format" in inspect.signature(mlflow.pytorch.save_model).parameters
        options = {"serialization_format": "pt2"} if graph else {}
        with tempfile.TemporaryDirectory(prefix="cnnlab-mlflow-") as tmp:
            local = Path(tmp) / MODEL_ARTIFACT
            mlflow.pytorch.save_model(network, str(local), signature=signature, input_example=example.numpy(),
                                      pip_requirements=_requirements(graph), **options)  # fmt: skip
            self.client.log_artifacts(self.run_id, str(local), MODEL_ARTIFACT)
        try:
            self.client.create_registered_model(self.register)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{self.client.get_run(self.run_id).info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}"
        version = self.client.create_model_version(self.register, source, run_id=self.run_id,
                                                   tags={"cnnlab.run_dir": str(self.folder.path.absolute())})  # fmt: skip
        self.client.set_tag(self.run_id, "cnnlab.registered", f"{self.register}/{version.version}")
        log.info("MLflow: registered the best weights as version %s of the model %s", version.version, self.register)

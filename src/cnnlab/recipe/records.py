"""A search's results as plain data: trials, settings, the stage's result and its best config.

Kept apart from the Optuna machinery in :mod:`cnnlab.recipe.search` so that reading a
finished search (``search.json``) needs no study.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.config import RunConfig, dump_yaml, from_dict, to_dict
from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_write_json, atomic_write_text
from cnnlab.recipe.space import SearchSpace

if TYPE_CHECKING:
    import optuna


def apply_params(cfg: RunConfig, params: Mapping[str, Any]) -> RunConfig:
    """``cfg`` with each ``config.path -> value`` of ``params`` set (validated like any config)."""
    data = to_dict(cfg)
    for path, value in params.items():
        node = data
        *parents, leaf = path.split(".")
        for key in parents:
            if not isinstance(node.get(key, {}), dict):
                raise CnnlabError(f"search knob {path}: {key} is not a config section")
            node = node.setdefault(key, {})
        node[leaf] = value
    return from_dict(RunConfig, data)


@dataclass
class TrialRecord:
    """One trial of a search, as plain data."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None  # best validation accuracy (PRUNED: the last reported one)
    params: dict[str, Any]
    epochs: int  # epochs it ran (reported to the pruner)
    seconds: float | None
    run_dir: str | None
    curve: list[float] = field(default_factory=list)  # validation accuracy after each epoch
    stop_reason: str | None = None  # why a PRUNED trial stopped (pruner, diverged)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})

    @classmethod
    def from_trial(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord:
        steps = sorted(trial.intermediate_values)
        seconds = None
        if trial.datetime_start and trial.datetime_complete:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        return cls(number=trial.number, state=trial.state.name, value=trial.value, params=dict(trial.params),
                   epochs=len(steps), seconds=seconds, run_dir=trial.user_attrs.get("run_dir"),
                   curve=[trial.intermediate_values[s] for s in steps], stop_reason=trial.user_attrs.get("stop_reason"))  # fmt: skip


@dataclass(frozen=True)
class SearchSettings:
    """What a stage runs with; stored in the study so a joining worker needs nothing else."""

    stage: str
    epochs: int  # per trial
    sampler: str
    pruner: str
    seed: int
    heartbeat: int | None
    out_dir: str
    base_config: dict[str, Any]
    space: dict[str, Any]
    target_trials: int | None = None  # stop starting trials once this many are finished or running
    deadline: float | None = None  # time.time() after which no trial starts
    origin: dict[str, Any] | None = None  # e.g. the coarse search a refine stage narrowed from
    data_fingerprint: str | None = None  # the base config's data: a study continues only on the same images

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSettings:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class SearchResult:
    """A search stage: where its study lives, how it was set up, and every trial."""

    study_name: str
    storage: str  # URL without password
    settings: SearchSettings
    trials: list[TrialRecord]

    @property
    def space(self) -> SearchSpace:
        return SearchSpace.from_dict(self.settings.space)

    @property
    def best(self) -> TrialRecord | None:
        """The COMPLETE trial with the highest validation accuracy (None before the first)."""
        done = [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]
        return max(done, key=lambda t: (t.value, -t.number)) if done else None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per trial (like Optuna's trials_dataframe), ready to plot or tabulate."""
        return [{"number": t.number, "state": t.state, "value": t.value, "epochs": t.epochs, "seconds": t.seconds,
                 **t.params} for t in self.trials]  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "study_name": self.study_name, "storage": self.storage, "stage": self.settings.stage,
            "objective": "best validation accuracy (maximize)", "counts": self.counts(),
            "best": None if best is None else {**best.as_dict(), "config": to_dict(best_config(self))},
            "settings": self.settings.as_dict(), "space": self.space.describe(),
            "trials": [t.as_dict() for t in self.trials],
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchResult:
        return cls(study_name=data["study_name"], storage=data["storage"],
                   settings=SearchSettings.from_dict(data["settings"]),
                   trials=[TrialRecord.from_dict(t) for t in data["trials"]])  # fmt: skip


def best_config(result: SearchResult) -> RunConfig:
    """The search's base config with the best trial's values (its full ``train.epochs``)."""
    best = result.best
    if best is None:
        raise CnnlabError(f"study {result.study_name} has no COMPLETE trial yet; run (or continue) the search")
    return apply_params(from_dict(RunConfig, result.settings.base_config), best.params)


def write_result(result: SearchResult) -> Path:
    """Write ``search.json`` (and ``best.yaml`` once a trial finished) into the search folder."""
    out = Path(result.settings.out_dir)
    atomic_write_json(out / "search.json", result.as_dict())
    if result.best is not None:
        atomic_write_text(out / "best.yaml", dump_yaml(best_config(result)))
    return out / "search.json"

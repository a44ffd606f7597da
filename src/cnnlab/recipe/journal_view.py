"""Study journals seen as one read-only Optuna storage: what a dashboard shows of a folder.

A search keeps its study in ``OUT/study.journal``; a recipe keeps each search stage's study
in a journal of its own (``search/coarse/study.journal``, ``search/refine-1/...``), each
created when its stage starts. optuna-dashboard shows one storage, so this view stands for
all the journals a pattern finds: every time it is asked for the studies it looks for new
journal files and opens them.

It only reads: a journal is opened without cnnlab's repair of a torn last line
(:func:`cnnlab.recipe.storage.check_journal` belongs to the process that writes), Optuna
reads a journal without taking its lock, so a running search never waits for the viewer,
and every write is refused. Studies are numbered in the order they were found and a trial
id carries its journal's index, so ids from different journals never collide and stay the
same while the view lives.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import Any

# Imported at the top because the view subclasses Optuna's storage; only the dashboard
# imports this module, and `import cnnlab` / `cnnlab --help` never reach it.
import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from cnnlab.errors import CnnlabError

# A trial's id in the view is (its id in its journal) * MAX_JOURNALS + (its journal's index):
# unique across journals, and decoded back without a table. A recipe has 1 + --rounds (at
# most 100) stages; journals beyond this are left out with a warning.
MAX_JOURNALS = 1024
READ_ONLY = "this view of the study journals is read-only (cnnlab serves the dashboard to watch, not to edit)"

log = logging.getLogger(__name__)


class JournalView(BaseStorage):
    """The studies of every journal file ``find()`` returns, read-only, as one storage.

    Args:
        find: returns the journal files to show now (missing ones are shown once they exist).
            It is called whenever the studies are listed, so journals created later appear.
    """

    def __init__(self, find: Callable[[], Sequence[Path]]) -> None:
        self._find = find
        self._paths: list[Path] = []
        self._journals: list[JournalStorage] = []
        self._broken: set[Path] = set()  # journals that could not be read: warned once, skipped
        self._studies: list[tuple[int, int]] = []  # view study id -> (journal index, study id in the journal)
        self._ids: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()  # the dashboard answers requests in several threads

    # ------------------------------------------------------------------ finding studies

    def _open_new_journals(self) -> None:
        for path in self._find():
            path = Path(path)
            if path in self._paths or path in self._broken or not path.is_file():
                continue
            if len(self._paths) >= MAX_JOURNALS:
                log.warning("the dashboard shows the first %d study journals only; %s is left out", MAX_JOURNALS, path)
                self._broken.add(path)
                continue
            try:
                # The open-lock is the one cnnlab's writers use (storage.open_storage): if a
                # write is ever made through this backend, it excludes theirs.
                journal = JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
            except Exception as exc:  # noqa: BLE001 - a replay of records Optuna does not expect fails with any type
                log.warning("the dashboard leaves out the study journal %s: Optuna cannot read it (%s: %s)",
                            path, type(exc).__name__, exc)  # fmt: skip
                self._broken.add(path)
                continue
            self._paths.append(path)
            self._journals.append(journal)

    def _refresh(self) -> list[FrozenStudy]:
        """Every study of every journal, with its view id; new journals and studies get the next ids."""
        with self._lock:
            self._open_new_journals()
            studies = []
            for index, journal in enumerate(self._journals):
                for study in journal.get_all_studies():
                    key = (index, study._study_id)  # noqa: SLF001 - FrozenStudy has no public id accessor
                    if key not in self._ids:
                        self._ids[key] = len(self._studies)
                        self._studies.append(key)
                    studies.append(_renumbered_study(study, self._ids[key]))
        return sorted(studies, key=lambda s: s._study_id)  # noqa: SLF001

    def _locate(self, study_id: int) -> tuple[JournalStorage, int, int]:
        if not 0 <= study_id < len(self._studies):
            self._refresh()
        if not 0 <= study_id < len(self._studies):
            raise KeyError(f"no study with id {study_id}")
        index, inner = self._studies[study_id]
        return self._journals[index], index, inner

    def _trial(self, index: int, trial: FrozenTrial, deepcopy: bool) -> FrozenTrial:
        out = copy.deepcopy(trial) if deepcopy else copy.copy(trial)
        out._trial_id = trial._trial_id * MAX_JOURNALS + index  # noqa: SLF001 - the id the view gives it
        return out

    # ------------------------------------------------------------------ reading

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._refresh()

    def get_study_id_from_name(self, study_name: str) -> int:
        for study in self._refresh():
            if study.study_name == study_name:
                return study._study_id  # noqa: SLF001
        raise KeyError(f"no study named {study_name}")

    def get_study_name_from_id(self, study_id: int) -> str:
        journal, _, inner = self._locate(study_id)
        return journal.get_study_name_from_id(inner)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        journal, _, inner = self._locate(study_id)
        return journal.get_study_directions(inner)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        journal, _, inner = self._locate(study_id)
        return journal.get_study_user_attrs(inner)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        journal, _, inner = self._locate(study_id)
        return journal.get_study_system_attrs(inner)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:  # fmt: skip
        journal, index, inner = self._locate(study_id)
        return [self._trial(index, t, deepcopy) for t in journal.get_all_trials(inner, deepcopy=False, states=states)]

    def get_trial(self, trial_id: int) -> FrozenTrial:
        inner, index = divmod(trial_id, MAX_JOURNALS)
        if not 0 <= index < len(self._journals):
            raise KeyError(f"no trial with id {trial_id}")
        return self._trial(index, self._journals[index].get_trial(inner), deepcopy=True)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        journal, index, inner = self._locate(study_id)
        return journal.get_trial_id_from_study_id_trial_number(inner, trial_number) * MAX_JOURNALS + index

    # ------------------------------------------------------------------ writing: refused

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        raise CnnlabError(READ_ONLY)

    def delete_study(self, study_id: int) -> None:
        raise CnnlabError(READ_ONLY)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        raise CnnlabError(READ_ONLY)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        raise CnnlabError(READ_ONLY)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        raise CnnlabError(READ_ONLY)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: optuna.distributions.BaseDistribution) -> None:  # fmt: skip
        raise CnnlabError(READ_ONLY)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        raise CnnlabError(READ_ONLY)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        raise CnnlabError(READ_ONLY)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        raise CnnlabError(READ_ONLY)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        raise CnnlabError(READ_ONLY)


def _renumbered_study(study: FrozenStudy, study_id: int) -> FrozenStudy:
    return FrozenStudy(study.study_name, None, study.user_attrs, study.system_attrs, study_id, directions=study.directions)

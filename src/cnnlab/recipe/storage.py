"""Where a hyperparameter search keeps its study, and how dead workers are noticed.

Two kinds of storage, both safe for several worker processes:

* a **journal file** (the default, ``<out>/study.journal``): an append-only log that
  Optuna locks for every write, so local worker processes can share it. Written as
  ``journal:PATH`` (or a bare path ending in ``.journal``).
* a **database** (``postgresql://USER@HOST:PORT/DB``, ``sqlite:///FILE``, any SQLAlchemy
  URL): workers on any machine can join. Every running trial writes a heartbeat; a
  trial whose worker stopped beating for ``3 × heartbeat`` seconds is marked FAIL by the
  next worker that starts a trial, so a killed worker loses only its running trial.

The journal has no heartbeat, so each trial records ``host:pid`` of its worker and a
trial still RUNNING on this host whose process is gone is marked FAIL instead.

A journal is read by cnnlab before Optuna replays it (:func:`check_journal`): a process
killed while appending leaves a torn last line, which Optuna would otherwise skip on read
and then corrupt with its next append (``AssertionError: Should not reach``). That last
line is dropped (the original is kept next to it); damage anywhere else is refused.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cnnlab.errors import CnnlabError, UsageError
from cnnlab.io import atomic_write_bytes

if TYPE_CHECKING:
    import optuna

JOURNAL_NAME = "study.journal"
JOURNAL_PREFIX = "journal:"
DEFAULT_HEARTBEAT = 10  # s between heartbeats of a running trial (database storage only)
GRACE_FACTOR = 3  # a trial is stale after this many missed heartbeats
WORKER_ATTR = "worker"  # trial user attribute: "host:pid" of the process running it
MASK = "***"  # what a password is replaced by wherever a storage URL is printed or written

log = logging.getLogger(__name__)


def import_optuna():  # noqa: ANN201 - the optuna module, imported lazily
    """Import optuna, or explain how to install it."""
    try:
        import optuna  # lazy: optional dependency (the recipe extra); `import cnnlab` must not need it
    except ImportError:
        raise CnnlabError("the search needs optuna: pip install 'cnnlab[recipe]' (or 'cnnlab[postgres]')") from None
    return optuna


def is_journal(url: str) -> bool:
    """True for ``journal:PATH`` and bare ``*.journal`` paths (the file storage)."""
    return url.startswith(JOURNAL_PREFIX) or ("://" not in url and url.endswith(".journal"))


def default_storage_url(out_dir: str | Path) -> str:
    """The journal file inside a search folder."""
    return f"{JOURNAL_PREFIX}{Path(out_dir).resolve() / JOURNAL_NAME}"


def redact(url: str) -> str:
    """``url`` without its password, for printing and for every file cnnlab writes.

    Both places a database URL can carry one are masked: ``USER:PASSWORD@HOST`` and a
    ``?password=...`` query parameter (libpq reads either).
    """
    if is_journal(url) or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed netloc (bad port): mask everything between "://" and "@"
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{MASK}@{rest.rpartition('@')[2]}" if "@" in rest else url
    netloc = parts.netloc
    if password:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            query = urlencode([(k, MASK if k.lower() == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def is_masked(url: str) -> bool:
    """True when ``url`` is a redacted one (its password replaced by the mask): it cannot connect."""
    return f":{MASK}@" in url or f"password={MASK}" in url


def same_storage(url: str, other: str) -> bool:
    """True when two URLs name the same storage once their passwords are masked."""
    return redact(url) == redact(other)


def unmask(url: str) -> str:
    """A masked URL read from a file, made usable by ``CNNLAB_STORAGE`` when that names the same storage."""
    env = os.environ.get("CNNLAB_STORAGE")
    return env if is_masked(url) and env and same_storage(env, url) else url


def open_storage(url: str, *, heartbeat: int | None = DEFAULT_HEARTBEAT) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage ``url`` names.

    Args:
        url: ``journal:PATH`` / ``PATH.journal`` for a journal file, else a SQLAlchemy URL.
        heartbeat: seconds between heartbeats of running trials (databases only); None
            turns stale-trial detection off.

    Raises:
        CnnlabError: the URL is malformed, its driver is missing or the server is unreachable.
    """
    optuna = import_optuna()
    if is_journal(url):
        return _open_journal(Path(url.removeprefix(JOURNAL_PREFIX)))
    if "://" not in url:
        raise UsageError(
            f"unknown study storage '{url}': use a .journal file, journal:PATH, "
            "postgresql://USER@HOST:PORT/DB or sqlite:///FILE"
        )
    if is_masked(url):  # a URL copied from recipe.json or search.json: its password was never stored
        raise UsageError(
            f"the storage URL {url} has its password masked ({MASK}); give the real URL with --storage "
            "or in the environment variable CNNLAB_STORAGE"
        )
    kwargs = {}
    if heartbeat:
        kwargs = {"heartbeat_interval": int(heartbeat), "grace_period": GRACE_FACTOR * int(heartbeat)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat is "experimental"
            # pool_pre_ping: a connection dropped by the server while a long trial ran is replaced, not an error.
            return optuna.storages.RDBStorage(_with_installed_driver(url), engine_kwargs={"pool_pre_ping": True}, **kwargs)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors have many types; all mean "cannot open"
        reason = _without_password(_one_line(exc), url)
        raise CnnlabError(
            f"cannot open the study storage {redact(url)}: {reason}; check the URL "
            "(postgresql://USER@HOST:PORT/DB, sqlite:///FILE), that the server runs, and that its driver is installed "
            "(pip install 'cnnlab[postgres]')"
        ) from None


def _one_line(exc: BaseException) -> str:
    """A driver error on one short line, without SQLAlchemy's "(module.Error)" prefix and link."""
    text = str(exc).split("(Background on this error")[0]
    text = re.sub(r"^\([\w.]+\)\s*", "", " ".join(text.split()))
    return text[:200].rstrip(" .") or type(exc).__name__


def _without_password(text: str, url: str) -> str:
    """``text`` with the password of ``url`` masked, in case a driver quoted it back."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    return text.replace(password, MASK) if password else text


def _with_installed_driver(url: str) -> str:
    """Name the PostgreSQL driver that is installed when the URL names none.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3, 2.0 as psycopg2; cnnlab's
    ``postgres`` extra installs psycopg2-binary, so pick whichever of the two imports.
    """
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}{sep}{rest}"
    return url


def _open_journal(path: Path) -> optuna.storages.BaseStorage:
    import optuna  # lazy: optional dependency, imported only when a study is opened
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock  # lazy: as above

    if path.exists() and not path.is_file():
        raise UsageError(f"the study journal {path} is not a file; give --storage a journal file path or choose another --out")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The open-lock (O_EXCL lock file) works where symlinks do not (Windows, some network file systems).
        lock = JournalFileOpenLock(str(path))
        check_journal(path, lock)
        backend = JournalFileBackend(str(path), lock_obj=lock)
    except OSError as exc:
        raise CnnlabError(f"cannot open the study journal {path}: {exc.strerror or exc}; choose another --out") from None
    try:
        return optuna.storages.JournalStorage(backend)
    except Exception as exc:  # noqa: BLE001 - a replay of records Optuna does not expect fails with any type
        raise CnnlabError(
            f"the study journal {path} holds records Optuna cannot replay ({type(exc).__name__}: {exc}): it was "
            "edited or written by another Optuna version; move it away (its trial folders stay) and start the search "
            "in another --out"
        ) from None


def _journal_record(line: bytes) -> bool:
    """True when ``line`` is one journal record: a JSON object with an ``op_code``."""
    try:
        record = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return False
    return isinstance(record, dict) and "op_code" in record


def check_journal(path: Path, lock: optuna.storages.journal.BaseJournalFileLock | None = None) -> str | None:
    """Read a study journal before Optuna does; repair the one damage a kill leaves.

    Optuna appends each batch of records with one write, under its lock file. A process
    killed during that write leaves the last line without its end (or cut inside it): that
    line is dropped, the original file is kept as ``PATH.damaged-TIME``, and the rest (an
    earlier, consistent state of the study) is kept. A bad line anywhere else means the
    file was edited or overwritten, and nothing can tell what it held: that is refused.

    Args:
        path: the journal file (a missing or empty one is fine: a new study).
        lock: Optuna's lock of this journal, held while reading so that a live worker's
            write in progress is never mistaken for a torn one.

    Returns:
        What was recovered (also logged as a warning), or None when the file was sound.

    Raises:
        CnnlabError: a damaged record that is not the last one.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return None
    if lock is not None:
        lock.acquire()
    try:
        data = path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # bytes after the last newline: empty unless the last write was cut off
        bad = [i for i, line in enumerate(lines) if not _journal_record(line.rstrip(b"\r"))]
        if tail:
            bad.append(len(lines))
            lines.append(tail)
        if not bad:
            return None
        if bad != [len(lines) - 1]:
            first = bad[0] + 1
            raise CnnlabError(
                f"the study journal {path} is damaged: line {first} of {len(lines)} is not an Optuna journal record "
                f"({len(bad)} bad line(s)); it was edited or overwritten, so its trials cannot be trusted. Move it away "
                "(the trial folders stay) and start the search in another --out"
            )
        backup = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for n in range(2, 100):  # never overwrite an earlier backup
            if not backup.exists():
                break
            backup = backup.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        backup.write_bytes(data)
        kept = lines[:-1]
        atomic_write_bytes(path, b"".join(line + b"\n" for line in kept))
    finally:
        if lock is not None:
            lock.release()
    note = (f"the study journal {path} ended in a cut-off record (a process killed while writing it): kept its "
            f"{len(kept)} complete record(s), dropped the last one; the original is saved as {backup.name}")  # fmt: skip
    log.warning("%s", note)
    return note


# --------------------------------------------------------------------------- dead workers


def worker_id() -> str:
    """``host:pid`` of this process, recorded on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _worker_is_dead(worker: str | None) -> bool:
    """True only when ``worker`` ran on this host and its process is gone (never guesses for other hosts)."""
    if not worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return int(pid) != os.getpid() and not _pid_alive(int(pid))


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker died; return their numbers.

    Databases use Optuna's heartbeat (trials that missed ``3 × heartbeat`` s); the journal
    checks whether the recorded worker process still exists on this host.
    """
    optuna = import_optuna()
    from optuna.trial import TrialState  # lazy: optional dependency, imported only when a study is open

    storage = study._storage  # noqa: SLF001 - optuna offers no public accessor for a study's storage
    if getattr(storage, "get_heartbeat_interval", lambda: None)():
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        return sorted(before - after - _finished(study))
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _worker_is_dead(trial.user_attrs.get(WORKER_ATTR)):
            try:
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
            except RuntimeError:  # it finished (or another worker failed it) in the meantime
                continue
            failed.append(trial.number)
    return failed


def _finished(study: optuna.Study) -> set[int]:
    from optuna.trial import TrialState  # lazy: optional dependency, imported only when a study is open

    return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))}


def watched_running_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials whose worker's death this process would notice (heartbeat, or a local pid).

    A finished worker waits for these before it exits, so that a trial lost with a killed
    worker is re-run; trials it could never see fail are not waited for.
    """
    from optuna.trial import TrialState  # lazy: optional dependency, imported only when a study is open

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if getattr(study._storage, "get_heartbeat_interval", lambda: None)():  # noqa: SLF001
        return running
    host = socket.gethostname()
    return [t for t in running if (t.user_attrs.get(WORKER_ATTR) or "").rpartition(":")[0] == host]

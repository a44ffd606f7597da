"""A live view of a search's or a recipe's studies: optuna-dashboard, served while a command runs.

:func:`find_source` says where a folder's studies are, the way the search and the recipe
keep them (a search: its ``search.json``'s storage, else ``OUT/study.journal``; a recipe:
``recipe.json``'s ``--storage``, else one journal per stage in ``search/<stage>/``); a
database URL or a journal file can be given directly. :func:`serving` serves
optuna-dashboard on it for the duration of a ``with`` block.

The server is optuna-dashboard's own WSGI app (``optuna_dashboard.wsgi``) in a thread of
this process, on a stdlib ``wsgiref`` server that can be stopped, rather than the
``optuna-dashboard`` program in a subprocess or its blocking ``run_server``:

* it stops when the block ends, on an error or Ctrl-C too (``shutdown`` then ``close``:
  the port is free again when the command returns), and a child process can never be
  left behind;
* the port is bound before the search starts, so a port in use is a one-line error, not a
  search that runs without its view;
* it opens the storage the way cnnlab does (the journal's lock, the PostgreSQL driver,
  a masked password completed from ``CNNLAB_STORAGE``).

It never blocks the search: optuna-dashboard (seconds to import) is imported in the
server's thread, it has a storage object of its own (Optuna reads a journal without its
lock; a database has its own connections), requests are answered in daemon threads, and
its errors go to the log, never over the search's lines. The command line binds 127.0.0.1
unless told otherwise, and the view is read-only: any request that is not GET/HEAD is
refused, so nobody deletes or changes a study a search is working on (the view of
journals refuses writes too, see :mod:`cnnlab.recipe.journal_view`).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import logging
import re
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cnnlab.errors import CnnlabError, UsageError
from cnnlab.recipe import storage as st
from cnnlab.recipe.state import STATE_FILE, RecipeState

if TYPE_CHECKING:
    import optuna

SEARCH_RECORD = "search.json"  # written by cnnlab.recipe.records.write_result
RECIPE_JOURNALS = f"search/*/{st.JOURNAL_NAME}"  # one study journal per recipe stage
READ_ONLY = "cnnlab serves this dashboard read-only (to watch a study, not to change it)"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudySource:
    """Where the studies to show are: a database, or journal files matched under a folder.

    Attributes:
        database: a SQLAlchemy URL (its password is never printed); None for journals.
        folder: the folder the journal patterns are relative to.
        patterns: glob patterns of journal files under ``folder``; files that appear later
            (a recipe's next stage) are shown once they exist.
    """

    database: str | None = None
    folder: Path | None = None
    patterns: tuple[str, ...] = ()

    def describe(self) -> str:
        """What is shown, for messages: the URL without its password, or the journal files."""
        if self.database is not None:
            return st.redact(self.database)
        return " + ".join(str(self.folder / p) for p in self.patterns)

    def journals(self) -> list[Path]:
        """The journal files that exist now, in natural order (``coarse``, ``refine-2`` before ``refine-10``)."""
        if self.folder is None:
            return []
        found = {p for pattern in self.patterns for p in self.folder.glob(pattern) if p.is_file()}
        return sorted(found, key=_natural)

    def open(self) -> optuna.storages.BaseStorage:
        """The storage the dashboard reads.

        Raises:
            CnnlabError: the database cannot be opened (or its URL's password is masked).
        """
        if self.database is not None:
            return st.open_storage(self.database, heartbeat=None)  # a viewer runs no trial: no heartbeat
        from cnnlab.recipe.journal_view import JournalView  # lazy: imports optuna, which `cnnlab --help` must not pay for

        return JournalView(self.journals)


def _natural(path: Path) -> list[Any]:
    """A sort key that orders the numbers inside a path by value."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(path))]


def url_source(url: str) -> StudySource:
    """A storage URL: ``journal:PATH`` / ``PATH.journal``, or a database URL."""
    if st.is_journal(url):
        path = Path(url.removeprefix(st.JOURNAL_PREFIX)).resolve()
        return StudySource(folder=path.parent, patterns=(path.name,))
    if "://" not in url:
        raise UsageError(f"unknown study storage '{url}': give a search or recipe folder, a .journal file, "
                         "postgresql://USER@HOST:PORT/DB or sqlite:///FILE")  # fmt: skip
    return StudySource(database=st.unmask(url))


def search_source(out_dir: str | Path, storage: str | None = None) -> StudySource:
    """The studies of a search folder: ``storage`` when given, else its journal (created when the search starts)."""
    if storage:
        return url_source(storage)
    return StudySource(folder=Path(out_dir).resolve(), patterns=(st.JOURNAL_NAME,))


def recipe_source(out_dir: str | Path, storage: str | None = None) -> StudySource:
    """The studies of a recipe folder: ``storage`` when given, else every stage's journal under ``search/``."""
    if storage:
        return url_source(storage)
    return StudySource(folder=Path(out_dir).resolve(), patterns=(RECIPE_JOURNALS,))


def find_source(target: str, storage: str | None = None) -> StudySource:
    """What ``cnnlab dashboard TARGET`` shows: a recipe folder, a search folder, a journal file or a URL.

    A folder's storage is found where cnnlab's own code keeps it: ``recipe.json``'s options
    (a recipe started with ``--storage``), ``search.json`` (a search, also one in a
    database), else the journal files. A password masked in those files is taken from
    ``CNNLAB_STORAGE`` when that names the same storage.

    Args:
        target: a folder, a ``.journal`` file, ``journal:PATH`` or a database URL.
        storage: the storage URL to use instead of the one the folder records.

    Raises:
        CnnlabError: ``target`` is none of these, or its storage has a password that is not given.
    """
    if "://" in target or target.startswith(st.JOURNAL_PREFIX) or target.endswith(".journal"):
        return url_source(target)
    folder = Path(target)
    if folder.is_file():
        raise UsageError(f"{target} is a file but no study journal (*.journal); for an SQLite file give sqlite:///{target}")
    if not folder.is_dir():
        raise UsageError(f"{target} does not exist; give a search or recipe folder (--out), a .journal file or a database URL")
    if (folder / STATE_FILE).is_file():
        saved = RecipeState.load(folder).options.get("storage")
        return recipe_source(folder, storage or _usable(saved, folder))
    record = folder / SEARCH_RECORD
    if record.is_file() or (folder / st.JOURNAL_NAME).is_file():
        return search_source(folder, storage or _usable(_saved_search_storage(record), folder))
    raise UsageError(f"{target} holds no study ({STATE_FILE}, {SEARCH_RECORD} or {st.JOURNAL_NAME}); give the --out "
                     "folder of a `cnnlab search` or `cnnlab recipe`, a .journal file or a database URL")  # fmt: skip


def _saved_search_storage(record: Path) -> str | None:
    """The storage URL a search.json records (None when there is none, or it does not read)."""
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s does not read (%s); showing the study journal next to it", record, exc)
        return None
    url = data.get("storage") if isinstance(data, dict) else None
    return url if isinstance(url, str) else None


def _usable(saved: str | None, folder: Path) -> str | None:
    """A recorded storage URL, with its masked password completed from ``CNNLAB_STORAGE``.

    A recorded journal that is gone (the folder was moved: the record holds its old path)
    gives None: the folder's own journals are shown.
    """
    if saved is None or (st.is_journal(saved) and not Path(saved.removeprefix(st.JOURNAL_PREFIX)).is_file()):
        return None
    url = st.unmask(saved)
    if st.is_masked(url):
        raise UsageError(f"the studies of {folder} are in {saved}, whose password is not stored; give the URL itself "
                         "(`cnnlab dashboard URL`) or set CNNLAB_STORAGE to it")  # fmt: skip
    return url


# --------------------------------------------------------------------------- serving


def _check_installed() -> None:
    """Refuse now, in one line, when optuna-dashboard is missing (it is imported later, in the server's thread)."""
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise CnnlabError("the dashboard needs optuna-dashboard: pip install 'cnnlab[dashboard]'")


def _serve(server: _Server, storage: optuna.storages.BaseStorage) -> None:
    """The server's thread: make the app, then answer requests until ``shutdown``.

    Importing optuna-dashboard takes seconds (it imports scikit-learn for its parameter
    importances: 1.9 s of CPU here), so it happens here and not before the search starts;
    a browser that connects meanwhile waits in the listening socket's queue.
    """
    try:
        import optuna_dashboard  # lazy: optional dependency (the dashboard extra), seconds to import

        app = _read_only(optuna_dashboard.wsgi(storage))
    except Exception as exc:  # noqa: BLE001 - whatever breaks the dashboard must not break the search: said, then served as 503
        log.warning("the dashboard cannot start (%s: %s); the search goes on without it", type(exc).__name__, exc)
        app = _unavailable(f"the dashboard cannot start: {type(exc).__name__}: {exc}")
    server.set_app(app)
    server.serve_forever(poll_interval=0.2)


class _ErrorLog:
    """``wsgi.errors`` of the dashboard: a failed request is one warning in the log, its traceback a debug line."""

    def write(self, text: str) -> None:
        lines = [line for line in str(text).splitlines() if line.strip()]
        if lines:
            log.warning("dashboard: a request failed: %s", lines[-1].strip())
            log.debug("%s", text)

    def writelines(self, lines: list[str]) -> None:
        self.write("".join(lines))

    def flush(self) -> None:
        pass


class _Handler(WSGIRequestHandler):
    """No access log on the terminal (a search prints its own lines); errors go to the log."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("dashboard: " + format, *args)

    def get_stderr(self) -> _ErrorLog:  # type: ignore[override]
        return _ErrorLog()


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a request in progress never keeps the command alive
    allow_reuse_port = False  # a second server on the same port must fail, not share it

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up (getfqdn), a DNS query that can take
        # seconds; the WSGI environ only needs the address.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that closes its connection early is normal; anything else is logged, never printed over the search.
        log.debug("dashboard: error while answering %s", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


def _unavailable(reason: str) -> Any:
    """An app that answers every request with 503 and ``reason``."""
    body = json.dumps({"reason": reason}).encode()

    def unavailable(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("503 Service Unavailable", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return unavailable


def _read_only(app: Any) -> Any:
    """``app`` answering GET and HEAD only; any other method gets 403 with a reason the page shows."""
    body = json.dumps({"reason": READ_ONLY}).encode()

    def read_only(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD", "GET") in ("GET", "HEAD"):
            return app(environ, start_response)
        start_response("403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return read_only


def _bind(host: str, port: int, flag: str) -> _Server:
    """A server bound to ``host:port``, without its app yet (``set_app``), not yet serving.

    Raises:
        CnnlabError: the port is in use or not allowed, or the host is no address of this machine.
    """
    server_class = _Server6 if ":" in host else _Server
    try:
        return make_server(host, port, None, server_class=server_class, handler_class=_Handler)
    except socket.gaierror as exc:
        raise UsageError(f"cannot serve the dashboard on host '{host}': {exc.strerror or exc}; give --host an address "
                         "of this machine, e.g. 127.0.0.1") from None  # fmt: skip
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CnnlabError(f"port {port} on {host} is in use (another dashboard or server?); give another port "
                              f"with {flag} PORT, or {flag} 0 for any free port") from None  # fmt: skip
        if exc.errno == errno.EACCES:
            raise CnnlabError(f"port {port} on {host} needs more rights (ports below 1024 are reserved); give a port "
                              f"above 1023 with {flag} PORT") from None  # fmt: skip
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"cannot serve the dashboard on host '{host}': no address of this machine; give --host an "
                             "address of this machine, e.g. 127.0.0.1") from None  # fmt: skip
        raise CnnlabError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}") from None


def dashboard_url(host: str, port: int) -> str:
    """The address to open in a browser."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard"


@contextlib.contextmanager
def serving(source: StudySource, *, host: str, port: int, flag: str = "--port") -> Iterator[str]:
    """Serve optuna-dashboard on ``source`` for the duration of the block; yield its URL.

    The port is bound before the block starts; the server stops (and frees the port) when
    the block ends, whether it returns, raises or is interrupted.

    Args:
        source: the studies to show (:func:`find_source`, :func:`search_source`, :func:`recipe_source`).
        host: the address to listen on (127.0.0.1: only this machine).
        port: the port; 0 picks any free one (the yielded URL names it).
        flag: the command-line flag that sets the port, named in the port-in-use message.

    Raises:
        CnnlabError: optuna-dashboard is not installed, the storage cannot be opened, or
            the port cannot be bound.
    """
    _check_installed()
    server = _bind(host, port, flag)  # first: a busy port fails before a database is reached
    try:
        storage = source.open()
    except BaseException:
        server.server_close()
        raise
    thread = threading.Thread(target=_serve, args=(server, storage), name="cnnlab-dashboard", daemon=True)
    thread.start()
    log.debug("dashboard of %s on %s:%d", source.describe(), host, server.server_port)
    try:
        yield dashboard_url(host, server.server_port)
    finally:
        server.shutdown()  # waits for the serving loop to end (one poll_interval; or the import, if still running)
        server.server_close()
        thread.join()

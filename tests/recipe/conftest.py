"""Fixtures for the recipe tests: a throwaway, real PostgreSQL server for the whole session.

The server lives in a temporary folder, listens on a free local port (unix socket in the
same folder), trusts local connections, and is stopped and deleted at the end. Without
PostgreSQL's binaries the tests that need it are skipped (`bash scripts/ensure-system-deps.sh`
installs them), unless CNNLAB_REQUIRE_SYSTEM_TESTS=1 (CI), where they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = "PostgreSQL (initdb, pg_ctl) is not installed; `bash scripts/ensure-system-deps.sh` installs it"


def _unavailable(reason: str) -> None:
    if os.environ.get("CNNLAB_REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(f"{reason} (CNNLAB_REQUIRE_SYSTEM_TESTS=1)")
    pytest.skip(reason)


def _postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent  # Debian links initdb onto PATH; createdb sits next to the real one
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    version = lambda p: [int(x) for x in re.findall(r"\d+", p)]  # noqa: E731
    return Path(max(found, key=version)).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user() -> list[str]:
    """A command prefix that runs as the `postgres` system user (initdb refuses to run as root)."""
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    return ["su", "postgres", "-s", "/bin/sh", "-c"]


def _run(prefix: list[str], cmd: list[str], *, check: bool = True) -> None:
    full = [*prefix, shlex.join(cmd)] if prefix[:1] == ["su"] else [*prefix, *cmd]
    proc = subprocess.run(full, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:2])} failed: {proc.stderr.strip() or proc.stdout.strip()}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT/cnnlab_test`` on a fresh server, for the session."""
    bindir = _postgres_bindir()
    if bindir is None:
        _unavailable(INSTALL_HINT)
    try:
        import psycopg2  # noqa: F401 - the driver SQLAlchemy uses for postgresql:// URLs
    except ImportError:
        _unavailable("psycopg2 is not installed: pip install 'cnnlab[postgres]'")
    prefix: list[str] = []
    # Not pytest's tmp_path: its parent folders are private to the user running pytest,
    # and the server may have to run as another user (postgres) that must reach the folder.
    root = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no `postgres` user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = _as_postgres_user()
    data, port = root / "data", _free_port()
    try:
        _run(prefix, [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        _run(prefix, [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "start"])
        try:
            _run(prefix, [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "cnnlab_test"])
            yield f"postgresql://postgres@127.0.0.1:{port}/cnnlab_test"
        finally:
            _run(prefix, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)

"""Helpers of the hostile-input tests (tests/hostile/): what a careless or malicious user types must never destroy files,
crash with a traceback, or silently do the wrong thing.

Every test here follows one pattern: snapshot the files that exist, run the command, and
assert (1) the exit code, (2) a one-line ``cnnlab: error: ...`` message (or a clean result),
never a traceback, and (3) that no pre-existing file changed.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    """What a CLI call did."""

    code: int
    out: str
    err: str

    def __iter__(self):  # noqa: ANN204 - `code, out, err = run_cli(...)`
        return iter((self.code, self.out, self.err))

    @property
    def text(self) -> str:
        return self.out + self.err

    def error_line(self) -> str:
        """The one ``cnnlab: error:`` line (fails the test when there is none, or a traceback)."""
        assert "Traceback" not in self.text, self.text
        lines = [line for line in self.err.splitlines() if line.startswith("cnnlab: error:") or "error:" in line]
        assert lines, f"no error message (exit {self.code}):\n{self.text}"
        return lines[-1]


def run_cli(*argv: str) -> Result:
    """Run ``cnnlab ARGV`` in this process; an uncaught exception becomes a traceback in ``err``."""
    from cnnlab.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse exits with 2 (usage) or 0 (--help)
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - the test reports it as the traceback a user would see
            err.write(traceback.format_exc())
            code = -1
    return Result(int(code), out.getvalue(), err.getvalue())


def run_cli_process(*argv: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> Result:
    """Run ``cnnlab ARGV`` as a separate process (for locks, signals, the current folder)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlab", *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    return Result(proc.returncode, proc.stdout, proc.stderr)


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (a file root is hashed itself)."""
    digests: dict[str, str] = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in paths:
            try:
                digests[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            except FileNotFoundError:  # a temporary that a live writer renamed between listing and reading
                continue
    return digests


def assert_unchanged(before: dict[str, str], *roots: Path) -> None:
    """No file that existed before changed or disappeared (new files are allowed)."""
    after = snapshot(*roots)
    changed = [p for p, d in before.items() if after.get(p) != d]
    assert not changed, f"pre-existing files changed or vanished: {changed}"

"""Hostile-input tests: what a careless or malicious user types must never destroy files,
crash with a traceback, or silently do the wrong thing. The helpers are in
``hostile_cli.py`` (a unique module name: ``from conftest import`` would find whichever
conftest.py pytest imported first when several test folders are collected together).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hostile_cli import Result, run_cli, run_cli_process


@pytest.fixture
def cli() -> Callable[..., Result]:
    return run_cli


@pytest.fixture
def cli_process() -> Callable[..., Result]:
    return run_cli_process

"""Shared test setup: a private cnnlab cache per test session, and a few fixtures."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Tests must neither read nor pollute the user's cache (decoded images, stats, features).
    os.environ["CNNLAB_CACHE"] = str(tmp_path_factory.mktemp("cnnlab-cache"))
    os.environ.pop("CNNLAB_DATA", None)

"""cnnlab.io: the cache folder and atomic writes (old file or whole new file, never a torn one)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
from pathlib import Path

import pytest

from cnnlab.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, cache_dir


def test_cache_dir_follows_cnnlab_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "c"))
    path = cache_dir("features", "x")
    assert path == tmp_path / "c" / "features" / "x" and path.is_dir()


def test_cache_dir_falls_back_to_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNNLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "cnnlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir("a") == tmp_path / "home" / ".cache" / "cnnlab" / "a"


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"  # the folder is created
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["b.bin", "f.json", "sub", "t.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("the writer fails half-way")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def _write_forever(target: str, ready: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    # Each version is big (1 MB) so a kill lands mid-write with high probability.
    i = 0
    while True:
        atomic_write_text(target, json.dumps({"i": i, "pad": "x" * 1_000_000}))
        ready.set()
        i += 1


def test_a_killed_writer_leaves_a_whole_file(tmp_path: Path) -> None:
    # The real failure: a process killed (SIGKILL, no cleanup) while it writes. A reader
    # must then find the previous complete version, never a torn one.
    target = tmp_path / "state.json"
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_write_forever, args=(str(target), ready))
    proc.start()
    try:
        assert ready.wait(60), "the writer did not start"
        for _ in range(20):  # read while it writes
            assert len(json.loads(target.read_text())["pad"]) == 1_000_000
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    assert len(json.loads(target.read_text())["pad"]) == 1_000_000

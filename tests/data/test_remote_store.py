"""Stores at s3:// URLs, against a real S3-compatible server (moto's standalone server, started here)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("litdata")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from cnnlab.checkpoint import load_checkpoint  # noqa: E402
from cnnlab.cli.main import main  # noqa: E402
from cnnlab.data import store as store_mod  # noqa: E402
from cnnlab.data.images import _human  # noqa: E402
from cnnlab.data.remote import RemoteStore, is_remote, parse_size  # noqa: E402
from cnnlab.data.store import open_store, plan_folder, prepare_remote, prepare_store  # noqa: E402
from cnnlab.data.stream import windowed_permutation  # noqa: E402
from cnnlab.errors import CnnlabError, UsageError  # noqa: E402
from tests.data.test_stream_runs import _photos  # noqa: E402

BUCKET = "cnnlab-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[object]:
    """An S3 server on a local port, the AWS environment pointing at it, and a client with one bucket."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("CNNLAB_STORE_CACHE_LIMIT", raising=False)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail("the moto S3 server did not start")
                time.sleep(0.1)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        try:
            yield client
        finally:
            server.kill()  # werkzeug's server may take long to finish on SIGTERM
            server.wait(timeout=30)


@pytest.fixture(autouse=True)
def _fresh_handles() -> Iterator[None]:
    """Each test opens its stores anew (no process-wide cache of an earlier test's store)."""
    store_mod._REMOTES.clear()
    store_mod._open_cached.cache_clear()
    yield
    store_mod._REMOTES.clear()
    store_mod._open_cached.cache_clear()


def _forget_cache(url: str) -> None:
    """Delete this machine's cached copy of ``url`` (as a machine that never saw the store would start)."""
    shutil.rmtree(RemoteStore(url).local)
    store_mod._REMOTES.clear()
    store_mod._open_cached.cache_clear()


def _chunk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.bin"))


def _prepare_parts(src: Path, out: str, part_size: int) -> dict:
    """Prepare ``src`` into ``out`` (a folder or a URL) in parts of ``part_size`` files (the CLI uses 1024)."""
    items, classes, channels, skipped = plan_folder(src)
    options = {"max_side": None, "part_size": part_size, "skipped": skipped}
    if is_remote(out):
        return prepare_remote(out, items, classes, channels, **options)[0]
    return prepare_store(items, classes, channels, out, **options)


def test_prepare_uploads_and_a_fresh_machine_reads_the_same_bytes(s3, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    src = _photos(tmp_path / "src", per_class=6, lo=30, hi=50)
    url = f"s3://{BUCKET}/photos"
    assert main(["data", "prepare", str(src), "--out", url, "--max-side", "native"]) == 0
    assert "uploaded" in capsys.readouterr().out
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="photos/")["Contents"]}
    assert "photos/cnnlab-store.json" in keys and any(k.endswith(".bin") for k in keys)
    assert main(["data", "prepare", str(src), "--out", url, "--max-side", "native"]) == 0  # again: nothing to send
    assert f"({_human(0)} uploaded)" in capsys.readouterr().out
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "local"), "--max-side", "native"]) == 0

    _forget_cache(url)
    remote, local = open_store(url), open_store(tmp_path / "local")
    assert remote.remote is not None and remote.remote.fetched_bytes == 0  # metadata only, so far
    assert remote.classes == local.classes and np.array_equal(remote.labels, local.labels)
    assert np.array_equal(remote.heights, local.heights) and np.array_equal(remote.splits, local.splits)
    for i in range(len(local)):
        assert remote.read(i) == local.read(i)
    assert remote.remote.fetched_bytes == _chunk_bytes(tmp_path / "local" / "parts")

    assert main(["data", "info", url]) == 0
    out = capsys.readouterr().out
    assert f"read from {url}" in out and "18 images" in out.replace(",", "")


def test_a_cache_smaller_than_the_store_evicts_and_reads_the_same_bytes(s3, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    src = _photos(tmp_path / "src", per_class=8, lo=30, hi=50)
    url = f"s3://{BUCKET}/small-cache"
    meta = _prepare_parts(src, url, part_size=4)
    local_meta = _prepare_parts(src, str(tmp_path / "local"), part_size=4)
    assert meta["parts"] == local_meta["parts"] == 6
    biggest = max(_chunk_bytes(p) for p in (tmp_path / "local" / "parts").iterdir())
    limit = 2 * biggest + biggest // 2  # two parts fit, not three
    monkeypatch.setenv("CNNLAB_STORE_CACHE_LIMIT", str(limit))
    _forget_cache(url)
    remote, local = open_store(url), open_store(tmp_path / "local")
    assert remote.remote.limit == limit and not remote.remote.holds_all and remote.remote.window_parts() == 1
    order = np.random.default_rng(0).permutation(len(local))
    for i in np.concatenate([order, order]):
        assert remote.read(int(i)) == local.read(int(i))
        assert remote.remote.cached_bytes <= limit and _chunk_bytes(remote.path / "parts") <= limit
    assert remote.remote.fetched_bytes > _chunk_bytes(tmp_path / "local" / "parts")  # parts were fetched again

    # Another process sharing the cache deleted a part this one still counts as present: fetched again.
    k = next(iter(remote.remote._present))
    for chunk in remote.parts[k].glob("*.bin"):
        chunk.unlink()
    i = int(remote.offsets[k])
    assert remote.read(i) == local.read(i)


def test_windowed_permutation_visits_the_parts_a_window_at_a_time() -> None:
    groups = torch.arange(10).repeat_interleave(7)[torch.randperm(70, generator=torch.Generator().manual_seed(1))]

    def perm(seed: int) -> torch.Tensor:
        return windowed_permutation(groups, 10, 3, torch.Generator().manual_seed(seed))

    p = perm(0)
    assert torch.equal(torch.sort(p).values, torch.arange(70)) and torch.equal(p, perm(0)) and not torch.equal(p, perm(1))
    seq = groups[p].tolist()
    first_seen = list(dict.fromkeys(seq))
    windows = [set(first_seen[a : a + 3]) for a in range(0, 10, 3)]
    at = 0
    for w in windows:  # each window's items are one contiguous stretch of the order
        n = 7 * len(w)
        assert set(seq[at : at + n]) == w
        at += n
    assert len(set(tuple(sorted(w)) for w in windows)) == 4 and seq[:21] != sorted(seq[:21])  # mixed within windows


def test_training_from_a_url_equals_training_from_the_local_store(s3, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    src = _photos(tmp_path / "src", per_class=12, lo=30, hi=50)
    url = f"s3://{BUCKET}/train"
    assert main(["data", "prepare", str(src), "--out", url, "--max-side", "native"]) == 0
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "local"), "--max-side", "native"]) == 0
    _forget_cache(url)
    common = ["--loader", "stream", "--image-size", "24", "--model", "simple", "--model-opt", "spec=c8-p", "--epochs", "2",
              "--batch-size", "8", "--augment", "flip,cutout:4", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(["train", "--data", url, *common, "--out", str(tmp_path / "from-url")]) == 0
    assert main(["train", "--data", str(tmp_path / "local"), *common, "--out", str(tmp_path / "from-folder")]) == 0
    a, b = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("from-url", "from-folder"))
    assert a["test_acc"] == b["test_acc"] and a["test_loss"] == b["test_loss"]
    wa, wb = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("from-url", "from-folder"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "from-url"), "--device", "cpu"]) == 0  # the run's data is the URL: read again
    assert json.loads((tmp_path / "from-url" / "eval.json").read_text())["accuracy"] == a["test_acc"]


def test_a_store_prepared_again_at_the_same_url_replaces_the_cached_copy(s3, tmp_path: Path) -> None:  # noqa: ANN001
    url = f"s3://{BUCKET}/again"
    _prepare_parts(_photos(tmp_path / "a", per_class=4, lo=30, hi=40), url, part_size=1024)
    assert len(open_store(url)) == 12 and open_store(url).read(0)
    with pytest.raises(CnnlabError, match="already holds another store"):
        _prepare_parts(_photos(tmp_path / "b", per_class=5, lo=30, hi=40), url, part_size=1024)
    for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="again/")["Contents"]:  # the user deletes it ...
        s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    items, classes, channels, _ = plan_folder(tmp_path / "b")  # ... and another machine prepares the new images there
    prepare_store(items, classes, channels, tmp_path / "elsewhere", max_side=None)
    RemoteStore(url).upload(tmp_path / "elsewhere")
    store_mod._REMOTES.clear()
    store_mod._open_cached.cache_clear()
    store = open_store(url)  # this machine still caches the old store: replaced, not mixed in
    assert len(store) == 15 and all(store.read(i) for i in range(15))


def test_bad_urls_get_one_line_errors(s3, capsys) -> None:  # noqa: ANN001
    assert main(["data", "info", f"s3://{BUCKET}/nothing-here"]) != 0
    assert "is not a finished cnnlab store" in capsys.readouterr().err
    assert main(["data", "info", "s3://no-such-bucket-cnnlab/x"]) != 0
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "info", "gs://bucket/store"]) != 0
    assert "only s3:// URLs" in capsys.readouterr().err
    with pytest.raises(UsageError, match="not a size"):
        parse_size("lots")
    assert parse_size("1.5GB") == 1_500_000_000 and parse_size("2GiB") == 2 << 30 and parse_size("4096") == 4096

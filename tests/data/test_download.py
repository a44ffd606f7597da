"""The download path, exercised against a real HTTP server on localhost serving local files."""

import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from cnnlab.config import DataConfig
from cnnlab.data import builtin
from cnnlab.data.download import download
from cnnlab.data.sources import load_splits
from cnnlab.errors import CnnlabError


@pytest.fixture()
def server(tmp_path: Path):
    """Serve ``tmp_path/www`` over HTTP; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(www), **kwargs)

        def log_message(self, *args):  # keep test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_verifies_checksum_and_tries_mirrors(server, tmp_path) -> None:
    www, url = server
    (www / "f.bin").write_bytes(b"payload")
    dest = tmp_path / "dest"
    dead = "http://127.0.0.1:9/"  # nothing listens on the discard port
    path = download("f.bin", [dead, url], dest, _md5(b"payload"), timeout=5)
    assert path.read_bytes() == b"payload"
    with pytest.raises(CnnlabError, match="checksum"):
        download("f.bin", [url], tmp_path / "other", _md5(b"something else"))
    assert not list((tmp_path / "other").glob("*"))  # nothing half-written is left behind


def _idx_gz(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def test_mnist_download_end_to_end(server, tmp_path, monkeypatch) -> None:
    www, url = server
    rng = np.random.default_rng(0)
    files = []
    for prefix, n in (("train", 20), ("t10k", 10)):
        for kind, arr in (("images-idx3", rng.integers(0, 256, (n, 28, 28))), ("labels-idx1", np.arange(n) % 10)):
            name = f"{prefix}-{kind}-ubyte.gz"
            data = _idx_gz(arr)
            (www / name).write_bytes(data)
            files.append((name, _md5(data)))
    monkeypatch.setitem(builtin._IDX_FILES, "mnist", tuple(files))
    monkeypatch.setitem(builtin._IDX_MIRRORS, "mnist", (url,))
    splits = load_splits(DataConfig(source="mnist", root=str(tmp_path / "data"), val_split=0.0))
    assert len(splits.train) == 20 and len(splits.test) == 10
    assert (tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz").is_file()


def _pickle_bytes(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _cifar_archive(n_train: int = 10, n_test: int = 5) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:

        def add(name: str, obj) -> None:
            data = _pickle_bytes(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i in range(1, 6):
            add(f"data_batch_{i}", {"data": rng.integers(0, 256, (n_train, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n_train))})
        add("test_batch", {"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), "labels": list(range(n_test))})
        add("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return buf.getvalue()


def test_cifar10_download_extract_and_load(server, tmp_path, monkeypatch) -> None:
    www, url = server
    archive = _cifar_archive()
    (www / "cifar-10-python.tar.gz").write_bytes(archive)
    monkeypatch.setattr(builtin, "_CIFAR_MIRRORS", (url,))
    monkeypatch.setitem(builtin._CIFAR["cifar10"], "md5", _md5(archive))
    splits = load_splits(DataConfig(source="cifar10", root=str(tmp_path / "data"), val_split=0.0))
    assert len(splits.train) == 50 and len(splits.test) == 5 and splits.image_shape == (3, 32, 32)
    assert splits.classes[0] == "c0" and splits.test.labels.tolist() == [0, 1, 2, 3, 4]


class _Payload:
    def __reduce__(self):
        return (Path("/tmp/cnnlab-pwned").touch, ())


def test_cifar_loader_refuses_pickled_code(tmp_path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(_pickle_bytes({"label_names": _Payload()}))
    with pytest.raises(CnnlabError, match="refusing to load"):
        load_splits(DataConfig(source="cifar10", root=str(tmp_path), download=False))
    assert not Path("/tmp/cnnlab-pwned").exists()

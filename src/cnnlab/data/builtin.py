"""Named datasets: Fashion-MNIST, MNIST, CIFAR-10/100, scikit-learn's digits, synthetic.

Files are looked for under ``data.root`` (and, for Fashion-MNIST, where Debian's
``dataset-fashion-mnist`` package puts them); when missing and downloading is allowed
they are fetched from the published mirrors and verified against their MD5 checksums.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.config import DataConfig, source_options
from cnnlab.data.download import download
from cnnlab.data.imageset import ImageSet, RawData, stratified_split
from cnnlab.data.synthetic import generate
from cnnlab.errors import CnnlabError
from cnnlab.io import cache_dir

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# (file name, MD5 of the published .gz file)
_IDX_FILES = {
    "fashion-mnist": (
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    "mnist": (
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
}
_IDX_MIRRORS = {
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
}
# Folders searched (after data.root) for each dataset; Debian's package comes last.
_SYSTEM_DIRS = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",), "mnist": ("/usr/share/datasets/mnist",)}
_TORCHVISION_DIRS = {"fashion-mnist": "FashionMNIST/raw", "mnist": "MNIST/raw"}

_CIFAR = {
    "cifar10": dict(
        archive="cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a", folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], meta="batches.meta",
        label_key="labels", names_key="label_names",
    ),
    "cifar100": dict(
        archive="cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85", folder="cifar-100-python",
        train=["train"], test=["test"], meta="meta", label_key="fine_labels", names_key="fine_label_names",
    ),
}  # fmt: skip
_CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)


def data_home(cfg: DataConfig) -> Path:
    """Where named datasets are downloaded to: ``data.root``, ``$CNNLAB_DATA`` or the cache."""
    if cfg.root:
        return Path(cfg.root).expanduser()
    if os.environ.get("CNNLAB_DATA"):
        return Path(os.environ["CNNLAB_DATA"]).expanduser()
    return cache_dir("datasets")


def _stat_fingerprint(name: str, files: list[Path], extra: str = "") -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{name}|{extra}".encode())
    for f in files:
        st = f.stat()
        # surrogateescape: a folder name that is not UTF-8 hashes as its own bytes.
        h.update(f"|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


# --------------------------------------------------------------------------- IDX (MNIST family)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes into a numpy array.

    Raises:
        CnnlabError: when the file is not IDX uint8 data or is truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # unreadable, or a truncated/garbled gzip stream
        raise CnnlabError(f"cannot read {path}: {exc}; delete it so it is downloaded again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise CnnlabError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if not 1 <= ndim <= 4 or len(data) < header:
        raise CnnlabError(f"{path} is not an IDX file (its header is cut off or names {ndim} dimensions)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise CnnlabError(
            f"{path} is truncated or corrupt: header says {shape} ({expected} bytes), "
            f"file holds {len(data) - header}; delete it so it is downloaded again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx_dir(name: str, cfg: DataConfig) -> Path | None:
    files = [f for f, _ in _IDX_FILES[name]]
    candidates: list[Path] = []
    for base in filter(None, [cfg.root, os.environ.get("CNNLAB_DATA")]):
        base_path = Path(base).expanduser()
        candidates += [base_path / name, base_path, base_path / _TORCHVISION_DIRS[name]]
    candidates.append(data_home(cfg) / name)
    candidates += [Path(p) for p in _SYSTEM_DIRS[name]]
    for folder in candidates:
        if all((folder / f).is_file() or (folder / f[:-3]).is_file() for f in files):
            return folder
    return None


def load_idx_dataset(name: str, cfg: DataConfig, classes: tuple[str, ...]) -> RawData:
    """Load an MNIST-style dataset from IDX files, downloading it if allowed."""
    folder = _find_idx_dir(name, cfg)
    if folder is None:
        if not cfg.download:
            raise CnnlabError(
                f"{name} not found (looked under --data-root and {', '.join(_SYSTEM_DIRS[name])}); "
                f"pass --data-root DIR holding its four IDX files, or allow downloading"
            )
        folder = data_home(cfg) / name
        try:
            for filename, md5 in _IDX_FILES[name]:
                download(filename, _IDX_MIRRORS[name], folder, md5)
        except CnnlabError as exc:
            apt = " or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else ""
            raise CnnlabError(f"{name} is not on this machine and {exc}; use --data-root DIR{apt}") from None
    paths = []
    for filename, _ in _IDX_FILES[name]:
        plain = folder / filename[:-3]
        paths.append(plain if plain.is_file() else folder / filename)
    train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
    for x, y, p, q in ((train_x, train_y, paths[0], paths[1]), (test_x, test_y, paths[2], paths[3])):
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0] or min(x.shape) < 1:
            raise CnnlabError(f"{p}: images {x.shape} and labels {y.shape} do not match")
        if y.max() >= len(classes):
            raise CnnlabError(f"{q} holds label {int(y.max())}, but {name} has {len(classes)} classes; it is not a {name} label file")
    fingerprint = _stat_fingerprint(name, paths)
    return RawData(
        train=ImageSet(train_x[:, None], train_y.astype(np.int64), classes),
        test=ImageSet(test_x[:, None], test_y.astype(np.int64), classes),
        val=None,
        name=f"{name} ({folder})",
        fingerprint=fingerprint,
    )


# --------------------------------------------------------------------------- CIFAR


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches without running code: only numpy arrays and builtins."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles store bytes; it only encodes a string
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"refusing to load {module}.{name}")


class _Refused(pickle.UnpicklingError):
    """A pickle that names something other than arrays and builtins (it could run code)."""


def _load_cifar_batch(path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    """One unpickled CIFAR file (a batch or the meta file) with ``required`` keys, as ``str`` keys.

    Raises:
        CnnlabError: the file is unreadable, not a safe pickle, not a dict, or lacks a key.
    """
    fix = f"delete {path.parent} so that it is downloaded again"
    try:
        with open(path, "rb") as fh:
            obj = _SafeUnpickler(fh, encoding="latin1").load()
    except OSError as exc:
        raise CnnlabError(f"cannot read CIFAR file {path}: {exc.strerror or exc}; {fix}") from None
    except _Refused as exc:
        raise CnnlabError(f"cannot read CIFAR file {path}: {exc} (a CIFAR batch holds only arrays); {fix}") from None
    except Exception as exc:  # noqa: BLE001 - a truncated or garbled pickle fails in many ways
        raise CnnlabError(f"CIFAR file {path} is damaged ({type(exc).__name__}: {exc}); {fix}") from None
    if not isinstance(obj, dict):
        raise CnnlabError(f"CIFAR file {path} holds a {type(obj).__name__}, not a CIFAR batch (a dict); {fix}")
    # Python 2 pickles read with latin1 give str keys; pickles written by Python 3 may give bytes.
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = [k for k in required if k not in batch]
    if missing:
        raise CnnlabError(f"CIFAR file {path} has no {', '.join(missing)} entry; {fix}")
    return batch


def _cifar_images(path: Path, batch: dict[str, Any], label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The (N, 3, 32, 32) uint8 images and (N,) labels of one batch, checked."""
    fix = f"delete {path.parent} so that it is downloaded again"
    try:
        x = np.asarray(batch["data"])
        y = np.asarray(batch[label_key])
    except Exception as exc:  # noqa: BLE001 - ragged or odd objects
        raise CnnlabError(f"CIFAR file {path} holds unreadable arrays ({exc}); {fix}") from None
    shape_ok = (x.ndim == 2 and x.shape[1] == 3072) or (x.ndim == 4 and x.shape[1:] == (3, 32, 32))
    if x.dtype.kind not in "iu" or not shape_ok or x.shape[0] == 0:
        raise CnnlabError(f"CIFAR file {path}: 'data' is {x.dtype} {x.shape}, expected uint8 (N, 3072); {fix}")
    x = x.reshape(-1, 3, 32, 32)
    if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
        raise CnnlabError(f"CIFAR file {path}: {x.shape[0]} images but '{label_key}' is {y.dtype} {y.shape}; {fix}")
    if x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() >= n_classes:
        raise CnnlabError(f"CIFAR file {path} holds pixel values or labels out of range; {fix}")
    return x.astype(np.uint8, copy=False), y.astype(np.int64)


def _extract_tar(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest`` through a temporary folder, so a failed or killed
    extraction never leaves a half-written dataset that looks complete."""
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-extract-", dir=dest))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                target = (tmp / member.name).resolve()
                if not target.is_relative_to(tmp.resolve()) or not (member.isfile() or member.isdir()):
                    raise CnnlabError(f"{archive} holds an unsafe entry '{member.name}'; delete the archive")
            tar.extractall(tmp)  # noqa: S202 - every member was checked above
        for entry in tmp.iterdir():
            final = dest / entry.name
            if final.is_dir():
                shutil.rmtree(final)
            os.replace(entry, final)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CnnlabError(f"cannot extract {archive} ({exc}); delete it so that it is downloaded again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_cifar(name: str, cfg: DataConfig) -> RawData:
    """Load CIFAR-10 or CIFAR-100 from the python-pickle folder, downloading it if allowed.

    Raises:
        CnnlabError: missing and not downloadable, or a file that is not what CIFAR
            publishes (named, with the fix: delete it and download again).
    """
    spec = _CIFAR[name]
    home = data_home(cfg)
    candidates = [home / spec["folder"], home / name / spec["folder"]]
    folder = next((c for c in candidates if (c / spec["meta"]).is_file()), None)
    if folder is None:
        if not cfg.download:
            raise CnnlabError(f"{name} not found under {home}; pass --data-root DIR holding {spec['folder']}/")
        try:
            archive = download(spec["archive"], _CIFAR_MIRRORS, home, spec["md5"])
        except CnnlabError as exc:
            raise CnnlabError(f"{name} is not on this machine and {exc}; use --data-root DIR") from None
        _extract_tar(archive, home)
        folder = home / spec["folder"]
    meta_path = folder / spec["meta"]
    names = _load_cifar_batch(meta_path, (spec["names_key"],))[spec["names_key"]]
    if not isinstance(names, (list, tuple)) or len(names) < 2 or not all(isinstance(c, (str, bytes)) for c in names):
        raise CnnlabError(f"CIFAR file {meta_path} has no list of class names; delete {folder} so that it is downloaded again")
    classes = tuple(c.decode("latin1") if isinstance(c, bytes) else c for c in names)

    def part(files: list[str]) -> ImageSet:
        arrays = [
            _cifar_images(folder / f, _load_cifar_batch(folder / f, ("data", spec["label_key"])), spec["label_key"], len(classes))
            for f in files
        ]
        return ImageSet(np.concatenate([x for x, _ in arrays]), np.concatenate([y for _, y in arrays]), classes)

    files = [folder / f for f in [*spec["train"], *spec["test"], spec["meta"]]]
    return RawData(part(spec["train"]), part(spec["test"]), None, f"{name} ({folder})", _stat_fingerprint(name, files))


# --------------------------------------------------------------------------- digits


def load_digits(cfg: DataConfig, options: dict[str, str]) -> RawData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), 20% held out as test."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits  # lazy: optional extra, slow to import
    except ImportError:
        raise CnnlabError("the 'digits' dataset needs scikit-learn: pip install 'cnnlab[digits]'") from None
    bunch = sk_load_digits()
    x = np.rint(np.asarray(bunch.images) * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = np.asarray(bunch.target, dtype=np.int64)
    keep, held = stratified_split(y, 0.2, seed=0)
    classes = tuple(str(i) for i in range(10))
    return RawData(
        ImageSet(x[keep], y[keep], classes), ImageSet(x[held], y[held], classes), None, "digits (scikit-learn)", "digits-v1"
    )


# --------------------------------------------------------------------------- synthetic


def load_synthetic(cfg: DataConfig, options: dict[str, str]) -> RawData:
    """Generated, seeded images of class-dependent shapes and colours.

    Options (``synthetic:key=value,...``): ``classes`` (4), ``n`` training images (2000),
    ``test`` images (n // 4), ``size`` in px (32, or ``data.image_size``), ``channels``
    (3, or ``data.channels``), ``noise`` std in pixel levels (20), ``seed`` (0); their
    ranges are ``cnnlab.config.SYNTHETIC_OPTIONS``, checked when the DataConfig was built.
    """
    spec = source_options(cfg.source, image_size=cfg.image_size, channels=cfg.channels)
    k, n, n_test, size, channels = (int(spec[key]) for key in ("classes", "n", "test", "size", "channels"))
    noise, seed = float(spec["noise"]), int(spec["seed"])
    classes = tuple(f"class{i}" for i in range(k))
    train = generate(n, k, size, channels, noise, seed=seed * 2)
    test = generate(n_test, k, size, channels, noise, seed=seed * 2 + 1)
    key = f"synthetic:{k},{n},{n_test},{size},{channels},{noise},{seed}"
    return RawData(
        ImageSet(*train, classes), ImageSet(*test, classes), None, key, hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
    )


SOURCES: dict[str, Callable[[DataConfig, dict[str, str]], RawData]] = {
    "fashion-mnist": lambda cfg, _: load_idx_dataset("fashion-mnist", cfg, FASHION_CLASSES),
    "mnist": lambda cfg, _: load_idx_dataset("mnist", cfg, tuple(str(i) for i in range(10))),
    "cifar10": lambda cfg, _: load_cifar("cifar10", cfg),
    "cifar100": lambda cfg, _: load_cifar("cifar100", cfg),
    "digits": load_digits,
    "synthetic": load_synthetic,
}

"""A store at an ``s3://`` URL, read through a bounded local cache.

A store shared between machines lives in an object store (Amazon S3, or any service that
speaks its API: MinIO, Ceph, Cloudflare R2, Google Cloud Storage's interoperability
endpoint, chosen with the standard ``AWS_ENDPOINT_URL``). Opening one
(:meth:`RemoteStore.sync`) fetches its small metadata (``cnnlab-store.json``, and each
part's ``part.json`` and litdata ``index.json``) into a folder of cnnlab's cache; a part's
chunk files are fetched whole the first time an image of that part is read
(:meth:`RemoteStore.ensure`), after which reading is the local store's direct reads. The
cache holds at most ``CNNLAB_STORE_CACHE_LIMIT`` bytes of chunks per process (``20GB``,
``500MB``; default: the whole store when it takes at most half of the cache disk's free
space, else that half): the least recently used parts are deleted first. When the store
is larger than that, :mod:`cnnlab.data.stream` visits the parts a window at a time so that
an epoch fetches each part once.

Why boto3 rather than litdata's downloader: litdata (0.2.7x) fetches chunks with obstore,
which refuses plain-HTTP endpoints (a local MinIO or test server) whatever the settings;
boto3 is the AWS SDK every S3 tool uses and reads the same configuration (environment,
profiles, SSO) as the ``aws`` command. The store's format stays litdata's.

The cached copy is replaced when the remote ``cnnlab-store.json`` changes (a store
prepared again at the same URL); any file of the cache can be deleted at any time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cnnlab.errors import CnnlabError, UsageError
from cnnlab.io import cache_dir

__all__ = ["RemoteStore", "is_remote", "parse_size"]

MARKER = "cnnlab-store.json"  # a store's completion marker, written last (cnnlab.data.store uses this name)
SUPPORTED = ("s3",)
#: URL schemes recognised as remote, so that the unsupported ones get a clear refusal instead of "no such folder".
KNOWN_SCHEMES = ("s3", "gs", "gcs", "az", "azure", "abfs", "abfss", "r2", "hf", "http", "https")
LIMIT_ENV = "CNNLAB_STORE_CACHE_LIMIT"
DISK_FRACTION = 0.5  # default limit: this fraction of the cache disk's free space (when the store is larger)
FETCH_THREADS = 16  # metadata files fetched at a time (a store of 10^6 images has ~1,000 parts)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}  # fmt: skip


MISSING = ("404", "NoSuchKey", "NotFound")  # the service's codes for an object that is not there


def _code(exc: Any) -> str:
    """The error code of a botocore ``ClientError``."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_remote(source: object) -> bool:
    """Whether ``source`` is a URL of an object store (``s3://bucket/prefix``) rather than a local path."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    return "://" in text and urlparse(text).scheme.lower() in KNOWN_SCHEMES


def parse_size(text: str, what: str = LIMIT_ENV) -> int:
    """Bytes from ``20GB``, ``500MB``, ``1.5GiB`` or a plain number.

    Raises:
        UsageError: not a size.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise UsageError(f"{what}={text!r} is not a size; write e.g. 20GB, 500MB or 2GiB")
    return int(float(match.group(1)) * _UNITS[unit])


class RemoteStore:
    """The local cache of the store at ``url``: metadata on :meth:`sync`, chunks part by part on :meth:`ensure`.

    Thread-safe: the streaming loader's decoding threads call :meth:`ensure` concurrently.
    ``on_evict(k)`` is called after part ``k``'s chunks were deleted to keep within the limit.
    """

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        scheme = parsed.scheme.lower()
        if scheme not in SUPPORTED:
            raise UsageError(
                f"cannot read a store at {url}: only s3:// URLs are read today (also S3-compatible services such as "
                f"MinIO, R2 or Google Cloud Storage's interoperability endpoint, through AWS_ENDPOINT_URL); "
                f"or copy the store to a local folder and pass that"
            )
        if not parsed.netloc:
            raise UsageError(f"the store URL {url} names no bucket; write s3://BUCKET/PREFIX")
        self.url = url.rstrip("/")
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{self.bucket}-{self.prefix.rsplit('/', 1)[-1]}")[:60]
        self.local = cache_dir("stores", f"{slug}-{hashlib.blake2b(self.url.encode(), digest_size=6).hexdigest()}")
        self.meta: dict[str, Any] = {}
        self.limit: int | None = None
        self.on_evict: Callable[[int], None] | None = None
        self.fetched_bytes = 0  # chunk bytes downloaded by this process (what the tests and `data info` report)
        self._client: Any = None
        self._lock = threading.Lock()
        self._part_locks: dict[int, threading.Lock] = {}
        self._present: OrderedDict[int, int] = OrderedDict()  # part -> bytes of its chunks, least recently used first
        self._bytes = 0

    # ------------------------------------------------------------------ talking to the service

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    try:
                        import boto3  # the `stream` extra (litdata's own dependency)
                        from botocore.config import Config
                    except ImportError:
                        raise CnnlabError(f"reading {self.url} needs boto3: pip install 'cnnlab[stream]'") from None
                    config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
                    self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @contextlib.contextmanager
    def _errors(self, rel: str) -> Iterator[None]:
        """Turn the SDK's exceptions about ``rel`` into one line naming the URL and the fix."""
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

        where = f"{self.url}/{rel}"
        try:
            yield
        except NoCredentialsError:
            raise CnnlabError(f"no credentials to read {where}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                              f"or AWS_PROFILE") from None  # fmt: skip
        except EndpointConnectionError as exc:
            raise CnnlabError(f"cannot reach the storage service for {where} ({exc}); check the network and "
                              f"AWS_ENDPOINT_URL") from None  # fmt: skip
        except ClientError as exc:
            code = _code(exc)
            if code == "NoSuchBucket":
                raise CnnlabError(f"the bucket {self.bucket} of {self.url} does not exist") from None
            if code in MISSING:
                if rel == MARKER:
                    raise CnnlabError(f"{self.url} is not a finished cnnlab store (no {MARKER}); write one with "
                                      f"`cnnlab data prepare SRC --out {self.url}`") from None  # fmt: skip
                raise CnnlabError(f"{where} is missing: the store is damaged; prepare it again") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise CnnlabError(f"access to {where} was refused ({code}); check the credentials") from None
            raise CnnlabError(f"reading {where} failed: {exc}") from None
        except BotoCoreError as exc:
            raise CnnlabError(f"reading {where} failed: {exc}") from None

    def _get(self, rel: str, *, missing_ok: bool = False) -> bytes | None:
        """The object ``rel``'s bytes (None when it is missing and ``missing_ok``)."""
        from botocore.exceptions import ClientError

        with self._errors(rel):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read()
            except ClientError as exc:
                if missing_ok and _code(exc) in MISSING:
                    return None
                raise

    def _download(self, rel: str) -> int:
        """Fetch ``rel`` into the cache folder (atomically: a temporary name, then a rename); its size."""
        dest = self.local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.tmp.{os.getpid()}.{threading.get_ident()}")
        try:
            with self._errors(rel):
                self.client.download_file(self.bucket, self.key(rel), str(tmp))
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return dest.stat().st_size

    # ------------------------------------------------------------------ metadata

    def sync(self) -> tuple[Path, dict[str, Any]]:
        """Fetch the store's metadata into the cache folder (replacing a stale copy); ``(folder, cnnlab-store.json)``.

        Processes sharing the cache (the ranks of a torchrun) take turns through a file lock.
        """
        marker = self._get(MARKER)
        assert marker is not None  # not missing_ok: a missing marker raised
        try:
            meta = json.loads(marker)
            parts = [f"part-{k:05d}" for k in range(int(meta["parts"]))]
        except (ValueError, KeyError, TypeError) as exc:
            raise CnnlabError(f"{self.url}/{MARKER} is damaged ({exc}); prepare the store again") from None
        with open(self.local.with_name(self.local.name + ".lock"), "w") as lock:  # outside: prepare wants an empty folder
            fcntl.flock(lock, fcntl.LOCK_EX)
            local_marker = self.local / MARKER
            if local_marker.is_file() and local_marker.read_bytes() != marker:  # prepared again at this URL
                local_marker.unlink()
                shutil.rmtree(self.local / "parts", ignore_errors=True)
            if not local_marker.is_file():
                wanted = [f"parts/{p}/{name}" for p in parts for name in ("part.json", "index.json")]
                missing = [rel for rel in wanted if not (self.local / rel).is_file()]
                with ThreadPoolExecutor(FETCH_THREADS) as pool:
                    list(pool.map(self._download, missing))
                tmp = local_marker.with_name(f"{MARKER}.tmp.{os.getpid()}")
                tmp.write_bytes(marker)
                os.replace(tmp, local_marker)
        self.meta = meta
        self.limit = self._limit(int(meta.get("bytes", 0)))
        return self.local, meta

    def _limit(self, store_bytes: int) -> int | None:
        """Chunk bytes this process keeps: ``CNNLAB_STORE_CACHE_LIMIT``, else None (all) when the disk has room."""
        text = os.environ.get(LIMIT_ENV)
        if text:
            return parse_size(text)
        free = shutil.disk_usage(self.local).free
        return None if store_bytes <= DISK_FRACTION * free else int(DISK_FRACTION * free)

    @property
    def holds_all(self) -> bool:
        """Whether the whole store fits in the cache (no part is ever evicted)."""
        return self.limit is None or self.limit >= int(self.meta.get("bytes", 0))

    def window_parts(self) -> int | None:
        """How many parts an epoch should visit at a time so that the cache holds them (None: any order is fine)."""
        if self.holds_all:
            return None
        per_part = max(1, int(self.meta.get("bytes", 0)) // max(1, int(self.meta.get("parts", 1))))
        return max(1, int(self.limit or 0) // (2 * per_part))  # half the cache: the next window can come in

    # ------------------------------------------------------------------ chunks

    def part(self, k: int) -> Path:
        """Part ``k``'s folder in the cache."""
        return self.local / "parts" / f"part-{k:05d}"

    def ensure(self, k: int, *, verify: bool = False) -> None:
        """Make part ``k``'s chunk files local, fetching them if needed; mark the part as just used.

        ``verify``: a read found a file missing (another process evicted it): check the files again.
        """
        if not verify:
            try:
                self._present.move_to_end(k)
                return
            except KeyError:
                pass
        with self._lock:
            part_lock = self._part_locks.setdefault(k, threading.Lock())
        with part_lock:
            if verify:
                with self._lock:
                    self._bytes -= self._present.pop(k, 0)
            elif k in self._present:
                return
            folder = self.part(k)
            try:
                index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
                names = [c["filename"] for c in index["chunks"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CnnlabError(f"the cached index of {self.url}/parts/{folder.name} is damaged ({exc}); "
                                  f"delete {self.local} and run again") from None  # fmt: skip
            size = fetched = 0
            for name in names:
                path = folder / name
                if path.is_file():
                    size += path.stat().st_size
                else:
                    fetched += self._download(f"parts/{folder.name}/{name}")
            with self._lock:
                self.fetched_bytes += fetched
                size += fetched
                self._present[k] = size
                self._bytes += size
                evicted = self._evict(keep=k)
        for old in evicted:
            if self.on_evict is not None:
                self.on_evict(old)

    def _evict(self, keep: int) -> list[int]:
        """Delete the least recently used parts' chunks until the cache is within its limit (called under the lock)."""
        evicted: list[int] = []
        if self.limit is None:
            return evicted
        for old in list(self._present):
            if self._bytes <= self.limit:
                break
            if old == keep:
                continue
            self._bytes -= self._present.pop(old)
            for chunk in self.part(old).glob("*.bin"):
                with contextlib.suppress(FileNotFoundError):
                    chunk.unlink()
            evicted.append(old)
        return evicted

    @property
    def cached_bytes(self) -> int:
        """Chunk bytes this process holds in the cache now."""
        return self._bytes

    # ------------------------------------------------------------------ writing

    def remote_marker(self) -> dict[str, Any] | None:
        """The ``cnnlab-store.json`` at the URL, or None when there is none (nothing finished there)."""
        body = self._get(MARKER, missing_ok=True)
        if body is None:
            return None
        try:
            return dict(json.loads(body))
        except (ValueError, TypeError):
            return {}  # damaged: not the store being uploaded

    def upload(self, folder: Path) -> int:
        """Copy the finished local store ``folder`` to the URL, its ``cnnlab-store.json`` last; the bytes sent.

        Files already there with the same size are not sent again (an interrupted upload continues).

        Raises:
            CnnlabError: the URL already holds a different store.
        """
        local_marker = (folder / MARKER).read_bytes()
        theirs = self.remote_marker()
        if theirs is not None:
            if theirs.get("fingerprint") == json.loads(local_marker).get("fingerprint"):
                return 0  # the same images and settings are there already
            raise CnnlabError(f"{self.url} already holds another store; delete it first or choose another URL")
        have: dict[str, int] = {}
        with self._errors("parts/"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.key("parts/"))
            for page in pages:
                for obj in page.get("Contents", []):
                    have[obj["Key"]] = int(obj["Size"])
        files = [p for p in sorted((folder / "parts").rglob("*"))
                 if p.is_file() and (p.suffix == ".bin" or p.name in ("part.json", "index.json"))]  # fmt: skip
        todo = [p for p in files if have.get(self.key(p.relative_to(folder).as_posix())) != p.stat().st_size]

        def send(path: Path) -> int:
            rel = path.relative_to(folder).as_posix()
            with self._errors(rel):
                self.client.upload_file(str(path), self.bucket, self.key(rel))
            return path.stat().st_size

        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            sent = sum(pool.map(send, todo))
        with self._errors(MARKER):
            self.client.put_object(Bucket=self.bucket, Key=self.key(MARKER), Body=local_marker)
        return sent + len(local_marker)

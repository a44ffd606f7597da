"""Downloading named datasets: mirrors, checksum verification, atomic placement.

Used only when a dataset is not found locally and ``download`` is allowed. A file is
written under a temporary name, its MD5 checked against the published value, and only
then renamed into place, so an interrupted or corrupted download never looks complete.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_path

_CHUNK = 1 << 20


def md5sum(path: str | os.PathLike[str]) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    filename: str,
    mirrors: Sequence[str],
    dest_dir: str | os.PathLike[str],
    md5: str,
    *,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``filename`` from the first mirror that serves it with the right checksum.

    Args:
        filename: the file name, appended to each mirror's base URL.
        mirrors: base URLs ending in ``/`` (``http(s)://`` or ``file://``).
        dest_dir: the folder that receives the file.
        md5: the published MD5 of the file.
        timeout: seconds to wait for each connection.

    Returns:
        The path of the verified file. An existing file with the right checksum is reused.

    Raises:
        CnnlabError: when no mirror delivers a file with the right checksum; the message
            lists what each mirror did.
    """
    dest = Path(dest_dir) / filename
    try:
        # Made here, so that a folder that cannot exist is not reported as every mirror failing.
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_file() and md5sum(dest) == md5:
            return dest
    except OSError as exc:
        raise CnnlabError(
            f"cannot write {filename} to {dest.parent}: {exc.strerror or exc}; use --data-root DIR with a writable folder"
        ) from None
    failures = []
    for base in mirrors:
        url = base + filename
        try:
            with atomic_path(dest) as tmp:
                digest = hashlib.md5()
                with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                if digest.hexdigest() != md5:
                    raise _ChecksumMismatch(f"checksum {digest.hexdigest()} != expected {md5}")
            return dest
        except _ChecksumMismatch as exc:
            failures.append(f"{url}: {exc}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            failures.append(f"{url}: {reason}")
    raise CnnlabError(f"could not download {filename} (" + "; ".join(failures) + ")")


class _ChecksumMismatch(Exception):
    pass

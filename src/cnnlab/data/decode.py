"""Decoding one image file to uint8 pixels: the per-file work of the decode cache.

Every file is read, EXIF-rotated, converted to one colour mode and resized (shorter side to
the target size, then centre-cropped to a square). Files come from users, so any mode Pillow
opens is accepted and mapped onto 8 bits in a way that keeps the picture visible:

- 16-bit grayscale (``I;16*``) is scaled by 255/65535, never clipped;
- 32-bit integer grayscale (``I``) is taken as 8-bit when its values lie in 0..255, scaled
  by 255/65535 when they lie in 0..65535, and stretched min..max to 0..255 otherwise;
- float grayscale (``F``, e.g. float TIFFs) is scaled by 255 when its values lie in 0..1,
  taken as is when they lie in 0..255, and stretched min..max to 0..255 otherwise; NaN and
  infinite pixels become 0;
- palette images and images with transparency are composited onto white;
- an animated image (GIF, WebP, APNG) contributes its first frame.

The functions here run in worker processes, so they take and return plain values.
"""

from __future__ import annotations

import hashlib

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_CHUNK = 1 << 20  # bytes read at a time while hashing


def readable(text: str) -> str:
    """``text`` with the bytes of a non-UTF-8 file name shown as ``\\xNN``, so it can be
    printed and written to UTF-8 files (YAML, JSON) without an encoding error.

    Python gives such names to programs as lone surrogates (``\\udcNN``); ``open()`` needs
    them as they are, every printout needs this form.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name produces; show it escaped
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def probe(path: str) -> tuple[str | None, str, int, str | None]:
    """Hash a file and read its image header: (content hash, mode, shorter side, error).

    The file is hashed in chunks and only its header is parsed, so a stray multi-gigabyte
    file in an image folder costs time, not memory.
    """
    from PIL import Image, UnidentifiedImageError  # lazy: only folders of image files need PIL

    digest = hashlib.blake2b(digest_size=16)
    size = 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        return None, "", 0, f"unreadable: {exc.strerror or exc}"
    if size == 0:
        return digest.hexdigest(), "", 0, "empty file"
    try:
        with Image.open(path) as im:
            if min(im.size) < 1:
                return digest.hexdigest(), "", 0, f"image has no pixels ({im.size[0]}x{im.size[1]})"
            return digest.hexdigest(), im.mode, min(im.size), None
    except UnidentifiedImageError:
        return digest.hexdigest(), "", 0, "not an image (unknown format)"
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file"
        return digest.hexdigest(), "", 0, f"corrupt or truncated image: {readable(str(exc))}"


def _stretch(arr: np.ndarray) -> np.ndarray:
    """Map the finite values of ``arr`` min..max onto 0..255 (a constant image becomes 0)."""
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)


def to_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map one grayscale image of a wide PIL mode (``I;16*``, ``I``, ``F``) to uint8.

    The rules (see the module docstring) look at the container first and, where the
    container does not say what range its values use (``I``, ``F``), at the values.
    """
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    arr = np.where(finite, arr, 0.0)
    lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
    if mode.startswith("I;16"):
        arr = arr * (255.0 / 65535.0)
    elif mode == "F" and lo >= 0.0 and hi <= 1.0:
        arr = arr * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass  # 8-bit values in a wider container
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
        arr = arr * (255.0 / 65535.0)
    else:
        arr = _stretch(arr)
    return np.rint(np.clip(arr, 0.0, 255.0)).astype(np.uint8)


def _convert(im, channels: int):  # noqa: ANN001, ANN202 - PIL types stay local to the workers
    """Convert any PIL mode to L or RGB; transparency is composited onto white."""
    from PIL import Image  # lazy: only folders of image files need PIL

    if im.mode.startswith("I") or im.mode == "F":
        im = Image.fromarray(to_8bit(np.asarray(im), im.mode), "L")
    if im.mode == "P" or (im.mode in ("L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("L" if channels == 1 else "RGB")


def decode_image(args: tuple[str, int, int]) -> tuple[np.ndarray | None, str | None]:
    """Decode one file to a uint8 (C, size, size) array, or return the reason it failed.

    Args:
        args: ``(path, size, channels)``: the file, the square side in px, and 1 or 3.

    Returns:
        ``(array, None)`` on success, ``(None, reason)`` for a file that cannot be used.
    """
    from PIL import Image, ImageOps  # lazy: only folders of image files need PIL

    path, size, channels = args
    try:
        with Image.open(path) as im:
            if min(im.size) < 1:
                return None, f"image has no pixels ({im.size[0]}x{im.size[1]})"
            # Lets the JPEG decoder downscale by 1/2..1/8 while decoding (much faster).
            im.draft("L" if channels == 1 else "RGB", (size, size))
            im = ImageOps.exif_transpose(im)
            im = _convert(im, channels)
            w, h = im.size
            scale = size / min(w, h)
            new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt data surfaces as many exception types
        return None, f"corrupt or truncated image: {readable(str(exc))}"
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), None

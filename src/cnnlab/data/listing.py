"""Which files make a dataset: an image folder's layout, or the rows of a CSV file.

Both return ``(items, classes)``: one ``(path, label, split)`` per file (split is the index
into ``SPLITS``, or -1 when the source has no splits of its own) and the class names.

Paths stay as the operating system gave them (a file name that is not valid UTF-8 keeps
its undecodable bytes, so it can still be opened); class names and everything printed are
made readable with :func:`cnnlab.data.decode.readable`.

A CSV file is read strictly, because a mistake in it would otherwise train silently on the
wrong data:

- a header row is recognised by its words (``path``/``file``/``image``...,
  ``label``/``class``/``target``...) and skipped;
- class order: numeric when every label is an integer (so ``2`` comes before ``10``),
  alphabetical otherwise;
- a file listed with two different labels, or in two different splits, is refused with
  both line numbers; a file listed twice with the same label is used once (the repeat is
  reported as skipped);
- a path that leads outside the CSV's folder (``../``, an absolute path) is refused unless
  ``data.allow_outside_root`` is set (``--allow-outside-root``). The test is on the path as
  written: symbolic links inside the folder are followed, since whoever owns the folder
  put them there.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from cnnlab.data.decode import IMAGE_SUFFIXES, readable
from cnnlab.data.imageset import SPLITS
from cnnlab.errors import CnnlabError, UsageError

Item = tuple[str, int, int]  # (path, label, split index or -1 when the source has no split)

_PATH_HEADERS = {"path", "paths", "file", "files", "filename", "file_name", "filepath", "file_path", "image",
                 "images", "image_path", "image_file", "img", "img_path", "name", "filename_path"}  # fmt: skip
_LABEL_HEADERS = {"label", "labels", "class", "classes", "class_name", "classname", "class_id", "target",
                  "category", "y", "label_name", "label_id"}  # fmt: skip
_SPLIT_HEADERS = {"split", "subset", "set", "fold", "partition"}


# --------------------------------------------------------------------------- folders


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _is_candidate(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".")


def list_folder(root: Path) -> tuple[list[Item], tuple[str, ...]]:
    """List ``root/<class>/**`` files, or ``root/{train,val,test}/<class>/**`` when present.

    Raises:
        CnnlabError: no class folders, a single class, an empty class folder, or a split
            folder with classes the training folder lacks.
    """
    try:
        return _list_folder(root)
    except PermissionError as exc:
        raise CnnlabError(f"cannot read {readable(str(exc.filename or root))}: permission denied") from None


def _list_folder(root: Path) -> tuple[list[Item], tuple[str, ...]]:
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    base = split_dirs.get("train", root)
    folders = _visible_dirs(base)  # the class folders, in the order of their (raw) names
    show = readable(str(base))
    if not folders:
        raise CnnlabError(f"no class folders in {show}; expected the layout {show}/<class>/<image files>")
    raw_names = [d.name for d in folders]
    classes = tuple(readable(n) for n in raw_names)
    if len(classes) < 2:
        raise CnnlabError(f"{show} has a single class ('{classes[0]}'); a classifier needs at least two class folders")
    layout = [(split_dirs[s], SPLITS.index(s)) for s in SPLITS if s in split_dirs] if "train" in split_dirs else [(root, -1)]
    items: list[Item] = []
    for folder_base, split in layout:
        present = [d.name for d in _visible_dirs(folder_base)]
        unknown = sorted(readable(n) for n in set(present) - set(raw_names))
        if unknown:
            raise CnnlabError(f"{readable(str(folder_base))} has class folders not in train/: {', '.join(unknown)}")
        for label, name in enumerate(raw_names):
            folder = folder_base / name
            if not folder.is_dir():
                continue
            files = sorted(p for p in folder.rglob("*") if _is_candidate(p))
            if not files and split in (-1, 0):
                raise CnnlabError(f"class folder {readable(str(folder))} is empty; add images or remove the folder")
            items += [(str(p), label, split) for p in files]
    return items, classes


# --------------------------------------------------------------------------- CSV files


def _is_header(row: list[str], rows: list[tuple[int, list[str]]], root: str) -> bool:
    """Whether the first row names the columns instead of listing a file."""
    cells = [c.strip().lower().replace(" ", "_").replace("-", "_") for c in row]
    if cells[0] in _PATH_HEADERS and cells[1] in _LABEL_HEADERS:
        return True
    if len(cells) > 2 and cells[2] in _SPLIT_HEADERS:
        return True
    # An unknown header ("img_path,species"): no such file, not an image name, and its "label"
    # appears in no other row. Read as data, it would make a class without images.
    first = row[0].strip()
    others = {r[1].strip() for _, r in rows[1:] if len(r) > 1}
    return (
        Path(first).suffix.lower() not in IMAGE_SUFFIXES
        and not os.path.exists(os.path.join(root, first))
        and row[1].strip() not in others
    )


def _class_order(labels: set[str]) -> tuple[str, ...]:
    """Integers in numeric order (``2`` before ``10``), anything else alphabetically."""
    try:
        return tuple(sorted(labels, key=lambda s: (int(s), s)))
    except ValueError:
        return tuple(sorted(labels))


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV/TSV file with the line each starts on."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CnnlabError(f"CSV {readable(str(path))} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise CnnlabError(f"cannot read CSV {readable(str(path))}: {exc.strerror or exc}") from None
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    reader = csv.reader(text.splitlines(), dialect)
    rows = []
    line = 1
    try:
        for row in reader:
            if row and any(c.strip() for c in row):
                rows.append((line, row))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise UsageError(f"CSV {readable(str(path))}, line {reader.line_num}: {exc}") from None
    return rows


def list_csv(path: Path, *, allow_outside_root: bool = False) -> tuple[list[Item], tuple[str, ...], list[tuple[str, str]]]:
    """Read ``path,label[,split]`` rows; relative paths are relative to the CSV's folder.

    Args:
        path: the CSV (or ``.tsv``) file.
        allow_outside_root: accept rows whose path leads outside the CSV's folder.

    Returns:
        ``(items, classes, repeated)``: repeated lists ``(file, reason)`` of rows that name
        a file already listed with the same label and split (used once).

    Raises:
        UsageError: a malformed row, a single label, a file with two labels or splits, or
            a path outside the CSV's folder.
    """
    show = readable(str(path))
    rows = _read_rows(path)
    root = os.path.abspath(path.parent)
    if rows and len(rows[0][1]) >= 2 and _is_header(rows[0][1], rows, root):
        rows = rows[1:]
    if not rows:
        raise UsageError(f"CSV {show} has no rows; expected lines of path,label[,split]")
    first: dict[str, tuple[int, str, str]] = {}  # file -> (line, label, split) where it is first listed
    records: list[tuple[str, str, str]] = []
    outside: list[str] = []
    repeated: list[tuple[str, str]] = []
    for line, row in rows:
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise UsageError(f"CSV {show}, line {line}: expected path,label[,split], got {','.join(row)!r}")
        split = row[2].strip().lower() if len(row) > 2 else ""
        if split and split not in SPLITS:
            raise UsageError(f"CSV {show}, line {line}: split must be one of {', '.join(SPLITS)}, got '{row[2].strip()}'")
        written, label = row[0].strip(), row[1].strip()
        file = os.path.normpath(os.path.join(root, os.path.expanduser(written)))
        if os.path.commonpath([root, file]) != root:
            outside.append(f"line {line} ({written})")
        if file in first:
            seen_line, seen_label, seen_split = first[file]
            if seen_label != label:
                raise UsageError(
                    f"CSV {show}: {written} is listed with two labels, '{seen_label}' (line {seen_line}) and "
                    f"'{label}' (line {line}); keep the right one"
                )
            if seen_split != split:
                raise UsageError(
                    f"CSV {show}: {written} is listed in two splits, {seen_split or 'train'} (line {seen_line}) and "
                    f"{split or 'train'} (line {line}); an image in both would leak into the evaluation"
                )
            repeated.append((file, f"listed again on line {line} (first on line {seen_line}); used once"))
            continue
        first[file] = (line, label, split)
        records.append((file, label, split))
    if outside and not allow_outside_root:
        more = f" and {len(outside) - 3} more" if len(outside) > 3 else ""
        raise UsageError(
            f"CSV {show}: {', '.join(outside[:3])}{more} point(s) outside the CSV's folder {readable(root)}; "
            f"move the images under it, or pass --allow-outside-root if you trust this file"
        )
    classes = _class_order({label for _, label, _ in records})
    if len(classes) < 2:
        raise UsageError(f"CSV {show} has a single label ('{classes[0]}'); a classifier needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    has_splits = any(s for _, _, s in records)
    items = [(p, index[label], SPLITS.index(s or "train") if has_splits else -1) for p, label, s in records]
    return items, classes, repeated

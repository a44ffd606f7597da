"""Argument groups and printing helpers shared by several commands."""

from __future__ import annotations

import argparse
from typing import Any

DATA_HELP = (
    "dataset name (fashion-mnist, mnist, cifar10, cifar100, digits, synthetic[:classes=4,size=32,...]), "
    "an image folder (ImageFolder layout, optional train/val/test subfolders) or a CSV of path,label rows"
)


def add_data_args(parser: argparse.ArgumentParser, *, positional: bool = False, default: str | None = None) -> None:
    """Add the options that choose and shape a data source (``DataConfig``)."""
    from cnnlab.config import Channels, Normalize, choices

    group = parser.add_argument_group("data")
    if positional:
        group.add_argument("data", metavar="DATA", help=DATA_HELP)
    else:
        group.add_argument("--data", default=default, metavar="DATA", help=DATA_HELP)
    group.add_argument("--data-root", metavar="DIR", help="folder holding (or receiving downloads of) named datasets")
    group.add_argument("--val-split", type=float, metavar="F", help="fraction held out for validation when the source has no val split (default 0.1)")
    group.add_argument("--test-split", type=float, metavar="F", help="fraction held out for test when the source has no test split (default 0.1)")
    group.add_argument("--split-seed", type=int, metavar="N", help="seed of the stratified hold-out splits (default 0)")
    group.add_argument("--image-size", type=int, metavar="PX", help="resize image folders / CSV images to PX x PX (default: median size, at most 64)")
    group.add_argument("--channels", type=int, choices=choices(Channels), help="convert to 1 (grayscale) or 3 (RGB) channels")
    group.add_argument("--no-download", action="store_true", help="never download; fail if the dataset is not on disk")
    group.add_argument("--normalize", choices=choices(Normalize),
                       help="inputs standardised per channel with the training statistics (default), scaled to [0, 1] (unit), or raw [0, 255]")  # fmt: skip


def data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``DataConfig`` fields given on the command line (``None`` where not given)."""
    return {
        "source": getattr(args, "data", None),
        "root": args.data_root,
        "val_split": args.val_split,
        "test_split": args.test_split,
        "split_seed": args.split_seed,
        "image_size": args.image_size,
        "channels": args.channels,
        "download": False if args.no_download else None,
        "normalize": getattr(args, "normalize", None),
    }


def data_config(args: argparse.Namespace, **extra: Any):  # noqa: ANN201 - DataConfig, imported lazily
    """Build a ``DataConfig`` from the command line (plus ``extra`` fields)."""
    from cnnlab.config import DataConfig, from_dict, merge

    return from_dict(DataConfig, merge({}, {**data_overrides(args), **extra}), where="data")


def report_skipped(skipped: tuple[tuple[str, str], ...], limit: int = 20) -> None:
    """Print the files a source skipped (path and reason), at most ``limit`` of them."""
    import sys

    if not skipped:
        return
    print(f"cnnlab: skipped {len(skipped)} file(s) that could not be used:", file=sys.stderr)
    for path, reason in skipped[:limit]:
        print(f"  {path}: {reason}", file=sys.stderr)
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more", file=sys.stderr)



def parse_duration(text: str | None) -> float | None:
    """``"600"``/``"600s"`` -> 600, ``"30m"`` -> 1800, ``"2h"`` -> 7200, ``"1h30m"`` -> 5400."""
    import re

    from cnnlab.errors import CnnlabError

    if text is None:
        return None
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text.strip().lower()):
        raise CnnlabError(f"--budget expects a duration like 600s, 30m, 2h or 1h30m, got '{text}'")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * unit[u] for n, u in parts)

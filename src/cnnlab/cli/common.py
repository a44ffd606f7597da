"""Argument groups, number types and printing helpers shared by several commands."""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Callable
from typing import Any

from cnnlab.config import INT_MAX, SEED_MAX, Range, field_range


class Number:
    """An argparse ``type=`` that reads a number and refuses it outside its :class:`Range`.

    The range is the one validation uses (a config field's, via :func:`config_number`), and
    :func:`annotate_ranges` states it in ``--help``: nan, inf, a negative count or ``1e23``
    as a seed are refused by argparse (exit 2) before any work, naming the flag.
    """

    def __init__(self, rng: Range) -> None:
        self.range = rng
        # argparse names the type in its own messages ("invalid int value")
        self.__name__ = "int" if rng.integer else "float"

    def __call__(self, text: str) -> int | float:
        try:
            value: int | float = int(text) if self.range.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.range}, got '{text}'") from None
        if not self.range.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.range}, got '{text}'")
        return value

    def __repr__(self) -> str:
        return f"Number({self.range})"


def number(integer: bool = False, lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False, hi_open: bool = False) -> Number:  # fmt: skip
    """The argparse type of a flag that is no config field (``--steps``, ``--trials``, ``--topk``).

    Integer flags without an upper bound get :data:`cnnlab.config.INT_MAX`: larger counts
    are typos that would otherwise overflow deep in NumPy or torch.
    """
    if integer and hi is None:
        hi = INT_MAX
    return Number(Range(integer=integer, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open))


def config_number(section: type, name: str) -> Number:
    """The argparse type of the flag of the numeric config field ``section.name`` (its Range)."""
    return Number(field_range(section, name))


#: ``--seed`` of commands that are no training run (inspect, data show): the config's seed range.
SEED = Number(Range(integer=True, lo=0, hi=SEED_MAX))


def annotate_ranges(parser: argparse.ArgumentParser) -> None:
    """Append each numeric flag's allowed range to its help (this parser and its sub-commands).

    Ranges are not written into help strings by hand: they come from the :class:`Number`
    type that also checks the flag, so the help cannot drift from what is refused.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                annotate_ranges(sub)
        elif isinstance(action.type, Number) and action.help is not argparse.SUPPRESS:
            note = f"(allowed: {action.type.range})"
            if note not in (action.help or ""):
                action.help = f"{action.help} {note}" if action.help else note

DATA_HELP = (
    "dataset name (fashion-mnist, mnist, cifar10, cifar100, digits, synthetic[:classes=4,size=32,...]), "
    "an image folder (ImageFolder layout, optional train/val/test subfolders), a CSV of path,label rows, "
    "or a store written by `cnnlab data prepare` (a folder or an s3:// URL)"
)


def config_default(section: type, name: str) -> Any:
    """The default of the config field ``section.name`` (what ``--help`` states for its flag)."""
    import dataclasses

    for f in dataclasses.fields(section):  # type: ignore[arg-type]
        if f.name == name:
            return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    raise KeyError(f"{section.__name__} has no field {name!r}")


def states(action: argparse.Action, section: type, name: str) -> argparse.Action:
    """Let ``--help`` state the config field's default for a flag whose own default is ``None``.

    The flag stays ``None`` when not given (so a YAML value is not hidden by it); ``--help``
    reads the default from the dataclass, so it is written once, in ``config.py``.
    """
    action.stated_default = config_default(section, name)  # type: ignore[attr-defined]
    return action


def add_quiet(parser: Any, keeps: str = "the result") -> argparse.Action:
    """``--quiet``: the one spelling, in every command, of "no progress lines, only the result"."""
    return parser.add_argument("--quiet", action="store_true", help=f"no progress lines and no header; still prints {keeps}")


def add_data_args(parser: argparse.ArgumentParser, *, positional: bool = False, default: str | None = None,
                  of_run: bool = False) -> None:  # fmt: skip
    """Add the options that choose and shape a data source (``DataConfig``).

    Args:
        parser: the command's parser.
        positional: the dataset is required, as ``DATA`` or ``--data DATA`` (``cnnlab data info``);
            otherwise ``--data`` is optional and defaults to ``default`` or the config's.
        default: the command's own default dataset (None: ``DataConfig.source``, stated in ``--help``).
        of_run: the flags change a trained run's own data settings (``cnnlab eval``), which
            are their defaults; ``--help`` says so instead of the config's defaults.
    """
    from cnnlab.config import Channels, DataConfig, Normalize, choices

    group = parser.add_argument_group("data")
    if positional:
        # `data info fashion-mnist` and `data info --data fashion-mnist` both work: --data is
        # the dataset's name in every other command. One of them, once.
        one = group.add_mutually_exclusive_group(required=True)
        one.add_argument("data", nargs="?", default=argparse.SUPPRESS, metavar="DATA", help=DATA_HELP)
        one.add_argument("--data", dest="data", metavar="DATA", help="the same, as a flag")
    else:
        data = group.add_argument("--data", default=default, metavar="DATA", help=DATA_HELP)
        if default is None:
            states(data, DataConfig, "source")
    group.add_argument("--data-root", metavar="DIR", help="folder holding (or receiving downloads of) named datasets")
    for flag, name, metavar, text in [
        ("--val-split", "val_split", "F", "fraction held out for validation when the source has no val split"),
        ("--test-split", "test_split", "F", "fraction held out for test when the source has no test split"),
        ("--split-seed", "split_seed", "N", "seed of the stratified hold-out splits"),
    ]:
        states(group.add_argument(flag, type=config_number(DataConfig, name), metavar=metavar, help=text), DataConfig, name)
    group.add_argument("--image-size", type=config_number(DataConfig, "image_size"), metavar="PX", help="resize image folders / CSV images to PX x PX (default: median size, at most 64)")
    group.add_argument("--channels", type=int, choices=choices(Channels), help="convert to 1 (grayscale) or 3 (RGB) channels (default: the source's)")
    group.add_argument("--no-download", action="store_true", help="never download; fail if the dataset is not on disk")
    group.add_argument("--allow-outside-root", action="store_true",
                       help="let a CSV source list files outside its own folder (../, absolute paths); refused by default")  # fmt: skip
    states(group.add_argument("--normalize", choices=choices(Normalize),
                              help="inputs standardised per channel with the training statistics, scaled to [0, 1] (unit), or raw [0, 255]"),
           DataConfig, "normalize")  # fmt: skip
    if of_run:
        for action in group._group_actions:
            if action.nargs != 0:  # not the switches
                action.help = re.sub(r" \(default: [^)]*\)", "", action.help or "")  # the run's, not a new run's
                action.stated_default = "the run's own"  # type: ignore[attr-defined]


USER_CODE_HELP = (
    "FILE.py:FACTORY or MODULE:FACTORY, your own model code: FACTORY(num_classes, in_chans, **options) returns "
    "an nn.Module (docs/models.md, 'Your own model')"
)
TRUST_CODE_HELP = (
    "run the copy of your model's code that the run folder keeps (RUN/code/), after checking it against the "
    "sha256 the checkpoint records; only for run folders you trust (otherwise name the code with --model)"
)


def add_user_code_args(parser: argparse.ArgumentParser) -> None:
    """``--model SPEC`` and ``--trust-code`` for a command that reads a saved model (eval, predict, export).

    A model trained from the user's own code is rebuilt only with code the user names again, or
    with the copy its run folder keeps when the user trusts it (:mod:`cnnlab.models.user`): a
    checkpoint alone never runs code. Call after ``set_defaults(func=...)``: the handler then
    runs inside that permission.
    """
    group = parser.add_argument_group("a model of your own code")
    group.add_argument("--model", metavar="SPEC", help=f"the code the model was trained from, {USER_CODE_HELP}; "
                       "needed (or --trust-code) to load such a model, wherever the file is now")  # fmt: skip
    group.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    handler = parser.get_default("func")
    if handler is not None:
        parser.set_defaults(func=functools.partial(run_with_user_code, handler))


def run_with_user_code(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command's handler with the user code its ``--model SPEC`` / ``--trust-code`` allow."""
    from cnnlab.models.user import allow_user_code

    with allow_user_code(getattr(args, "model", None), trust_copies=bool(getattr(args, "trust_code", False))):
        return handler(args)


def console() -> Any:  # rich.console.Console, imported lazily
    """The rich console of the CLI's tables and lines.

    On a terminal it uses the terminal's width; piped or redirected (a log, ``| less``, a
    test) it never wraps: rich would otherwise wrap at 80 columns and split file names.
    """
    import sys

    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(width=100_000, soft_wrap=True)


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
        "allow_outside_root": True if getattr(args, "allow_outside_root", False) else None,
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



#: The longest ``--budget``: a year. More is a typo, and would overflow deadlines computed from it.
MAX_DURATION = 365 * 86400


def parse_duration(text: str | None, flag: str = "--budget") -> float | None:
    """``"600"``/``"600s"`` -> 600, ``"30m"`` -> 1800, ``"2h"`` -> 7200, ``"1h30m"`` -> 5400.

    Raises:
        UsageError: not a duration, zero, or more than :data:`MAX_DURATION` (naming ``flag``).
    """
    import re

    from cnnlab.errors import UsageError

    if text is None:
        return None
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text.strip().lower()):
        raise UsageError(f"{flag} expects a duration like 600s, 30m, 2h or 1h30m, got '{text}'")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
    seconds = sum(float(n) * unit[u] for n, u in parts)
    if not 0 < seconds <= MAX_DURATION:
        raise UsageError(f"{flag} must be more than 0 s and at most 365 days, got '{text}'")
    return seconds

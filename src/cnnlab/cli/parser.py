"""The argument parser of every `cnnlab` command: one grammar for all of them.

What argparse does not do by itself, and a newcomer trips over:

- ``--help`` states every default: the parser's own, or the config field a flag sets
  (:func:`cnnlab.cli.common.states`), so a default is written once, in ``config.py``.
- no prefix abbreviations (``allow_abbrev=False``): ``--data`` is never ``--data-root``.
- an unknown flag is reported by the sub-command it was given to, with that command's
  usage and the closest flag it has (``--train_subset``: did you mean --train-subset?).
- an old flag name keeps working for one release, hidden from ``--help``, with a one-line
  note naming the new one (:func:`add_old_name`).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
from collections.abc import Sequence
from typing import Any

#: The marker of "no stated default" (``None`` is a value a config field can have).
_UNSET = object()


def stated_default(action: argparse.Action) -> Any:
    """The default ``--help`` states for ``action``, or ``None`` when there is none to state.

    A flag that sets a config field keeps ``default=None`` in argparse (so that an unset flag
    never hides the YAML's value) and carries the field's default as ``stated_default``;
    any other flag states its argparse default. ``False`` (an unset switch), ``None`` and an
    empty list say nothing worth stating.
    """
    value = getattr(action, "stated_default", _UNSET)
    if value is _UNSET:
        value = action.default
    if value is None or value is False or value is argparse.SUPPRESS or value == []:
        return None
    return value


def format_default(value: Any) -> str:
    """A default as ``--help`` writes it: ``none`` for an empty spec, ``0.0005``, ``LO HI`` for a pair."""
    if value == "":
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


class _StatesDefaults(argparse.HelpFormatter):
    """Appends ``(default: X)`` to the help of every option and optional positional that has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").strip()
        value = stated_default(action)
        if value is None or "(default" in text or not (action.option_strings or action.nargs == argparse.OPTIONAL):
            return text
        note = f"(default: {format_default(value)})".replace("%", "%%")  # argparse %-formats help strings
        return f"{text} {note}" if text else note

    def _format_action(self, action: argparse.Action) -> str:
        # argparse formats no help at all for an option without help text: give it one, so
        # that `--sampler {tpe,random}` still says which is the default
        if not (action.help and action.help.strip()) and action.help is not argparse.SUPPRESS:
            if stated_default(action) is not None:
                action = copy.copy(action)
                action.help = ""
                action.help = self._get_help_string(action)  # just "(default: X)"
        return super()._format_action(action)


class HelpFormatter(_StatesDefaults, argparse.HelpFormatter):
    """Wraps the description; states defaults."""


class RawHelpFormatter(_StatesDefaults, argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and epilog's own lines (tables, examples); states defaults."""


class _SubCommands(argparse._SubParsersAction):
    """Sub-command parsers that know they are one (they report their own unknown flags)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser = super().add_parser(name, **kwargs)
        parser.is_subcommand = True  # type: ignore[attr-defined]
        return parser


class CnnlabParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with cnnlab's grammar (see the module docstring).

    Sub-command parsers made by ``add_subparsers().add_parser`` are of this class too, so
    the grammar holds for every command without each module asking for it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False  # a flag is never silently another flag
        raw = issubclass(kwargs.get("formatter_class", argparse.HelpFormatter), argparse.RawDescriptionHelpFormatter)
        kwargs["formatter_class"] = RawHelpFormatter if raw else HelpFormatter
        super().__init__(*args, **kwargs)
        self.is_subcommand = False
        #: Flags of other commands this one refuses, and why (e.g. `cnnlab train` flags that check does not use).
        self.not_taken: dict[str, str] = {}
        self.register("action", "parsers", _SubCommands)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse, refusing what this parser does not know, with its own usage and a suggestion.

        argparse hands a sub-command's unknown arguments up to the top-level parser, which
        reports them with the top-level usage; here the sub-command reports them itself.
        """
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self.is_subcommand:
            self.error(self.unrecognized(extras))
        return namespace, extras

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unrecognized(extras))
        return namespace

    def unrecognized(self, extras: list[str]) -> str:
        """The message for arguments this parser does not take, with the closest flag it has."""
        message = f"unrecognized arguments: {' '.join(extras)}"
        for arg in extras:
            if arg.split("=", 1)[0] in self.not_taken:
                return f"{message}; {arg.split('=', 1)[0]} is {self.not_taken[arg.split('=', 1)[0]]}"
        for arg in extras:
            if arg.startswith("--") or (arg.startswith("-") and not _is_number(arg)):
                close = closest_flag(self, arg)
                if close:
                    return f"{message}; did you mean {close}?"
        return message


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def visible_flags(parser: argparse.ArgumentParser) -> list[str]:
    """The option strings ``--help`` shows (hidden old names excluded)."""
    return [flag for action in parser._actions if action.help is not argparse.SUPPRESS for flag in action.option_strings]


def closest_flag(parser: argparse.ArgumentParser, typed: str) -> str | None:
    """The visible flag of ``parser`` closest to ``typed`` (``--train_subset=5`` -> ``--train-subset``)."""
    name = typed.split("=", 1)[0].lower().replace("_", "-")
    flags = visible_flags(parser)
    if name in flags:
        return name
    # compared without the dashes, which every flag shares (--tta would otherwise be "close" to --data)
    bare = {flag.lstrip("-"): flag for flag in flags}
    close = difflib.get_close_matches(name.lstrip("-"), list(bare), n=1, cutoff=0.6)
    return bare[close[0]] if close else None


class _OldName(argparse.Action):
    """A flag's old name: hidden from ``--help``; sets the new flag's value, with a one-line note."""

    def __init__(self, option_strings: list[str], dest: str, *, note: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.note = note

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        print(f"cnnlab: note: {option_string} {self.note}", file=sys.stderr, flush=True)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_old_name(container: Any, old: str, new: argparse.Action, *, note: str | None = None, value: Any = _UNSET) -> None:
    """Keep ``old`` working for one release as a hidden alias of the flag ``new``.

    Args:
        container: the parser or argument group ``new`` was added to.
        old: the old spelling, e.g. ``"--subset"``.
        new: the action of the new flag; the old one sets the same ``dest`` with the same type.
        note: what the note says after the old flag (default: it is renamed to ``new``'s name).
        value: for an old switch, the value it stores (default: ``new``'s const, as the new switch would).
    """
    switch = new.nargs == 0
    name = next((s for s in new.option_strings if s.startswith("--")), new.option_strings[0])
    note = note or f"is deprecated and goes in the next release; use {name}"
    if switch:
        container.add_argument(old, action=_OldName, dest=new.dest, nargs=0, note=note,
                               const=new.const if value is _UNSET else value)  # fmt: skip
    else:
        container.add_argument(old, action=_OldName, dest=new.dest, nargs=new.nargs, note=note, type=new.type,
                               choices=new.choices, metavar=new.metavar)  # fmt: skip

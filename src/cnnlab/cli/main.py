"""The `cnnlab` command: one sub-command group per module in this package.

Each module listed in ``COMMANDS`` defines ``register(subparsers)``, which adds its
parsers and sets ``func`` (a handler taking the parsed namespace and returning an exit
code). Modules import only argparse at the top, so ``cnnlab --help`` is instant; the
heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from cnnlab import __version__
from cnnlab.errors import CnnlabError

# Order here is the order in `cnnlab --help`.
COMMANDS: tuple[str, ...] = (
    "data",
    "models",
    "train",
    "use",
    "explain",
    "check",
    "lrfind",
    "search",
    "diagnose",
    "recipe",
    "dashboard",
    "lab",
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (the grammar they share: :mod:`cnnlab.cli.parser`)."""
    from cnnlab.cli.parser import CnnlabParser

    parser = CnnlabParser(
        prog="cnnlab",
        description="Train CNN image classifiers the right way, and show why.",
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"cnnlab.cli.{name}").register(subparsers)
    from cnnlab.cli.common import annotate_ranges  # after registering: every command's numeric flags

    annotate_ranges(parser)
    return parser


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _setup_logging(quiet: bool = False) -> None:
    """Library modules log to the ``cnnlab`` logger; the CLI shows INFO and above on stderr.

    ``--quiet`` shows warnings and errors only: the INFO lines (the run's header, what a
    run is about to do) are progress, which --quiet asks not to see.
    """
    logger = logging.getLogger("cnnlab")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("cnnlab: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)  # set on every call: tests run several commands


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    # Run as a program (the `cnnlab` script, `python -m cnnlab`), not called from Python: a budget
    # then counts from the process's start (cnnlab.uptime).
    args.program = argv is None
    _setup_logging(quiet=bool(getattr(args, "quiet", False)))
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    rc = _run_command(args)
    if _close_process_group(succeeded=rc == 0):
        _exit_now(rc)
    return rc


def _run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; a known failure becomes a one-line message and an exit code."""
    try:
        return int(args.func(args) or 0)
    except CnnlabError as exc:
        print(f"cnnlab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cnnlab ... | head`: the reader left; exit quietly like other Unix tools
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except BaseException:
        _close_process_group(succeeded=False)
        raise


def _close_process_group(*, succeeded: bool) -> bool:
    """Under torchrun, tear the process group down; True when there was one.

    After a command that succeeded the ranks first meet at a barrier, so that no rank
    destroys its group while a peer is still in a collective; after a failure there is no
    barrier (a peer may be stuck elsewhere; torchrun stops the others). torch.distributed
    is only looked at when the command already imported it.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    if succeeded:
        dist.barrier()
    dist.destroy_process_group()
    return True


def _exit_now(rc: int) -> NoReturn:
    """End a torchrun process without the interpreter's teardown.

    With gloo, the teardown after a finished run (group destroyed or not) aborts now and
    then in the library's C++ threads ("terminate called without an active exception",
    exit -6; measured 2 in 12 two-process runs, and 1 in 24 with a barrier before the
    destroy), and torchrun then reports the whole run failed. By now every file the command
    wrote is closed (run folders are written atomically), so only the standard streams
    and the log handlers are left to flush before ``os._exit``.
    """
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to flush into
            pass
    os._exit(rc)


if __name__ == "__main__":
    raise SystemExit(main())

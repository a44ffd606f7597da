"""`cnnlab dashboard`: optuna-dashboard on a search's or recipe's studies; `--dashboard` of search and recipe."""

from __future__ import annotations

import argparse
import contextlib
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

from cnnlab.cli.common import number

DEFAULT_HOST = "127.0.0.1"  # only this machine; --host 0.0.0.0 (or an SSH tunnel) to watch from elsewhere
DEFAULT_PORT = 8080  # optuna-dashboard's own default
PORT = number(integer=True, lo=0, hi=65535)

EPILOG = f"""\
examples:
  cnnlab dashboard runs/recipe-c10                  # every search stage of a recipe (running or finished)
  cnnlab dashboard runs/coarse --port 8081          # a search folder
  cnnlab dashboard runs/coarse/study.journal        # a study journal
  cnnlab dashboard postgresql://me@db:5432/optuna   # every study in a database
  cnnlab search ... --dashboard                     # the same, live, while a search runs (also `cnnlab recipe`)

It serves http://{DEFAULT_HOST}:PORT/dashboard until Ctrl-C: each trial's validation accuracy
per epoch (its intermediate values), its parameters and state, and Optuna's plots. The view is
read-only, and only this machine can reach it unless --host says otherwise; from another machine
use an SSH tunnel: ssh -L {DEFAULT_PORT}:127.0.0.1:{DEFAULT_PORT} HOST. Needs pip install 'cnnlab[dashboard]'.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        help="watch a search's or recipe's trials in the browser (optuna-dashboard), running or finished",
        description=textwrap.fill(
            "Serve optuna-dashboard on the studies of a search or recipe folder (found where the search keeps them: "
            "search.json or recipe.json, else the folder's study journals), a study journal or a database URL. A "
            "running search's new trials and epochs show as they are written.", width=100, break_on_hyphens=False),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="FOLDER|STORAGE",
                        help="a search or recipe folder (--out), a .journal file, or a database URL "
                        "(postgresql://USER@HOST:PORT/DB, sqlite:///FILE)")  # fmt: skip
    parser.add_argument("--port", type=PORT, default=DEFAULT_PORT, metavar="P", help="port to serve on; 0 = any free port")
    parser.add_argument("--host", default=DEFAULT_HOST, metavar="H",
                        help=f"address to listen on: {DEFAULT_HOST} is this machine only; 0.0.0.0 every network "
                        "(the studies then show to anyone who reaches it)")  # fmt: skip
    parser.add_argument("--storage", metavar="URL",
                        help="the study storage to show instead of the one the folder records (e.g. its database URL with the "
                        "password, which the folder never keeps; env CNNLAB_STORAGE completes a masked one too)")  # fmt: skip
    parser.set_defaults(func=_dashboard)


def add_dashboard_flag(parser: Any, what: str) -> None:
    """``--dashboard [PORT]`` of a command that runs a study (``what``: "search", "recipe")."""
    parser.add_argument("--dashboard", type=PORT, nargs="?", const=DEFAULT_PORT, metavar="PORT",
                        help=f"while the {what} runs, serve optuna-dashboard on its studies at "
                        f"http://{DEFAULT_HOST}:PORT/dashboard (default port {DEFAULT_PORT}; 0 = any free port); it "
                        "stops when the command ends. Needs pip install 'cnnlab[dashboard]'")  # fmt: skip


@contextlib.contextmanager
def live_dashboard(port: int | None, what: str, source: Callable[[], Any]) -> Iterator[None]:
    """With ``--dashboard PORT``: serve the dashboard during the block and print its URL once.

    ``source`` returns the StudySource to show (called only when ``port`` is given).
    """
    if port is None:
        yield
        return
    from cnnlab.recipe.dashboard import serving

    with serving(source(), host=DEFAULT_HOST, port=port, flag="--dashboard") as url:
        print(f"dashboard: {url}  (live while the {what} runs)", flush=True)
        yield


def _dashboard(args: argparse.Namespace) -> int:
    import time

    from cnnlab.recipe.dashboard import find_source, serving

    source = find_source(args.target, storage=args.storage)
    with serving(source, host=args.host, port=args.port, flag="--port") as url:
        print(f"dashboard: {url}  (studies in {source.describe()}; Ctrl-C stops it)", flush=True)
        try:
            while True:
                time.sleep(3600)  # the server answers in its own thread; Ctrl-C ends the sleep and the server
        except KeyboardInterrupt:
            pass
    print("dashboard stopped", flush=True)
    return 0

"""`cnnlab search`: steps 4-5 of the recipe, a coarse then a refined hyperparameter search."""

from __future__ import annotations

import argparse
import os
from typing import Any

import yaml

from cnnlab.cli.common import SEED, add_quiet, config_number, number, parse_duration
from cnnlab.cli.dashboard import add_dashboard_flag, live_dashboard
from cnnlab.cli.parser import add_old_name
from cnnlab.cli.train import add_run_args, run_overrides
from cnnlab import config as c
from cnnlab.errors import CnnlabError
from cnnlab.recipe.space import CategoricalKnob, FloatKnob, IntKnob, Knob

EXAMPLES = """\
examples:
  # step 4: 20 short trials, LR in [lr/10, lr*10] around the LR finder's 0.05
  cnnlab search --stage coarse --data cifar10 --model resnet20 --lr-center 0.05 --trials 20 --out runs/coarse

  # the same with a time budget and 4 local worker processes sharing the study journal
  cnnlab search --data cifar10 --model resnet20 --lr-center 0.05 --budget 2h --workers 4 --out runs/coarse

  # step 5: ranges narrowed around the 5 best coarse trials, 8 epochs each
  cnnlab search --stage refine --from runs/coarse --trials 10 --out runs/refine

  # a study in PostgreSQL; more workers join it from any machine that reaches the server
  cnnlab search --config base.yaml --storage postgresql://me@db:5432/optuna --study c10 --trials 40
  cnnlab search --join c10 --storage postgresql://me@db:5432/optuna

  # more knobs: any config path, as float:LO:HI[:log], int:LO:HI or cat:A,B,C
  cnnlab search --config base.yaml --knob train.batch_size=cat:64,128,256 --knob model.options.width=int:16:64

Ctrl-C or a killed process keeps every finished trial; run the same command (same --out) to
continue the study: --trials N adds N trials. The best config is written to OUT/best.yaml
(train it fully with `cnnlab train --config OUT/best.yaml`).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="hyperparameter search with Optuna: coarse (step 4), then refined (step 5)",
        description="Search learning rate, weight decay, dropout (and any other config value) with short "
        "training runs scored by their best validation accuracy; a pruner (ASHA by default) stops hopeless trials "
        "after any epoch. Every trial is a normal run folder under OUT/trials. Run flags (and --config) set the base "
        "config that every trial starts from; --epochs is the length of one trial.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        conflict_handler="resolve",  # our --epochs (per trial) replaces `cnnlab train`'s
    )
    parser.add_argument("--config", metavar="YAML", help="the base run config (flags win)")
    add_run_args(parser)
    parser.epilog = EXAMPLES  # add_run_args sets the augmentation help as epilog
    s = parser.add_argument_group("search")
    s.add_argument("--stage", choices=("coarse", "refine"), default="coarse", help="coarse (3 epochs, 20 trials) or refine (8 epochs, 10 trials)")
    s.add_argument("--from", dest="from_dir", metavar="DIR", help="refine: the coarse search folder whose best trials define the narrowed ranges")
    s.add_argument("--top-k", type=number(integer=True, lo=1), default=5, metavar="K", help="refine: narrow around the K best coarse trials")
    s.add_argument("--lr-center", type=number(lo=0, lo_open=True), metavar="LR", help="search LR log-uniformly in [LR/10, LR*10] (default: --lr or the config's)")
    s.add_argument("--lr-range", type=number(lo=0, lo_open=True), nargs=2, metavar=("LO", "HI"), help="search LR log-uniformly in [LO, HI]")
    s.add_argument("--wd-range", type=number(lo=0, lo_open=True), nargs=2, metavar=("LO", "HI"), help="weight decay range, log-uniform (default 1e-6 1e-2; 1e-6 is in effect none)")
    s.add_argument("--no-wd-search", action="store_true", help="keep the config's weight decay")
    s.add_argument("--dropout-range", type=number(lo=0, hi=1, hi_open=True), nargs=2, metavar=("LO", "HI"), help="dropout range (default 0 0.5 when the config sets --dropout, else not searched)")
    s.add_argument("--label-smoothing-range", type=number(lo=0, hi=1, hi_open=True), nargs=2, metavar=("LO", "HI"), help="also search label smoothing, uniform")
    s.add_argument("--knob", action="append", default=[], metavar="PATH=SPEC", help="another knob: train.batch_size=cat:64,128 | model.options.width=int:16:64 | optim.momentum=float:0.8:0.99[:log]")
    s.add_argument("--trials", type=number(integer=True, lo=1), metavar="N", help="trials to add to the study, all workers together")
    s.add_argument("--budget", metavar="TIME", help="start no trial after this long: 600s, 30m, 2h (running trials finish)")
    s.add_argument("--epochs", type=config_number(c.TrainConfig, "epochs"), metavar="N", help="epochs per trial (default 3 coarse, 8 refine)")
    s.add_argument("--final-epochs", type=config_number(c.TrainConfig, "epochs"), metavar="N", help="train.epochs written to best.yaml (default: the config's)")
    s.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="TPE (seeded) or random search")
    s.add_argument("--pruner", choices=("asha", "hyperband", "median", "none"), default="asha", help="asha: successive halving, rungs at 1, 3, 9 epochs, keeps the best third")
    s.add_argument("--sampler-seed", type=SEED, default=0, metavar="N", help="sampler seed; --seed is the trials' training seed")
    s.add_argument("--workers", type=number(integer=True, lo=1, hi=256), default=1, metavar="N", help="local worker processes sharing the study")
    # the environment is read when the command runs, not here: --help must never print a password
    s.add_argument("--storage", metavar="URL", help="postgresql://USER@HOST:PORT/DB, sqlite:///FILE or journal:PATH (default: env CNNLAB_STORAGE, else OUT/study.journal)")
    s.add_argument("--heartbeat", type=number(integer=True, lo=1, hi=86400), default=10, metavar="S", help="database storage: heartbeat of running trials; silent for 3 heartbeats = FAIL")
    s.add_argument("--study", metavar="NAME", help="study name (default cnnlab-<stage>-<out folder name>)")
    s.add_argument("--join", metavar="STUDY", help="add this process as a worker to a running study in --storage (needs nothing else)")
    s.add_argument("--out", metavar="DIR", help="search folder (default runs/search-<stage>-<time>; with --from: DIR-refine)")
    add_dashboard_flag(s, "search")
    quiet = add_quiet(s, "the table of trials and the best one")
    add_old_name(s, "--verbose", quiet, value=False,
                 note="is deprecated and goes in the next release: every trial's epoch lines show by default now (--quiet hides them)")
    parser.set_defaults(func=_search)


def parse_knob(text: str) -> tuple[str, Knob]:
    """``"PATH=float:LO:HI[:log]"`` / ``"PATH=int:LO:HI"`` / ``"PATH=cat:A,B"`` -> (path, knob)."""
    path, eq, spec = text.partition("=")
    kind, _, rest = spec.partition(":")
    try:
        if eq and kind == "cat" and rest:
            return path.strip(), CategoricalKnob(tuple(yaml.safe_load(v) for v in rest.split(",")))
        if eq and kind in ("float", "int"):
            fields = rest.split(":")
            cast = float if kind == "float" else int
            if len(fields) in (2, 3) and (len(fields) == 2 or fields[2] == "log"):
                knob = FloatKnob if kind == "float" else IntKnob
                return path.strip(), knob(cast(fields[0]), cast(fields[1]), log=len(fields) == 3)
    except CnnlabError as exc:  # a bad range: name the knob it belongs to
        raise CnnlabError(f"--knob {path.strip()}: {exc}") from None
    except ValueError:  # a bound that is not a number: the message below shows the expected form
        pass
    raise CnnlabError(f"--knob expects PATH=float:LO:HI[:log], PATH=int:LO:HI or PATH=cat:A,B,C, got '{text}'")


def _base_config(args: argparse.Namespace, base: dict[str, Any] | None) -> Any:
    """The base RunConfig: the coarse search's (refine --from), then --config, then flags."""
    from cnnlab.config import RunConfig, from_dict, load_yaml, merge

    overrides = run_overrides(args)
    overrides["train"]["epochs"] = args.final_epochs  # --epochs here is per trial
    data = merge(base or {}, load_yaml(args.config) if args.config else {})
    return from_dict(RunConfig, merge(data, overrides))


def _space(args: argparse.Namespace, cfg: Any, refined: Any = None) -> Any:
    """The search space from the flags (a refined one as the starting point, when given)."""
    from dataclasses import replace

    from cnnlab.errors import CnnlabError
    from cnnlab.recipe.search import coarse_space

    if args.lr_center is not None and args.lr_range is not None:
        raise CnnlabError("give either --lr-center or --lr-range, not both")
    has_dropout = args.dropout_range is not None or cfg.model.dropout is not None
    space = refined or coarse_space(args.lr_center or cfg.optim.lr, has_dropout=has_dropout)
    changes: dict[str, Any] = {}
    if args.lr_range:
        changes["lr"] = tuple(args.lr_range)
    if args.wd_range:
        changes["weight_decay"] = tuple(args.wd_range)
    if args.no_wd_search:
        changes["weight_decay"] = None
    if args.dropout_range:
        changes["dropout"] = tuple(args.dropout_range)
    if args.label_smoothing_range:
        changes["label_smoothing"] = tuple(args.label_smoothing_range)
    if args.knob:
        changes["extra"] = {**space.extra, **dict(parse_knob(k) for k in args.knob)}
    return replace(space, **changes)


def _search(args: argparse.Namespace) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING if args.quiet else optuna.logging.INFO)
    try:
        return _join(args) if args.join else _own(args)
    except KeyboardInterrupt:
        # One line: a search continues by running the same command (not `cnnlab train --resume <trial>`).
        import sys

        again = "the same command" if not args.join else f"`cnnlab search --join {args.join}` (or the owner's command)"
        print(f"cnnlab: interrupted; finished trials are kept in the study: run {again} again to continue it",
              file=sys.stderr, flush=True)  # fmt: skip
        return 130


def _own(args: argparse.Namespace) -> int:
    """A search this process owns (not --join): set the study up, work on it, print the table."""
    from pathlib import Path

    from cnnlab.recipe.dashboard import search_source
    from cnnlab.recipe.search import load_search, refine_space, run_search

    base, refined, origin = None, None, None
    if args.from_dir:
        coarse = load_search(args.from_dir)
        refined, explanation = refine_space(coarse.trials, coarse.space, top_k=args.top_k)
        base, origin = coarse.settings.base_config, {"from": str(Path(args.from_dir).resolve()), "refined": explanation}
        if not args.quiet:
            _print_refinement(explanation)
    cfg = _base_config(args, base)
    space = _space(args, cfg, refined)
    out = args.out or _default_out(args)
    with live_dashboard(args.dashboard, "search", lambda: search_source(out, _storage(args))):
        result = run_search(cfg, space, stage=args.stage, out_dir=out, study_name=args.study, storage=_storage(args),
                            n_trials=args.trials, timeout=parse_duration(args.budget), epochs=args.epochs,
                            sampler=args.sampler, pruner=args.pruner, workers=args.workers, seed=args.sampler_seed,
                            verbose=not args.quiet, heartbeat=args.heartbeat, origin=origin)  # fmt: skip
    _print_result(result)  # the result: printed under --quiet too
    return 0


def _storage(args: argparse.Namespace) -> str | None:
    """--storage, else the environment's CNNLAB_STORAGE (None: the journal file in the search folder)."""
    return args.storage or os.environ.get("CNNLAB_STORAGE")


def _default_out(args: argparse.Namespace) -> str:
    from datetime import datetime
    from pathlib import Path

    if args.from_dir:
        src = Path(args.from_dir).resolve()  # `--from .` has no name of its own to add "-refine" to
        return str(src.with_name(f"{src.name}-refine"))
    return f"runs/search-{args.stage}-{datetime.now():%Y%m%d-%H%M%S}"


def _join(args: argparse.Namespace) -> int:
    from cnnlab.errors import CnnlabError
    from cnnlab.recipe.dashboard import search_source
    from cnnlab.recipe.search import join_search

    storage = _storage(args)
    if not storage:
        raise CnnlabError("--join needs --storage URL (the study's database or journal file), or env CNNLAB_STORAGE")
    with live_dashboard(args.dashboard, "search", lambda: search_source(args.out, storage)):
        result = join_search(args.join, storage, out_dir=args.out, seed=args.sampler_seed or None, verbose=not args.quiet)
    _print_result(result)
    return 0


def _short_names(names: list[str]) -> dict[str, str]:
    """The last part of each config path (``optim.lr`` -> ``lr``) unless two would clash."""
    last = [n.rsplit(".", 1)[-1] for n in names]
    return {n: (s if last.count(s) == 1 else n) for n, s in zip(names, last)}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def _print_result(result: Any) -> None:
    """A table of the trials, then the best trial and where its config is."""
    from pathlib import Path

    names = _short_names(list(result.space.knobs()))
    header = ["#", "state", "val acc", "epochs", "seconds", *names.values()]
    rows = [[str(t.number), t.state.lower(), "-" if t.value is None else f"{t.value:.2%}", str(t.epochs),
             _fmt(t.seconds), *(_fmt(t.params.get(n)) for n in names)] for t in result.trials]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
    counts = ", ".join(f"{n} {s.lower()}" for s, n in result.counts().items())
    print(f"study {result.study_name} in {result.storage}: {counts}")
    best = result.best
    if best is None:
        print("no trial finished yet; continue with the same command")
        return
    out = Path(result.settings.out_dir)
    print(f"best: trial {best.number}, val acc {best.value:.2%} ({best.run_dir})")
    print(f"best config: {out / 'best.yaml'}  (train it: cnnlab train --config {out / 'best.yaml'})")


def _print_refinement(explanation: dict[str, Any]) -> None:
    print("refined ranges (around the best coarse trials):")
    for name, info in explanation.items():
        edge = f"  (best values at the {info['edge']} edge: the optimum may lie outside)" if info.get("edge") else ""
        print(f"  {name}: {_fmt_range(info['old'])} -> {_fmt_range(info['new'])}{edge}")


def _fmt_range(r: list[Any]) -> str:
    return "[" + ", ".join(_fmt(v) for v in r) + "]"

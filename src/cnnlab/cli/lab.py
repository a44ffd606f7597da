"""`cnnlab lab`: each claim of the lecture as an experiment with a table, a plot and a verdict."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  cnnlab lab list
  cnnlab lab run norm --budget 10m --train-subset 10000    # Fashion-MNIST by default
  cnnlab lab run dropout --epochs 15 --seeds 3 --out runs/lab-dropout
  cnnlab lab run depth --data cifar10 --budget 2h
  cnnlab lab run depth --train-subset 5000 --model-opt width=8 --budget 15m   # CIFAR nets at half width: a CPU
  cnnlab lab run init --smoke                                # seconds, on tiny synthetic data

Each arm is a normal run folder under OUT/runs/ (open it with cnnlab eval / diagnose).
Rerunning the same command continues a stopped lab (without --out: the newest unfinished
lab folder of that experiment with the same settings). The verdict ("supported", "not
supported", "inconclusive at this budget") is computed from the measured differences
between arms, seed by seed, never written in advance."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from cnnlab.cli.common import DATA_HELP, add_quiet, config_default, config_number, number
    from cnnlab.cli.parser import add_old_name
    from cnnlab.config import DataConfig, TrainConfig

    parser = subparsers.add_parser("lab", help="run a lecture claim as an experiment: table, plot, verdict",
                                   description="The lab: every claim of the lecture as a reproducible experiment.",
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)  # fmt: skip
    sub = parser.add_subparsers(dest="lab_command", metavar="COMMAND")
    ls = sub.add_parser("list", help="list the experiments and their claims")
    ls.set_defaults(func=_list)
    run = sub.add_parser("run", help="run an experiment", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    run.add_argument("name", metavar="NAME", help="an experiment (`cnnlab lab list`)")
    run.add_argument("--data", default=config_default(DataConfig, "source"), metavar="DATA", help=DATA_HELP)
    length = run.add_mutually_exclusive_group()
    length.add_argument("--budget", metavar="TIME", help="wall time for all runs, split fairly: the same epochs for every arm")
    length.add_argument("--epochs", type=config_number(TrainConfig, "epochs"), metavar="N", help="epochs per run (one of --budget and --epochs is needed)")
    subset = run.add_argument("--train-subset", type=config_number(TrainConfig, "train_subset"), metavar="N",
                              help="train on a stratified subset of N images (default: all)")
    add_old_name(run, "--subset", subset)
    run.add_argument("--seeds", type=number(integer=True, lo=1, hi=100), default=1, metavar="K", help="seeds per arm (3 gives a spread)")
    run.add_argument("--batch-size", type=config_number(TrainConfig, "batch_size"), default=config_default(TrainConfig, "batch_size"),
                     metavar="N", help="batch size of every run")  # fmt: skip
    run.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                     help="a model option for every arm, applied last (repeatable), e.g. width=8 for the depth experiment's CIFAR nets")
    run.add_argument("--smoke", action="store_true", help="tiny synthetic data, 1 epoch: checks the experiment runs")
    run.add_argument("--out", metavar="DIR", help="the lab folder (default runs/lab-NAME-<time>)")
    add_quiet(run, "the table and the verdicts")
    run.set_defaults(func=_run)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _list(args: argparse.Namespace) -> int:
    from cnnlab.lab.experiments import EXPERIMENTS

    for exp in EXPERIMENTS.values():
        print(f"{exp.name:<11} {exp.question} (lecture {exp.section})")
        print(f"{'':<11} arms: {', '.join(a.name for a in exp.arms)}")
        for claim in exp.claims:
            print(f"{'':<11} claim: {claim.text}")
        images = f" on at least {exp.min_train_images:,} training images" if exp.min_train_images else ""
        print(f"{'':<11} testable from: {exp.min_epochs} epochs{images} (below, verdicts say so)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from cnnlab.cli.common import parse_duration
    from cnnlab.cli.train import parse_model_options
    from cnnlab.lab.runner import LabSettings, run_lab

    settings = LabSettings(data=args.data, epochs=args.epochs, budget_seconds=parse_duration(args.budget), subset=args.train_subset,
                           seeds=args.seeds, batch_size=args.batch_size, smoke=args.smoke,
                           model_options=parse_model_options(args.model_opt))  # fmt: skip
    out = args.out
    if out is None:  # rerunning the same command continues its unfinished lab, as the help promises
        from cnnlab.lab.runner import default_out_dir

        out, continues = default_out_dir(args.name, settings)
        if continues and not args.quiet:
            print(f"continuing the unfinished lab {out} (same experiment and settings); give --out DIR to start another")
    result = run_lab(args.name, settings, out, verbose=not args.quiet)
    print((result.out_dir / "table.md").read_text())
    for v in result.verdicts:
        print(v.text)
    print(f"results: {result.out_dir}/results.csv, table.md, plot.png, verdict.md")
    return 0

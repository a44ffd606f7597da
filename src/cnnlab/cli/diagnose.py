"""`cnnlab diagnose RUNDIR`: read a run's curves and name what they show (recipe step 6)."""

from __future__ import annotations

import argparse
import textwrap

# Exit status of --strict when the curves show a problem (1 is an error, 2 a usage error).
EXIT_FINDINGS = 3

_EPILOG = """\
what it looks for (thresholds: cnnlab/recipe/diagnose.py):
  lr_too_high           NaN/inf, the loss ending 1.5x above its best, or epoch-to-epoch spikes (+25%)
  lr_too_low            a straight, unbent descent (R^2 >= 0.97, second half falls >= 60% of the first)
  plateau               training loss flat (< 2%) for the last 4 epochs at a constant lr
  bad_init              first-epoch loss > 1.5 ln(classes), or a flat start then a sudden drop
  labels_not_learnable  training accuracy +20 points while validation stays at chance
  overfitting           validation loss 10% above its minimum while training loss falls, or a growing gap
  underfitting          training accuracy < 85% with validation close to it

examples:
  cnnlab diagnose runs/resnet20-cifar10-20250101-120000
  cnnlab diagnose runs/my-run --json > diagnosis.json
  cnnlab diagnose runs/my-run --strict || echo "look at the curves"
"""


def _wrap(text: str) -> str:
    """Wrap a description by hand: the raw formatter (kept for the epilog's table) does not."""
    return textwrap.fill(text, width=100, break_on_hyphens=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="read a run's train/val curves: overfitting, underfitting, LR too high/low, plateau, bad init",
        description=_wrap(
            "Read the training and validation curves of a run folder (metrics.jsonl) and name what "
            "they show, each finding with its evidence (numbers from the curves) and what to try next. Prints one "
            "line per finding and writes diagnosis.json (with a machine-usable suggestion, e.g. lr_scale) and "
            "diagnosis.png into the run folder. A healthy run reports 'no problem found'."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", metavar="RUNDIR", help="a run folder written by `cnnlab train` (needs metrics.jsonl)")
    from cnnlab.cli.common import number

    parser.add_argument("--classes", type=number(integer=True, lo=2, hi=100_000), metavar="N",
                        help="number of classes, for the chance-level and initial-loss checks "
                        "(default: from the run's summary.json, once it finished)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the diagnosis as JSON instead of lines")
    parser.add_argument("--strict", action="store_true", help=f"exit with status {EXIT_FINDINGS} when there is any finding")
    parser.set_defaults(func=_diagnose)


def _diagnose(args: argparse.Namespace) -> int:
    import json

    from cnnlab.recipe.diagnose import diagnose_run, load_records

    result = diagnose_run(args.run, num_classes=args.classes)
    path = result.save(args.run, load_records(args.run))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(result.summary)
        for finding in result.findings:
            print(finding.line())
        if result.suggestion:
            print(f"suggestion: {json.dumps(result.suggestion.as_dict())}")
        print(f"wrote {path}")
    return EXIT_FINDINGS if args.strict and result.findings else 0

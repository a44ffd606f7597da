"""`cnnlab lr-find`: the learning-rate range test (recipe step 3)."""

from __future__ import annotations

import argparse
import textwrap

from cnnlab.cli.check import MODEL_FLAGS

#: The run flags the sweep uses: everything a training step uses, except what the sweep
#: replaces (lr, schedule, epochs) and what only a whole run does (EMA, early stopping,
#: checkpoints, test-time augmentation, compile).
LR_FIND_FLAGS = MODEL_FLAGS | {
    "augment", "optimizer", "momentum", "no_nesterov", "weight_decay", "batch_size", "seed", "label_smoothing",
    "grad_clip", "deterministic", "class_weights", "balanced_sampling", "train_subset", "device", "amp",
    "channels_last",
}  # fmt: skip

_EPILOG = """\
how the suggestion is chosen (cnnlab/recipe/lrfind.py):
  the first 5% of the steps are ignored (early spikes); the loss is smoothed with a running
  median of 9 (removes spikes) and a forward-backward debiased EMA (no lag towards high LRs);
  the suggestion is where the smoothed loss has fallen half-way from its plateau to its
  minimum, kept within [min_lr/30, min_lr/3]. Use it as --lr (the peak of the schedule).
  The sweep sets the learning rate itself: --lr, --schedule and --epochs are not taken here
  (nor are --ema, --tta and the other flags of a whole run); a --config YAML may hold them.

examples:
  cnnlab lr-find --data cifar10 --model resnet20
  cnnlab lr-find --config my-run.yaml --steps 200 --out runs/lrf
  cnnlab lr-find --data fashion-mnist --model simple --optimizer adamw --start-lr 1e-6 --end-lr 1
"""


def _wrap(text: str) -> str:
    """Wrap a description by hand: the raw formatter (kept for the epilog's tables) does not."""
    return textwrap.fill(text, width=100, break_on_hyphens=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    from cnnlab.cli.common import number
    from cnnlab.cli.train import add_run_args

    parser = subparsers.add_parser(
        "lr-find",
        help="learning-rate range test: loss vs an exponentially growing LR, and a suggested LR",
        description=_wrap(
            "Train for --steps mini-batches while the learning rate grows exponentially from --start-lr "
            "to --end-lr, with the optimizer, batch size and augmentation of `cnnlab train` (same flags, same "
            "--config), stopping once the smoothed loss exceeds --diverge times its minimum. Prints the suggested "
            "learning rate and the rule that chose it, and writes lr_find.json and lr_find.png. The test changes "
            "nothing: it starts from fresh weights seeded by --seed, so the same seed gives the same curve."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="YAML", help="a run config (data/model/optim/schedule/train sections)")
    parser.add_argument("--out", metavar="DIR", help="where lr_find.json and lr_find.png go (default runs/lr-find-<model>-<data>-<time>)")
    r = parser.add_argument_group("range test")
    r.add_argument("--start-lr", type=number(lo=0, lo_open=True), default=1e-7, metavar="LR", help="first learning rate")
    r.add_argument("--end-lr", type=number(lo=0, lo_open=True), default=10.0, metavar="LR", help="last learning rate")
    r.add_argument("--steps", type=number(integer=True, lo=13, hi=1_000_000), default=100, metavar="N", help="mini-batches in the sweep")
    r.add_argument("--diverge", type=number(lo=1, lo_open=True), default=4.0, metavar="X",
                   help="stop when the smoothed loss exceeds X times its minimum")  # fmt: skip
    add_run_args(parser, only=LR_FIND_FLAGS)  # sets the augmentation help as the epilog; ours goes first
    parser.epilog = _EPILOG + "\n" + (parser.epilog or "")
    parser.set_defaults(func=_lr_find)


def _lr_find(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnnlab.cli.train import run_overrides
    from cnnlab.config import load_run_config
    from cnnlab.recipe.lrfind import lr_find
    from cnnlab.run import default_run_dir

    cfg = load_run_config(args.config, run_overrides(args))
    if args.out:
        out = Path(args.out)
    else:
        default = default_run_dir(cfg)
        out = default.with_name(f"lr-find-{default.name}")
    result = lr_find(cfg, start=args.start_lr, end=args.end_lr, steps=args.steps, diverge=args.diverge, out_dir=out)
    print(result.line())
    print(f"wrote {out / 'lr_find.json'} and {out / 'lr_find.png'}")
    return 0

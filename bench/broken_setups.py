"""The recipe's checks catch real bugs: deliberately broken setups, and which step catches each.

On a real dataset (Fashion-MNIST by default) and the demo model (``simple``,
``c32-p-c96-p-c192-p-fc256``, batch 128, CPU), builds each of these setups and runs the
recipe's steps on it:

* ``healthy``: nothing broken, the control row: no step may flag it;
* ``no normalisation``: the loader feeds 0..255 pixel values (the data statistics replaced
  by mean 0, std 1/255: the classic forgotten ``/ 255``), on the model without norm layers;
* ``no normalisation, with BatchNorm``: the same bug on the default model (BatchNorm), which
  hides it: the first BatchNorm rescales whatever comes in, so step 1 does not see it (¹);
* ``a layer mixes the batch``: the input is centred on the batch mean in eval mode too
  (a statistic over dim 0), so a sample's prediction depends on the rest of its batch;
* ``labels shuffled``: the training labels permuted (validation labels intact);
* ``model ignores its input``: learned constant logits (the input never reaches the output).

Steps: 1 ``check_setup`` (initial loss, gradients, weight decay, batch independence) and
2 ``overfit_small`` (memorise 2 batches, against zeroed inputs) run on every setup, to show
which of them sees each bug (``--stop-early`` skips step 2 after a step-1 failure). The
recipe itself stops at the first failing step, so a setup that fails step 1 or 2 gets no
training ("-" under step 6). The others train briefly (``--epochs`` on a
``--train-subset`` of the training images, AdamW at a constant lr, no weight decay or
dropout, ``--val-subset`` validation images) and step 6 ``diagnose`` reads the curves.
Shuffled labels need enough epochs for the network to start memorising them (the
training accuracy must rise 20 points while validation stays at chance): a small subset
seen many times gets there in little compute. A step-6
finding counts as *catching* a setup when it points at a broken setup (``labels_not_learnable``,
``bad_init``); the others (over/underfitting, learning rate, plateau) are tuning advice
the recipe acts on, and are listed but not counted.

Prints a markdown table (setup | step 1 | step 2 | step 6 | caught by | message of the
failing item), and with ``--json`` writes the rows. Run it alone: 5-10 minutes on 2 CPU
cores (most of it step 2 on the un-normalised model, which needs nearly its whole budget;
``--stop-early`` skips that).

    python bench/broken_setups.py [--data fashion-mnist] [--train-subset 500] [--epochs 20] [--json rows.json]
    python bench/broken_setups.py --data synthetic:classes=10,n=3000,size=28,channels=1 --train-subset 400 --epochs 12

(¹) Normalisation still matters with BatchNorm (the first conv's bias and weight decay act
at the wrong scale), but no step of the recipe can tell; the row shows that honestly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.config import RunConfig, load_run_config
from cnnlab.data.imageset import ImageSet, Splits, stratified_subset
from cnnlab.recipe.checks import check_setup
from cnnlab.recipe.diagnose import diagnose
from cnnlab.recipe.overfit import overfit_small
from cnnlab.train.fit import fit
from cnnlab.run import build_model, load_data

SPEC = "c32-p-c96-p-c192-p-fc256"  # the demo model: 0.25M parameters
#: Step-6 findings that point at a broken setup (the rest is tuning advice).
BUG_FINDINGS = ("labels_not_learnable", "bad_init")
MESSAGE_CHARS = 120


# --------------------------------------------------------------------------- broken pieces


class BatchCentred(nn.Module):
    """Subtracts the batch mean (over dim 0) in every mode: samples leak into each other."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x - x.mean(0, keepdim=True))


class Constant(nn.Module):
    """Learned logits that do not depend on the input (starting at the log class priors)."""

    def __init__(self, log_prior: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(log_prior.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def unnormalised(splits: Splits) -> Splits:
    """The same images, "normalised" with mean 0 and std 1/255: the loader yields 0..255."""
    raw = dataclasses.replace(splits)
    channels = splits.image_shape[0]
    raw.__dict__["stats"] = ((0.0,) * channels, (1 / 255,) * channels)  # overrides the cached property
    return raw


def shuffled_labels(splits: Splits, seed: int = 1) -> Splits:
    """The training labels permuted; validation and test keep theirs."""
    labels = np.random.default_rng(seed).permutation(splits.train.labels)
    return dataclasses.replace(splits, train=ImageSet(splits.train.images, labels, splits.classes))


def constant_model(cfg: RunConfig, splits: Splits) -> nn.Module:
    counts = torch.as_tensor(splits.train.class_counts() + 1, dtype=torch.float64)
    return Constant((counts / counts.sum()).log())


@dataclass(frozen=True)
class Setup:
    """One row: how to break the data, the config and the model, and what should catch it."""

    name: str
    expected: str  # the step that should catch it ("-": none)
    model: dict[str, Any] = dataclasses.field(default_factory=dict)  # ModelConfig overrides
    data: Callable[[Splits], Splits] = lambda s: s
    build: Callable[[RunConfig, Splits], nn.Module] = build_model


SETUPS = (
    Setup("healthy", "-"),
    Setup("no normalisation (inputs 0..255), no norm layers", "step 1", {"norm": "none"}, unnormalised),
    Setup("no normalisation (inputs 0..255), with BatchNorm (¹)", "-", {}, unnormalised),
    Setup("a layer mixes the batch (batch-mean centring in eval mode)", "step 1",
          build=lambda cfg, splits: BatchCentred(build_model(cfg, splits))),
    Setup("labels shuffled (train only)", "step 6", data=shuffled_labels),
    Setup("model ignores its input (constant logits)", "step 1", build=constant_model),
)  # fmt: skip


# --------------------------------------------------------------------------- running the steps


def _config(args: argparse.Namespace, **model: Any) -> RunConfig:
    # The short training run of step 6: AdamW at a constant lr with no regularisation,
    # so a few epochs on a small subset show whether the training labels can be fitted.
    return load_run_config(None, {
        "data": {"source": args.data},
        "model": {"name": "simple", "options": {"spec": args.spec}, "dropout": 0.0, **model},
        "optim": {"name": "adamw", "lr": args.lr, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": args.epochs, "batch_size": 128, "train_subset": args.train_subset, "seed": 0,
                  "device": "cpu", "checkpoint_minutes": 0},
    })  # fmt: skip


def _short(text: str, n: int = MESSAGE_CHARS) -> str:
    return textwrap.shorten(text, n, placeholder="...").replace("|", "/")


def run_setup(setup: Setup, splits: Splits, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Steps 1, 2 and (when both pass) a short training run with step 6 on one setup."""
    cfg = _config(args, **setup.model)
    data = setup.data(splits)
    row: dict[str, Any] = {"setup": setup.name, "expected": setup.expected}
    tic = time.perf_counter()

    check = check_setup(cfg, splits=data, model=setup.build(cfg, data))
    failed = [i for i in check.items if not i.passed]
    row["check"] = "pass" if check.passed else "FAIL " + ", ".join(i.name for i in failed)
    row["check_items"] = [i.as_dict() for i in check.items]

    caught, message = [], ""
    if failed:
        caught.append(f"step 1: {', '.join(i.name for i in failed)} (stopped at step 1)")
        message = failed[-1].message  # the last: batch-independence names an ignored input, weight-decay only its symptom
    row["overfit"] = "-"
    if not (failed and args.stop_early):
        overfit = overfit_small(cfg, splits=data, model=setup.build(cfg, data), max_steps=args.overfit_steps)
        row["overfit"] = f"{'pass' if overfit.passed else 'FAIL'} ({overfit.diagnosis}, {overfit.steps} steps)"
        row["overfit_report"] = {k: v for k, v in overfit.as_dict().items() if not k.endswith("_curve")}
        if not overfit.passed:
            caught.append(f"step 2: {overfit.diagnosis}" + ("" if failed else " (stopped at step 2)"))
            message = message or overfit.message
    if caught:  # the recipe stops at the first failing step: no training
        row["diagnose"] = "-"
    else:
        history = fit(setup.build(cfg, data), data, cfg, run_dir=out / _slug(setup.name), verbose=False)
        found = diagnose(history.records, num_classes=len(data.classes))
        row["diagnose"] = found.summary
        row["records"] = [{k: r.get(k) for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")} for r in history.records]
        bugs = [f for f in found.findings if f.kind in BUG_FINDINGS]
        if bugs:
            caught.append(f"step 6: {', '.join(f.kind for f in bugs)}")
            message = bugs[0].evidence
    row["caught_by"] = "; ".join(caught) if caught else "nothing"
    row["message"] = _short(message) if message else ""
    row["seconds"] = round(time.perf_counter() - tic, 1)
    return row


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.split(" (")[0]).strip("-")


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    head = ("setup", "step 1 check", "step 2 overfit", "step 6 diagnose (short run)", "caught by", "message")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (r["setup"], r["check"], r["overfit"], _short(r["diagnose"], 80), r["caught_by"], r["message"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--spec", default=SPEC, help="the simple model's layer spec (--model-opt spec=...)")
    parser.add_argument("--train-subset", type=int, default=500, help="training images of the short runs (and of every step)")
    parser.add_argument("--val-subset", type=int, default=1000, help="validation images (stratified; 0: all)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the short training runs")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW lr of the short runs (constant)")
    parser.add_argument("--overfit-steps", type=int, default=300, help="step budget of step 2")
    parser.add_argument("--stop-early", action="store_true",
                        help="skip step 2 where step 1 failed, as the recipe does (faster; default: run both)")
    parser.add_argument("--out", help="folder for the short runs' run folders (default: a temporary one)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()

    splits = load_data(_config(args))
    if args.val_subset and len(splits.val) > args.val_subset:  # evaluation is most of a short run's time
        splits = dataclasses.replace(splits, val=splits.val.subset(stratified_subset(splits.val.labels, args.val_subset, 0)))
    print(f"{splits.name}: {len(splits.train)} train / {len(splits.val)} val images; simple {args.spec}, "
          f"batch 128, {torch.get_num_threads()} threads; short runs: {args.epochs} epochs, adamw lr {args.lr:g}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="broken-setups-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        for setup in SETUPS:
            rows.append(run_setup(setup, splits, args, out))
            r = rows[-1]
            print(f"  {r['setup']}: caught by {r['caught_by']} ({r['seconds']:.0f} s)", flush=True)
    print()
    print(table(rows))
    print("\n(¹) BatchNorm rescales the first conv's output, so a missing input normalisation does not change the "
          "initial loss: step 1 cannot see it. Without norm layers the 255x larger logits fail the initial-loss check.")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()

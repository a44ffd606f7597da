"""`cnnlab models` (the model zoo) and `cnnlab inspect MODEL` (layers, activations, gradients)."""

from __future__ import annotations

import argparse
from typing import Any

from cnnlab import config as c
from cnnlab.cli.common import DATA_HELP, SEED, config_number, console, number
from cnnlab.cli.parser import add_old_name
from cnnlab.errors import CnnlabError, UsageError

_DEFAULT_INPUT = "3x32x32"


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser(
        "models", help="list the registered models (params, multiply-adds)",
        description="List the registered models with their parameters and multiply-adds per image "
        "(computed on the meta device: instant, no memory). Each model is built for the input shape.",
    )
    models.add_argument("--family", help="only this family (simple, vgg, resnet, resnet-cifar, plain-cifar, wide-resnet)")
    models.add_argument("--input", metavar="CxHxW[,CxHxW...]",
                        help="add params and multiply-adds columns for these input shapes (a forward pass on the "
                        f"meta device per model and shape; without it: params at {_DEFAULT_INPUT} only)")
    models.add_argument("--num-classes", type=number(integer=True, lo=1, hi=100_000), default=10, metavar="N", help="classifier outputs")
    models.add_argument("--markdown", action="store_true", help="print a Markdown table (for docs/models.md)")
    models.add_argument("--norms", action="store_true", help="print which axes each norm averages over, and exit")
    models.set_defaults(func=_models)

    inspect = subparsers.add_parser(
        "inspect", help="layer table, activation statistics or gradient norms of a model",
        description="Without flags: a layer table (output shape, parameters, multiply-adds, receptive field). "
        "--activations forwards a batch (N(0,1) noise, or real images with --data) and reports per-layer "
        "mean/std/zeros, flagging vanishing (std < 1/100 of the input's) and exploding (> 100x) layers; "
        "with --out PNG it also draws their histograms. --gradients reports per-layer weight-gradient norms after one backward "
        "pass (cross-entropy), flagging layers whose gradient RMS is below 1/1000 (vanishing) or above 1000x (exploding) that of the "
        "last layer before the classifier.",
    )
    inspect.add_argument("model", metavar="MODEL", help="a registered model (`cnnlab models`)")
    inspect.add_argument("--input", metavar="CxHxW", help=f"input shape (default {_DEFAULT_INPUT}, or the data's)")
    inspect.add_argument("--num-classes", type=number(integer=True, lo=1, hi=100_000), metavar="N", help="classifier outputs (default 10, or the data's)")
    inspect.add_argument("--norm", metavar="NORM", help=f"{' | '.join(c.choices(c.NormName))}; group:G sets the group count")
    inspect.add_argument("--act", type=str.lower, choices=c.choices(c.Activation))
    inspect.add_argument("--init", metavar="INIT", help=f"{' | '.join(c.choices(c.InitName))}; normal:STD sets the std")
    inspect.add_argument("--dropout", type=config_number(c.ModelConfig, "dropout"), help="head dropout probability")
    inspect.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                         help="any other model option, e.g. spec=c32-p-c64 or depth=10 (repeatable)")
    inspect.add_argument("--depth", type=number(integer=True, lo=0, hi=100), metavar="D", help="layer table: one row per module at nesting depth D")
    inspect.add_argument("--activations", action="store_true", help="per-layer activation statistics (histograms too with --out)")
    inspect.add_argument("--gradients", action="store_true", help="per-layer weight-gradient norms after one backward pass")
    inspect.add_argument("--data", metavar="DATA", help="use real images instead of noise: " + DATA_HELP)
    inspect.add_argument("--data-root", metavar="DIR", help="folder holding named datasets")
    inspect.add_argument("--allow-outside-root", action="store_true", help="let a CSV --data list files outside its own folder")
    inspect.add_argument("--batch-size", type=number(integer=True, lo=1, hi=4096), default=64, metavar="N", help="batch for --activations/--gradients")
    out = inspect.add_argument("--out", "-o", metavar="PNG", help="--activations: also write their histograms to this PNG file (default: none written)")
    add_old_name(inspect, "--plot", out)
    inspect.add_argument("--seed", type=SEED, default=0, help="seed of the weights, noise and random labels")
    inspect.set_defaults(func=_inspect)


# The largest input `models` and `inspect` build: beyond it a forward pass on noise fills the memory.
MAX_CHANNELS, MAX_SIDE = 64, 4096


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"3x32x32"`` -> (3, 32, 32).

    Raises:
        UsageError: not CxHxW, or a side outside 1..MAX_SIDE (channels 1..MAX_CHANNELS).
    """
    parts = text.lower().replace("*", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1 or shape[0] > MAX_CHANNELS or max(shape[1:]) > MAX_SIDE:
        raise UsageError(f"bad input shape {text!r}; write CxHxW with C in 1..{MAX_CHANNELS} and H, W in "
                         f"1..{MAX_SIDE}, e.g. 1x28x28 or 3x32x32")  # fmt: skip
    return shape  # type: ignore[return-value]


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def _models(args: argparse.Namespace) -> int:
    from cnnlab.models import list_models, model_info
    from cnnlab.models.inspect import model_cost, model_params
    from cnnlab.models.layers import NORMS, describe_norm

    if args.norms:
        for norm in NORMS:
            print(describe_norm(norm))
        return 0
    names = list_models(args.family)
    if not names:
        raise CnnlabError(f"no models in family {args.family!r}; run `cnnlab models` to see the families")
    header, rows = ["model", "family"], []
    if args.input:
        shapes = [parse_shape(s) for s in args.input.split(",") if s.strip()]
        for c, h, w in shapes:
            header += [f"params {c}x{h}x{w}", f"MACs {c}x{h}x{w}"]
        for name in names:
            costs = [model_cost(name, shape, num_classes=args.num_classes) for shape in shapes]
            rows.append([name, model_info(name).family, *(human(v) for cost in costs for v in cost)])
    else:
        header.append(f"params {_DEFAULT_INPUT}")
        for name in names:
            params = model_params(name, parse_shape(_DEFAULT_INPUT), num_classes=args.num_classes)
            rows.append([name, model_info(name).family, human(params)])
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return 0
    from rich.table import Table

    table = Table(*header, "description")
    for name, row in zip(names, rows):
        table.add_row(*row, model_info(name).description)
    console().print(table)
    return 0


def _options(args: argparse.Namespace) -> dict[str, Any]:
    from cnnlab.cli.train import parse_model_options

    options = parse_model_options(args.model_opt)
    # Arguments create_for_input passes itself: as options they would be given twice (a TypeError).
    own = {"num_classes": "--num-classes N", "in_chans": "--input CxHxW", "input_size": "--input CxHxW", "name": "MODEL"}
    for key in options:
        if key in own:
            raise UsageError(f"--model-opt {key}= is not a model option here; set it with {own[key]}")
    given = {"norm": args.norm, "act": args.act, "init": args.init, "dropout": args.dropout}
    return {**options, **{k: v for k, v in given.items() if v is not None}}


def _inspect(args: argparse.Namespace) -> int:
    import torch

    from cnnlab.models.inspect import create_for_input
    from cnnlab.models.layers import describe_norm

    x = y = None
    classes: tuple[str, ...] = ()
    if (args.activations or args.gradients) and args.data:
        from cnnlab.data.loader import sample_batch

        x, y, classes = sample_batch(args.data, n=args.batch_size, root=args.data_root, seed=args.seed,
                                       allow_outside_root=args.allow_outside_root)
        x = x.float().cpu()
    shape = parse_shape(args.input) if args.input else (tuple(x.shape[1:]) if x is not None else parse_shape(_DEFAULT_INPUT))
    if x is not None and tuple(x.shape[1:]) != shape:
        raise CnnlabError(f"--input {args.input} does not match the data's images ({'x'.join(map(str, x.shape[1:]))}); drop --input")
    num_classes = args.num_classes or (len(classes) if classes else 10)
    options = _options(args)
    torch.manual_seed(args.seed)  # the printed statistics depend on the initial weights
    model = create_for_input(args.model, shape, num_classes=num_classes, **options)
    out = console()
    margs = model.model_args
    out.print(f"[bold]{args.model}[/] for {'x'.join(map(str, shape))} input, {num_classes} classes: "
              f"norm={margs.get('norm')} act={margs.get('act')} init={margs.get('init')} dropout={margs.get('dropout')}")
    if margs.get("norm") is not None:
        out.print(f"  {describe_norm(margs['norm'])}")
    if not (args.activations or args.gradients):
        _print_layer_table(out, model, shape, args.depth)
        return 0
    if x is None:
        from cnnlab.models.diagnostics import noise_batch

        x = noise_batch(shape, args.batch_size, args.seed)
        out.print(f"input: N(0, 1) noise, batch {args.batch_size}")
    else:
        out.print(f"input: {len(x)} images of {args.data}")
    if args.activations:
        _print_activations(out, model, x, args.out)
    if args.gradients:
        _print_gradients(out, model, x, y, args.seed)
    return 0


def _rf(size: int | None, jump: int) -> str:
    return "all" if size is None else f"{size} / {jump}"


def _print_layer_table(console: Any, model: Any, shape: tuple[int, int, int], depth: int | None) -> None:
    from rich.table import Table

    from cnnlab.models.inspect import layer_table

    tab = layer_table(model, shape, depth=depth)
    table = Table("layer", "type", "output", "params", "MACs", "RF / jump")
    for r in tab.rows:
        table.add_row(r.name, r.kind, "x".join(map(str, r.output_shape)), human(r.params) if r.params else "",
                      human(r.macs) if r.macs else "", _rf(r.rf_size, r.rf_jump))
    table.add_section()
    rf = tab.features_rf
    table.add_row("total", "", "x".join(map(str, tab.output_shape)), human(tab.total_params), human(tab.total_macs),
                  f"features: {_rf(*rf)}" if rf else "")
    console.print(table)
    console.print(f"{tab.total_params:,} parameters ({tab.trainable_params:,} trainable), "
                  f"{tab.total_macs:,} multiply-adds per image; RF = receptive field side in input px, "
                  "jump = input px between neighbouring units")


def _print_activations(console: Any, model: Any, x: Any, plot: str | None) -> None:
    from rich.table import Table

    from cnnlab.models.diagnostics import (
        EXPLODING_RATIO, VANISHING_RATIO, activation_stats, plot_activation_histograms,
    )

    report = activation_stats(model, x)
    table = Table("layer", "type", "mean", "std", "std/input", "zeros", "flag")
    for r in report.layers:
        flag = f"[red]{r.flag}[/]" if r.flag else ""
        table.add_row(r.name, r.kind, f"{r.mean:.3g}", f"{r.std:.3g}", f"{r.ratio:.3g}", f"{r.zero_fraction:.0%}", flag)
    console.print(table)
    console.print(f"input mean {report.input_mean:.3g}, std {report.input_std:.3g}; flags: vanishing = std below "
                  f"{VANISHING_RATIO:g} x input std, exploding = above {EXPLODING_RATIO:g} x")
    console.print(f"vanishing: {len(report.vanishing)} layer(s), exploding: {len(report.exploding)} layer(s)")
    if report.norm_note:
        console.print(f"[yellow]{report.norm_note}[/]")
    if plot is None:  # nothing is written unless asked for
        console.print("histograms: add --out FILE.png to draw them")
        return
    margs = getattr(model, "model_args", {})
    title = (f"{margs.get('name', 'model')}: activations by layer "
             f"(norm={margs.get('norm')}, act={margs.get('act')}, init={margs.get('init')})")
    path = plot_activation_histograms(report, plot, title=title)
    console.print(f"histograms: {path}")


def _print_gradients(console: Any, model: Any, x: Any, y: Any, seed: int) -> None:
    from rich.table import Table

    from cnnlab.models.diagnostics import GRAD_EXPLODING_RATIO, GRAD_VANISHING_RATIO, gradient_stats

    report = gradient_stats(model, x, y, seed=seed)
    table = Table("layer", "type", "|W|", "|dL/dW|", "grad RMS", "RMS / last", "|dW|/|W|", "flag")
    for r in report.layers:
        flag = f"[red]{r.flag}[/]" if r.flag else ""
        table.add_row(r.name, r.kind, f"{r.weight_norm:.3g}", f"{r.grad_norm:.3g}", f"{r.grad_rms:.3g}",
                      f"{r.relative:.2g}", f"{r.update_ratio:.2g}", flag)
    console.print(table)
    labels = "random labels" if y is None else "the data's labels"
    console.print(f"loss {report.loss:.4g} (cross-entropy, {labels}); gradient RMS relative to the last layer "
                  f"before the classifier: vanishing below {GRAD_VANISHING_RATIO:g} ({len(report.vanishing)} layer(s)), "
                  f"exploding above {GRAD_EXPLODING_RATIO:g} ({len(report.exploding)} layer(s))")

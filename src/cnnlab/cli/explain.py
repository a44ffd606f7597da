"""`cnnlab explain`: Grad-CAM heat maps of image files over the images."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import console as make_console
from cnnlab.cli.common import number

EXPLAIN_EPILOG = """\
Grad-CAM: the feature maps of one layer, weighted by how much the target class's logit
grows with each (its mean gradient), summed and kept where positive: where the evidence
for that class lies, at that layer's resolution, resized to the image. The layer is the
model's last convolutional block unless --layer names another (a name from
model.named_modules(); a wrong name lists the layers that have feature maps). Each file is
decoded and normalised exactly as `cnnlab predict` does; the probabilities are predict's
(calibrated when `cnnlab eval` stored a temperature).

Writes, per image, <name>-gradcam.png (the image as the model saw it, and the heat map over
it, titled with the predicted class and its probability), contact_sheet.png (every overlay
in one grid) and explain.json (per image: predicted class, probability, target class,
overlay file). They go to RUN/explain (RUN/explain-<model file> for another model file than
the run's best.pt), never into the current folder unless --out says so; --out DIR must not
be another run's folder, and files in it are replaced only with --force. Needs captum:
pip install 'cnnlab[explain]'.

examples:
  cnnlab explain runs/myrun shoe.png bag.png
  cnnlab explain runs/myrun photos/ --target-class Sneaker --out /tmp/why-sneaker
  cnnlab explain runs/myrun shoe.png --layer features.2
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    ex = subparsers.add_parser(
        "explain", help="why the model decided: Grad-CAM heat maps of image files",
        description="Grad-CAM overlays of image files for a trained model: where in each image the evidence "
        "for the predicted class (or --target-class) lies.",
        epilog=EXPLAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    ex.add_argument("checkpoint", metavar="RUN|CKPT",
                    help="a run folder (uses its best.pt, else last.pt), a .pt checkpoint or a .safetensors export")  # fmt: skip
    ex.add_argument("paths", nargs="+", metavar="IMAGE", help="image files and/or folders (searched recursively)")
    ex.add_argument("--out", metavar="DIR", help="folder for the overlays (default: RUN/explain, see below)")
    ex.add_argument("--force", action="store_true", help="replace files of an earlier explain in --out DIR")
    ex.add_argument("--target-class", metavar="C",
                    help="explain this class (a name or an index) in every image (default: each image's predicted class)")  # fmt: skip
    ex.add_argument("--layer", metavar="NAME", help="the layer to compute the maps at (default: the last conv block)")
    ex.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    ex.add_argument("--batch-size", type=number(integer=True, lo=1), default=32, metavar="N", help="images per Grad-CAM pass")
    ex.set_defaults(func=_explain)


def _explain(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from cnnlab.data.decode import readable
    from cnnlab.infer.explain import explain_files, plan_output
    from cnnlab.infer.predict import find_images, load_predictor

    files = find_images(args.paths)  # before loading the model: a typo fails fast
    pred = load_predictor(args.checkpoint, device=args.device)
    out = plan_output(pred, files, args.out, force=args.force)  # refused before the work, not after it
    result = explain_files(pred, files, out, target_class=args.target_class, layer=args.layer, batch_size=args.batch_size)
    console = make_console()
    table = Table("file", "predicted", "prob", "map of", "overlay")
    classes = pred.classes
    failed = 0
    for e in result.explanations:
        if e.error is not None:
            failed += 1
            table.add_row(escape(readable(e.path)), f"[red]error: {escape(e.error)}[/]")
            continue
        target = "" if e.target == e.predicted else f"{classes[e.target]} ({e.target_prob:.1%})"
        table.add_row(escape(readable(e.path)), classes[e.predicted], f"{e.prob:.1%}", target or "(predicted)",
                      e.output.name if e.output else "")  # fmt: skip
    console.print(table)
    console.print(f"Grad-CAM at layer {result.layer} of {pred.model_args.get('name', 'the model')}", soft_wrap=True)
    sheet = f", {result.sheet.name}" if result.sheet else ""
    console.print(f"wrote {result.summary}{sheet} and {len(result.explanations) - failed} overlay(s)", soft_wrap=True)
    if failed:
        console.print(f"[red]{failed} of {len(files)} file(s) could not be read[/]")
    return 1 if failed else 0

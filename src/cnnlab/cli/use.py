"""`cnnlab eval`, `cnnlab predict`, `cnnlab export`: use a trained model."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_data_args, add_user_code_args, data_overrides, number
from cnnlab.cli.common import console as make_console
from cnnlab.cli.parser import add_old_name

_MODEL_HELP = "a run folder (uses its best.pt, else last.pt), a .pt checkpoint or a .safetensors export"

EVAL_EPILOG = """\
By default the model is evaluated on the test split of the data it was trained on (rebuilt
from the run's config, so the held-out splits are the same; a prepared store is streamed or
decoded into memory as the run did it, --loader overrides) and the results go into the run
folder. Any other evaluation writes to a folder of its own inside the run folder, named by
what differs: RUN/eval-<model file>-<data>-<split>-<settings>, e.g. RUN/eval-val,
RUN/eval-test-size64 (--image-size 64), RUN/eval-test-tta, RUN/eval-last-test (last.pt),
RUN/eval-photos-<digest of its path>-test (--data photos/), RUN/eval-test-memory (--loader
memory on a run that streamed its store). So the run's own eval.json is
never overwritten by another setting's result; the same evaluation replaces its own files.
A recipe folder is evaluated as the recipe's result (its final model, or the average of its
final models, each with the flip TTA its run chose on validation, so --tta is refused):
into RECIPE itself by default, RECIPE/eval-val for --split val, and so on.
--out DIR must not be another run's folder (nor this run's, for a non-default evaluation);
earlier eval.json / confusion.png / top_losses.png / reliability.png in it are replaced only
with --force.

calibration: the expected calibration error (ECE, 15 equal-width confidence bins) of the
evaluated split, and reliability.png (accuracy against confidence). On the model's own data
a temperature T is fitted on the validation split (one more pass over it; LBFGS on log T,
minimising the NLL) and the ECE after dividing the logits by T is reported; accuracy does not
change. The default evaluation (RUN's own model on its test split, no other flags) stores T
with the model in RUN/calibration.json (with the SHA-256 of the model file it belongs to), and
`cnnlab predict` then shows calibrated probabilities; ignore it with `predict
--no-calibration`, or delete that file. Other evaluations report T in eval.json only.

examples:
  cnnlab eval runs/simple-fashion-mnist-20250101-120000
  cnnlab eval runs/myrun/best.pt --split val --tta
  cnnlab eval runs/myrun --data ~/photos/labelled --out /tmp/photos-eval
  cnnlab eval recipes/fmnist-30m           # the recipe's result, its test accuracy again
"""

PREDICT_EPILOG = """\
Each file is decoded exactly as the training images were (EXIF rotation, colour mode,
shorter side resized to the model's input size, centre crop) and normalised with the
training mean/std stored in the checkpoint. A model trained by streaming a prepared store
(--loader stream) was evaluated on the centre 87.5% of the shorter side (224 px from 256):
its files are cropped the same way. Folders are searched recursively for image
files (.png .jpg .jpeg .bmp .gif .tif .tiff .webp .ppm .pgm .pbm). A file that cannot be
read gets an error line and the others are still predicted; the exit code is then 1.

examples:
  cnnlab predict runs/myrun shoe.jpg bag.png
  cnnlab predict runs/myrun/best.pt photos/ --topk 5
  cnnlab predict model.safetensors photos/ --json > predictions.jsonl
"""

EXPORT_EPILOG = """\
formats:
  onnx         ONNX graph with a dynamic batch dimension (input "images", output "logits");
               needs onnx + onnxscript, checked with onnxruntime when installed
  torchscript  traced TorchScript module (loading it runs code: share with care)
  safetensors  the weights only, safe to load from anyone; its header holds the model
               arguments, class names and mean/std, so the file alone rebuilds the model
               (cnnlab.infer.export.load_safetensors_model) and works with eval/predict

Every export is loaded back and compared with PyTorch on a check batch (of another batch
size than the traced one); the export fails if any logit differs by more than 1e-4.
Every file carries the same metadata (key "cnnlab", JSON). The models take images
normalised with that mean/std, in C x H x W layout.

An existing file is replaced only with --force. A file of a run folder (config.yaml,
metrics.jsonl, summary.json, curves.png, last.pt, best.pt, predictions-*.npz, ...) is never
written, not even with --force, and into another run's folder not even under the names of
that run's own exports (best.onnx, last.safetensors, ...) or evaluation (eval.json, ...).

examples:
  cnnlab export runs/myrun --format onnx                # writes runs/myrun/best.onnx
  cnnlab export runs/myrun/last.pt --format safetensors --out model.safetensors
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    ev = subparsers.add_parser(
        "eval", help="evaluate a trained model: accuracy, per-class table, confusion matrix, top losses",
        description="Evaluate a trained model on a split: accuracy, top-5 (more than 5 classes), per-class "
        "precision / recall (= per-class accuracy) / F1, the most confused pairs; writes eval.json, "
        "confusion.png, top_losses.png (the most confidently wrong images) and reliability.png (calibration: "
        "ECE before and after a temperature fitted on the validation split, stored for predict).",
        epilog=EVAL_EPILOG, formatter_class=fmt,
    )  # fmt: skip
    ev.add_argument("checkpoint", metavar="RUN|CKPT|RECIPE", help=_MODEL_HELP + "; or a recipe folder: its result, "
                    "the final model or the average of its final models, as the recipe tested it")  # fmt: skip
    ev.add_argument("--split", default="test", choices=("test", "val", "train"), help="the split to evaluate")
    ev.add_argument("--tta", action="store_true", help="average the predictions of each image and its mirror image")
    ev.add_argument("--out", metavar="DIR", help="folder for eval.json, confusion.png, top_losses.png, reliability.png (default: see below)")
    ev.add_argument("--force", action="store_true", help="replace the files of an earlier evaluation in --out DIR")
    ev.add_argument("--top-losses", type=number(integer=True, lo=0, hi=1000), default=24, metavar="N", help="images in top_losses.png")
    _add_runtime_args(ev, "the run's eval batch size")
    add_data_args(ev, of_run=True)
    data_group = next(g for g in ev._action_groups if g.title == "data")  # add_data_args' group
    data_group.add_argument(
        "--loader", choices=("auto", "memory", "stream"),
        help="a store as data: stream it batch by batch (the centre crop the run validated on), decode it into memory, "
             "or auto (as `cnnlab train` decides); default: as the run was trained")  # fmt: skip
    ev.set_defaults(func=_eval)
    add_user_code_args(ev)

    pr = subparsers.add_parser(
        "predict", help="predict the classes of image files or folders",
        description="Predict the top-k classes of image files, preprocessed exactly as the training images.",
        epilog=PREDICT_EPILOG, formatter_class=fmt,
    )  # fmt: skip
    pr.add_argument("checkpoint", metavar="RUN|CKPT|RECIPE", help=_MODEL_HELP + "; or a recipe folder: its result, the "
                    "final model or the average of its final models")  # fmt: skip
    pr.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders (searched recursively)")
    pr.add_argument("--topk", type=number(integer=True, lo=1), default=3, metavar="K", help="classes to show per image")
    pr.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    pr.add_argument("--no-calibration", action="store_true",
                    help="the model's own probabilities: ignore the temperature `cnnlab eval` stored in RUN/calibration.json")  # fmt: skip
    _add_runtime_args(pr, "256")
    pr.set_defaults(func=_predict)
    add_user_code_args(pr)

    ex = subparsers.add_parser(
        "export", help="export a trained model to ONNX, TorchScript or safetensors",
        description="Export a trained model, verify the export against PyTorch, and write it next to the "
        "checkpoint (or to --out).", epilog=EXPORT_EPILOG, formatter_class=fmt,
    )  # fmt: skip
    ex.add_argument("checkpoint", metavar="RUN|CKPT", help=_MODEL_HELP)
    ex.add_argument("--format", required=True, choices=("onnx", "torchscript", "safetensors"), help="the export format")
    out = ex.add_argument("--out", "-o", metavar="PATH", help="the file (or folder, or path ending in /) to write (default: next to the checkpoint)")
    add_old_name(ex, "--output", out)
    ex.add_argument("--force", action="store_true", help="replace an existing file (never a checkpoint or another file of a run folder)")
    ex.set_defaults(func=_export)
    add_user_code_args(ex)


def _add_runtime_args(parser: argparse.ArgumentParser, batch_default: str) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=number(integer=True, lo=1), metavar="N", help=f"images per forward pass (default: {batch_default})")


def _eval(args: argparse.Namespace) -> int:
    from rich.table import Table

    from cnnlab.infer.evaluate import plan_evaluation, write_report

    data = {**data_overrides(args), "loader": args.loader}
    plan = plan_evaluation(args.checkpoint, data=data, split=args.split, tta=args.tta, device=args.device)
    out = plan.output_dir(args.out, force=args.force)  # refused before the work, not after it
    report = plan.run(args.batch_size)
    paths = write_report(report, out, limit=args.top_losses)
    console = make_console()
    m = report.metrics
    tta = " with flip TTA" if report.tta else ""
    where = f"{report.data_name}, {report.split} split ({m.n} images){tta}"
    console.print(f"[bold]{report.model}[/] ({report.checkpoint}) on {where}", soft_wrap=True)
    top5 = f"   top-5 {m.top5:.2%}" if m.top5 is not None else ""
    console.print(f"accuracy [bold]{m.accuracy:.2%}[/]{top5}   loss {report.loss:.4f}   macro F1 {m.macro['f1']:.4f}")
    table = Table("class", "support", "precision", "recall (acc)", "F1")
    for name, p, r, f, s in zip(m.classes, m.precision, m.recall, m.f1, m.support):
        table.add_row(name, str(int(s)), f"{p:.3f}", f"{r:.3f}", f"{f:.3f}")
    table.add_section()
    table.add_row("macro average", str(m.n), *(f"{m.macro[k]:.3f}" for k in ("precision", "recall", "f1")))
    console.print(table)
    confused = m.most_confused(3)
    if confused:
        console.print("most confused: " + "; ".join(f"{t} -> {p} ({c})" for t, p, c in confused))
    cal = report.calibration
    if cal is not None:
        line = f"calibration: ECE {cal.ece_before:.2%}"
        if cal.temperature is not None:
            line += f" -> {cal.ece_after:.2%} with temperature T = {cal.temperature:.3f} (fitted on the {cal.fitted_on})"
        console.print(line, soft_wrap=True)
    for note in report.warnings:
        console.print(f"[yellow]note:[/] {note}")
    pictures = ", ".join(paths[k].name for k in ("confusion", "top_losses", "reliability") if k in paths)
    console.print(f"wrote {paths['json']}, {pictures}", soft_wrap=True)
    if "calibration" in paths:
        console.print(f"stored T in {paths['calibration']}: predict now shows calibrated probabilities "
                      "(predict --no-calibration ignores it)", soft_wrap=True)  # fmt: skip
    elif cal is not None and cal.temperature is not None and not cal.at_bound:
        where = ("a recipe's models are calibrated one by one (`cnnlab eval RECIPE/final`, ...), and predict applies "
                 "each one's before averaging") if report.recipe else \
            "the default evaluation (`cnnlab eval RUN`, no other flags) stores it for predict"  # fmt: skip
        console.print(f"T is in eval.json only: {where}", soft_wrap=True)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from cnnlab.errors import UsageError
    from cnnlab.data.decode import readable
    from cnnlab.infer.ensemble import is_recipe_folder, load_recipe_predictor
    from cnnlab.infer.predict import find_images, load_predictor
    from cnnlab.io import json_dumps

    if args.topk < 1:
        raise UsageError(f"--topk must be at least 1, got {args.topk}")
    files = find_images(args.paths)  # before loading the model: a typo fails fast
    load = load_recipe_predictor if is_recipe_folder(args.checkpoint) else load_predictor
    predictor = load(args.checkpoint, device=args.device, calibrated=not args.no_calibration)
    predictions = predictor.predict_files(files, topk=args.topk, batch_size=args.batch_size or 256)
    failed = 0
    if args.json:
        for p in predictions:
            failed += p.error is not None
            print(json_dumps(p.as_dict()), flush=True)  # strict JSON: a NaN probability is null
        return 1 if failed else 0
    from rich.table import Table

    k = min(args.topk, len(predictor.classes))
    table = Table()
    table.add_column("file", overflow="fold")  # a path is useless when cut short
    for title in ("prediction", "prob") if k == 1 else [f"#{i + 1}" for i in range(k)]:
        table.add_column(title)
    converted = []  # files the model saw only after a conversion (said under the table)
    for p in predictions:
        if p.converted or p.warning:
            converted.append(p)
        if p.error is not None:
            failed += 1
            table.add_row(readable(p.path), f"[red]error: {p.error}[/]")
        elif k == 1:
            table.add_row(readable(p.path), p.classes[0], f"{p.probs[0]:.1%}")
        else:
            table.add_row(readable(p.path), *(f"{c} {q:.1%}" for c, q in zip(p.classes, p.probs)))
    console = make_console()
    console.print(table)
    from rich.markup import escape

    if predictor.temperature_from is not None:
        console.print(f"probabilities calibrated with T = {predictor.temperature:.3f} from "
                      f"{escape(str(predictor.temperature_from))} (--no-calibration: the model's own)", soft_wrap=True)  # fmt: skip
    for p in converted:
        if p.converted:
            console.print(f"converted {escape(readable(p.path))}: {escape('; '.join(p.converted))}", soft_wrap=True)
        if p.warning:
            console.print(f"[yellow]warning:[/] {escape(readable(p.path))}: {escape(p.warning)}", soft_wrap=True)
    if failed:
        console.print(f"[red]{failed} of {len(files)} file(s) could not be read[/]")
    return 1 if failed else 0


def _export(args: argparse.Namespace) -> int:
    from cnnlab.infer.export import export_model

    result = export_model(args.checkpoint, args.format, args.out, force=args.force)
    if result.max_abs_diff is not None:
        check = f"checked with {result.checked_with}: max |diff| vs PyTorch {result.max_abs_diff:.2e}"
    else:
        check = result.note or "not checked"
    print(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.2f} MB; {check})")
    return 0

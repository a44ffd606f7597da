"""`cnnlab data info|stats|show`: look at a data source before training on it."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import SEED, add_data_args, console, data_config, number, report_skipped
from cnnlab.cli.parser import add_old_name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect a data source: sizes and classes, channel statistics, augmentation grid",
        description="Inspect a data source: sizes and class balance (info), per-channel mean/std (stats), "
        "and a grid of original vs augmented samples (show).",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    info = sub.add_parser("info", help="split sizes, image shape, classes and class balance",
                          description="Print split sizes, image shape, classes and the images per class in each split.")
    add_data_args(info, positional=True)
    info.add_argument("--loader", choices=("auto", "memory", "stream"), default=None,
                      help="for a store: the loader to describe (default: the config's, auto)")
    info.set_defaults(func=_info)

    prepare = sub.add_parser(
        "prepare", help="write a store once (sharded, for data larger than memory)",
        description="Read an image folder, a CSV file or a built-in dataset once and write it into a store: litdata "
        "chunks of the images at their own aspect ratio, with the class names, the splits and each image's pixel "
        "sums. Any command then takes the store as --data; training decodes it into memory or streams it batch by "
        "batch (--loader). Files that cannot be read are skipped and listed. An interrupted prepare continues where "
        "it stopped when the same command is run again. --out s3://BUCKET/PREFIX prepares in cnnlab's cache and "
        "uploads (AWS credentials and AWS_ENDPOINT_URL as for the aws command); every machine then trains with "
        "--data s3://BUCKET/PREFIX, fetching chunks into a cache bounded by CNNLAB_STORE_CACHE_LIMIT (docs/data.md).",
    )
    prepare.add_argument("source", metavar="SRC", help="an image folder (<class>/ or train|val|test/<class>/), a CSV file of "
                         "path,label[,split] rows, or a built-in dataset name (fashion-mnist, cifar10, synthetic:...)")
    prepare.add_argument("--out", "-o", required=True, metavar="STORE",
                         help="the store folder: new or empty (or an interrupted prepare of the same SRC, to continue it), "
                         "or an s3:// URL to upload it to")
    prepare.add_argument("--max-side", default="256", type=_max_side, metavar="PX|native",
                         help="shrink images whose longer side exceeds PX to PX (keeping the aspect ratio); native keeps "
                         "every image at its own size; 256 is enough for 224 px crops, at a fraction of the bytes (default: 256)")
    prepare.add_argument("--format", default="jpeg", choices=("jpeg", "png", "raw"),
                         help="how pixels are stored: jpeg (quality 90; JPEG files kept as they are with --max-side native), "
                         "png (lossless, larger, slower to decode) or raw (uint8, no decoding, largest) (default: jpeg)")
    prepare.set_defaults(func=_prepare)

    stats = sub.add_parser("stats", help="exact per-channel mean/std of the training split",
                           description="Print the per-channel mean and std of the training split (in [0, 1] units), "
                           "the values every model trained on this data is normalised with.")
    add_data_args(stats, positional=True)
    stats.set_defaults(func=_stats)

    from cnnlab.data.augment_help import AUGMENT_HELP

    show = sub.add_parser("show", help="write a grid of original vs augmented samples",
                          description="Write a PNG grid: one row per sample, the original first, then augmented views "
                          "made by the same batched code the trainer uses.\n\n" + AUGMENT_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(show, positional=True)
    show.add_argument("--augment", default="standard", metavar="SPEC", help="augmentation spec (standard = flip,crop:4)")
    out = show.add_argument("--out", "-o", default="augment.png", metavar="PNG",
                            help="output file, .png (or .jpg, .pdf, .svg), or a folder for augment.png")
    add_old_name(show, "--output", out)
    show.add_argument("--force", action="store_true", help="replace an existing output file (never a file of a run folder)")
    show.add_argument("-n", "--samples", type=number(integer=True, lo=1, hi=1000), default=8, help="rows (samples), cycling through the classes")
    show.add_argument("--views", type=number(integer=True, lo=1, hi=100), default=6, help="augmented views per sample")
    show.add_argument("--split", default="train", choices=("train", "val", "test"))
    show.add_argument("--seed", type=SEED, default=0)
    show.set_defaults(func=_show)


def _load(args: argparse.Namespace):  # noqa: ANN202
    from cnnlab.data.sources import load_splits

    splits = load_splits(data_config(args))
    report_skipped(splits.skipped)
    return splits


def _info(args: argparse.Namespace) -> int:
    from rich.table import Table

    from cnnlab.data.sources import load_splits
    from cnnlab.data.store import choose_loader, describe, is_store, open_store

    out = console()
    loader_line = None
    if is_store(args.data):
        store = open_store(args.data)
        mode, why = choose_loader(store, data_config(args, loader=args.loader))
        out.print(describe(store), markup=False)
        loader_line = f"loader: {mode} ({why})"
        splits = load_splits(data_config(args, loader="stream"))  # the counts, without decoding anything
        report_skipped(splits.skipped)
    else:
        splits = _load(args)
    c, h, w = splits.image_shape
    out.print(f"[bold]{splits.name}[/]: {len(splits.classes)} classes, images {c}x{h}x{w} (C x H x W), uint8")
    if loader_line:
        out.print(loader_line, markup=False)
    table = Table("class", "train", "val", "test")
    counts = [splits.split(s).class_counts() for s in ("train", "val", "test")]
    for i, name in enumerate(splits.classes):
        table.add_row(f"{i}: {name}", *(str(int(cnt[i])) for cnt in counts))
    table.add_section()
    table.add_row("total", *(str(int(cnt.sum())) for cnt in counts))
    out.print(table)
    train = counts[0]
    ratio = train.max() / max(train.min(), 1)
    verdict = "balanced" if ratio <= 1.5 else "imbalanced: consider --class-weights or --balanced-sampling"
    out.print(f"largest/smallest training class: {ratio:.2f} ({verdict})")
    return 0


def _stats(args: argparse.Namespace) -> int:
    import time

    from cnnlab.data.stats import channel_stats

    splits = _load(args)
    start = time.perf_counter()
    mean, std = channel_stats(splits.train.images)
    elapsed = time.perf_counter() - start
    names = ("gray",) if len(mean) == 1 else ("red", "green", "blue")
    print(f"{splits.name}: {len(splits.train)} training images, computed in {elapsed * 1000:.0f} ms")
    for name, m, s in zip(names, mean, std):
        print(f"  {name:6s} mean {m:.6f}  std {s:.6f}")
    print(f"mean = ({', '.join(f'{m:.4f}' for m in mean)})  std = ({', '.join(f'{s:.4f}' for s in std)})")
    return 0


def _show(args: argparse.Namespace) -> int:
    from cnnlab.data.augment import build_augment
    from cnnlab.data.preview import augmented_views
    from cnnlab.errors import CnnlabError
    from cnnlab.infer.outputs import check_picture_path, write_error
    from cnnlab.report.plots import image_grid

    output = check_picture_path(args.out, "augment.png", flag="--out", force=args.force)  # before decoding the data
    splits = _load(args)
    part = splits.split(args.split)
    if len(part) == 0:
        raise CnnlabError(f"the {args.split} split of {splits.name} is empty; choose another --split")
    mean, _ = splits.stats
    spec = str(build_augment(args.augment, mean=mean) or "none")
    originals, views, labels = augmented_views(part, args.augment, n=args.samples, views=args.views, seed=args.seed, mean=mean)
    rows = [[originals[i], *views[i]] for i in range(len(originals))]
    try:
        path = image_grid(
            rows, output,
            row_labels=[splits.classes[int(y)] for y in labels],
            col_labels=["original", *(f"view {j + 1}" for j in range(args.views))],
            title=f"augment: {spec}",
        )  # fmt: skip
    except OSError as exc:  # the folder changed since it was checked (removed, made read-only, full)
        raise write_error(output, exc) from None
    print(f"wrote {path}")
    return 0


def _max_side(text: str) -> int | None:
    """``--max-side``: a size in px (16 or more), or ``native`` (None)."""
    if text.strip().lower() == "native":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 16:
        raise argparse.ArgumentTypeError(f"expected a size in px (16 or more) or native, got {text!r}")
    return value


def _prepare(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from cnnlab.data.decode import readable
    from cnnlab.data.images import _human
    from cnnlab.data.sources import load_raw
    from cnnlab.data.remote import is_remote
    from cnnlab.data.store import plan_arrays, plan_folder, prepare_remote, prepare_store

    start = time.perf_counter()
    path = Path(args.source).expanduser()
    if path.exists():
        items, classes, channels, skipped = plan_folder(path)
        fingerprint = ""
    else:  # a built-in dataset: its splits as they come (held-out splits are made when the store is loaded)
        raw = load_raw(data_config(argparse.Namespace(**{**_NO_DATA_FLAGS, "data": args.source})))
        flat = raw.val is None and raw.test is None
        parts = [(-1 if flat else 0, raw.train)] + [(i, s) for i, s in ((1, raw.val), (2, raw.test)) if s is not None]
        items, classes, channels = plan_arrays(parts)
        fingerprint, skipped = raw.fingerprint, list(raw.skipped)
    options = {"max_side": args.max_side, "fmt": args.format, "source": readable(str(args.source)),
               "fingerprint": fingerprint, "skipped": skipped}  # fmt: skip
    uploaded = None
    if is_remote(args.out):  # written in the URL's cache folder, then uploaded (cnnlab-store.json last)
        meta, uploaded = prepare_remote(args.out, items, classes, channels, **options)
    else:
        meta = prepare_store(items, classes, channels, args.out, **options)
    report_skipped(tuple((str(a), str(b)) for a, b in meta["skipped"]))
    splits = ", ".join(f"{n:,} {k}" for k, n in meta["splits"].items() if n and k != "all") or "no split folders"
    print(f"wrote the store {args.out}: {meta['count']:,} images ({splits}), {len(classes)} classes, "
          f"{_human(meta['bytes'])} of {meta['format']} in {time.perf_counter() - start:.1f}s"
          + ("" if uploaded is None else f" ({_human(uploaded)} uploaded)"))  # fmt: skip
    return 0


# The data flags `data prepare` does not take, as "not given" (data_config reads them).
_NO_DATA_FLAGS = {"data_root": None, "val_split": None, "test_split": None, "split_seed": None, "image_size": None,
                  "channels": None, "no_download": False, "allow_outside_root": False, "normalize": None}  # fmt: skip

"""Configuration as data: frozen dataclasses, YAML in and out, flag overrides, validation.

Each section of a run's configuration is a frozen dataclass. ``from_dict`` builds one
from plain data (YAML or flags) and checks names and types once, with messages a user
understands; ``to_dict`` turns it back into plain data for ``config.yaml``. ``None``
overrides are dropped (``merge``) so a CLI flag that was not given never hides a
default.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from cnnlab.errors import UsageError

T = TypeVar("T")

# --------------------------------------------------------------------------- choices
# The one list of each closed set of names. Config validation reads these types (any
# field annotated with one is checked against it), and the CLI derives its argparse
# ``choices=`` and help texts from them with :func:`choices`.

Normalize = Literal["standardize", "unit", "raw"]
# How training batches are made from a prepared store (`cnnlab data prepare`): decoded once into
# memory, streamed from the store batch by batch, or auto: in memory when the decoded images fit
# a fraction of the free device memory (cnnlab.data.store.MEMORY_FRACTION), else streamed.
LoaderMode = Literal["auto", "memory", "stream"]
# Where a streamed JPEG store's training crops are decoded: by the CPU decoding threads
# (simplejpeg / Pillow), or on the training device by torchvision.io.decode_jpeg (nvJPEG on a GPU).
DecodeMode = Literal["cpu", "device"]
Channels = Literal[1, 3]
OptimizerName = Literal["sgd", "adamw"]
ScheduleName = Literal["onecycle", "cosine", "step", "constant"]
# fp16: float16 autocast with a gradient scaler (CUDA only; for GPUs without bf16); auto: bf16 on CUDA, off on CPU
AmpMode = Literal["auto", "bf16", "fp16", "off"]
ChannelsLast = Literal["auto", "on", "off"]
# Flip test-time augmentation in the final test evaluation; auto: used when it raises the
# validation accuracy of the best weights (cnnlab.run.finish_run measures both).
TtaMode = Literal["off", "on", "auto"]
TransferMode = Literal["feature-extract", "finetune", "auto"]
TransferNorm = Literal["train", "frozen"]
# Resolved by cnnlab.models (layers.py, init.py), which own what each name builds; a test
# holds their registries equal to these lists. A norm may carry a group count (group:8),
# an init a std (normal:0.01), so those two are checked by the models, not here.
Activation = Literal["relu", "gelu", "sigmoid", "leaky_relu", "silu", "tanh"]
NormName = Literal["batch", "layer", "instance", "group", "none"]
InitName = Literal["kaiming", "xavier", "normal", "torch"]
# How a classifier head turns the last feature map into a vector: global average pool (any
# input size) or flatten (keeps where a feature is; fixed to the input size the model was built for).
HeadName = Literal["gap", "max", "flatten"]
# Experiment trackers a run can log to (train.track: NAME or NAME:URI; cnnlab.train.track logs).
TrackerName = Literal["mlflow"]


def choices(literal: Any) -> tuple[Any, ...]:
    """The values of a ``Literal`` choice type, in their declared order.

    Args:
        literal: one of the choice types above, e.g. :data:`OptimizerName`.

    Returns:
        The allowed values, e.g. ``("sgd", "adamw")``.
    """
    return typing.get_args(literal)


NORMALIZE_MODES: tuple[str, ...] = choices(Normalize)


def _is_choice(value: Any, allowed: tuple[Any, ...]) -> bool:
    # Compares types too: True == 1 must not pass for Literal[1, 3].
    return any(value == a and type(value) is type(a) for a in allowed)


def _choice_error(name: str, value: Any, allowed: tuple[Any, ...]) -> UsageError:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return UsageError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}{hint}")


def _literal_args(tp: Any) -> tuple[tuple[Any, ...], bool] | None:
    """``(allowed values, None allowed)`` when ``tp`` is a choice type or an optional one."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp), False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        literals = [a for a in args if typing.get_origin(a) is Literal]
        if len(literals) == 1 and len(args) <= 2:
            return typing.get_args(literals[0]), type(None) in args
    return None


@functools.cache
def _choice_fields(cls: type) -> tuple[tuple[str, tuple[Any, ...], bool], ...]:
    hints = typing.get_type_hints(cls)
    found = ((name, _literal_args(tp)) for name, tp in hints.items())
    return tuple((name, *lit) for name, lit in found if lit is not None)


def _check_choices(section: Any, where: str) -> None:
    """Check every choice-typed field of a config section (also when built directly, not via YAML)."""
    for name, allowed, optional in _choice_fields(type(section)):
        value = getattr(section, name)
        if not (value is None and optional) and not _is_choice(value, allowed):
            raise _choice_error(f"{where}.{name}", value, allowed)


# --------------------------------------------------------------------------- ranges
# The one table of allowed numbers. Every numeric field carries its Range in the field's
# metadata (``_num``); ``__post_init__`` checks them all (``_check_ranges``), and the CLI
# states them in ``--help`` and checks its flags with the same objects
# (``cnnlab.cli.common.number``), so a range is never typed twice.

SEED_MAX = 2**32 - 1  # NumPy's seeds are 32-bit
INT_MAX = 2**31 - 1  # counts go into C ints (torch, NumPy); anything larger is a typo


@dataclass(frozen=True)
class Range:
    """The allowed values of a number: finite, of a kind (integer or not), within bounds.

    Attributes:
        integer: only integers (a float such as 1e23 or 2.5 is refused, not rounded).
        lo: the lower bound, None for none.
        hi: the upper bound, None for none.
        lo_open: ``lo`` itself is excluded (``> lo`` rather than ``>= lo``).
        hi_open: ``hi`` itself is excluded.
        only: the allowed values, when they are a few (channels: 1 or 3); the bounds then
            only describe them.
    """

    integer: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    only: tuple[float, ...] | None = None

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a finite number of the right kind within the bounds (bools are no numbers)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if self.only is not None:
            return value in self.only
        try:
            if not math.isfinite(value):
                return False
        except OverflowError:  # an int too large for a float: no bound of ours reaches it
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def bounds(self) -> str:
        """The bounds alone, as ``--help`` shows them: ``> 0``, ``>= 1``, ``in [0, 1)``, ``1 or 3``."""
        if self.only is not None:
            return " or ".join(map(_fmt_bound, self.only))
        lo, hi = _fmt_bound(self.lo), _fmt_bound(self.hi)
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return "finite"

    def __str__(self) -> str:
        # "finite" only where a bound is missing: inf is > 0, but it is no learning rate
        kind = "an integer" if self.integer else "a number" if None not in (self.lo, self.hi) else "a finite number"
        return f"{kind} {self.bounds()}"

    def check(self, value: Any, name: str) -> None:
        """Raise a UsageError naming ``name``, the value and the range unless ``value`` is allowed."""
        if not self.contains(value):
            raise UsageError(f"{name} must be {self}, got {value!r}")


def _fmt_bound(x: float | None) -> str:
    if x is None:
        return ""
    if x in (INT_MAX, SEED_MAX):
        return f"2^{int(x).bit_length()}-1"
    if float(x).is_integer() and abs(x) < 1e12:
        return str(int(x))
    return f"{x:g}"


def _num(default: Any, rng: Range) -> Any:
    """A numeric dataclass field with its allowed range (read by validation and by ``--help``)."""
    return dataclasses.field(default=default, metadata={"range": rng})


def field_range(cls: type, name: str) -> Range:
    """The :class:`Range` of the numeric field ``name`` of the config section ``cls``.

    Raises:
        KeyError: the field has no range (it is not numeric).
    """
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == name and "range" in f.metadata:
            return f.metadata["range"]
    raise KeyError(f"{cls.__name__}.{name} has no range")


def _check_ranges(section: Any, where: str) -> None:
    """Check every numeric field of a config section against its Range (None passes where allowed)."""
    for f in dataclasses.fields(section):
        rng = f.metadata.get("range")
        value = getattr(section, f.name)
        if rng is None or value is None:  # None only where the annotation allows it (from_dict checks types)
            continue
        if isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                rng.check(v, f"{where}.{f.name}[{i}]")
        else:
            rng.check(value, f"{where}.{f.name}")


# Options of the built-in datasets (``name:key=value,...``). Named datasets not listed take
# none. Each option's Range is checked when the DataConfig is built, before any work.
SYNTHETIC_OPTIONS: dict[str, Range] = {
    "classes": Range(integer=True, lo=2, hi=1000),
    "n": Range(integer=True, lo=2, hi=INT_MAX),  # training images (also >= classes)
    "test": Range(integer=True, lo=1, hi=INT_MAX),  # test images (default n // 4)
    "size": Range(integer=True, lo=8, hi=1024),  # px (default data.image_size, else 32)
    "channels": Range(integer=True, only=(1, 3)),  # default data.channels, else 3
    "noise": Range(lo=0, hi=255),  # std of the pixel noise, in pixel levels (default 20)
    "seed": Range(integer=True, lo=0, hi=SEED_MAX),
}
BUILTIN_DATASETS: dict[str, dict[str, Range]] = {
    "fashion-mnist": {}, "mnist": {}, "cifar10": {}, "cifar100": {}, "digits": {}, "synthetic": SYNTHETIC_OPTIONS,
}  # fmt: skip
# The generated images are held in memory, as uint8, with a few times that while generating.
SYNTHETIC_MAX_BYTES = 2**30


def parse_source(source: str) -> tuple[str, dict[str, str]]:
    """Split a data source ``name:key=value,...`` into the lower-cased name and its options.

    Only the grammar is checked here; :func:`source_options` checks a built-in dataset's
    options. A path is returned as its (lower-cased) name with no options.

    Raises:
        UsageError: an option that is not ``key=value``.
    """
    if "://" in source:  # a URL (an s3:// store) has no options
        return source.strip().lower(), {}
    name, _, rest = source.partition(":")
    options: dict[str, str] = {}
    if rest:
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise UsageError(f"bad option '{item}' in data source '{source}'; write name:key=value,key=value")
            if key.strip() in options:
                raise UsageError(f"option '{key.strip()}' is given twice in data source '{source}'")
            options[key.strip()] = value.strip()
    return name.strip().lower(), options


def source_options(source: str, *, image_size: int | None = None, channels: int | None = None) -> dict[str, int | float]:
    """The checked numeric options of a built-in dataset spec (empty for other sources).

    Args:
        source: a data source (``synthetic:n=200,size=16``, ``cifar10``, a path).
        image_size: ``data.image_size``, the default ``size`` of synthetic images.
        channels: ``data.channels``, the default ``channels`` of synthetic images.

    Returns:
        For ``synthetic``: every option with its default filled in; for other built-in
        datasets and for paths: ``{}``.

    Raises:
        UsageError: an unknown option (with the valid ones), a value that is not a number
            of the option's kind or lies outside its range, or a synthetic dataset too
            large to hold in memory.
    """
    name, given = parse_source(source)
    if name not in BUILTIN_DATASETS:
        return {}
    allowed = BUILTIN_DATASETS[name]
    unknown = [k for k in given if k not in allowed]
    if unknown:
        valid = "; valid: " + ", ".join(f"{k} ({r.bounds()})" for k, r in allowed.items()) if allowed else ""
        raise UsageError(f"data source '{name}' has no option '{unknown[0]}'{valid or ' (it takes no options)'}")
    values: dict[str, int | float] = {}
    for key, text in given.items():
        rng = allowed[key]
        try:
            value: int | float = int(text) if rng.integer else float(text)
        except ValueError:
            raise UsageError(f"{name}:{key} must be {rng}, got '{text}'") from None
        rng.check(value, f"{name}:{key}")
        values[key] = value
    if name != "synthetic":
        return values
    n = int(values.get("n", 2000))
    out = {"classes": 4, "n": n, "test": n // 4, "size": image_size or 32, "channels": channels or 3, "noise": 20.0,
           "seed": 0, **values}  # fmt: skip
    if out["n"] < out["classes"]:
        raise UsageError(f"synthetic:n ({out['n']}) must be at least the number of classes ({out['classes']})")
    if not SYNTHETIC_OPTIONS["size"].contains(out["size"]):
        raise UsageError(f"synthetic:size must be {SYNTHETIC_OPTIONS['size']}, got {out['size']} (from data.image_size)")
    if not SYNTHETIC_OPTIONS["test"].contains(out["test"]):
        raise UsageError(f"synthetic:test must be {SYNTHETIC_OPTIONS['test']}, got {out['test']} (n // 4 by default)")
    size = (out["n"] + out["test"]) * out["channels"] * out["size"] ** 2
    if size > SYNTHETIC_MAX_BYTES:
        raise UsageError(f"synthetic data of (n + test) x channels x size^2 = {size / 2**30:.1f} GiB is more than the "
                         f"{SYNTHETIC_MAX_BYTES / 2**30:.0f} GiB allowed in memory; lower n, test or size")  # fmt: skip
    return out


# Model factory arguments that follow from the data (and the model name): never options.
RESERVED_MODEL_OPTIONS: dict[str, str] = {
    "num_classes": "the number of classes comes from the data (choose classes with --class-subset)",
    "in_chans": "the input channels come from the data (convert them with --channels)",
    "input_size": "the input size comes from the data (resize with --image-size)",
    "name": "the model is chosen with --model",
}


def check_model_options(options: Mapping[str, Any], where: str = "model.options") -> None:
    """Refuse model options that the data or the model name decide.

    Raises:
        UsageError: a reserved name, with where its value comes from.
    """
    for key in options:
        if key in RESERVED_MODEL_OPTIONS:
            raise UsageError(f"{where}: '{key}' cannot be set as a model option: {RESERVED_MODEL_OPTIONS[key]}")


def track_target(spec: str) -> tuple[str, str | None]:
    """``"mlflow"`` -> ``("mlflow", None)``; ``"mlflow:http://host:5000"`` -> ``("mlflow", "http://host:5000")``.

    Raises:
        UsageError: not a :data:`TrackerName`, alone or followed by ``:URI``; a URI with a
            password in it (it would be written to config.yaml).
    """
    from urllib.parse import urlsplit

    name, colon, uri = str(spec).partition(":")
    allowed = choices(TrackerName)
    if name.strip().lower() not in allowed or (colon and not uri.strip()):
        raise UsageError(f"train.track (--track) must be {' or '.join(f'{a} or {a}:URI' for a in allowed)}, got {spec!r}, "
                         "e.g. mlflow:http://127.0.0.1:5000")  # fmt: skip
    if urlsplit(uri.strip()).password is not None:
        raise UsageError("train.track (--track): the URI holds a password, which config.yaml would keep; "
                         "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")  # fmt: skip
    return name.strip().lower(), uri.strip() or None


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split, resized and augmented."""

    # A dataset name (fashion-mnist, mnist, cifar10, cifar100, digits, synthetic[:k=v,...]),
    # an image folder (ImageFolder layout) or a CSV file of `path,label` rows.
    source: str = "fashion-mnist"
    root: str | None = None  # folder holding (or receiving) named datasets; None: search the usual places
    val_split: float = _num(0.1, Range(lo=0, hi=1, hi_open=True))  # fraction of the training split held out for validation, when the source has none
    test_split: float = _num(0.1, Range(lo=0, hi=1, hi_open=True))  # fraction held out for test, only when the source has no test split
    split_seed: int = _num(0, Range(integer=True, lo=0, hi=SEED_MAX))  # seeds the stratified val/test hold-out (independent of the training seed)
    image_size: int | None = _num(None, Range(integer=True, lo=4, hi=INT_MAX))  # px, square; image folders / CSV are resized to it (default 64)
    channels: Channels | None = None  # None keeps the source's own
    augment: str = "flip"  # batched augmentation spec, e.g. "flip,crop:4,cutout:8" (see cnnlab.data.augment); "none" for none
    download: bool = True  # fetch named datasets (with checksum) when not found locally
    class_subset: tuple[int, ...] | None = _num(None, Range(integer=True, lo=0, hi=INT_MAX))  # keep only these class indices, relabelled 0..k-1 in this order
    # What the model sees: per-channel standardisation with the training split's statistics
    # (standardize), pixels scaled to [0, 1] (unit), or raw [0, 255] values (raw).
    normalize: Normalize = "standardize"
    # A CSV source may list files outside its own folder (../, absolute paths); off, so that a
    # CSV from elsewhere cannot make cnnlab read arbitrary files.
    allow_outside_root: bool = False
    # A store path as --data: its images in memory or streamed (LoaderMode); other sources are always in memory.
    loader: LoaderMode = "auto"
    # A streamed JPEG store: decode the training crops on the CPU threads or on the device (DecodeMode).
    decode: DecodeMode = "cpu"

    def __post_init__(self) -> None:
        _check_choices(self, "data")
        _check_ranges(self, "data")
        if self.val_split + self.test_split >= 1.0:
            raise UsageError("data.val_split + data.test_split must leave some training data (sum < 1)")
        if not isinstance(self.source, str) or not self.source.strip():
            # An empty source would be the current folder read as an image folder.
            raise UsageError("data.source (--data) is empty; give a dataset name, an image folder or a CSV file")
        source_options(self.source, image_size=self.image_size, channels=self.channels)


@dataclass(frozen=True)
class ModelConfig:
    """Which architecture, and the options that override its defaults (``None`` keeps them)."""

    name: str = "resnet9s"  # a registered model (`cnnlab models`) or FILE.py:FACTORY / MODULE:FACTORY (cnnlab.models.user); the default is the fastest to a good accuracy on a CPU (docs/models.md)
    norm: str | None = None  # a NormName, group:G with a group count
    act: str | None = None  # an Activation (checked by the model, which may accept others)
    dropout: float | None = _num(None, Range(lo=0, hi=1, hi_open=True))  # head dropout probability
    init: str | None = None  # an InitName, normal:STD with a std
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # any other factory option (e.g. spec)
    prior_bias: bool = True  # set the classifier bias to log class priors, so the initial loss matches the data
    pretrained: bool = False  # load the backbone's pretrained weights (timm:/torchvision: names, efficientnet_lite0)

    def __post_init__(self) -> None:
        _check_ranges(self, "model")
        check_model_options(self.options)

    def factory_options(self) -> dict[str, Any]:
        """The options to pass to ``create_model`` (only those given)."""
        given = {k: getattr(self, k) for k in ("norm", "act", "dropout", "init") if getattr(self, k) is not None}
        return {**self.options, **given}


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer. Weight decay never applies to norm parameters and biases."""

    name: OptimizerName = "sgd"
    lr: float = _num(0.1, Range(lo=0, lo_open=True))  # peak learning rate, for a batch of `train.batch_size`
    momentum: float = _num(0.9, Range(lo=0, hi=1, hi_open=True))  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = _num(5e-4, Range(lo=0))
    betas: tuple[float, ...] = _num((0.9, 0.999), Range(lo=0, hi=1, hi_open=True))  # adamw only

    def __post_init__(self) -> None:
        _check_choices(self, "optim")
        _check_ranges(self, "optim")
        if len(self.betas) != 2:
            raise UsageError(f"optim.betas must be two numbers (beta1, beta2), got {list(self.betas)}")


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule: a pure function of the optimisation step."""

    name: ScheduleName = "onecycle"
    warmup_epochs: float = _num(0.0, Range(lo=0))  # linear warmup from 0 before the schedule proper (any schedule)
    pct_start: float = _num(0.25, Range(lo=0, hi=1, lo_open=True, hi_open=True))  # onecycle: fraction of the steps spent rising to the peak
    final_lr_frac: float = _num(0.0, Range(lo=0, hi=1))  # cosine/onecycle: the final lr as a fraction of the peak
    milestones: tuple[float, ...] = _num((0.5, 0.75), Range(lo=0, hi=1, lo_open=True, hi_open=True))  # step: fractions of training where the lr drops
    gamma: float = _num(0.1, Range(lo=0, hi=1, lo_open=True))  # step: the factor of each drop

    def __post_init__(self) -> None:
        _check_choices(self, "schedule")
        _check_ranges(self, "schedule")


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train, and what the run folder gets."""

    epochs: int = _num(5, Range(integer=True, lo=1, hi=100_000))  # with the default model: 93.25% in 4.9 min on Fashion-MNIST, 2 CPU cores
    # train this many optimizer steps instead of whole epochs: ceil(steps / steps per epoch) epochs, the
    # last one ending part way, the schedule spanning them (the recipe's final run is planned in steps)
    steps: int | None = _num(None, Range(integer=True, lo=1, hi=INT_MAX))
    batch_size: int = _num(128, Range(integer=True, lo=1, hi=INT_MAX))  # per process (per micro-batch with accumulate)
    # gradient accumulation: each optimizer step averages the gradients of this many micro-batches of
    # batch_size, as one batch of batch_size x accumulate would (optim.lr is for that batch; cnnlab.train.loop)
    accumulate: int = _num(1, Range(integer=True, lo=1, hi=4096))
    eval_batch_size: int = _num(512, Range(integer=True, lo=1, hi=INT_MAX))
    seed: int = _num(0, Range(integer=True, lo=0, hi=SEED_MAX))
    label_smoothing: float = _num(0.1, Range(lo=0, hi=1, hi_open=True))
    # Beta(alpha, alpha) of mixup's / CutMix's label weight (0: off; see cnnlab.train.mix)
    mixup: float = _num(0.0, Range(lo=0))
    cutmix: float = _num(0.0, Range(lo=0))
    mix_prob: float = _num(1.0, Range(lo=0, hi=1))  # probability that a training batch is mixed, when mixup or cutmix is on
    # max global gradient norm; 0 or less would zero or reverse the gradient, so it is refused
    grad_clip: float | None = _num(None, Range(lo=0, lo_open=True))
    ema: float | None = _num(None, Range(lo=0, hi=1, lo_open=True, hi_open=True))  # decay of an exponential moving average of the weights (e.g. 0.999)
    early_stopping: int | None = _num(None, Range(integer=True, lo=1, hi=INT_MAX))  # stop after this many epochs without a lower validation loss
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    class_weights: bool = False  # weight the loss by inverse class frequency
    balanced_sampling: bool = False  # draw training images with probability ~ 1 / class frequency
    train_subset: int | None = _num(None, Range(integer=True, lo=1, hi=INT_MAX))  # use only this many training images (stratified)
    # validate on only this many validation images (stratified by class, chosen by `seed`): the
    # validation pass of a short run can take longer than its training; the test split stays whole
    val_subset: int | None = _num(None, Range(integer=True, lo=1, hi=INT_MAX))
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: AmpMode = "auto"  # auto: bf16 on CUDA
    channels_last: ChannelsLast = "auto"  # auto: on (CPU and CUDA)
    compile: bool = False  # torch.compile the model
    checkpoint_minutes: float = _num(10.0, Range(lo=0))  # also checkpoint mid-epoch this often (0: only at epoch ends)
    tta: TtaMode = "off"  # flip test-time augmentation in the final test evaluation: off | on | auto (chosen on validation)
    # also log the run to an experiment tracker: mlflow (URI from MLFLOW_TRACKING_URI) or mlflow:URI (cnnlab.train.track)
    track: str | None = None
    track_register: str | None = None  # register the tested best weights as a new version of this tracker model name

    def __post_init__(self) -> None:
        _check_choices(self, "train")
        _check_ranges(self, "train")
        if self.track is not None:
            track_target(self.track)
        if self.track_register is not None and (self.track is None or not self.track_register.strip()):
            raise UsageError("train.track_register (--track-register NAME) needs a model name and train.track "
                             "(--track mlflow[:URI]) to register it with")  # fmt: skip


# Values that older run folders and checkpoints (and YAML 1.1's on/off) hold for a field that
# is a choice now, read as the choice they meant, so those runs keep loading and resuming.
_OLD_VALUES: dict[tuple[type, str], dict[Any, Any]] = {
    (TrainConfig, "tta"): {False: "off", True: "on"},  # tta was a switch before it had "auto"
}


@dataclass(frozen=True)
class TransferConfig:
    """Transfer learning from a pretrained backbone (see docs/transfer.md)."""

    mode: TransferMode | None = None  # None: train every layer at one lr
    backbone: str | None = None  # a cnnlab run folder or checkpoint whose body becomes the backbone
    feature_views: int = _num(0, Range(integer=True, lo=0, hi=1000))  # feature-extract: augmented copies of the cached training features
    freeze_epochs: int = _num(1, Range(integer=True, lo=0, hi=100_000))  # finetune: epochs with the backbone frozen before it is unfrozen
    backbone_lr_ratio: float = _num(0.1, Range(lo=0, hi=1))  # finetune: the backbone's lr is lr * this
    norm: TransferNorm = "train"  # finetune: train (norm layers learn and update statistics) | frozen (eval mode, fixed)
    auto_threshold: int = _num(1000, Range(integer=True, lo=1, hi=INT_MAX))  # auto: feature-extract below this many training images per class, else finetune (measured: docs/transfer.md)
    cache: bool = True  # keep extracted features on disk (cache_dir()/features)

    def __post_init__(self) -> None:
        _check_choices(self, "transfer")
        _check_ranges(self, "transfer")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run; written to every run folder as config.yaml."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    transfer: TransferConfig = dataclasses.field(default_factory=TransferConfig)


def load_run_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a run config from YAML (if given), apply non-``None`` overrides, validate.

    Args:
        path: a YAML file with sections data / model / optim / schedule / train.
        overrides: nested plain data (e.g. from CLI flags); ``None`` values are ignored.

    Raises:
        UsageError: an invalid setting; one that is wrong in the file itself (a typo'd
            key, a bad value) names the file.
    """
    base = load_yaml(path) if path else {}
    try:
        return from_dict(RunConfig, merge(base, overrides or {}))
    except UsageError:
        if not base:
            raise
        try:  # the file alone: is the mistake in it, or in the flags?
            from_dict(RunConfig, base)
        except UsageError as exc:
            raise UsageError(f"config file {path}: {exc}") from None
        raise


# --------------------------------------------------------------------------- plain data


def to_dict(cfg: Any) -> Any:
    """Turn a (nested) config dataclass into plain dicts, lists and scalars."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    return cfg


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated with the non-``None`` values of ``overrides`` (nested dicts merge)."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and (key not in out or isinstance(out[key], Mapping)):
            out[key] = merge(out.get(key) or {}, value)
        else:
            out[key] = value
    return out


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from plain data, checking names and types.

    Args:
        cls: the config dataclass.
        data: keys are field names; missing keys take the defaults.
        where: the section name used in error messages (e.g. ``"data"``).

    Raises:
        UsageError: on an unknown key (with the closest valid one) or a value of the
            wrong type.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    prefix = f"{where}." if where else ""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else f" Valid keys: {', '.join(names)}."
            raise UsageError(f"unknown config key '{prefix}{key}'.{hint}")
        old = _OLD_VALUES.get((cls, key))
        if old is not None and isinstance(value, bool) and value in old:  # a bool only: 1 must not read as True
            value = old[value]
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the few safe cases (int → float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except UsageError as exc:
                errors.append(str(exc))
        raise UsageError(errors[0] if len(errors) == 1 else f"{name}: {value!r} has the wrong type")
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if _is_choice(value, allowed):
            return value
        raise _choice_error(name, value, allowed)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{name} must be a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{name}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise UsageError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise UsageError(f"{name} must be a mapping, got {value!r}")
        return from_dict(tp, value, where=name)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 3.0 -> 3; 2.5, nan and inf are refused
            return int(value)
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond any float (YAML reads 10**400 as an int)
                raise UsageError(f"{name} must be a finite number, got {value!r}") from None
        raise UsageError(f"{name} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{name} must be a string, got {value!r}")
    return value


# --------------------------------------------------------------------------- YAML


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a UsageError naming it."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping at the top level")
    return data


def dump_yaml(data: Any) -> str:
    """Serialise plain data (or a config dataclass) to YAML, keeping key order."""
    import yaml

    return yaml.safe_dump(to_dict(data), sort_keys=False, allow_unicode=True)

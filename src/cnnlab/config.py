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
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from cnnlab.errors import CnnlabError

T = TypeVar("T")

# --------------------------------------------------------------------------- choices
# The one list of each closed set of names. Config validation reads these types (any
# field annotated with one is checked against it), and the CLI derives its argparse
# ``choices=`` and help texts from them with :func:`choices`.

Normalize = Literal["standardize", "unit", "raw"]
Channels = Literal[1, 3]
OptimizerName = Literal["sgd", "adamw"]
ScheduleName = Literal["onecycle", "cosine", "step", "constant"]
AmpMode = Literal["auto", "bf16", "off"]
ChannelsLast = Literal["auto", "on", "off"]
TransferMode = Literal["feature-extract", "finetune", "auto"]
TransferNorm = Literal["train", "frozen"]
# Resolved by cnnlab.models (layers.py, init.py), which own what each name builds; a test
# holds their registries equal to these lists. A norm may carry a group count (group:8),
# an init a std (normal:0.01), so those two are checked by the models, not here.
Activation = Literal["relu", "gelu", "sigmoid", "leaky_relu", "silu", "tanh"]
NormName = Literal["batch", "layer", "instance", "group", "none"]
InitName = Literal["kaiming", "xavier", "normal", "torch"]


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


def _choice_error(name: str, value: Any, allowed: tuple[Any, ...]) -> CnnlabError:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return CnnlabError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}{hint}")


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


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split, resized and augmented."""

    # A dataset name (fashion-mnist, mnist, cifar10, cifar100, digits, synthetic[:k=v,...]),
    # an image folder (ImageFolder layout) or a CSV file of `path,label` rows.
    source: str = "fashion-mnist"
    root: str | None = None  # folder holding (or receiving) named datasets; None: search the usual places
    val_split: float = 0.1  # fraction of the training split held out for validation, when the source has none
    test_split: float = 0.1  # fraction held out for test, only when the source has no test split
    split_seed: int = 0  # seeds the stratified val/test hold-out (independent of the training seed)
    image_size: int | None = None  # px, square; image folders / CSV are resized to it (default 64)
    channels: Channels | None = None  # None keeps the source's own
    augment: str = ""  # batched augmentation spec, e.g. "flip,crop:4,cutout:8" (see cnnlab.data.augment)
    download: bool = True  # fetch named datasets (with checksum) when not found locally
    class_subset: tuple[int, ...] | None = None  # keep only these class indices, relabelled 0..k-1 in this order
    # What the model sees: per-channel standardisation with the training split's statistics
    # (standardize), pixels scaled to [0, 1] (unit), or raw [0, 255] values (raw).
    normalize: Normalize = "standardize"

    def __post_init__(self) -> None:
        _check_choices(self, "data")
        if not 0.0 <= self.val_split < 1.0:
            raise CnnlabError(f"data.val_split must be in [0, 1), got {self.val_split}")
        if not 0.0 <= self.test_split < 1.0:
            raise CnnlabError(f"data.test_split must be in [0, 1), got {self.test_split}")
        if self.val_split + self.test_split >= 1.0:
            raise CnnlabError("data.val_split + data.test_split must leave some training data (sum < 1)")
        if self.image_size is not None and self.image_size < 4:
            raise CnnlabError(f"data.image_size must be at least 4 px, got {self.image_size}")


@dataclass(frozen=True)
class ModelConfig:
    """Which architecture, and the options that override its defaults (``None`` keeps them)."""

    name: str = "resnet20"  # a registered model (`cnnlab models`)
    norm: str | None = None  # a NormName, group:G with a group count
    act: str | None = None  # an Activation (checked by the model, which may accept others)
    dropout: float | None = None  # head dropout probability
    init: str | None = None  # an InitName, normal:STD with a std
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # any other factory option (e.g. spec)
    prior_bias: bool = True  # set the classifier bias to log class priors, so the initial loss matches the data
    pretrained: bool = False  # load the backbone's pretrained weights (timm:/torchvision: names, efficientnet_lite0)

    def factory_options(self) -> dict[str, Any]:
        """The options to pass to ``create_model`` (only those given)."""
        given = {k: getattr(self, k) for k in ("norm", "act", "dropout", "init") if getattr(self, k) is not None}
        return {**self.options, **given}


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer. Weight decay never applies to norm parameters and biases."""

    name: OptimizerName = "sgd"
    lr: float = 0.1  # peak learning rate, for a batch of `train.batch_size`
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = 5e-4
    betas: tuple[float, ...] = (0.9, 0.999)  # adamw only

    def __post_init__(self) -> None:
        _check_choices(self, "optim")
        if not self.lr > 0:
            raise CnnlabError(f"optim.lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise CnnlabError("optim.weight_decay must be >= 0 and optim.momentum in [0, 1)")


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule: a pure function of the optimisation step."""

    name: ScheduleName = "onecycle"
    warmup_epochs: float = 0.0  # linear warmup from 0 before the schedule proper (any schedule)
    pct_start: float = 0.25  # onecycle: fraction of the steps spent rising to the peak
    final_lr_frac: float = 0.0  # cosine/onecycle: the final lr as a fraction of the peak
    milestones: tuple[float, ...] = (0.5, 0.75)  # step: fractions of training where the lr drops
    gamma: float = 0.1  # step: the factor of each drop

    def __post_init__(self) -> None:
        _check_choices(self, "schedule")
        if self.warmup_epochs < 0 or not 0 < self.pct_start < 1:
            raise CnnlabError("schedule.warmup_epochs must be >= 0 and schedule.pct_start in (0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train, and what the run folder gets."""

    epochs: int = 30
    batch_size: int = 128  # per process
    eval_batch_size: int = 512
    seed: int = 0
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # max global gradient norm
    ema: float | None = None  # decay of an exponential moving average of the weights (e.g. 0.999)
    early_stopping: int | None = None  # stop after this many epochs without a lower validation loss
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    class_weights: bool = False  # weight the loss by inverse class frequency
    balanced_sampling: bool = False  # draw training images with probability ~ 1 / class frequency
    train_subset: int | None = None  # use only this many training images (stratified)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: AmpMode = "auto"  # auto: bf16 on CUDA
    channels_last: ChannelsLast = "auto"  # auto: on (CPU and CUDA)
    compile: bool = False  # torch.compile the model
    checkpoint_minutes: float = 10.0  # also checkpoint mid-epoch this often (0: only at epoch ends)
    tta: bool = False  # test-time augmentation (horizontal flip) in the final evaluation

    def __post_init__(self) -> None:
        _check_choices(self, "train")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise CnnlabError("train.epochs, train.batch_size and train.eval_batch_size must be >= 1")
        if not 0 <= self.label_smoothing < 1:
            raise CnnlabError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise CnnlabError(f"train.ema must be in (0, 1), got {self.ema}")


@dataclass(frozen=True)
class TransferConfig:
    """Transfer learning from a pretrained backbone (see docs/transfer.md)."""

    mode: TransferMode | None = None  # None: train every layer at one lr
    backbone: str | None = None  # a cnnlab run folder or checkpoint whose body becomes the backbone
    feature_views: int = 0  # feature-extract: augmented copies of the cached training features
    freeze_epochs: int = 1  # finetune: epochs with the backbone frozen before it is unfrozen
    backbone_lr_ratio: float = 0.1  # finetune: the backbone's lr is lr * this
    norm: TransferNorm = "train"  # finetune: train (norm layers learn and update statistics) | frozen (eval mode, fixed)
    auto_threshold: int = 1000  # auto: feature-extract below this many training images per class, else finetune (measured: docs/transfer.md)
    cache: bool = True  # keep extracted features on disk (cache_dir()/features)

    def __post_init__(self) -> None:
        _check_choices(self, "transfer")
        if self.feature_views < 0 or self.freeze_epochs < 0 or self.auto_threshold < 1:
            raise CnnlabError("transfer.feature_views and transfer.freeze_epochs must be >= 0, auto_threshold >= 1")
        if not 0 <= self.backbone_lr_ratio <= 1:
            raise CnnlabError(f"transfer.backbone_lr_ratio must be in [0, 1], got {self.backbone_lr_ratio}")


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
    """
    base = load_yaml(path) if path else {}
    return from_dict(RunConfig, merge(base, overrides or {}))


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
        CnnlabError: on an unknown key (with the closest valid one) or a value of the
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
            raise CnnlabError(f"unknown config key '{prefix}{key}'.{hint}")
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
            except CnnlabError as exc:
                errors.append(str(exc))
        raise CnnlabError(errors[0] if len(errors) == 1 else f"{name}: {value!r} has the wrong type")
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if _is_choice(value, allowed):
            return value
        raise _choice_error(name, value, allowed)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise CnnlabError(f"{name} must be a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{name}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise CnnlabError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise CnnlabError(f"{name} must be a mapping, got {value!r}")
        return from_dict(tp, value, where=name)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise CnnlabError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise CnnlabError(f"{name} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise CnnlabError(f"{name} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise CnnlabError(f"{name} must be a string, got {value!r}")
    return value


# --------------------------------------------------------------------------- YAML


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a CnnlabError naming it."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CnnlabError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CnnlabError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CnnlabError(f"config file {path} must hold a mapping at the top level")
    return data


def dump_yaml(data: Any) -> str:
    """Serialise plain data (or a config dataclass) to YAML, keeping key order."""
    import yaml

    return yaml.safe_dump(to_dict(data), sort_keys=False, allow_unicode=True)

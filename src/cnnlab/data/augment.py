"""Batched, per-sample data augmentation on the training device (seed section 8).

The loader keeps the dataset as uint8 on the device, slices a batch, converts it to float
in [0, 1], calls the pipeline built here, then normalizes with the dataset mean/std. Every
op draws its own parameters for every sample, all from the ``torch.Generator`` passed in
(so a seed reproduces a run), with a few vectorized tensor ops and no loop over samples.

Spec grammar
------------
A spec is a comma-separated list of ops, applied in order, e.g. ``flip,crop:4,cutout:8``.
The grammar, every op and its arguments are described once, in
:data:`cnnlab.data.augment_help.AUGMENT_HELP` (what ``cnnlab train --help`` and
docs/data.md show); a test keeps it equal to the text generated from the op classes
(:func:`_help_text`), whose docstrings in :mod:`cnnlab.data.augment_ops` give the details.
Names and choices are case-insensitive.

In Python or YAML a spec may also be a list whose items are spec strings, ``Op`` objects,
or mappings such as ``{"op": "crop", "padding": 4}``. ``str(augment)`` gives the canonical
spec (the main argument of crop, cutout, rrc and jitter always shown, other trailing
defaults left out), which parses back to the same pipeline.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from cnnlab.data.augment_ops import (
    ColorJitter,
    Crop,
    Cutout,
    Erase,
    HFlip,
    Op,
    ResizedCrop,
    TrivialAugment,
    VFlip,
    format_value,
)
from cnnlab.errors import CnnlabError

__all__ = [
    "AUGMENT_HELP",
    "Augment",
    "ColorJitter",
    "Crop",
    "Cutout",
    "Erase",
    "HFlip",
    "OPS",
    "Op",
    "PRESETS",
    "ResizedCrop",
    "TrivialAugment",
    "VFlip",
    "build_augment",
    "parse_augment",
]

#: Op classes by canonical name.
OPS: dict[str, type[Op]] = {
    cls.name: cls for cls in (HFlip, VFlip, Crop, ResizedCrop, ColorJitter, Cutout, Erase, TrivialAugment)
}
#: Named specs that expand to a list of ops.
PRESETS: dict[str, str] = {"standard": "hflip,crop:4", "none": ""}

_BY_NAME: dict[str, type[Op]] = {alias: cls for cls in OPS.values() for alias in (cls.name, *cls.aliases)}


def _help_text() -> str:
    lines = [
        "Augmentation spec: comma-separated ops, applied in order, each NAME[:ARG...] with",
        "positional args in the order below, or NAME:KEY=VALUE[:KEY=VALUE...].",
    ]
    for cls in OPS.values():
        label = cls.name + (f" ({', '.join(cls.aliases)})" if cls.aliases else "")
        args = []
        for f in cls.spec_fields():
            choices = f.metadata["choices"]
            default = f"{f.default:.4g}" if isinstance(f.default, float) else str(f.default)
            args.append(f"{f.name}={'|'.join(choices) if choices else default}")
        lines.append(f"  {label:<19} {' '.join(args)}")
        lines.append(f"  {'':<19}   {cls.summary}")
    lines.append("Presets: standard = hflip,crop:4; none = no augmentation.")
    lines.append("Example: flip,crop:4:reflect,cutout:8  or  crop:padding=4:mode=reflect")
    return "\n".join(lines)


# The grammar for ``--help`` texts lives in a torch-free module (a test keeps it equal to _help_text()).
from cnnlab.data.augment_help import AUGMENT_HELP  # noqa: E402


def _suggest(word: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, valid, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _lookup(name: str) -> type[Op]:
    cls = _BY_NAME.get(name)
    if cls is None:
        valid = [cls.name + (f" ({', '.join(cls.aliases)})" if cls.aliases else "") for cls in OPS.values()]
        raise CnnlabError(
            f"unknown augmentation op '{name}'{_suggest(name, [*_BY_NAME, *PRESETS])}; "
            f"valid ops: {', '.join(valid)}; presets: {', '.join(PRESETS)}"
        )
    return cls


def _convert(cls: type[Op], arg: str, raw: Any) -> Any:
    """Turn a spec value (text from a string spec, or a YAML scalar) into the field's type."""
    f = next(f for f in cls.spec_fields() if f.name == arg)
    kind = type(f.default)
    bad = CnnlabError(
        f"augment op '{cls.name}': {arg} must be {'a number' if kind is float else 'an integer'}, "
        f"got {raw!r} (default {format_value(f.default)})"
    )
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise bad
    if kind is str:
        value = str(raw).strip().lower()
        choices = f.metadata["choices"]
        if value not in choices:
            raise CnnlabError(
                f"augment op '{cls.name}': {arg} must be one of {', '.join(choices)}, "
                f"got '{value}'{_suggest(value, choices)}"
            )
        return value
    try:
        number = float(raw)
    except ValueError:
        raise bad from None
    if kind is int:
        if not number.is_integer():
            raise bad
        return int(number)
    if not math.isfinite(number):
        raise bad
    return number


def _make(cls: type[Op], positional: Sequence[Any], named: Mapping[str, Any]) -> Op:
    """Build one op from positional and named spec values, checking every name."""
    kwargs = cls.bind_positional(positional)
    names = [f.name for f in cls.spec_fields()]
    for key, value in named.items():
        if key not in names:
            raise CnnlabError(
                f"augment op '{cls.name}': unknown argument '{key}'{_suggest(key, names)}; "
                f"valid arguments: {', '.join(names)}"
            )
        if key in kwargs:
            raise CnnlabError(f"augment op '{cls.name}': argument '{key}' is given twice")
        kwargs[key] = value
    return cls(**{key: _convert(cls, key, value) for key, value in kwargs.items()})


def _parse_token(token: str) -> list[Op]:
    """Parse one ``name[:arg...]`` item (or a preset) into ops."""
    name, *args = (part.strip() for part in token.split(":"))
    name = name.lower()
    if name in PRESETS:
        if args:
            raise CnnlabError(f"augment preset '{name}' takes no arguments, got '{token}'")
        return _parse_string(PRESETS[name])
    cls = _lookup(name)
    positional: list[str] = []
    named: dict[str, str] = {}
    for arg in args:
        if "=" in arg:
            key, value = (s.strip() for s in arg.split("=", 1))
            key = key.lower().replace("-", "_")
            if key in named:
                raise CnnlabError(f"augment op '{cls.name}': argument '{key}' is given twice in '{token}'")
            named[key] = value
        elif named:
            raise CnnlabError(f"augment op '{cls.name}': positional value '{arg}' after a key=value in '{token}'")
        else:
            positional.append(arg)
    return [_make(cls, positional, named)]


def _parse_string(spec: str) -> list[Op]:
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    if "none" in (t.lower() for t in tokens) and len(tokens) > 1:
        raise CnnlabError(f"augment spec '{spec}': 'none' cannot be combined with other ops; drop it or them")
    return [op for token in tokens for op in _parse_token(token)]


def _parse_mapping(item: Mapping[str, Any]) -> Op:
    if "op" not in item:
        raise CnnlabError(f"augment entry {dict(item)!r} needs an 'op' key, e.g. {{'op': 'crop', 'padding': 4}}")
    name = str(item["op"]).strip().lower()
    cls = _lookup(name)
    named = {str(k).lower().replace("-", "_"): v for k, v in item.items() if k != "op"}
    return _make(cls, [], named)


def parse_augment(spec: str | Sequence[str | Mapping[str, Any] | Op] | Augment | None) -> list[Op]:
    """Parse an augmentation spec into ops (the grammar is in this module's docstring).

    Args:
        spec: ``None`` or ``""`` (no augmentation), a spec string such as
            ``"flip,crop:4,cutout:8"``, an :class:`Augment`, or a list of spec strings,
            :class:`Op` objects and mappings like ``{"op": "crop", "padding": 4}``.

    Returns:
        The ops in order; empty for no augmentation.

    Raises:
        CnnlabError: an unknown op or argument, or a value of the wrong type or range.
    """
    if spec is None:
        return []
    if isinstance(spec, Augment):
        return list(spec.ops)
    if isinstance(spec, str):
        return _parse_string(spec)
    if isinstance(spec, Sequence):
        ops: list[Op] = []
        for item in spec:
            if isinstance(item, Op):
                ops.append(item)
            elif isinstance(item, str):
                ops.extend(_parse_string(item))
            elif isinstance(item, Mapping):
                ops.append(_parse_mapping(item))
            else:
                raise CnnlabError(f"augment entry {item!r} must be a spec string or a mapping with an 'op' key")
        return ops
    raise CnnlabError(f"augment spec must be a string or a list, got {type(spec).__name__}: {spec!r}")


@dataclass(frozen=True)
class Augment:
    """A callable augmentation pipeline: its ops applied in order.

    Attributes:
        ops: the ops, each a frozen dataclass with its spec arguments as fields.
    """

    ops: tuple[Op, ...]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch; each sample gets its own random parameters.

        Args:
            x: float batch (N, C, H, W) in [0, 1] units, on any device; it may be
                modified in place.
            generator: the source of all randomness, on ``x``'s device.

        Returns:
            The augmented batch, same dtype and device (same shape unless an ``rrc`` op
            sets an output ``size``).
        """
        if x.dim() != 4 or not x.is_floating_point():
            raise CnnlabError(
                f"augment needs a float batch (N, C, H, W) in [0, 1], got {x.dtype} of shape {tuple(x.shape)}; "
                "convert uint8 images with x.float() / 255"
            )
        if generator.device.type != x.device.type:
            raise CnnlabError(
                f"augment generator is on {generator.device} but the batch is on {x.device}; "
                f"create it with torch.Generator(device={str(x.device)!r})"
            )
        # Gradients never flow through data augmentation; no_grad (not inference_mode)
        # keeps the output usable as an input to an autograd-tracked model.
        with torch.no_grad():
            for op in self.ops:
                x = op(x, generator)
        return x

    def __str__(self) -> str:
        """The canonical spec string; ``parse_augment(str(a))`` gives the same ops."""
        return ",".join(str(op) for op in self.ops)


def build_augment(
    spec: str | Sequence[str | Mapping[str, Any] | Op] | Augment | None,
    *,
    mean: Sequence[float] | None = None,
) -> Augment | None:
    """Build the pipeline for a spec, or ``None`` when the spec asks for no augmentation.

    Args:
        spec: anything :func:`parse_augment` accepts.
        mean: the training split's per-channel mean in [0, 1] units (the units of the
            batch the pipeline sees); needed by ``cutout:fill=mean`` and ``erase:fill=mean``.

    Returns:
        An :class:`Augment`, or ``None`` for ``None``, ``""``, ``"none"`` or ``[]``.

    Raises:
        CnnlabError: a bad spec, or ``fill=mean`` without a usable ``mean``.
    """
    ops = parse_augment(spec)
    if not ops:
        return None
    if mean is not None:
        mean = tuple(float(m) for m in mean)
        if not mean or not all(0.0 <= m <= 1.0 for m in mean):
            raise CnnlabError(
                f"augment mean must be per-channel values in [0, 1] (the batch's units), got {list(mean)}; "
                "divide 0-255 statistics by 255"
            )
    for i, op in enumerate(ops):
        if isinstance(op, (Cutout, Erase)) and op.fill == "mean":
            if mean is None:
                raise CnnlabError(
                    f"augment op '{op}' fills with the dataset mean; pass mean= to build_augment, or use fill=zero"
                )
            ops[i] = replace(op, mean=mean)
    return Augment(tuple(ops))

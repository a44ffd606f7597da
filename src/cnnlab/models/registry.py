"""Model registry: ``@register_model`` factories, ``create_model(name, **options)``.

A factory is a plain function named after the model that returns a
:class:`~cnnlab.models.base.ClassifierModel`. ``create_model`` checks the options against the
factory's signature (so a typo is a clear error, not a TypeError deep inside), fills in the
defaults, and records the full set of arguments on the model as ``model.model_args``: a
checkpoint that stores them can rebuild the architecture with ``create_model(**model_args)``.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from cnnlab.config import RESERVED_MODEL_OPTIONS
from cnnlab.errors import CnnlabError, UsageError
from cnnlab.models.base import ClassifierModel
from cnnlab.models.user import create_user_model, is_user_model

F = TypeVar("F", bound=Callable[..., ClassifierModel])


@dataclass(frozen=True)
class ModelInfo:
    """One registry entry.

    Attributes:
        name: the model name (the factory's function name).
        family: a group such as ``vgg`` or ``resnet-cifar``.
        description: first line of the factory's docstring.
        factory: the function that builds the model.
        listed: shown by :func:`list_models` (and ``cnnlab models``); an unlisted model
            (``transfer``) is only rebuilt from a checkpoint's ``model_args``.
    """

    name: str
    family: str
    description: str
    factory: Callable[..., ClassifierModel]
    listed: bool = True

    def options(self) -> dict[str, Any]:
        """The factory's options and their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.factory).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(fn: F | None = None, *, family: str | None = None, listed: bool = True) -> F | Callable[[F], F]:
    """Register a model factory under its function name.

    Usable bare (``@register_model``) or with a family (``@register_model(family="vgg")``);
    the family defaults to the defining module's name. ``listed=False`` keeps a model out
    of :func:`list_models` while :func:`create_model` still builds it.

    Raises:
        CnnlabError: a model with the same name is already registered.
    """

    def decorate(f: F) -> F:
        name = f.__name__
        if name in _REGISTRY:
            other = _REGISTRY[name].factory
            raise CnnlabError(
                f"model {name!r} is already registered (by {other.__module__}.{other.__qualname__}); "
                "rename the new factory"
            )
        doc = (inspect.getdoc(f) or "").strip().splitlines()
        _REGISTRY[name] = ModelInfo(
            name=name,
            family=family or f.__module__.rsplit(".", 1)[-1],
            description=doc[0] if doc else "",
            factory=f,
            listed=listed,
        )
        return f

    return decorate(fn) if fn is not None else decorate


def _lookup(name: str) -> ModelInfo:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list_models(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise CnnlabError(f"unknown model {name!r}; {hint}run `cnnlab models` to list them")
    return _REGISTRY[name]


def list_models(family: str | None = None) -> list[str]:
    """Names of the listed models, in registration order (smallest first per family).

    Args:
        family: only this family (e.g. ``"resnet-cifar"``).
    """
    return [n for n, info in _REGISTRY.items() if info.listed and (family is None or info.family == family)]


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``.

    Raises:
        CnnlabError: unknown name (with close matches).
    """
    return _lookup(name)


def create_model(name: str, **options: Any) -> ClassifierModel:
    """Build a registered model, or a model of your own code (``file.py:factory``, ``module:factory``).

    Args:
        name: a name from :func:`list_models`, or a spec of user code (:mod:`cnnlab.models.user`,
            which the caller names: a saved model is rebuilt with :func:`model_from_args` instead).
        **options: factory options; all factories take ``num_classes``, ``in_chans``,
            ``norm``, ``act``, ``dropout``, ``init`` and ``input_size``.

    Returns:
        The model, with ``model.model_args == {"name": name, **all_options}`` (defaults
        filled in), so ``create_model(**model.model_args)`` rebuilds it.

    Raises:
        CnnlabError: unknown model or option, or a bad option value.
    """
    if is_user_model(name):  # your own code, file.py:factory or module:factory (cnnlab.models.user)
        return create_user_model(name, **options)  # type: ignore[return-value]
    info = _lookup(name)
    valid = info.options()
    unknown = [k for k in options if k not in valid]
    if unknown:
        bad = unknown[0]
        close = difflib.get_close_matches(bad, list(valid), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        # The data decides num_classes, in_chans and input_size: a run refuses them as options.
        settable = [k for k in valid if k not in RESERVED_MODEL_OPTIONS]
        raise UsageError(
            f"model {name!r} has no option {bad!r}; {hint}valid options: {', '.join(settable)}"
        )
    for key, value in options.items():
        _check_option_value(name, key, value, valid[key])
    args = {**valid, **options}
    try:
        model = info.factory(**args)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
        # A value of the right type that the factory still cannot use (a factory's own checks
        # raise CnnlabError with a better message; this is the net under the others).
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise UsageError(f"model {name!r} cannot be built with {given or 'these options'}: {exc}") from None
    model.model_args = {"name": name, **args}
    return model


def _check_option_value(model: str, key: str, value: Any, default: Any) -> None:
    """Refuse an option value whose type differs from the factory default's (an int option given
    ``abc`` or 2.5, a count below 1, a flag given 3); options without a default (None) pass."""
    where = f"model {model!r} option {key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UsageError(f"{where} must be true or false, got {value!r}")
    elif isinstance(default, int):
        # the int options of the zoo are counts and sizes (width, kernel_size, in_chans, num_classes)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{where} must be an integer >= 1, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UsageError(f"{where} must be a finite number, got {value!r}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise UsageError(f"{where} must be a word, got {value!r}")

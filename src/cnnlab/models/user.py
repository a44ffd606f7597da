"""Your own model from the command line: ``--model path/to/file.py:factory`` or ``package.module:factory``.

A user model is built by a factory function the user wrote. It gets the keyword arguments a
registered factory gets (``num_classes``, ``in_chans`` -- or ``in_channels`` if that is what
it takes --, ``input_size`` when it takes it, and the ``--model-opt`` / ``--norm`` / ... options
given) and must return an ``nn.Module`` that maps images (N, in_chans, input_size, input_size) to
finite logits (N, num_classes); :func:`check_contract` tries it on a batch of two before any
training, so a wrong model is one line naming the factory, not a crash in the first step.

Code runs only when the user names it. A new run imports the code its config names (the user
wrote that config). A saved model (a checkpoint, a ``.safetensors`` export, a run to resume)
records the spec, the sha256 of the file and keeps a copy of it in ``RUN/code/``, but cnnlab
never imports code because a saved file names it: rebuilding one needs the user to name the
code again (``--model SPEC``, :func:`allow_user_code`) or to trust the copy kept in the run
folder (``--trust-code``, checked against the recorded sha256 first). A checkpoint alone
therefore never runs code, however it was edited.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import hashlib
import importlib
import inspect
import logging
import re
import sys
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError, UsageError
from cnnlab.runfolder import RunFolder

log = logging.getLogger(__name__)

#: Names before ``:`` that are backbones, not modules (``timm:resnet18``, see cnnlab.models.backbones).
_BACKBONE_PREFIXES = ("timm", "torchvision")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
#: The batch the contract check runs (two images: a model that mixes the batch still shows its output shape).
_CHECK_BATCH = 2
#: Keyword arguments that follow from the data; the rest are the user's options.
DATA_ARGS = ("num_classes", "in_chans", "input_size")
SPEC_HELP = "FILE.py:FACTORY or MODULE:FACTORY"


@dataclass(frozen=True)
class UserSpec:
    """A parsed ``--model`` spec of user code.

    Attributes:
        text: the spec as given (``nets/small.py:build``), the model's name in configs and checkpoints.
        target: the file path or the dotted module name.
        factory: the name of the function in it.
        is_file: ``target`` is a ``.py`` file (else an importable module).
    """

    text: str
    target: str
    factory: str
    is_file: bool

    @property
    def copy_name(self) -> str:
        """The name of the copy a run folder keeps (``RUN/code/<copy_name>``)."""
        return Path(self.target).name if self.is_file else self.target.rsplit(".", 1)[-1] + ".py"

    @property
    def label(self) -> str:
        """A short name without path separators, for folder names: ``small-build``."""
        stem = Path(self.target).stem if self.is_file else self.target.rsplit(".", 1)[-1]
        return f"{stem}-{self.factory}"


def parse_user_spec(name: str) -> UserSpec | None:
    """The user spec ``name`` is, or None for a registered model or a backbone name.

    A name is user code when it is ``TARGET:FACTORY`` and TARGET is not a backbone prefix
    (``timm``, ``torchvision``). TARGET is a file when it ends in ``.py`` or holds a path
    separator, else a module name.

    Raises:
        UsageError: a spec whose factory is not a Python name, or a path that is no ``.py`` file.
    """
    target, colon, factory = str(name).rpartition(":")
    if not colon or not target or target in _BACKBONE_PREFIXES or (len(target) == 1 and target.isalpha()):
        return None  # no colon, a backbone, or a bare Windows drive letter
    if not _IDENTIFIER.match(factory):
        raise UsageError(f"--model {name}: after ':' comes the factory's name (a Python name such as build), "
                         f"got {factory!r}; write {SPEC_HELP}")  # fmt: skip
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if is_file and not target.endswith(".py"):
        raise UsageError(f"--model {name}: {target} is not a .py file; write {SPEC_HELP}")
    if not is_file and not _MODULE.match(target):
        raise UsageError(f"--model {name}: {target!r} is neither a .py file nor a module name; write {SPEC_HELP}")
    return UserSpec(str(name), target, factory, is_file)


def is_user_model(name: Any) -> bool:
    """Whether a model name is a spec of user code (``file.py:factory``, ``module:factory``)."""
    try:
        return isinstance(name, str) and parse_user_spec(name) is not None
    except UsageError:
        return True  # a malformed spec is still meant as user code: building it says what is wrong


def display_name(name: str) -> str:
    """``name`` itself, or for user code a short label without path separators (run folder names)."""
    spec = parse_user_spec(name) if is_user_model(name) else None
    return spec.label if spec is not None else name


# --------------------------------------------------------------------------- loading code


@dataclass(frozen=True)
class UserCode:
    """Code that was imported for a user model: the factory and exactly what ran.

    Attributes:
        spec: the spec it was loaded for.
        factory: the function.
        path: the file that ran (the module's file for a module spec).
        source: the file's bytes when it ran (written to ``RUN/code/``).
        sha256: of ``source``.
    """

    spec: UserSpec
    factory: Callable[..., Any]
    path: Path
    source: bytes
    sha256: str

    def record(self) -> dict[str, str]:
        """What a checkpoint stores about the code (``model_args["code"]``)."""
        return {"sha256": self.sha256, "file": self.spec.copy_name, "origin": str(self.path)}


def _where_in(exc: BaseException, path: Path) -> str:
    """``" (line 12 of small.py)"``: the deepest frame of ``exc`` in the user's file, if any."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" (line {exc.lineno} of {path.name})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return f" (line {frames[-1].lineno} of {path.name})" if frames else ""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _exec_file(path: Path, source: bytes, spec: UserSpec) -> types.ModuleType:
    """Run a file's bytes as a module (the bytes read once: what runs is what is hashed and copied)."""
    key = hashlib.sha256(str(path.resolve()).encode() + b"\0" + source).hexdigest()
    name = f"cnnlab_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{key[:12]}"
    if name in sys.modules:  # this file with these bytes ran before in this process: the same module
        return sys.modules[name]
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and pickling look a class's module up while it runs
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the user named this file
    except Exception as exc:  # any error in the user's file: one line naming it, the file and where
        del sys.modules[name]
        raise CnnlabError(f"importing {path} for --model {spec.text} failed{_where_in(exc, path)}: {_one_line(exc)}; "
                          f"fix the file (`python {path}` shows the whole traceback)") from None  # fmt: skip
    return module


def _read(path: Path, spec: UserSpec) -> bytes:
    if not path.is_file():
        raise CnnlabError(f"model file {path} does not exist; check the path in --model {spec.text}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CnnlabError(f"cannot read model file {path}: {exc.strerror or exc}") from None


def _import_module(spec: UserSpec) -> tuple[types.ModuleType, Path, bytes]:
    try:
        module = importlib.import_module(spec.target)
    except ModuleNotFoundError as exc:
        if exc.name and spec.target.startswith(exc.name):
            raise CnnlabError(f"cannot import module {spec.target} for --model {spec.text}: no module named {exc.name!r}; "
                              f"install it, put its folder on PYTHONPATH, or give the file: --model path/to/file.py:"
                              f"{spec.factory}") from None  # fmt: skip
        raise CnnlabError(f"importing module {spec.target} for --model {spec.text} failed: {_one_line(exc)}") from None
    except Exception as exc:  # any error in the user's module, named in one line
        raise CnnlabError(f"importing module {spec.target} for --model {spec.text} failed: {_one_line(exc)}") from None
    file = getattr(module, "__file__", None)
    if not file or not Path(file).is_file():
        raise CnnlabError(f"module {spec.target} has no source file to record with the run; give the file: "
                          f"--model path/to/file.py:{spec.factory}")  # fmt: skip
    path = Path(file)
    return module, path, path.read_bytes()


def _factory_of(module: types.ModuleType, spec: UserSpec, path: Path, source: bytes) -> UserCode:
    fn = getattr(module, spec.factory, None)
    if fn is None or not callable(fn):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)  # fmt: skip
        close = difflib.get_close_matches(spec.factory, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        what = "is not callable" if fn is not None else "does not exist"
        raise CnnlabError(f"the factory {spec.factory!r} in {path} {what}; {hint}"
                          f"its functions: {', '.join(names) or 'none'}; write --model {spec.target}:NAME")  # fmt: skip
    return UserCode(spec, fn, path, source, hashlib.sha256(source).hexdigest())


def load_code(name: str) -> UserCode:
    """Import the code a spec names (the user named it) and find its factory.

    Raises:
        CnnlabError: a missing file or module, an error while importing it, or no such factory.
    """
    spec = parse_user_spec(name)
    if spec is None:
        raise UsageError(f"{name!r} is not a spec of your own model code; write {SPEC_HELP}")
    if spec.is_file:
        path = Path(spec.target).expanduser()
        source = _read(path, spec)
        return _factory_of(_exec_file(path, source, spec), spec, path, source)
    module, path, source = _import_module(spec)
    return _factory_of(module, spec, path, source)


def _load_copy(spec: UserSpec, copy: Path, record: dict[str, Any] | None) -> UserCode:
    """Run the copy a run folder keeps (``--trust-code``), only if it is the code the model was built with."""
    source = _read(copy, spec)
    digest = hashlib.sha256(source).hexdigest()
    expected = (record or {}).get("sha256")
    if expected is not None and digest != expected:
        raise CnnlabError(f"--trust-code: {copy} is not the code the model was trained with (sha256 {digest[:12]}..., "
                          f"recorded {str(expected)[:12]}...); it was changed: pass --model SPEC naming the right file")  # fmt: skip
    file_spec = UserSpec(spec.text, str(copy), spec.factory, True)
    code = _factory_of(_exec_file(copy, source, file_spec), file_spec, copy, source)
    return UserCode(spec, code.factory, copy, source, digest)


# --------------------------------------------------------------------------- who may run what


@dataclass(frozen=True)
class _Allowance:
    named: str | None = None  # the spec the command line named (--model SPEC) for a saved model
    trust_copies: bool = False  # --trust-code: run the copy a run folder keeps
    # copies trusted (and checked) in this block, by sha256: a model exported from a trusted run and
    # loaded back to verify the export (outside the run folder) reuses its run's checked copy
    trusted: dict[str, UserCode] = field(default_factory=dict)


_ALLOWANCE: contextvars.ContextVar[_Allowance] = contextvars.ContextVar("cnnlab_user_code", default=_Allowance())
# Code already decided on for a spec (a resumed run builds its model from the config's spec).
_CHOSEN: contextvars.ContextVar[dict[str, UserCode]] = contextvars.ContextVar("cnnlab_user_code_chosen", default={})


@contextlib.contextmanager
def allow_user_code(named: str | None = None, *, trust_copies: bool = False) -> Iterator[None]:
    """Within this block, saved models of user code may be rebuilt: with the code ``named``
    (the user's ``--model SPEC``), or else with the copy their run folder keeps (``trust_copies``).

    Raises:
        UsageError: ``named`` is not a spec of user code.
    """
    if named is not None and parse_user_spec(named) is None:
        raise UsageError(f"--model {named}: for a saved model, --model names your own model code ({SPEC_HELP}); "
                         "a registered model needs no --model here")  # fmt: skip
    token = _ALLOWANCE.set(_Allowance(named, trust_copies))
    try:
        yield
    finally:
        _ALLOWANCE.reset(token)


def saved_code(name: str, record: dict[str, Any] | None, code_dir: Path | None, what: str) -> UserCode:
    """The code to rebuild a saved user model with, as the user allowed (:func:`allow_user_code`).

    Args:
        name: the spec the saved model records.
        record: its ``model_args["code"]`` (sha256, copy file), None when unknown.
        code_dir: the run folder's ``code/`` (None: no copy to trust, e.g. a lone export).
        what: the saved thing, for the message (``runs/x/best.pt``).

    Raises:
        UsageError: the user named no code and trusted no copy.
        CnnlabError: the named code cannot be loaded, or the copy is missing or changed.
    """
    spec = parse_user_spec(name)
    if spec is None:
        raise CnnlabError(f"{what}: {name!r} is not a spec of user model code")
    allowance = _ALLOWANCE.get()
    expected = (record or {}).get("sha256")
    if allowance.named is not None:
        code = load_code(allowance.named)
        if expected is not None and code.sha256 != expected:
            log.warning("%s differs from the code %s was trained with (sha256 %s..., recorded %s...); using it as named",
                        code.path, what, code.sha256[:12], str(expected)[:12])  # fmt: skip
        return code
    copy = code_dir / str((record or {}).get("file") or spec.copy_name) if code_dir is not None else None
    if allowance.trust_copies:
        if expected in allowance.trusted:
            return allowance.trusted[expected]
        if copy is None or not copy.is_file():
            raise CnnlabError(f"--trust-code: {what} has no copy of its code{f' ({copy})' if copy else ''}; "
                              f"pass --model SPEC naming the file that defines {spec.factory}")  # fmt: skip
        code = _load_copy(spec, copy, record)
        allowance.trusted[code.sha256] = code
        return code
    sha = f", sha256 {str(expected)[:12]}..." if expected else ""
    kept = f", or --trust-code to run the copy kept in {copy}" if copy is not None and copy.is_file() else ""
    raise UsageError(f"{what} holds a model built by your own code ({name}{sha}); cnnlab does not run code because a "
                     f"saved model names it: pass --model {name} (or wherever that file is now){kept}")  # fmt: skip


@contextlib.contextmanager
def resumed_user_code(name: str, model_args: dict[str, Any] | None, run_dir: Path) -> Iterator[None]:
    """Resume a run of user code: decide its code as for any saved model (:func:`saved_code`),
    and build the run's model with it inside this block. A no-op for other models.

    Raises:
        UsageError: the user named no code and trusted no copy.
    """
    if not is_user_model(name):
        yield
        return
    record = (model_args or {}).get("code") if isinstance((model_args or {}).get("code"), dict) else None
    code = saved_code(name, record, run_dir / RunFolder.CODE, f"the run in {run_dir}")
    token = _CHOSEN.set({**_CHOSEN.get(), name: code})
    try:
        yield
    finally:
        _CHOSEN.reset(token)


# --------------------------------------------------------------------------- building


def _call_args(code: UserCode, num_classes: int, in_chans: int, input_size: int, options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for the factory: the data's, then the user's options, checked against its signature."""
    fn, where = code.factory, f"the factory {code.spec.text}"
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C function: no signature to check against
        return {"num_classes": num_classes, "in_chans": in_chans, **options}
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    any_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if "num_classes" not in named and not any_kw:
        raise CnnlabError(f"{where} must take num_classes (and in_chans): def {code.spec.factory}(num_classes, in_chans, **options)")
    channels = "in_chans" if "in_chans" in named or any_kw else "in_channels" if "in_channels" in named else None
    if channels is None:
        raise CnnlabError(f"{where} must take in_chans (the input channels): def {code.spec.factory}(num_classes, in_chans, **options)")
    kwargs: dict[str, Any] = {"num_classes": num_classes, channels: in_chans}
    if "input_size" in named or any_kw:
        kwargs["input_size"] = input_size
    for key, value in options.items():
        if key not in named and not any_kw:
            takes = sorted(named - {"num_classes", "in_chans", "in_channels", "input_size"})
            close = difflib.get_close_matches(key, takes, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"{where} has no option {key!r}; {hint}its options: {', '.join(takes) or 'none'}")
        kwargs[key] = value
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]  # fmt: skip
    if missing:
        raise UsageError(f"{where} needs {', '.join(missing)}: give it with --model-opt {missing[0]}=VALUE")
    return kwargs


def check_contract(model: Any, where: str, num_classes: int, in_chans: int, input_size: int) -> None:
    """What every cnnlab model does: an ``nn.Module`` with trainable parameters that maps a batch of
    images (N, in_chans, input_size, input_size) to finite float logits (N, num_classes).

    Runs one forward pass in eval mode without gradients on a fixed (not random) batch of two, so
    neither the weights, the norm statistics nor any random state change.

    Raises:
        CnnlabError: naming what is wrong and what the model must do instead.
    """
    if not isinstance(model, nn.Module):
        raise CnnlabError(f"{where} returned a {type(model).__name__}, not a torch.nn.Module; return the model")
    if not any(p.requires_grad for p in model.parameters()):
        raise CnnlabError(f"the model of {where} has no trainable parameters; build its layers in the factory")
    shape = (_CHECK_BATCH, in_chans, input_size, input_size)
    x = torch.linspace(-1.0, 1.0, _CHECK_BATCH * in_chans * input_size**2).reshape(shape)
    was_training = model.training
    image = f"{in_chans}x{input_size}x{input_size}"
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:  # the user's forward fails on the data's images: say which images it was given
        raise CnnlabError(f"the model of {where} fails on a batch of {_CHECK_BATCH} images of {image} (C x H x W) "
                          f"({_one_line(exc)}); it must take in_chans={in_chans} channel(s) at {input_size} px, "
                          "as the data has them") from None  # fmt: skip
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise CnnlabError(f"the model of {where} returns a {type(out).__name__}; it must return one tensor of logits "
                          f"(N, num_classes)")  # fmt: skip
    if tuple(out.shape) != (_CHECK_BATCH, num_classes):
        raise CnnlabError(f"the model of {where} returns shape {tuple(out.shape)} for {_CHECK_BATCH} images of {image}; "
                          f"it must return logits of shape ({_CHECK_BATCH}, {num_classes}): use num_classes for its "
                          "last layer")  # fmt: skip
    if not out.is_floating_point() or not bool(torch.isfinite(out).all()):
        raise CnnlabError(f"the model of {where} returns {'non-finite' if out.is_floating_point() else out.dtype} logits "
                          "at initialisation; check its layers and initialisation")  # fmt: skip


def _build(code: UserCode, name: str, num_classes: int, in_chans: int, input_size: int, options: dict[str, Any]) -> nn.Module:
    kwargs = _call_args(code, num_classes, in_chans, input_size, options)
    try:
        model = code.factory(**kwargs)
    except CnnlabError:
        raise
    except Exception as exc:  # the user's factory failed: one line naming it, where, and with what
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise CnnlabError(f"the factory {name} raised{_where_in(exc, code.path)} {_one_line(exc)} when called with "
                          f"{given}; fix it, or the options given (--model-opt)") from None  # fmt: skip
    check_contract(model, f"the factory {name}", num_classes, in_chans, input_size)
    model.model_args = {"name": name, "num_classes": num_classes, "in_chans": in_chans, "input_size": input_size,
                        "options": dict(options), "code": code.record()}  # fmt: skip
    model._cnnlab_user_code = code  # the bytes that ran, for the run folder's copy (user_code_copy)
    return model


def create_user_model(name: str, *, num_classes: int, in_chans: int, input_size: int = 32, **options: Any) -> nn.Module:
    """Build a new model from the user code ``name`` names (the caller named it: a config, a flag).

    Args:
        name: ``file.py:factory`` or ``module:factory``.
        num_classes, in_chans, input_size: from the data.
        **options: the factory's own options (``--model-opt``, ``--norm``, ...).

    Returns:
        The model, checked by :func:`check_contract`, with ``model_args`` recording the spec,
        the data arguments, the options and the code's sha256.

    Raises:
        CnnlabError: the code cannot be loaded, the factory fails or returns no fitting model.
        UsageError: an option the factory does not take.
    """
    if "code" in options or "options" in options:
        raise UsageError(f"{name}: these are a saved model's arguments; rebuild it with "
                         "cnnlab.models.model_from_args (which asks for the code to be named)")  # fmt: skip
    code = _CHOSEN.get().get(name) or load_code(name)
    return _build(code, name, num_classes, in_chans, input_size, options)


def rebuild_user_model(model_args: dict[str, Any], *, code_dir: Path | None = None, what: str = "the saved model") -> nn.Module:
    """Rebuild a saved user model's architecture, with code the user allowed (:func:`saved_code`).

    Args:
        model_args: as the model recorded them (:func:`create_user_model`).
        code_dir: the run folder's ``code/`` holding the copy (for ``--trust-code``).
        what: the saved file, for messages.

    Raises:
        UsageError: no code named and no copy trusted.
        CnnlabError: bad recorded arguments, or the code cannot build that model.
    """
    name = model_args.get("name")
    record = model_args.get("code") if isinstance(model_args.get("code"), dict) else None
    options = model_args.get("options", {})
    data = [model_args.get(k) for k in DATA_ARGS]
    if not isinstance(options, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in data):
        raise CnnlabError(f"{what}: its record of the user model {name} (num_classes, in_chans, input_size, options) "
                          "is damaged; use a checkpoint written by `cnnlab train`")  # fmt: skip
    code = saved_code(str(name), record, code_dir, what)
    num_classes, in_chans, input_size = data
    return _build(code, str(name), num_classes, in_chans, input_size, options)


def user_code_copy(model: nn.Module) -> tuple[str, bytes] | None:
    """``(file name, bytes)`` of the code a user model was built with (for ``RUN/code/``); None for other models."""
    code = getattr(model, "_cnnlab_user_code", None)
    return (code.spec.copy_name, code.source) if isinstance(code, UserCode) else None


def prior_bias_target(model: nn.Module) -> nn.Module | None:
    """What :func:`cnnlab.models.init.init_classifier_bias` sets the prior bias of: a cnnlab model
    itself (it names its classifier), else a user model's last ``nn.Linear`` when it has a bias and
    one output per class; None when there is no such layer (the bias is then left as the model made it)."""
    if callable(getattr(model, "get_classifier", None)):
        return model
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    n = (getattr(model, "model_args", None) or {}).get("num_classes")
    if linears and linears[-1].bias is not None and (n is None or linears[-1].out_features == n):
        return linears[-1]
    log.info("prior bias: the model has no final nn.Linear with a bias and one output per class; its bias is left as built")
    return None

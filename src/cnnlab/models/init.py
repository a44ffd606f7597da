"""Weight initialisation by name (seed section 6).

``init=`` strings:

* ``kaiming``    - He et al. 2015: w ~ N(0, gain^2 / D_in), D_in = fan_in = in_chans * k * k.
  For ReLU gain = sqrt(2), i.e. std = sqrt(2 / D_in): ReLU zeroes half of its input, so the
  weights must double the variance to keep it constant from layer to layer.
* ``xavier``     - Glorot & Bengio 2010: std = sqrt(2 / (fan_in + fan_out)), gain 1. Right
  for tanh-like units near 0; with ReLU the activations shrink by ~sqrt(2) per layer.
* ``normal:STD`` - every weight N(0, STD^2): ``normal:0.01`` shows vanishing activations in
  a deep plain net, ``normal:1.0`` exploding ones.
* ``torch``      - leave PyTorch's default (Kaiming-uniform with a=sqrt(5)) untouched.

Biases start at 0 and norm layers at gamma=1, beta=0 (except ``torch``, which changes
nothing). With ``kaiming`` and ``xavier`` the classifier (the FC that outputs the logits)
gets N(0, 0.01^2) instead: its output feeds a softmax, not another layer, and near-zero
initial logits make the first loss ln(C) (or, with :func:`init_classifier_bias`, the
entropy of the class priors), which is what step 1 of the recipe checks. Kaiming there
would give logits with std ~1-4 and a first loss of 3-6 for 10 classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.errors import CnnlabError

INITS: tuple[str, ...] = ("kaiming", "xavier", "normal:STD", "torch")

#: gain g such that a layer with weights N(0, g^2 / fan_in) keeps the second moment of its
#: pre-activations constant through this activation. relu/leaky_relu/tanh/sigmoid use
#: torch.nn.init.calculate_gain's values; gelu and silu (which calculate_gain does not
#: know) use 1 / sqrt(E[f(z)^2]) for z ~ N(0, 1), the same rule that gives sqrt(2) for relu.
ACT_GAINS: dict[str, float] = {
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)),
    "tanh": 5.0 / 3.0,
    "sigmoid": 1.0,
    "gelu": 1.533,
    "silu": 1.676,
}

#: std of the classifier weights under ``kaiming`` / ``xavier`` (see the module docstring).
CLASSIFIER_STD = 0.01

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def parse_init(init: str) -> tuple[str, float | None]:
    """Split an init name into its kind and (for ``normal``) its std.

    Raises:
        CnnlabError: unknown name or a bad std.
    """
    kind, _, arg = str(init).strip().lower().partition(":")
    if kind == "normal":
        try:
            std = float(arg)
        except ValueError:
            raise CnnlabError(f"init {init!r} needs a std, e.g. normal:0.01") from None
        if not std > 0 or not math.isfinite(std):
            raise CnnlabError(f"init {init!r}: the std must be a positive number, e.g. normal:0.01")
        return kind, std
    if kind in ("kaiming", "xavier", "torch") and not arg:
        return kind, None
    raise CnnlabError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")


def activation_gain(act: str) -> float:
    """The Kaiming gain for an activation name (see :data:`ACT_GAINS`).

    Raises:
        CnnlabError: unknown activation.
    """
    name = str(act).strip().lower()
    if name not in ACT_GAINS:
        raise CnnlabError(f"unknown activation {act!r}; choose one of: {', '.join(ACT_GAINS)}")
    return ACT_GAINS[name]


def fan_in(weight: torch.Tensor) -> int:
    """D_in of a conv or linear weight: input channels (per group) times kernel area."""
    return int(weight[0].numel())


@torch.no_grad()
def init_weights(
    model: nn.Module, init: str = "kaiming", act: str = "relu", zero_init_residual: bool = False
) -> nn.Module:
    """Initialise every conv and linear layer of ``model`` in place.

    Args:
        model: any module; if it has ``get_classifier()``, that layer gets the small
            classifier init (see the module docstring).
        init: see the module docstring.
        act: the model's activation, for the Kaiming gain.
        zero_init_residual: set the last norm (or, in pre-activation blocks, the last conv)
            of every residual branch to zero, so each block starts as the identity
            (Goyal et al. 2017); needs a model with residual blocks.

    Returns:
        ``model``, for chaining.

    Raises:
        CnnlabError: unknown init or activation, or ``zero_init_residual`` on a model
            without residual branches.
    """
    kind, std = parse_init(init)
    gain = activation_gain(act)
    if any(p.is_meta for p in model.parameters()):
        # Meta tensors hold no values (a model built only to count parameters and MACs);
        # initialising them would just import torch's compiler stack for nothing.
        return model
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    if kind != "torch":
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                w = module.weight
                if module is classifier and kind != "normal":
                    w.normal_(0.0, CLASSIFIER_STD)
                elif kind == "kaiming":
                    w.normal_(0.0, gain / math.sqrt(fan_in(w)))
                elif kind == "xavier":
                    nn.init.xavier_normal_(w, gain=1.0)
                else:
                    w.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, _NORM_TYPES) and getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
                module.bias.zero_()
    if zero_init_residual:
        # Blocks know which layer ends their residual branch; plain blocks report False.
        zeroed = [m.zero_init_last() for m in model.modules() if hasattr(m, "zero_init_last")]
        if not any(zeroed):
            raise CnnlabError(
                f"zero_init_residual needs residual blocks, but {type(model).__name__} has none; "
                "drop the option (it would silence a plain net's layers)"
            )
    return model


def _as_priors(priors: Sequence[float] | torch.Tensor) -> torch.Tensor:
    p = torch.as_tensor(priors, dtype=torch.float64).flatten()
    if p.numel() == 0 or not torch.isfinite(p).all() or (p <= 0).any():
        raise CnnlabError(
            "class priors must be positive finite counts or frequencies, one per class; "
            "a class with no examples needs a count > 0 (e.g. add 1 to every count)"
        )
    return p / p.sum()


def prior_entropy(priors: Sequence[float] | torch.Tensor) -> float:
    """Entropy (in nats) of the class distribution: the cross-entropy of a model whose
    logits are the log priors, i.e. the loss a well-initialised classifier starts at.
    For C balanced classes it is ln(C)."""
    p = _as_priors(priors)
    return float(-(p * p.log()).sum())


@torch.no_grad()
def init_classifier_bias(
    model: nn.Module, priors: Sequence[float] | torch.Tensor, zero_weight: bool = False
) -> nn.Module:
    """Set the classifier bias to log(prior) so the initial loss matches the data.

    With bias = log p the softmax of the bias alone is p, so when the weight term is
    small the first loss is the entropy of the priors (:func:`prior_entropy`) instead of
    something larger that the first steps spend just learning the class frequencies.

    Args:
        model: a model with ``get_classifier()`` (a cnnlab model) or an ``nn.Linear``.
        priors: class counts or frequencies, one per output (normalised here).
        zero_weight: also zero the classifier weight, making the initial logits exactly
            the log priors for every input (gradients still reach the weight).

    Returns:
        ``model``.

    Raises:
        CnnlabError: bad priors, or their number differs from the classifier's outputs.
    """
    fc = model if isinstance(model, nn.Linear) else model.get_classifier()
    p = _as_priors(priors)
    if p.numel() != fc.out_features:
        raise CnnlabError(
            f"got {p.numel()} class priors for a classifier with {fc.out_features} outputs; "
            "pass one count or frequency per class"
        )
    if fc.bias is None:
        raise CnnlabError("the classifier has no bias to initialise; build it with a bias")
    fc.bias.copy_(p.log().to(fc.bias.dtype))
    if zero_weight:
        fc.weight.zero_()
    return model

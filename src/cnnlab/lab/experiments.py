"""The lab's experiments: one per claim of the lecture, each a set of arms and claims.

An arm is a normal cnnlab run: the experiment's base configuration plus the arm's own
overrides (nested ``RunConfig`` fields), on the user's data. A claim compares two arms on
one metric of their runs (see :mod:`cnnlab.lab.runner` for the metrics) and is judged by
:func:`cnnlab.lab.verdict.judge` from the per-seed differences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnnlab.errors import UsageError
from cnnlab.models.diagnostics import activation_stats, gradient_stats

# Metrics that only training produces (see :mod:`cnnlab.lab.runner`); the others (parameters,
# the probes at initialisation) are measured the same way at any budget.
TRAINED_METRICS = frozenset({"test_acc", "train_acc", "val_acc", "gap", "train_err"})

# The small CNN most experiments vary: fast on a CPU, with a hidden FC layer for dropout.
SMALL = "c32-p-c64-p-c128-p-fc128"


@dataclass(frozen=True)
class Arm:
    """One configuration of an experiment (``overrides``: nested RunConfig fields)."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """``treatment`` beats ``control`` on ``metric`` by at least ``min_effect``.

    ``higher_is_better`` says which way "beats" goes (accuracy up, error or gap down).
    ``non_inferior``: the claim is only "at least as good"; ``min_effect`` is then the
    margin the treatment may lose by (see :mod:`cnnlab.lab.verdict`).
    ``log_scale``: compare log10 of the metric (gradient or activation ratios that span
    orders of magnitude: 1e-6 vs 1.0 is the effect, not the 1.0 - 1e-6 difference);
    ``min_effect`` is then in orders of magnitude.
    """

    text: str
    treatment: str
    control: str
    metric: str
    higher_is_better: bool = True
    min_effect: float = 0.5  # in the metric's unit
    unit: str = "points"
    non_inferior: bool = False
    log_scale: bool = False

    @property
    def needs_training(self) -> bool:
        """Whether the metric comes from training (so a too-small budget cannot test the claim)."""
        return self.metric in TRAINED_METRICS


@dataclass(frozen=True)
class Experiment:
    """A lecture claim as runs: the arms, what is measured, and the claims to judge."""

    name: str
    section: str  # where the lecture makes the claim
    question: str
    base: dict[str, Any]
    arms: tuple[Arm, ...]
    claims: tuple[Claim, ...]
    plot_metric: str = "val_acc"  # per-epoch curve in the plot: val_acc | train_err | gap
    probe: Callable[..., dict[str, float]] | None = None  # measurements at initialisation, per arm
    smoke: dict[str, Any] = field(default_factory=dict)  # base overrides for smoke mode (tiny synthetic data)
    # The smallest budget at which the claims about training can be tested: below it (and on
    # the smoke data) a verdict says that it cannot. Chosen from the Fashion-MNIST runs of
    # docs/lab.md; None: the arms set their own training-set sizes.
    min_epochs: int = 5
    min_train_images: int | None = 5000

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)


# A 10-conv plain net without normalisation layers, where activation and initialisation
# matter most. SGD's default peak LR of 0.1 (fine with batch norm) kills or blows up such
# a net whatever its activation (measured on Fashion-MNIST: ReLU stuck at chance, GELU
# diverged); of 0.003 / 0.01 / 0.03, 0.01 trained the ReLU net steadily.
DEEP_PLAIN: dict[str, Any] = {"model": {"name": "simple", "options": {"depth": 10, "width": 32}, "norm": "none", "dropout": 0.0},
                              "optim": {"lr": 0.01}}  # fmt: skip


def _model(spec: str = SMALL, **kw: Any) -> dict[str, Any]:
    return {"model": {"name": "simple", "options": {"spec": spec}, **kw}}


def _probe_gradients(model: Any, x: Any, y: Any) -> dict[str, float]:
    """Gradient norm of the first conv relative to the last layer before the classifier."""
    report = gradient_stats(model, x, y)
    layers = [r for r in report.layers if r.kind == "Conv2d"] or report.layers
    return {"first_layer_grad_rel": float(layers[0].relative), "min_grad_rel": float(min(r.relative for r in layers))}


def _probe_activations(model: Any, x: Any, y: Any) -> dict[str, float]:
    """Activation std of the last hidden layer relative to the input's, at initialisation."""
    report = activation_stats(model, x)
    hidden = [r for r in report.layers if r.kind != "logits"]
    return {"last_act_ratio": float(hidden[-1].ratio) if hidden else float("nan"),
            "flagged_layers": float(sum(1 for r in hidden if r.flag))}  # fmt: skip


def _probe_dropout(model: Any, x: Any, y: Any) -> dict[str, float]:
    """Inverted dropout: the mean of many train-mode outputs equals the eval-mode output."""
    import torch

    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    if not drops:
        return {"dropout_expectation_error": 0.0}
    layer = drops[0]
    gen = torch.Generator().manual_seed(0)
    h = torch.rand(256, 128, generator=gen) + 0.5
    layer.train()
    torch.manual_seed(0)
    mean = torch.stack([layer(h) for _ in range(400)]).mean(0)
    layer.eval()
    return {"dropout_expectation_error": float(((mean - layer(h)).abs().mean() / h.abs().mean()))}


EXPERIMENTS: dict[str, Experiment] = {}


def _register(exp: Experiment) -> None:
    EXPERIMENTS[exp.name] = exp


_register(Experiment(
    name="norm", section="2 (normalisation layers)",
    question="Do normalisation layers make the same network train better?",
    base=_model(dropout=0.0),
    arms=tuple(Arm(n, {"model": {"norm": n}}) for n in ("batch", "layer", "instance", "group", "none")),
    claims=(Claim("batch norm beats no normalisation (test accuracy)", "batch", "none", "test_acc"),),
    min_epochs=2, min_train_images=3000,  # +7 points after 2 epochs on 10,000 images
))
_register(Experiment(
    name="dropout", section="3 (dropout)",
    question="Does dropout in the head shrink the gap between training and validation accuracy?",
    base=_model(),
    arms=tuple(Arm(f"p={p:g}", {"model": {"dropout": p}}) for p in (0.0, 0.25, 0.5)),
    claims=(Claim("dropout 0.5 shrinks the train/val accuracy gap", "p=0.5", "p=0", "gap", higher_is_better=False),),
    plot_metric="gap", probe=_probe_dropout,
    min_epochs=10, min_train_images=3000,  # 5 epochs of 3,000 images barely overfit: no gap to shrink
))
_register(Experiment(
    name="activation", section="4 (activation functions)",
    question="In a deep plain network, do sigmoid's gradients vanish where ReLU's and GELU's do not?",
    base=DEEP_PLAIN,
    arms=tuple(Arm(a, {"model": {"act": a}}) for a in ("sigmoid", "relu", "gelu")),
    claims=(Claim("ReLU trains a deep plain net better than sigmoid (test accuracy)", "relu", "sigmoid", "test_acc", min_effect=1.0),
            Claim("sigmoid's first-layer gradient is smaller than ReLU's at init (relative norm)", "relu", "sigmoid",
                  "first_layer_grad_rel", min_effect=1.0, unit="orders of magnitude", log_scale=True)),  # fmt: skip
    probe=_probe_gradients,
    min_epochs=5, min_train_images=5000,  # a few hundred steps to leave the initial plateau
))
_register(Experiment(
    name="kernels", section="5.1 (stacked 3x3 convolutions)",
    question="Do three stacked 3x3 convs (receptive field 7) match one 7x7 conv with fewer parameters?",
    base=_model(dropout=0.0),
    arms=(Arm("3x3x3", _model("c64-p-c64-c64-c64-p-c128-p")), Arm("7x7", _model("c64-p-c64k7-p-c128-p"))),
    claims=(Claim("three 3x3 convs are at least as accurate as one 7x7 (test accuracy)", "3x3x3", "7x7", "test_acc",
                  min_effect=0.5, non_inferior=True),
            Claim("three 3x3 convs have fewer parameters than one 7x7", "3x3x3", "7x7", "params", higher_is_better=False,
                  min_effect=1000, unit="parameters")),  # fmt: skip
    min_epochs=5, min_train_images=5000,  # inconclusive after 2 epochs
))
_register(Experiment(
    name="depth", section="5.2 (residual connections, He et al. 2016)",
    question="Is a deeper plain net worse on the training set, and a deeper ResNet better?",
    base={"model": {"dropout": 0.0}},
    arms=tuple(Arm(n, {"model": {"name": n}}) for n in ("plain20", "plain56", "resnet20", "resnet56")),
    claims=(Claim("plain-56 has a higher training error than plain-20", "plain20", "plain56", "train_err", higher_is_better=False),
            Claim("ResNet-56 has a lower training error than ResNet-20", "resnet56", "resnet20", "train_err", higher_is_better=False)),  # fmt: skip
    plot_metric="train_err",
    min_epochs=10, min_train_images=5000,  # the degradation shows after 10 epochs of 5,000 images
))
_register(Experiment(
    name="init", section="6 (weight initialisation)",
    question="Do activations vanish or explode with a badly scaled initialisation, and does training start?",
    base=DEEP_PLAIN,
    arms=tuple(Arm(i, {"model": {"init": i}}) for i in ("normal:0.01", "normal:1.0", "xavier", "kaiming")),
    claims=(Claim("Kaiming init trains better than N(0, 0.01) (test accuracy)", "kaiming", "normal:0.01", "test_acc", min_effect=1.0),
            Claim("Kaiming keeps the last hidden layer's activations larger than N(0, 0.01) does (std ratio)", "kaiming",
                  "normal:0.01", "last_act_ratio", min_effect=1.0, unit="orders of magnitude", log_scale=True)),  # fmt: skip
    probe=_probe_activations,
    min_epochs=5, min_train_images=5000,  # as activation: the same plain net
))
_register(Experiment(
    name="preprocess", section="7 (data preprocessing)",
    question="Does per-channel standardisation beat raw [0, 255] and [0, 1] inputs?",
    base=_model(norm="none", dropout=0.0),
    arms=tuple(Arm(n, {"data": {"normalize": n}}) for n in ("raw", "unit", "standardize")),
    claims=(Claim("standardised inputs beat raw [0, 255] inputs (test accuracy)", "standardize", "raw", "test_acc"),
            Claim("standardised inputs beat [0, 1] inputs (test accuracy)", "standardize", "unit", "test_acc", min_effect=0.3)),  # fmt: skip
    min_epochs=2, min_train_images=3000,  # +3 to +66 points after 2 epochs
))
_register(Experiment(
    name="augment", section="8 (data augmentation)",
    question="Does augmentation shrink the train/val gap and raise test accuracy?",
    base=_model(dropout=0.0),
    arms=(Arm("none", {"data": {"augment": ""}}), Arm("flip", {"data": {"augment": "flip"}}),
          Arm("crop", {"data": {"augment": "crop:4"}}), Arm("jitter", {"data": {"augment": "jitter"}}),
          Arm("cutout", {"data": {"augment": "cutout:8"}}), Arm("all", {"data": {"augment": "flip,crop:4,jitter,cutout:8"}})),  # fmt: skip
    claims=(Claim("all augmentations together shrink the train/val accuracy gap", "all", "none", "gap", higher_is_better=False),
            Claim("all augmentations together raise test accuracy", "all", "none", "test_acc", min_effect=0.3)),  # fmt: skip
    plot_metric="gap",
    min_epochs=20, min_train_images=3000,  # a regulariser pays only once the plain net overfits
))


def _transfer_arm(mode: str, size: int) -> Arm:
    """Scratch (the small CNN) or EfficientNet-Lite0 ImageNet weights, on ``size`` training images."""
    train = {"train_subset": size, "batch_size": 32 if size < 500 else 64}
    if mode == "scratch":
        return Arm(f"scratch@{size}", {**_model(dropout=0.0), "train": train})
    return Arm(f"{mode}@{size}", {
        "model": {"name": "efficientnet_lite0", "pretrained": True, "options": {}},
        "transfer": {"mode": {"fe": "feature-extract", "ft": "finetune"}[mode]},
        "data": {"image_size": 64}, "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4}, "train": train,
    })  # fmt: skip


_register(Experiment(
    name="transfer", section="9 (transfer learning)",
    question="Small data: freeze the pretrained backbone; large data: fine-tune it?",
    base={},
    arms=tuple(_transfer_arm(m, n) for n in (100, 1000) for m in ("scratch", "fe", "ft")),
    claims=(Claim("with 100 images, feature extraction beats fine-tuning (test accuracy)", "fe@100", "ft@100", "test_acc", min_effect=1.0),
            Claim("with 100 images, feature extraction beats training from scratch (test accuracy)", "fe@100", "scratch@100", "test_acc", min_effect=1.0),
            Claim("with 1,000 images, fine-tuning beats feature extraction (test accuracy)", "ft@1000", "fe@1000", "test_acc", min_effect=1.0)),  # fmt: skip
    smoke={"data": {"image_size": 32}},
    min_epochs=5, min_train_images=None,  # the arms train on 100 and 1,000 images by design
))


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; a one-line error listing the others."""
    if name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment '{name}'; `cnnlab lab list` shows them: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]

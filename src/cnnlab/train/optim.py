"""Optimizers with the usual parameter split: no weight decay on norm parameters and biases.

Decaying a norm layer's gamma/beta or a bias only fights the normalisation and rarely
helps, so (as in nanoGPT and timm) weight decay applies to parameters with two or more
dimensions (conv and linear weights) only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from cnnlab.config import OptimConfig


def param_groups(
    named: Iterable[tuple[str, nn.Parameter]], weight_decay: float, lr_scale: float = 1.0, tag: str = ""
) -> list[dict]:
    """Split parameters into a decayed and a non-decayed group (frozen ones are left out)."""
    decay, no_decay = [], []
    for _, p in named:
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale, "tag": f"{tag}decay"})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": lr_scale, "tag": f"{tag}no_decay"})
    return groups


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, *, lr_scales: Mapping[str, float] | None = None
) -> torch.optim.Optimizer:
    """Build the optimizer for ``model``.

    Args:
        model: the model; with ``lr_scales`` it must offer ``parameter_groups()``
            (name -> parameters, every parameter in one group).
        cfg: optimizer settings; ``cfg.lr`` is the peak learning rate.
        lr_scales: learning-rate multipliers by parameter group name, e.g.
            ``{"backbone": 0.1}`` for discriminative fine-tuning (a group not named gets 1).

    Each group carries ``lr_scale`` and a ``tag`` (``decay``/``no_decay``, prefixed with
    the group name under ``lr_scales``); the training step sets ``lr = peak * schedule * lr_scale``.
    """
    if lr_scales is None:
        groups = param_groups(model.named_parameters(), cfg.weight_decay)
    else:
        names = {id(p): n for n, p in model.named_parameters()}
        groups = []
        for group, params in model.parameter_groups().items():
            named = [(names[id(p)], p) for p in params]
            groups += param_groups(named, cfg.weight_decay, lr_scales.get(group, 1.0), f"{group}_")
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas[:2]))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)

"""Mixup and CutMix: batch mixing that changes the labels, so it lives in the training step.

An image augmentation op (:mod:`cnnlab.data.augment_ops`) sees images only; mixup
(Zhang et al., 2018) and CutMix (Yun et al., 2019) also mix the labels, so the loss becomes
``lam * loss(logits, y) + (1 - lam) * loss(logits, y[perm])`` with the run's own loss
(label smoothing and class weights kept). As in timm's ``Mixup`` (batch mode), one ``lam``
and one pairing serve the whole batch; ``lam`` is drawn from Beta(alpha, alpha); when both
are on, each mixed batch is mixup or CutMix with equal odds. CutMix pastes one box from the
paired images, and ``lam`` becomes the fraction of the image not pasted over (after the box
is clipped at the border).

Every draw comes from a generator seeded by ``(seed, global step)``, on the host, so the
mixing of a step is the same whether the run was resumed or not, and nothing waits for the
device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cnnlab.data.loader import derive_seed

_SALT = 0x313  # separates these draws from the loader's, which share the run seed


@dataclass(frozen=True)
class MixDraw:
    """One step's mixing: the pairing, the weight of the original labels, and the box.

    Attributes:
        perm: (N,) long, on the host: sample i is mixed with sample ``perm[i]``.
        lam: weight of the original labels in the loss, in [0, 1] (1: nothing mixed).
        box: CutMix's pasted box ``(top, bottom, left, right)`` in px, or None for mixup.
    """

    perm: torch.Tensor
    lam: float
    box: tuple[int, int, int, int] | None


@dataclass(frozen=True)
class Mix:
    """Mixup / CutMix for the training step.

    Attributes:
        mixup: Beta(alpha, alpha) of mixup's weight; 0 turns mixup off.
        cutmix: Beta(alpha, alpha) of CutMix's area; 0 turns CutMix off.
        prob: probability that a batch is mixed at all.
        seed: the run seed.
    """

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    seed: int = 0

    @property
    def active(self) -> bool:
        """Whether any batch can be mixed."""
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0

    def draw(self, step: int, n: int, h: int, w: int) -> MixDraw | None:
        """The mixing of global step ``step`` for a batch of ``n`` images of ``h`` x ``w`` px.

        Returns:
            The draw, or None when this batch is not mixed.
        """
        if not self.active:
            return None
        rng = np.random.default_rng(derive_seed(self.seed, step, _SALT))
        if rng.random() >= self.prob:
            return None
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or rng.random() < 0.5)
        lam = float(rng.beta(*(2 * [self.cutmix if use_cutmix else self.mixup])))
        perm = torch.from_numpy(rng.permutation(n))
        if not use_cutmix:
            return MixDraw(perm, lam, None)
        # A box of area (1 - lam) * H * W centred uniformly, clipped at the border (as timm's rand_bbox).
        cut = math.sqrt(1.0 - lam)
        bh, bw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        top, bottom = max(cy - bh // 2, 0), min(cy + bh // 2, h)
        left, right = max(cx - bw // 2, 0), min(cx + bw // 2, w)
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)  # the area actually pasted
        return MixDraw(perm, lam, (top, bottom, left, right))

    def apply(self, x: torch.Tensor, d: MixDraw) -> torch.Tensor:
        """The mixed batch (a new tensor; ``x`` is left as it is)."""
        perm = d.perm.to(x.device, non_blocking=True)
        if d.box is None:
            return x.lerp(x.index_select(0, perm), 1.0 - d.lam)
        top, bottom, left, right = d.box
        out = x.clone()
        out[:, :, top:bottom, left:right] = x.index_select(0, perm)[:, :, top:bottom, left:right]
        return out


def mixed_loss(
    loss_fn: torch.nn.Module, logits: torch.Tensor, y: torch.Tensor, d: MixDraw
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lam * loss(y) + (1 - lam) * loss(y[perm])`` and the dominant labels.

    The dominant label of a sample is the one with the larger weight (its own label when
    ``lam >= 0.5``): training accuracy under mixing is measured against it.
    """
    y_b = y.index_select(0, d.perm.to(y.device, non_blocking=True))
    loss = d.lam * loss_fn(logits, y) + (1.0 - d.lam) * loss_fn(logits, y_b)
    return loss, (y if d.lam >= 0.5 else y_b)

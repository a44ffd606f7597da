"""Verdicts computed from measurements, never written in advance.

A claim predicts that one arm beats another on a metric by at least ``min_effect``. Each
seed gives one paired difference (treatment - control, signed so that a positive value
is what the claim predicts). From the differences:

* **supported**: the 95% confidence interval of the mean difference lies above 0 and the
  mean reaches ``min_effect``;
* **not supported**: the interval lies below ``min_effect`` (no effect of the size the
  claim needs; or the opposite effect);
* **inconclusive at this budget**: anything else: the noise across seeds is larger than
  the effect, or there is a single seed and the effect is not clearly large.

With a single seed there is no spread to build an interval from; a difference is then
only called when it is at least ``SINGLE_SEED_FACTOR`` times ``min_effect`` either way.

A claim that one arm is **at least as good** as another (``non_inferior``: the treatment
may lose up to ``min_effect``, the margin) is judged the other way round, as in a
non-inferiority trial: **supported** when the interval lies above ``-min_effect``, **not
supported** when it lies below ``-min_effect`` (clearly worse), inconclusive otherwise.
With one seed, only a difference of ``SINGLE_SEED_FACTOR`` margins either way is called.

A verdict on training from a budget too small for the claim (fewer epochs or images than
the experiment states it needs, or the smoke data) carries a ``caveat`` that leads its
text: the numbers are still shown, but as a measurement, not as the claim's test.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive at this budget"
SINGLE_SEED_FACTOR = 3.0

# Two-sided 95% quantiles of Student's t by degrees of freedom (1..30); beyond, 1.96 + a small correction.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t95(dof: int) -> float:
    """The two-sided 95% Student-t quantile for ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError("a t interval needs at least 2 samples")
    return _T95[dof - 1] if dof <= len(_T95) else 1.96 + 2.4 / dof


@dataclass(frozen=True)
class Verdict:
    """The verdict on one claim, with the numbers it came from."""

    status: str  # supported | not supported | inconclusive at this budget
    claim: str
    effect: float  # mean paired difference, in the metric's units; > 0 is what the claim predicts
    spread: float | None  # standard deviation of the differences across seeds (None: one seed)
    low: float | None  # 95% confidence interval of the mean difference
    high: float | None
    n: int
    min_effect: float
    unit: str
    non_inferior: bool = False  # min_effect is the margin the treatment may lose by
    caveat: str | None = None  # why this budget cannot test the claim (None: it can)

    @property
    def text(self) -> str:
        """One line: the status, the claim, the effect size and its spread."""
        fmt = lambda v: f"{v:+.3g}"  # noqa: E731
        if self.n > 1:
            noise = f" (sd {self.spread:.3g} across {self.n} seeds, 95% CI [{fmt(self.low)}, {fmt(self.high)}])"
        else:
            noise = " (1 seed: no spread measured)"
        need = (f"the claim allows a loss of up to {self.min_effect:g} {self.unit}" if self.non_inferior
                else f"the claim needs {self.min_effect:g} {self.unit}")  # fmt: skip
        line = f"{self.status}: {self.claim}: effect {fmt(self.effect)} {self.unit}{noise}; {need}"
        return f"{self.caveat}; measured anyway: {line}" if self.caveat else line

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text}


def judge(claim: str, differences: Sequence[float], *, min_effect: float, unit: str = "points",
          non_inferior: bool = False, caveat: str | None = None) -> Verdict:  # fmt: skip
    """Judge ``claim`` from per-seed paired differences (see the module docstring).

    Args:
        claim: what is claimed, e.g. "batch norm beats no normalisation (test accuracy)".
        differences: treatment - control per seed, signed so that > 0 supports the claim.
        min_effect: the smallest difference that counts as an effect (> 0), in ``unit``.
        unit: the unit of the differences, for the text.
        non_inferior: the claim is "at least as good": ``min_effect`` is the margin the
            treatment may lose by (see the module docstring).
        caveat: why the budget cannot test the claim; leads the verdict's text.
    """
    diffs = [float(d) for d in differences if d is not None and math.isfinite(d)]
    if not diffs:
        return Verdict(INCONCLUSIVE, claim, float("nan"), None, None, None, 0, min_effect, unit, non_inferior, caveat)
    if min_effect <= 0:
        raise ValueError("min_effect must be positive")
    n, mean = len(diffs), statistics.fmean(diffs)
    if n == 1:
        big = SINGLE_SEED_FACTOR * min_effect
        status = SUPPORTED if mean >= big else NOT_SUPPORTED if mean <= -big else INCONCLUSIVE
        return Verdict(status, claim, mean, None, None, None, 1, min_effect, unit, non_inferior, caveat)
    sd = statistics.stdev(diffs)
    half = t95(n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if non_inferior:
        supported, refuted = low > -min_effect, high < -min_effect
    else:
        supported, refuted = low > 0 and mean >= min_effect, high < min_effect
    status = SUPPORTED if supported else NOT_SUPPORTED if refuted else INCONCLUSIVE
    return Verdict(status, claim, mean, sd, low, high, n, min_effect, unit, non_inferior, caveat)

"""Verdict logic on constructed results: clear effect, no effect, noise larger than the effect."""

from __future__ import annotations

import pytest

from cnnlab.lab.verdict import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, judge, t95


def test_clear_effect_is_supported() -> None:
    v = judge("bn beats none", [2.1, 1.8, 2.4], min_effect=0.5)
    assert v.status == SUPPORTED and v.effect == pytest.approx(2.1) and v.low > 0
    assert v.text.startswith("supported: bn beats none: effect +2.1 points") and "3 seeds" in v.text


def test_no_effect_is_not_supported() -> None:
    v = judge("dropout helps", [0.05, -0.1, 0.02, 0.0], min_effect=0.5)
    assert v.status == NOT_SUPPORTED and v.high < 0.5


def test_opposite_effect_is_not_supported() -> None:
    assert judge("sigmoid beats relu", [-5.0, -6.0, -4.5], min_effect=0.5).status == NOT_SUPPORTED


def test_noise_larger_than_the_effect_is_inconclusive() -> None:
    v = judge("aug helps", [3.0, -2.0, 2.5], min_effect=0.5)
    assert v.status == INCONCLUSIVE and v.low < 0 < v.high
    assert v.spread == pytest.approx(2.754, abs=0.001)


def test_single_seed_needs_a_large_effect() -> None:
    assert judge("x", [0.9], min_effect=0.5).status == INCONCLUSIVE
    assert judge("x", [2.0], min_effect=0.5).status == SUPPORTED
    assert judge("x", [-2.0], min_effect=0.5).status == NOT_SUPPORTED
    assert "1 seed" in judge("x", [2.0], min_effect=0.5).text


def test_missing_measurements_are_inconclusive_and_bad_thresholds_rejected() -> None:
    assert judge("x", [], min_effect=1).status == INCONCLUSIVE
    assert judge("x", [float("nan")], min_effect=1).status == INCONCLUSIVE
    with pytest.raises(ValueError):
        judge("x", [1.0, 2.0], min_effect=0)


def test_at_least_as_good_is_judged_against_the_margin() -> None:
    # "3x3 is at least as accurate as 7x7", margin 0.5 points: a tie with a tight interval is supported
    tie = judge("as good", [0.1, -0.1, 0.05, 0.0], min_effect=0.5, non_inferior=True)
    assert tie.status == SUPPORTED and tie.low > -0.5
    assert "allows a loss of up to 0.5 points" in tie.text
    assert judge("as good", [-2.0, -1.8, -2.2], min_effect=0.5, non_inferior=True).status == NOT_SUPPORTED
    assert judge("as good", [1.0, -2.0, 0.5], min_effect=0.5, non_inferior=True).status == INCONCLUSIVE
    # the same tie is "not supported" for a claim of superiority
    assert judge("better", [0.1, -0.1, 0.05, 0.0], min_effect=0.5).status == NOT_SUPPORTED


def test_t_quantiles() -> None:
    assert t95(1) == pytest.approx(12.706) and t95(2) == pytest.approx(4.303)
    assert 1.96 < t95(100) < t95(30) < t95(10)

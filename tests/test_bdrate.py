"""BD-rate on analytic cases."""

import math

import pytest

from nvc_train.eval.bdrate import bd_psnr, bd_rate

RATES = [0.05, 0.1, 0.2, 0.4]
PSNR = [30.0, 32.5, 35.0, 37.2]


def test_identical_curves_give_zero():
    assert bd_rate(RATES, PSNR, RATES, PSNR) == pytest.approx(0.0, abs=1e-12)
    assert bd_psnr(RATES, PSNR, RATES, PSNR) == pytest.approx(0.0, abs=1e-12)


def test_every_rate_times_1_1_gives_plus_10_percent():
    assert bd_rate(RATES, PSNR, [1.1 * r for r in RATES], PSNR) == pytest.approx(10.0, rel=1e-9)
    assert bd_rate(RATES, PSNR, [r / 1.1 for r in RATES], PSNR) == pytest.approx(100 / 1.1 - 100, rel=1e-9)


def test_constant_psnr_offset():
    assert bd_psnr(RATES, PSNR, RATES, [p + 0.5 for p in PSNR]) == pytest.approx(0.5, rel=1e-9)
    # A straight line in (log rate, PSNR): +0.5 dB at slope s dB per e-fold is exp(-0.5/s)-1 rate.
    slope = 4.0
    rates = [math.exp(p / slope) for p in PSNR]
    assert bd_rate(rates, PSNR, rates, [p + 0.5 for p in PSNR]) == pytest.approx((math.exp(-0.5 / slope) - 1) * 100, rel=1e-6)


def test_bad_curves_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        bd_rate(RATES, PSNR, RATES, [p + 20 for p in PSNR])
    with pytest.raises(ValueError, match="at least 2"):
        bd_rate([0.1], [30.0], RATES, PSNR)
    with pytest.raises(ValueError, match="positive"):
        bd_rate([0.0, 0.1], [30.0, 31.0], RATES, PSNR)


def test_non_monotone_curves_are_refused_with_the_pair_named():
    """BENCHMARKS.md's toy q2–q8 parents (q4 below q2 in PSNR at higher rate): refused, not averaged.
    Control: the same points without the dipping one give a number."""
    rates, psnr = [0.4615, 1.0959, 1.3514, 1.4938], [18.06, 17.44, 18.41, 17.28]
    with pytest.raises(ValueError, match=r"anchor: not a monotone RD curve: rate 1\.0959 gives 17\.44 but rate "
                                         r"1\.4938 gives less \(17\.28\)"):
        bd_rate(rates, psnr, RATES, PSNR)
    with pytest.raises(ValueError, match="test: not a monotone"):
        bd_psnr(RATES, PSNR, rates, psnr)
    assert math.isfinite(bd_rate(RATES, PSNR, [0.1, 0.2, 0.4], [32.0, 34.0, 36.0]))

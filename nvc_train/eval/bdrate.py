"""Bjøntegaard delta rate and delta PSNR (VCEG-M33), with piecewise cubic interpolation.

Common practice since JVET's CTC spreadsheets: interpolate each curve with a monotone
piecewise cubic (PCHIP) instead of the original cubic polynomial fit, integrate over the
overlapping interval, and average the difference.

Both curves must be monotone (quality rises with rate at every point). A curve that dips
(e.g. toy models whose q4 lands below q2) has no single rate at a given quality, so the
integrals would compare arbitrary branches; such curves are refused with the offending
pair named, not silently averaged.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator


def _validate(rate, quality, label: str) -> tuple[np.ndarray, np.ndarray]:
    r, q = np.asarray(rate, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    if r.shape != q.shape or r.ndim != 1:
        raise ValueError(f"{label}: rate and quality lists differ in length")
    if len(r) < 2:
        raise ValueError(f"the {label} curve has {len(r)} point{'s' * (len(r) != 1)}: BD-rate compares two curves over the rates "
                         "both cover, so each needs at least 2 points; evaluate models of 2 or more qualities "
                         "(e.g. q1 and q4) of that kind")
    if np.any(r <= 0) or not np.all(np.isfinite(r)) or not np.all(np.isfinite(q)):
        raise ValueError(f"{label}: rates must be positive and all values finite")
    order = np.argsort(q)
    if np.any(np.diff(q[order]) <= 0):
        raise ValueError(f"{label}: quality values must be distinct")
    r, q = r[order], q[order]
    dips = np.flatnonzero(np.diff(r) <= 0)
    if dips.size:
        i = int(dips[0])
        raise ValueError(f"{label}: not a monotone RD curve: rate {r[i + 1]:.6g} gives {q[i + 1]:.4g} but rate "
                         f"{r[i]:.6g} gives less ({q[i]:.4g}); BD-rate needs quality that rises with rate "
                         f"(train the models further, or leave that point out)")
    return r, q


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    f = PchipInterpolator(x, y)
    return float(f.integrate(lo, hi))


def bd_rate(rate_anchor, psnr_anchor, rate_test, psnr_test, labels: tuple[str, str] = ("anchor", "test")) -> float:
    """Average rate difference (%) of ``test`` vs ``anchor`` at equal PSNR; positive = costlier.
    ``labels`` name the two curves in a ValueError."""
    ra, qa = _validate(rate_anchor, psnr_anchor, labels[0])
    rt, qt = _validate(rate_test, psnr_test, labels[1])
    lo, hi = max(qa[0], qt[0]), min(qa[-1], qt[-1])
    if lo >= hi:
        raise ValueError("the two curves do not overlap in quality")
    diff = (_integral(qt, np.log(rt), lo, hi) - _integral(qa, np.log(ra), lo, hi)) / (hi - lo)
    return float((np.exp(diff) - 1) * 100)


def bd_psnr(rate_anchor, psnr_anchor, rate_test, psnr_test, labels: tuple[str, str] = ("anchor", "test")) -> float:
    """Average PSNR difference (dB) of ``test`` vs ``anchor`` at equal rate; positive = better."""
    ra, qa = _validate(rate_anchor, psnr_anchor, labels[0])
    rt, qt = _validate(rate_test, psnr_test, labels[1])
    la, lt = np.log(ra), np.log(rt)
    oa, ot = np.argsort(la), np.argsort(lt)
    lo, hi = max(la.min(), lt.min()), min(la.max(), lt.max())
    if lo >= hi:
        raise ValueError("the two curves do not overlap in rate")
    return float((_integral(lt[ot], qt[ot], lo, hi) - _integral(la[oa], qa[oa], lo, hi)) / (hi - lo))

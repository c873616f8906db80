"""Independent numpy int64 reference of the integer scale-space volume and warp
(``nvc_train/quant/integer_warp.py``), written from PyTorch's definitions rather than from
that module: the kernel from the Gaussian formula, the blur tap by tap, the upsampling from
``upsample_bilinear2d``'s source-index rule (``src = max((o + 0.5)/2 − 0.5, 0)``, in quarter
pixels), and the warp pixel by pixel in plain Python."""

from __future__ import annotations

import math

import numpy as np


def taps(sigma: float = 1.5, bits: int = 14) -> np.ndarray:
    size = 2 * math.ceil(3 * sigma) + 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    pdf = np.exp(-0.5 * (x / sigma) ** 2)
    t = np.array([int(round(p)) for p in pdf / pdf.sum() * 2**bits], dtype=np.int64)
    t[size // 2] += 2**bits - t.sum()
    return t


def rshift(v, s: int):
    return (v + (1 << (s - 1))) >> s


def blur(v: np.ndarray, bits: int = 14) -> np.ndarray:
    k = taps(bits=bits)
    pad = len(k) // 2
    for axis in (3, 2):
        n = v.shape[axis]
        acc = np.zeros_like(v)
        for t, weight in enumerate(k):
            src = np.clip(np.arange(n) + t - pad, 0, n - 1)
            acc += weight * np.take(v, src, axis=axis)
        v = rshift(acc, bits)
    return v


def pool(v: np.ndarray) -> np.ndarray:
    n, c, h, w = v.shape
    v = v[:, :, : h // 2 * 2, : w // 2 * 2]
    return rshift(v.reshape(n, c, h // 2, 2, w // 2, 2).sum(axis=(3, 5)), 2)


def upsample(v: np.ndarray) -> np.ndarray:
    n, c, h, w = v.shape

    def rule(size: int):
        """Per output index: (i0, i1, λ0, λ1) with λ in quarters."""
        out = []
        for o in range(2 * size):
            src4 = max(2 * o - 1, 0)  # 4·((o + 0.5)/2 − 0.5), clamped at 0 like PyTorch
            i0 = src4 // 4
            i1 = min(i0 + 1, size - 1)
            l1 = src4 - 4 * i0
            out.append((i0, i1, 4 - l1, l1))
        return out

    res = np.zeros((n, c, 2 * h, 2 * w), dtype=np.int64)
    for oy, (y0, y1, ly0, ly1) in enumerate(rule(h)):
        for ox, (x0, x1, lx0, lx1) in enumerate(rule(w)):
            res[:, :, oy, ox] = (ly0 * (lx0 * v[:, :, y0, x0] + lx1 * v[:, :, y0, x1])
                                 + ly1 * (lx0 * v[:, :, y1, x0] + lx1 * v[:, :, y1, x1]))
    return rshift(res, 4)


def volume(v: np.ndarray, num_levels: int = 5) -> np.ndarray:
    levels = [v]
    x = blur(v)
    levels.append(x)
    for i in range(1, num_levels):
        x = blur(pool(x))
        up = x
        for _ in range(i):
            up = upsample(up)
        levels.append(up)
    return np.stack(levels, axis=2)


def warp(vol: np.ndarray, coords: np.ndarray, frac_bits: int = 8) -> np.ndarray:
    n, c, d, h, w = vol.shape
    one = 1 << frac_bits
    out = np.zeros((n, c, h, w), dtype=np.int64)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                pos = []
                for axis, size in ((0, w), (1, h), (2, d)):
                    p = min(max(int(coords[b, axis, i, j]), 0), (size - 1) * one)  # border: clamp
                    lo = p // one
                    pos.append((lo, min(lo + 1, size - 1), one - (p - lo * one), p - lo * one))
                (x0, x1, wx0, wx1), (y0, y1, wy0, wy1), (z0, z1, wz0, wz1) = pos
                acc = np.zeros(c, dtype=np.int64)
                for zz, wz in ((z0, wz0), (z1, wz1)):
                    for yy, wy in ((y0, wy0), (y1, wy1)):
                        for xx, wx in ((x0, wx0), (x1, wx1)):
                            acc += vol[b, :, zz, yy, xx] * (wz * wy * wx)
                out[b, :, i, j] = rshift(acc, 3 * frac_bits)
    return out

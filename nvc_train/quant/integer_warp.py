"""Integer scale-space volume and trilinear warp: SSF's motion compensation in exact arithmetic.

The motion compensation of the pixel-exact decoder (:mod:`nvc_train.codec.pixel_decoder`):
every step of ``ScaleSpaceFlow.gaussian_volume`` and ``warp_volume`` re-stated over int64
tensors, so that any device computes the same samples. Fixed-point formats (see
docs/integer-contract.md, "Pixel path"):

- samples: pixel value (0..1 scale) × 255 × 2**SAMPLE_FRAC_BITS, i.e. 8-bit levels with 8
  fractional bits;
- the Gaussian kernel: 1-D taps in units of 2**-KERNEL_BITS summing to exactly
  2**KERNEL_BITS, applied separably (rows, then columns), replicate padding as CompressAI;
- warp coordinates: pixel positions (and the volume's depth index) with COORD_FRAC_BITS
  fractional bits, border padding as ``grid_sample(padding_mode="border")`` (clamped);
- one rounding rule everywhere: round half up, ``(v + 2**(s-1)) >> s``.

Bounds: samples < 2**16·2 (|v| < 2**17 allows values slightly outside 0..255); a blur pass
sums 11 products below 2**17·2**14 (< 2**35); a warp sums 8 products below 2**17·2**24
(< 2**44): int64 never overflows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SAMPLE_FRAC_BITS = 8
KERNEL_BITS = 14
COORD_FRAC_BITS = 8
SIGMA0 = 1.5  # ScaleSpaceFlow.sigma0
NUM_LEVELS = 5  # ScaleSpaceFlow.num_levels


def round_shift(v: Tensor, shift: int) -> Tensor:
    """Round half up of ``v / 2**shift`` (int64)."""
    return (v + (1 << (shift - 1))) >> shift if shift > 0 else v


def to_samples(x: Tensor) -> Tensor:
    """Float frames in [0, 1] (N, C, H, W) to int64 samples (8-bit levels, SAMPLE_FRAC_BITS)."""
    return torch.round(x.double() * (255 * 2**SAMPLE_FRAC_BITS)).long()


def from_samples(v: Tensor) -> Tensor:
    """int64 samples back to float32 in [0, 1] units (for comparison and the float stages)."""
    return (v.double() / (255 * 2**SAMPLE_FRAC_BITS)).float()


def kernel_taps(sigma: float = SIGMA0, bits: int = KERNEL_BITS) -> list[int]:
    """CompressAI's 1-D Gaussian (size 2·ceil(3σ)+1) as integers summing to exactly 2**bits;
    symmetric (``blur`` relies on it).

    Each tap is rounded, and the rounding remainder goes to the centre tap, so the kernel
    stays symmetric and the blur of a constant image is that constant.
    """
    size = 2 * int(math.ceil(3 * sigma)) + 1
    half = (size - 1) / 2
    pdf = [math.exp(-0.5 * ((i - half) / sigma) ** 2) for i in range(size)]
    total = sum(pdf)
    taps = [round(p / total * 2**bits) for p in pdf]
    taps[size // 2] += 2**bits - sum(taps)
    return taps


def blur(v: Tensor, taps: list[int]) -> Tensor:
    """Separable integer Gaussian blur of (N, C, H, W) int64 samples, replicate padding;
    rounded after each of the two passes."""
    pad = len(taps) // 2
    for dim in (3, 2):  # rows (along W), then columns (along H)
        size = v.shape[dim]
        # Replicate padding by clamped indices (no float round trip).
        index = torch.arange(-pad, size + pad, device=v.device).clamp(0, size - 1)
        padded = v.index_select(dim, index)
        # Tap by tap, in place (no (…, size, taps) intermediate); int64 sums are exact in any order.
        acc = padded.narrow(dim, pad, size) * taps[pad]
        for t in range(pad):
            acc.add_(padded.narrow(dim, t, size), alpha=taps[t]).add_(padded.narrow(dim, len(taps) - 1 - t, size),
                                                                       alpha=taps[t])
        v = round_shift(acc, KERNEL_BITS)
    return v


def avg_pool2(v: Tensor) -> Tensor:
    """2×2 average pooling with stride 2 (odd last row/column dropped, as avg_pool2d)."""
    h, w = v.shape[-2] // 2 * 2, v.shape[-1] // 2 * 2
    v = v[..., :h, :w]
    s = v[..., 0::2, 0::2] + v[..., 0::2, 1::2] + v[..., 1::2, 0::2] + v[..., 1::2, 1::2]
    return round_shift(s, 2)


def _every_other(v: Tensor, dim: int, start: int) -> Tensor:
    """View of ``v``'s positions start, start + 2, … along ``dim`` (negative)."""
    index = [slice(None)] * v.dim()
    index[dim] = slice(start, None, 2)
    return v[tuple(index)]


def upsample2(v: Tensor) -> Tensor:
    """Bilinear ×2 upsampling, ``align_corners=False``: each output is (9a + 3b + 3c + d) / 16
    of its four nearest inputs, indices clamped at the border (as PyTorch clamps), one rounding.

    Computed separably and exactly: along each axis an even output is 3·v[m] + v[m−1] and an
    odd one 3·v[m] + v[m+1] (×4, no rounding); the product of the two axes' weights is the
    2-D weight, so a single rounding of the ×16 sum follows.
    """
    for dim in (-1, -2):
        n = v.shape[dim]
        shape = list(v.shape)
        shape[dim] = 2 * n
        out = torch.empty(shape, dtype=v.dtype, device=v.device)
        even, odd = _every_other(out, dim, 0), _every_other(out, dim, 1)
        torch.mul(v, 3, out=even)
        odd.copy_(even)
        even.narrow(dim, 1, n - 1).add_(v.narrow(dim, 0, n - 1))  # + v[m−1]
        even.narrow(dim, 0, 1).add_(v.narrow(dim, 0, 1))  # clamped at the first row: v[0]
        odd.narrow(dim, 0, n - 1).add_(v.narrow(dim, 1, n - 1))  # + v[m+1]
        odd.narrow(dim, n - 1, 1).add_(v.narrow(dim, n - 1, 1))  # clamped at the last row
        v = out
    return round_shift(v, 4)


def gaussian_volume(v: Tensor, num_levels: int = NUM_LEVELS, sigma: float = SIGMA0) -> Tensor:
    """(N, C, H, W) int64 samples → (N, C, num_levels + 1, H, W) volume, level by level as
    ``ScaleSpaceFlow.gaussian_volume``: the frame, its blur, then for each further level a
    2×2 pool and a blur of the previous level's (pooled) image, upsampled back ×2 per level."""
    taps = kernel_taps(sigma)
    volume = [v]
    x = blur(v, taps)
    volume.append(x)
    for i in range(1, num_levels):
        x = blur(avg_pool2(x), taps)
        up = x
        for _ in range(i):
            up = upsample2(up)
        volume.append(up)
    return torch.stack(volume, dim=2)


def fixed_point_coordinates(flow: Tensor, scale_field: Tensor, depth: int, frac_bits: int = COORD_FRAC_BITS) -> Tensor:
    """The sampling positions of ``warp_volume`` in pixels, as fixed-point int64 (N, 3, H, W):
    x, y and depth index, each ``round(p · 2**frac_bits)``.

    ``flow`` (N, 2, H, W) is in CompressAI's normalised units (2/W per pixel) and
    ``scale_field`` (N, 1, H, W) in normalised depth units; with ``align_corners=False`` a
    normalised coordinate g of a size-S axis is the pixel position ((g + 1)·S − 1) / 2. This
    conversion runs in float64 (the motion decoder that produces the flow is still float).
    """
    n, _, h, w = flow.shape
    ys = torch.arange(h, device=flow.device, dtype=torch.float64).view(1, h, 1)
    xs = torch.arange(w, device=flow.device, dtype=torch.float64).view(1, 1, w)
    x = xs + flow[:, 0].double() * (w / 2)
    y = ys + flow[:, 1].double() * (h / 2)
    z = ((scale_field[:, 0].double() + 1) * depth - 1) / 2
    return torch.round(torch.stack((x, y, z), dim=1) * 2**frac_bits).long()


def warp(volume: Tensor, coords: Tensor, frac_bits: int = COORD_FRAC_BITS) -> Tensor:
    """Trilinear sampling of ``volume`` (N, C, D, H, W) int64 at ``coords`` (N, 3, H, W)
    fixed-point (x, y, depth), border padding: (N, C, H, W) int64 samples.

    Each coordinate is clamped to [0, size − 1], split into its integer part i and fraction
    f (frac_bits); the eight neighbours are weighted by products of f and 2**frac_bits − f and
    summed exactly, then rounded once.
    """
    n, c, d, h, w = volume.shape
    one = 1 << frac_bits
    x = coords[:, 0].clamp(0, (w - 1) * one)
    y = coords[:, 1].clamp(0, (h - 1) * one)
    z = coords[:, 2].clamp(0, (d - 1) * one)
    x0, y0, z0 = x >> frac_bits, y >> frac_bits, z >> frac_bits
    fx, fy, fz = x - (x0 << frac_bits), y - (y0 << frac_bits), z - (z0 << frac_bits)
    x1, y1, z1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1), (z0 + 1).clamp(max=d - 1)
    flat = volume.reshape(n, c, d * h * w)
    total = torch.zeros(n, c, h, w, dtype=torch.int64, device=volume.device)
    for zi, wz in ((z0, one - fz), (z1, fz)):
        for yi, wy in ((y0, one - fy), (y1, fy)):
            for xi, wx in ((x0, one - fx), (x1, fx)):
                index = ((zi * h + yi) * w + xi).view(n, 1, h * w).expand(n, c, h * w)
                sample = flat.gather(2, index).view(n, c, h, w)
                total += sample * (wz * wy * wx).unsqueeze(1)
    return round_shift(total, 3 * frac_bits)

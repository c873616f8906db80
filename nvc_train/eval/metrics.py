"""Per-frame quality metrics (RGB in [0, 1])."""

from __future__ import annotations

import math

import torch
from pytorch_msssim import ms_ssim as _ms_ssim
from torch import Tensor

MS_SSIM_MIN_SIDE = 161
"""MS-SSIM's 5 scales with an 11-tap window need sides > (11 - 1)·2**4."""


def psnr(x_hat: Tensor, x: Tensor) -> float:
    """PSNR in dB of (N, 3, H, W) tensors, peak 1.0, after clamping to [0, 1]."""
    mse = torch.mean((x_hat.clamp(0, 1) - x) ** 2).item()
    return float("inf") if mse == 0 else -10 * math.log10(mse)


def ms_ssim(x_hat: Tensor, x: Tensor) -> float | None:
    """MS-SSIM of (N, 3, H, W) tensors, or None when the frame is too small for 5 scales."""
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return None
    return float(_ms_ssim(x_hat.clamp(0, 1).float(), x.float(), data_range=1.0).item())


def bits_of(strings) -> int:
    """Total bits of nested lists/dicts of byte strings."""
    if isinstance(strings, (bytes, bytearray)):
        return 8 * len(strings)
    if isinstance(strings, dict):
        return sum(bits_of(v) for v in strings.values())
    return sum(bits_of(v) for v in strings)

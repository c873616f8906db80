"""Y'CbCr ↔ R'G'B' conversion: SSF codes gamma-encoded RGB in [0, 1].

Video files hold Y'CbCr; nvc-train converts it itself (never through FFmpeg's swscale, whose
defaults differ between builds), so the RGB the codec sees is defined here:

- matrix: BT.709 by default (``Kr = 0.2126, Kb = 0.0722``); BT.601 and BT.2020 (non-constant
  luminance) on request;
- range: limited ("TV", Y' in 16–235, Cb/Cr in 16–240 at 8 bits, scaled by 2**(bits-8)) by
  default; full ("PC", 0 … 2**bits − 1) on request, and always for the JPEG formats
  ``yuvj*``;
- chroma: 4:2:0 and 4:2:2 planes are upsampled bilinearly with centre-sited samples
  (``align_corners=False``); writing 4:2:0 averages each 2×2 block — the exact adjoint
  for centre siting;
- results are clamped to [0, 1]; written samples are rounded half away from zero and clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MATRICES = {"bt709": (0.2126, 0.0722), "bt601": (0.299, 0.114), "bt2020": (0.2627, 0.0593)}
"""(Kr, Kb) luma coefficients per matrix."""

RANGES = ("limited", "full")


@dataclass(frozen=True)
class ColourSpec:
    """How Y'CbCr samples map to RGB in [0, 1]."""

    matrix: str = "bt709"
    range: str = "limited"

    def __post_init__(self):
        if self.matrix not in MATRICES:
            raise ValueError(f"unknown colour matrix {self.matrix!r}: use one of {', '.join(MATRICES)}")
        if self.range not in RANGES:
            raise ValueError(f"unknown colour range {self.range!r}: use limited or full")

    def luma_chroma_scale(self, bits: int) -> tuple[float, float, float, float]:
        """(luma offset, luma span, chroma offset, chroma span) in code values at ``bits``."""
        if self.range == "full":
            peak = float(2**bits - 1)
            return 0.0, peak, float(2 ** (bits - 1)), peak
        s = float(2 ** (bits - 8))
        return 16 * s, 219 * s, 128 * s, 224 * s

    def __str__(self) -> str:
        return f"{self.matrix}/{self.range}"


def _upsample(plane: Tensor, height: int, width: int) -> Tensor:
    """(h, w) chroma plane → (height, width), bilinear, centre-sited."""
    if plane.shape == (height, width):
        return plane
    up = F.interpolate(plane[None, None], scale_factor=(height / plane.shape[0], width / plane.shape[1]),
                       mode="bilinear", align_corners=False)[0, 0]
    return up[:height, :width]


Window = tuple[int, int, int, int]
"""(top, left, height, width) of a rectangle of a frame, in luma pixels."""


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, bits: int, spec: ColourSpec,
                 window: Window | None = None) -> Tensor:
    """Integer planes (Y' (H, W); Cb, Cr subsampled or not) → RGB (3, H, W) float32 in [0, 1].

    With ``window``, only that rectangle (3, height, width) is converted, bit-identical to
    cropping the whole frame's conversion: chroma is taken with a margin of one sample, on
    the chroma grid, so every interpolated pixel sees the same samples with the same weights.
    """
    if window is not None:
        y, cb, cr, inner = _window_planes(y, cb, cr, window)
        return crop(_ycbcr_to_rgb(y, cb, cr, bits, spec), inner)
    return _ycbcr_to_rgb(y, cb, cr, bits, spec)


def crop(rgb: Tensor, window: Window | None) -> Tensor:
    """(3, H, W) → the ``window`` rectangle (3, height, width); no window: unchanged."""
    if window is None:
        return rgb
    top, left, height, width = window
    return rgb[:, top:top + height, left:left + width]


def _window_planes(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, window: Window):
    """The planes of a block around ``window`` whose conversion contains it exactly, and
    the window's position in that block."""
    top, left, height, width = window
    full_h, full_w = y.shape
    sv, sh = full_h // cb.shape[0], full_w // cb.shape[1]
    if cb.shape[0] * sv != full_h or cb.shape[1] * sh != full_w:
        # Odd sides upsample by a factor that is not an integer: convert the whole frame.
        return y, cb, cr, window
    # Block edges on the chroma grid, one chroma sample beyond the window, clamped to the frame
    # (where the whole-frame conversion clamps in the same way).
    t0, l0 = max(0, (top // sv - 1) * sv), max(0, (left // sh - 1) * sh)
    t1 = min(full_h, (-(-(top + height) // sv) + 1) * sv)
    l1 = min(full_w, (-(-(left + width) // sh) + 1) * sh)
    chroma = (slice(t0 // sv, t1 // sv), slice(l0 // sh, l1 // sh))
    return y[t0:t1, l0:l1], cb[chroma], cr[chroma], (top - t0, left - l0, height, width)


def _ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, bits: int, spec: ColourSpec) -> Tensor:
    height, width = y.shape
    y_off, y_span, c_off, c_span = spec.luma_chroma_scale(bits)
    luma = (torch.from_numpy(y.astype(np.float32)) - y_off) / y_span
    pb = _upsample((torch.from_numpy(cb.astype(np.float32)) - c_off) / c_span, height, width)
    pr = _upsample((torch.from_numpy(cr.astype(np.float32)) - c_off) / c_span, height, width)
    kr, kb = MATRICES[spec.matrix]
    kg = 1.0 - kr - kb
    r = luma + 2 * (1 - kr) * pr
    b = luma + 2 * (1 - kb) * pb
    g = (luma - kr * r - kb * b) / kg
    return torch.stack((r, g, b)).clamp_(0, 1)


def rgb_to_ycbcr420(rgb: Tensor, bits: int, spec: ColourSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB (3, H, W) in [0, 1] → integer planes Y' (H, W), Cb and Cr (ceil(H/2), ceil(W/2)).

    uint8 for 8 bits, uint16 above. Odd sides replicate the last row/column before averaging.
    """
    rgb = rgb.detach().to("cpu", torch.float32).clamp(0, 1)
    r, g, b = rgb
    kr, kb = MATRICES[spec.matrix]
    luma = kr * r + (1 - kr - kb) * g + kb * b
    pb = (b - luma) / (2 * (1 - kb))
    pr = (r - luma) / (2 * (1 - kr))
    height, width = luma.shape
    pad = (0, width % 2, 0, height % 2)
    chroma = F.pad(torch.stack((pb, pr))[None], pad, mode="replicate")
    chroma = F.avg_pool2d(chroma, 2)[0]
    y_off, y_span, c_off, c_span = spec.luma_chroma_scale(bits)
    dtype = np.uint8 if bits == 8 else np.uint16

    def code(values: Tensor, offset: float, span: float) -> np.ndarray:
        v = torch.round(values * span + offset).clamp_(0, 2**bits - 1)
        return v.numpy().astype(dtype)

    return code(luma, y_off, y_span), code(chroma[0], c_off, c_span), code(chroma[1], c_off, c_span)


def rgb_to_uint8(rgb: Tensor) -> np.ndarray:
    """RGB (3, H, W) in [0, 1] → (H, W, 3) uint8, rounded."""
    return torch.round(rgb.detach().to("cpu", torch.float32).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()


def uint_to_rgb(pixels: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 or uint16 RGB → (3, H, W) float32 in [0, 1]."""
    peak = 255.0 if pixels.dtype == np.uint8 else 65535.0
    return torch.from_numpy(pixels.astype(np.float32) / peak).permute(2, 0, 1).contiguous()

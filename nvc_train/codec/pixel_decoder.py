"""The pixel-exact half of the decoder: integer synthesis, scale-space warp and reconstruction.

Given the decoded latents as integers (``symbol·256 + mean_q``, bit-identical everywhere by
the hyperprior contract), every step to the output frame is integer arithmetic
(docs/integer-contract.md, "Pixel path"):

    keyframe:  ref = clamp(img(y))
    P-frame:   pred = warp(volume(ref), coordinates(motion(y_motion)))
               ref  = clamp(pred + res(cat(y_res, y_motion)))
    output:    levels = clamp(round_half_up(ref / 2**8), 0, 255) as uint8, MD5 of (3, H, W);
               at B > 8 bits (a deeper source): round_half_up(clamp(ref, 0, 255·2**8) ·
               (2**B − 1) / (255·2**8)), MD5 of the planes as little-endian uint16

The encoder runs the same steps for its references (closed loop), so both sides hold the
same reference samples and nothing drifts within a GOP.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor, nn

from nvc_train.quant.integer_warp import COORD_FRAC_BITS, SAMPLE_FRAC_BITS, gaussian_volume, round_shift, warp
from nvc_train.quant.synthesis import SAMPLE_UNITS, IntegerSynthesis, motion_coordinates

REFERENCE_LO, REFERENCE_HI = -SAMPLE_UNITS, 2 * SAMPLE_UNITS
"""References are held in [-1, 2] of full scale (the float model's references stay inside;
the bound keeps the warp's sums in range whatever a bitstream says)."""


def to_levels(samples: Tensor, bits: int = 8) -> Tensor:
    """(N, 3, H, W) int64 samples → output levels at ``bits`` per sample.

    8 bits: ``clamp((samples + 2**7) >> 8, 0, 255)`` as uint8 (round half up). Deeper
    outputs (a 10-, 12- or 16-bit source): the sample clamped to [0, 255·2**8] and rescaled
    to [0, 2**B − 1] with one rounding (half up), ``(2·s·(2**B − 1) + 255·2**8) // (2·255·2**8)``
    in int64, as int32. At B = 8 that formula is the 8-bit rule, so every depth rounds the
    same real value ``s / (255·2**8)``.
    """
    if bits == 8:
        return round_shift(samples, SAMPLE_FRAC_BITS).clamp(0, 255).to(torch.uint8)
    peak = 2**bits - 1
    s = samples.clamp(0, SAMPLE_UNITS)
    return torch.div(2 * peak * s + SAMPLE_UNITS, 2 * SAMPLE_UNITS, rounding_mode="floor").to(torch.int32)


def levels_to_unit(levels: Tensor, bits: int = 8) -> Tensor:
    """Output levels → float32 in [0, 1] (``levels / (2**bits − 1)``), from which writers at
    the same depth recover the levels exactly by rounding."""
    return levels.float() / (2**bits - 1)


def frame_md5(levels: Tensor) -> str:
    """MD5 (hex) of one decoded frame: its (3, H, W) planes R, G, B, row-major, as reference
    decoders print a picture's MD5: one byte per sample for uint8 levels, two (little-endian)
    for deeper ones (``levels`` may carry a leading batch of 1)."""
    planes = levels.reshape(levels.shape[-3:]).detach().to("cpu").contiguous().numpy()
    if planes.dtype != np.uint8:
        planes = planes.astype("<u2")
    return hashlib.md5(planes.tobytes()).hexdigest()


class IntegerPixelDecoder(nn.Module):
    """The three integer synthesis decoders and the integer motion compensation.

    Args:
        decoders: ``{"img", "motion", "res"}`` → :class:`IntegerSynthesis`.
        flow_reference: R in pixels (flow units of R-pixel crops) or None (CompressAI's units).
        num_levels, sigma0: the scale-space volume of the float model (SSF: 5 and 1.5).
    """

    def __init__(self, decoders: dict[str, IntegerSynthesis], flow_reference: int | None,
                 num_levels: int = 5, sigma0: float = 1.5):
        super().__init__()
        self.decoders = nn.ModuleDict(decoders)
        self.flow_reference = flow_reference
        self.num_levels = int(num_levels)
        self.sigma0 = float(sigma0)

    @staticmethod
    def reference(samples: Tensor) -> Tensor:
        return samples.clamp(REFERENCE_LO, REFERENCE_HI)

    def keyframe(self, y_int: Tensor) -> Tensor:
        """(1, 192, h, w) int64 keyframe latent → (1, 3, 16h, 16w) int64 reference samples."""
        return self.reference(self.decoders["img"](y_int))

    def predict(self, ref: Tensor, y_motion_int: Tensor) -> Tensor:
        """Motion-compensated prediction (1, 3, H, W) int64 of the next frame from ``ref``."""
        motion = self.decoders["motion"](y_motion_int)
        coords = motion_coordinates(motion, self.num_levels + 1, self.flow_reference, COORD_FRAC_BITS)
        return warp(gaussian_volume(ref, self.num_levels, self.sigma0), coords)

    def reconstruct(self, pred: Tensor, y_res_int: Tensor, y_motion_int: Tensor) -> Tensor:
        """Prediction plus decoded residual, clamped: the next reference (1, 3, H, W) int64."""
        return self.reference(pred + self.decoders["res"](torch.cat((y_res_int, y_motion_int), dim=1)))

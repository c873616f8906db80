"""The SSF rate-distortion objective (CompressAI's examples/train_video.py, same scaling)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from nvc_train.models.ssf import FrameOutput

QUALITY_LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800, 9: 0.3600}
"""Quality preset → λ (MSE). q1–q8 are the λ CompressAI's model zoo trained its MSE models
with (CompressAI docs, "Model zoo" training section); q9 continues the ×2 progression,
since ssf2020 ships 9 qualities. The loss is λ·255²·MSE + bpp."""


def quality_to_lambda(quality: int) -> float:
    if quality not in QUALITY_LAMBDAS:
        raise ValueError(f"quality must be one of 1..9, got {quality}")
    return QUALITY_LAMBDAS[quality]


class RDTerms(NamedTuple):
    """Loss terms of one batch; scalars. ``bpp_parts`` maps e.g. "motion.y" → bits per pixel."""

    loss: Tensor
    mse: Tensor
    bpp: Tensor
    psnr: Tensor
    bpp_parts: dict[str, Tensor]


def likelihood_bits(likelihoods: Tensor) -> Tensor:
    """Total estimated bits, −Σ log2 p."""
    return torch.log(likelihoods).sum() / -math.log(2)


def rd_loss(outputs: list[FrameOutput], frames: list[Tensor], lmbda: float) -> RDTerms:
    """λ·255²·MSE + bpp, MSE and bpp averaged over the frames and the batch.

    Args:
        outputs: per frame, reconstruction (N, 3, H, W) and likelihoods.
        frames: per frame, the target (N, 3, H, W) in [0, 1].
    """
    n, _, h, w = frames[0].shape
    num_pixels = n * h * w * len(frames)
    mse = torch.stack([torch.mean((o.x_hat - x) ** 2) for o, x in zip(outputs, frames)]).mean()
    parts: dict[str, Tensor] = {}
    for o in outputs:
        for part, liks in o.likelihoods.items():
            for latent, lik in liks.items():
                key = f"{part}.{latent}"
                parts[key] = parts.get(key, 0) + likelihood_bits(lik) / num_pixels
    bpp = sum(parts.values())
    loss = lmbda * 255**2 * mse + bpp
    psnr = -10 * torch.log10(mse.detach().clamp_min(1e-10))
    return RDTerms(loss, mse, bpp, psnr, parts)

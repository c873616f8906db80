"""What a coded frame holds, without torch: read by the container and by ``nvc-train info``."""

from __future__ import annotations

from typing import NamedTuple

FRAME_PARTS = {"I": ("keyframe",), "P": ("motion", "residual")}
"""The hyperpriors each frame type codes, in bitstream order."""


class CodedLatent(NamedTuple):
    """One hyperprior's bitstream for one frame: ``z_shape`` is (h, w) of the hyper-latent."""

    y_string: bytes
    z_string: bytes
    z_shape: tuple[int, int]


class CodedFrame(NamedTuple):
    frame_type: str  # "I" or "P"
    latents: dict[str, CodedLatent]

"""Real video files for tests, written with PyAV from the synthetic clips."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from nvc_train.io.colour import rgb_to_uint8
from nvc_train.data.synthetic import synthetic_clip


def write_h264(path: Path, frames: torch.Tensor, fps: Fraction = Fraction(25), pix_fmt: str = "yuv420p",
               crf: int = 12) -> Path:
    """Encode (T, 3, H, W) RGB frames with libx264 (FFmpeg converts RGB → ``pix_fmt``)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = frames.shape[-1], frames.shape[-2], pix_fmt
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb_to_uint8(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def clip(seed: int, frames: int, height: int, width: int) -> torch.Tensor:
    """Synthetic RGB clip (T, 3, H, W) in [0, 1], quantised to 8 bits like a real source."""
    return torch.round(synthetic_clip(seed, frames, height, width) * 255) / 255


def uint8_frames(frames) -> np.ndarray:
    return np.stack([rgb_to_uint8(f) for f in frames])

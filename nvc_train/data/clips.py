"""What every training-data source hands the DataModules: clips of ``T`` RGB frames as uint8.

Clips stay uint8 ``(T, 3, H, W)`` through the DataLoader (a quarter of float32's bytes across
worker processes and to the GPU) and become float32 in [0, 1] only after the batch reaches
its device (:func:`to_unit_float`, called from the DataModules' ``on_after_batch_transfer``).

Training windows are random (torch's global RNG, which the training loader seeds for each
sample from its place in the epoch: :mod:`nvc_train.data.order`); validation windows are centred, so validation sees the
same pixels every time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nvc_train.models.ssf import MODEL_MULTIPLE


def random_window(height: int, width: int, crop: int) -> tuple[int, int]:
    """Top-left corner (top, left) of a uniformly random (crop × crop) window."""
    if height < crop or width < crop:
        raise ValueError(f"a {width}x{height} frame is smaller than the {crop}px crop")
    top = int(torch.randint(0, height - crop + 1, ()))
    left = int(torch.randint(0, width - crop + 1, ()))
    return top, left


def centre_window(height: int, width: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """Top-left corner of the centred (crop_h × crop_w) window."""
    return (height - crop_h) // 2, (width - crop_w) // 2


def validation_size(height: int, width: int, limit: int | None) -> tuple[int, int]:
    """The centred validation window for a frame: each side the largest multiple of 128 that
    fits, capped at ``limit`` pixels (None: no cap). Raises if a side is under 128 px."""
    if height < MODEL_MULTIPLE or width < MODEL_MULTIPLE:
        raise ValueError(f"a {width}x{height} frame is smaller than {MODEL_MULTIPLE}px, the model's multiple")
    cap = limit if limit is not None else max(height, width)
    return min(height, cap) // MODEL_MULTIPLE * MODEL_MULTIPLE, min(width, cap) // MODEL_MULTIPLE * MODEL_MULTIPLE


def maybe_flip(clip: Tensor, enabled: bool) -> Tensor:
    """Reverse the frame order (dim 0) with probability 0.5 when ``enabled``."""
    if enabled and bool(torch.rand(()) < 0.5):
        return clip.flip(0)
    return clip


def to_unit_float(batch: Tensor) -> Tensor:
    """uint8 clips (B, T, 3, H, W) → float32 in [0, 1]; float batches pass through."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(255)
    return batch

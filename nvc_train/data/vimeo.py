"""Vimeo-90k septuplets (Xue et al., "Video Enhancement with Task-Oriented Flow", IJCV 2019).

The published layout, which this module reads as is::

    ROOT/sequences/00001/0001/im1.png .. im7.png   (448x256 RGB)
    ROOT/sep_trainlist.txt                          lines such as ``00001/0001``
    ROOT/sep_testlist.txt

Training clips sample frames as CompressAI's ``VideoFolder(rnd_interval=True)`` does (a
random frame interval), plus a random start, a random crop and an optional temporal flip;
validation clips are the first frames, centred, so validation sees the same pixels every time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from nvc_train.data.clips import centre_window, maybe_flip, random_window, validation_size
from nvc_train.errors import UserError
from nvc_train.models.ssf import MODEL_MULTIPLE

#: Frames per septuplet, im1.png .. im7.png.
SEPTUPLET_FRAMES = 7

_LIST_FILES = {"train": "sep_trainlist.txt", "test": "sep_testlist.txt"}


def read_septuplet_list(root: Path, split: str) -> list[str]:
    """The septuplet folders of ``split`` ("train" or "test"), relative to ROOT/sequences,
    e.g. ``["00001/0001", ...]``, in the list file's order."""
    if split not in _LIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"Vimeo-90k folder not found: {root}")
    list_file = root / _LIST_FILES[split]
    if not list_file.is_file():
        raise UserError(f"{list_file} not found: {root} must be in Vimeo-90k's published layout "
                        f"(sequences/, sep_trainlist.txt, sep_testlist.txt)")
    entries = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not entries:
        raise UserError(f"{list_file} lists no septuplets: restore it from the Vimeo-90k download")
    return entries


def _read_png(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of one frame."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing: re-extract that septuplet from the Vimeo-90k download") from None
    # PIL reports a damaged PNG as any of these (SyntaxError: a broken chunk after the pixels).
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UserError(f"{path} is damaged ({type(exc).__name__}): re-extract that septuplet "
                        f"from the Vimeo-90k download") from None


class VimeoSeptuplets(Dataset):
    """Clips of ``num_frames`` frames from Vimeo-90k septuplets, uint8 (T, 3, H, W).

    ``split="train"``: (T, 3, crop, crop). Frames ``start, start + k, ..`` with the interval
    k uniform in 1..max_interval (capped so that all T frames lie within the seven) and the
    start uniform among those that fit; then a uniform (crop × crop) window and, if
    ``temporal_flip``, reversed order with p = 0.5. Randomness comes only from torch's global
    RNG, which the training loader seeds per sample (:mod:`nvc_train.data.order`).

    ``split="test"``: deterministic. Frames im1 .. im{T}, the centred window of
    ``validation_size(H, W, val_crop_limit)`` (384x256 for 448x256 frames), never flipped;
    ``crop``, ``temporal_flip`` and ``max_interval`` are unused.

    ``max_clips`` keeps that many entries of the list, evenly spaced (both splits), e.g. for
    a quick validation pass on the same septuplets every epoch.
    """

    def __init__(self, root: str | Path, split: str = "train", num_frames: int = 3, crop: int | None = 256,
                 temporal_flip: bool = True, max_interval: int = 1, val_crop_limit: int | None = None,
                 max_clips: int | None = None):
        if not 1 <= num_frames <= SEPTUPLET_FRAMES:
            raise ValueError(f"num_frames must be in 1..{SEPTUPLET_FRAMES} (a septuplet), got {num_frames}")
        if crop is not None and (crop <= 0 or crop % MODEL_MULTIPLE):
            raise ValueError(f"crop must be a positive multiple of {MODEL_MULTIPLE}, got {crop}")
        if split == "train" and crop is None:
            raise ValueError("training needs a crop (a positive multiple of 128)")
        if max_interval < 1:
            raise ValueError(f"max_interval must be >= 1, got {max_interval}")
        if val_crop_limit is not None and val_crop_limit < MODEL_MULTIPLE:
            raise ValueError(f"val_crop_limit must be >= {MODEL_MULTIPLE} or None, got {val_crop_limit}")
        if max_clips is not None and max_clips < 1:
            raise ValueError(f"max_clips must be >= 1 or None, got {max_clips}")
        self.root = Path(root)
        self.split, self.num_frames, self.crop = split, num_frames, crop
        self.temporal_flip, self.val_crop_limit = temporal_flip, val_crop_limit
        # Capped, not rejected, as CompressAI caps rnd_interval by the frames a folder holds.
        span = SEPTUPLET_FRAMES - 1
        self.max_interval = min(max_interval, span // (num_frames - 1)) if num_frames > 1 else 1
        entries = read_septuplet_list(self.root, split)
        if max_clips is not None and max_clips < len(entries):
            entries = [entries[i * len(entries) // max_clips] for i in range(max_clips)]
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def _frame_numbers(self) -> list[int]:
        """The 1-based frame numbers (im{k}.png) of the next clip; random when training."""
        if self.split != "train":
            return list(range(1, self.num_frames + 1))
        interval = int(torch.randint(1, self.max_interval + 1, ()))
        start = int(torch.randint(0, SEPTUPLET_FRAMES - (self.num_frames - 1) * interval, ()))
        return [1 + start + t * interval for t in range(self.num_frames)]

    def __getitem__(self, index: int) -> Tensor:
        """uint8 (T, 3, crop, crop) when training, (T, 3, h, w) of the validation window otherwise."""
        folder = self.root / "sequences" / self.entries[index]
        frames = [_read_png(folder / f"im{k}.png") for k in self._frame_numbers()]
        if any(f.shape != frames[0].shape for f in frames):
            sizes = sorted({f"{f.shape[1]}x{f.shape[0]}" for f in frames})
            raise UserError(f"{folder} mixes frame sizes ({', '.join(sizes)}): re-extract that septuplet")
        h, w = frames[0].shape[:2]
        try:
            if self.split == "train":
                (top, left), (ch, cw) = random_window(h, w, self.crop), (self.crop, self.crop)
            else:
                ch, cw = validation_size(h, w, self.val_crop_limit)
                top, left = centre_window(h, w, ch, cw)
        except ValueError as exc:  # frames smaller than the crop: not the published 448x256
            raise UserError(f"{folder}: {exc}") from None
        clip = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)[..., top:top + ch, left:left + cw]
        if self.split == "train":
            clip = maybe_flip(clip, self.temporal_flip)
        return clip.contiguous()

"""Lightning DataModules: clips of N frames, random crops and temporal flips for training,
deterministic full frames for validation."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from nvc_train.data.synthetic import SyntheticClips
from nvc_train.models.ssf import MODEL_MULTIPLE


class RandomCropFlip(Dataset):
    """Wraps a clip dataset: random (crop × crop) window, reversed frame order with p = 0.5.

    Randomness comes from torch's global RNG, which Lightning seeds per worker
    (``seed_everything(..., workers=True)``), so runs are reproducible.
    """

    def __init__(self, clips: Dataset, crop: int, temporal_flip: bool = True):
        self.clips, self.crop, self.temporal_flip = clips, crop, temporal_flip

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> Tensor:
        clip = self.clips[index]  # (T, 3, H, W)
        h, w = clip.shape[-2:]
        if h < self.crop or w < self.crop:
            raise ValueError(f"clip {index} is {w}x{h}, smaller than the {self.crop}px crop")
        top = int(torch.randint(0, h - self.crop + 1, ()))
        left = int(torch.randint(0, w - self.crop + 1, ()))
        clip = clip[..., top:top + self.crop, left:left + self.crop]
        if self.temporal_flip and bool(torch.rand(()) < 0.5):
            clip = clip.flip(0)
        return clip.contiguous()


class SyntheticClipDataModule(L.LightningDataModule):
    """The built-in default data: generated clips (nothing to download).

    Args:
        num_frames: frames per clip (the first is a keyframe).
        crop: training crop side in pixels (multiple of 128).
        train_size: side of the generated training clips the crops come from.
        val_size: side of the full validation frames (multiple of 128).
        num_train_clips, num_val_clips: dataset sizes (clips are generated on the fly).
    """

    def __init__(self, num_frames: int = 3, crop: int = 256, train_size: int = 320, val_size: int = 256,
                 num_train_clips: int = 2000, num_val_clips: int = 4, batch_size: int = 8,
                 num_workers: int = 2, seed: int = 0):
        super().__init__()
        for name, side in (("crop", crop), ("val_size", val_size)):
            if side % MODEL_MULTIPLE:
                raise ValueError(f"{name} must be a multiple of {MODEL_MULTIPLE}, got {side}")
        if train_size < crop:
            raise ValueError(f"train_size ({train_size}) must be at least crop ({crop})")
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self.train_set = RandomCropFlip(
            SyntheticClips(hp.num_train_clips, hp.num_frames, hp.train_size, hp.train_size, seed=hp.seed), hp.crop)
        # A different seed range from training: validation clips are never trained on.
        self.val_set = SyntheticClips(hp.num_val_clips, hp.num_frames, hp.val_size, hp.val_size, seed=hp.seed + 10**6)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(), drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, 1, shuffle=False)

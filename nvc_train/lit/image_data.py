"""Lightning DataModules of still images: random crops with horizontal flips for training,
centre crops (multiples of 64) for validation, in the resumable order of
:class:`~nvc_train.lit.data.ClipDataModule`. Generated images (the built-in default of the
image presets) or folders of images (PNG 8/16 bit, JPEG, PPM, BMP)."""

from __future__ import annotations

from nvc_train.data.images import CentreCrop, ImageFolder, RandomCrop, SyntheticImages
from nvc_train.lit.data import ClipDataModule
from nvc_train.models.image import IMAGE_MULTIPLE


def _check_crop(crop: int) -> None:
    if crop % IMAGE_MULTIPLE:
        raise ValueError(f"crop must be a multiple of {IMAGE_MULTIPLE}, got {crop}")


class SyntheticImageDataModule(ClipDataModule):
    """Generated images (nothing to download): the scenes of the synthetic clips, one frame each.

    Args:
        crop: training crop side in pixels (multiple of 64).
        train_size: side of the generated training images the crops come from.
        val_size: side of the validation images (multiple of 64).
        num_train_images, num_val_images: dataset sizes (images are generated on the fly).
    """

    def __init__(self, crop: int = 256, train_size: int = 320, val_size: int = 256, num_train_images: int = 2000,
                 num_val_images: int = 4, batch_size: int = 8, num_workers: int = 2, seed: int = 0):
        super().__init__()
        _check_crop(crop)
        if val_size % IMAGE_MULTIPLE:
            raise ValueError(f"val_size must be a multiple of {IMAGE_MULTIPLE}, got {val_size}")
        if train_size < crop:
            raise ValueError(f"train_size ({train_size}) must be at least crop ({crop})")
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self.train_set = RandomCrop(SyntheticImages(hp.num_train_images, hp.train_size, hp.train_size, hp.seed), hp.crop)
        # A different seed range from training: validation images are never trained on.
        self.val_set = SyntheticImages(hp.num_val_images, hp.val_size, hp.val_size, hp.seed + 10**6)


class ImageFolderDataModule(ClipDataModule):
    """Folders of images (searched recursively), e.g. a company's photos or Kodak/CLIC.

    Args:
        train_dir: training images (each at least ``crop`` on both sides).
        val_dir: validation images, centre-cropped to multiples of 64.
        crop: training crop side in pixels (multiple of 64).
        drop_alpha: read images with an alpha channel as their colour channels (otherwise
            such an image is an error naming the file).
    """

    def __init__(self, train_dir: str, val_dir: str, crop: int = 256, batch_size: int = 8, num_workers: int = 2,
                 drop_alpha: bool = False):
        super().__init__()
        _check_crop(crop)
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self.train_set = RandomCrop(ImageFolder(hp.train_dir, hp.drop_alpha), hp.crop)
        self.val_set = CentreCrop(ImageFolder(hp.val_dir, hp.drop_alpha))

"""Still images for the image codecs: datasets of (3, H, W) float32 RGB in [0, 1], and crops.

* :class:`ImageFolder`: every image file under a folder (8- or 16-bit, read exactly by
  :func:`nvc_train.io.images.read_image`).
* :class:`SyntheticImages`: generated images (the first frame of a synthetic clip), the
  built-in default that needs no download.
* :class:`RandomCrop` for training (random window, horizontal flip), :class:`CentreCrop` for
  validation (the same centred pixels every time, sides a multiple of
  :data:`~nvc_train.models.image.IMAGE_MULTIPLE`, 64, as the image codecs need).

Both image datasets name their items (``describe``), so a crop wrapper can say which file is
too small for it.
"""

from __future__ import annotations

import operator
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from nvc_train.data.clips import centre_window, random_window
from nvc_train.data.synthetic import MIN_SIZE, synthetic_clip
from nvc_train.errors import UserError
from nvc_train.io.images import read_image, to_unit_float
from nvc_train.io.video import natural_key
from nvc_train.models.image import IMAGE_MULTIPLE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp")


def synthetic_image(seed: int, height: int, width: int) -> Tensor:
    """A generated image: (3, H, W) float32 in [0, 1], the first frame of
    ``synthetic_clip(seed, 1, height, width)``, so bit-identical on every machine (see
    :mod:`nvc_train.data.synthetic`). ``seed`` >= 0, sides >= 16."""
    return synthetic_clip(seed, 1, height, width)[0]


class ImageFolder(Dataset):
    """Every image under ``root`` (recursively): items (3, H, W) float32 in [0, 1].

    Files with the suffixes of :data:`IMAGE_SUFFIXES` (any case), in natural order of their
    paths below ``root`` (img2 before img10); hidden files and folders (names starting with a
    dot, such as the ``._name.png`` metadata files macOS leaves on copies) are left out. Images may differ in
    size and bit depth (16-bit PNGs keep their precision). A file is read when its item is,
    so a damaged file is reported then, as a :class:`~nvc_train.errors.UserError` naming it.

    Args:
        root: the folder.
        drop_alpha: read images with alpha as their colour channels (see
            :func:`~nvc_train.io.images.read_image`) instead of refusing them.
    """

    def __init__(self, root: str | Path, drop_alpha: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"image folder {root} {'is not a folder' if root.exists() else 'does not exist'}")
        files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(root).parts)]
        if not files:
            raise UserError(f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.root, self.drop_alpha = root, drop_alpha
        self.files = sorted(files, key=lambda p: [natural_key(Path(part)) for part in p.relative_to(root).parts])

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, index: int) -> str:
        """What item ``index`` is, for messages: its file."""
        return str(self.files[index])

    def __getitem__(self, index: int) -> Tensor:
        image = read_image(self.files[index], self.drop_alpha)
        return to_unit_float(image.levels, image.bits)


class SyntheticImages(Dataset):
    """``count`` generated images of ``height`` × ``width``: item i is
    ``synthetic_image(seed + i, height, width)``, (3, H, W) float32 in [0, 1]."""

    def __init__(self, count: int, height: int = 256, width: int = 256, seed: int = 0):
        if count < 1 or seed < 0 or min(height, width) < MIN_SIZE:
            raise ValueError(f"SyntheticImages needs count >= 1, seed >= 0 and sides >= {MIN_SIZE}, got "
                             f"count={count}, seed={seed}, {width}x{height}")
        self.count, self.height, self.width, self.seed = count, height, width, seed

    def __len__(self) -> int:
        return self.count

    def describe(self, index: int) -> str:
        """What item ``index`` is, for messages: its seed."""
        return f"synthetic image {self.seed + index}"

    def __getitem__(self, index: int) -> Tensor:
        index = operator.index(index)
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} synthetic images")
        return synthetic_image(self.seed + index, self.height, self.width)


def _check_side(images: Dataset, index: int, image: Tensor, side: int, what: str) -> None:
    height, width = image.shape[-2:]
    if height < side or width < side:
        raise UserError(f"{images.describe(index)} is {width}x{height}, smaller than the {side}px {what}")


class RandomCrop(Dataset):
    """Training crops of an image dataset: a random (crop × crop) window, flipped left to right
    with p = 0.5. Randomness comes from torch's global RNG, which the training loader seeds for
    each sample from its place in the epoch (:class:`~nvc_train.data.order.SeededSamples`), so
    runs are reproducible and resumable.

    Args:
        images: a dataset of (3, H, W) images with ``describe(index)`` (:class:`ImageFolder`,
            :class:`SyntheticImages`).
        crop: side of the window in pixels, a multiple of :data:`IMAGE_MULTIPLE`.

    An image smaller than the crop is a :class:`~nvc_train.errors.UserError` naming it.
    """

    def __init__(self, images: Dataset, crop: int):
        if crop < IMAGE_MULTIPLE or crop % IMAGE_MULTIPLE:
            raise ValueError(f"crop must be a positive multiple of {IMAGE_MULTIPLE}, got {crop}")
        self.images, self.crop = images, crop

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        image = self.images[index]
        _check_side(self.images, index, image, self.crop, "training crop")
        top, left = random_window(*image.shape[-2:], self.crop)
        image = image[:, top:top + self.crop, left:left + self.crop]
        if bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return image.contiguous()


class CentreCrop(Dataset):
    """Validation crops of an image dataset: the centred window whose sides are the largest
    multiples of :data:`IMAGE_MULTIPLE` that fit (a 768x512 image is kept whole, 500x333
    becomes 448x320). Deterministic: validation sees the same pixels every time. An image with
    a side under 64 px is a :class:`~nvc_train.errors.UserError` naming it."""

    def __init__(self, images: Dataset):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        image = self.images[index]
        _check_side(self.images, index, image, IMAGE_MULTIPLE, "minimum side of the image codecs")
        height, width = image.shape[-2:]
        crop_h, crop_w = height // IMAGE_MULTIPLE * IMAGE_MULTIPLE, width // IMAGE_MULTIPLE * IMAGE_MULTIPLE
        top, left = centre_window(height, width, crop_h, crop_w)
        return image[:, top:top + crop_h, left:left + crop_w].contiguous()

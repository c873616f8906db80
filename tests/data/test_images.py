"""Training and validation images (nvc_train.data.images): synthetic images, image folders,
random and centred crops."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from nvc_train.data.images import (CentreCrop, ImageFolder, RandomCrop, SyntheticImages, synthetic_image)
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.errors import UserError
from nvc_train.io.images import write_image


def sha256(x: torch.Tensor) -> str:
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()


def save_rgb(path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """An 8-bit RGB file of random pixels; returns its (3, H, W) levels."""
    levels = np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(levels.transpose(1, 2, 0)).save(path)
    return levels


# --------------------------------------------------------------------------- synthetic

def test_synthetic_image_is_the_first_frame_of_a_synthetic_clip():
    image = synthetic_image(11, 32, 48)
    assert image.shape == (3, 32, 48) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    assert torch.equal(synthetic_image(11, 32, 48), image)  # same seed, same bits
    assert sha256(image) == sha256(synthetic_clip(11, 1, 32, 48)[0])
    assert not torch.equal(synthetic_image(12, 32, 48), image)


def test_synthetic_images_take_consecutive_seeds():
    images = SyntheticImages(3, 32, 48, seed=5)
    assert len(images) == 3
    assert all(torch.equal(images[i], synthetic_image(5 + i, 32, 48)) for i in range(3))
    assert images.describe(2) == "synthetic image 7"
    with pytest.raises(IndexError):
        images[3]
    with pytest.raises(ValueError, match="count >= 1"):
        SyntheticImages(0)


# --------------------------------------------------------------------------- folders

def test_image_folder_finds_images_recursively_in_natural_order(tmp_path):
    expected = {name: save_rgb(tmp_path / name, 20, 24, seed)
                for seed, name in enumerate(["img10.png", "img2.png", "sub/a.jpg", "sub/b.PNG", "c.bmp", "d.ppm"])}
    save_rgb(tmp_path / ".hidden" / "x.png", 20, 24)  # hidden folder
    (tmp_path / "._img2.png").write_bytes(b"\0\5\26\7")  # macOS metadata beside a copied file
    (tmp_path / "notes.txt").write_text("not an image")
    folder = ImageFolder(tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p in folder.files]
    assert names == ["c.bmp", "d.ppm", "img2.png", "img10.png", "sub/a.jpg", "sub/b.PNG"]
    for i, name in enumerate(names):
        item = folder[i]
        assert item.shape == (3, 20, 24) and item.dtype == torch.float32
        if not name.endswith(".jpg"):  # lossless formats: the very levels, in [0, 1]
            assert torch.equal(item, torch.from_numpy(expected[name].astype(np.float32)) / 255)
    assert folder.describe(2) == str(tmp_path / "img2.png")


def test_image_folder_keeps_16_bit_precision(tmp_path):
    levels = np.random.default_rng(0).integers(0, 2**16, (3, 16, 16), dtype=np.uint16)
    write_image(tmp_path / "deep.png", levels, 16)
    item = ImageFolder(tmp_path)[0]
    assert torch.equal(torch.round(item.double() * 65535).to(torch.int64), torch.from_numpy(levels.astype(np.int64)))


def test_image_folder_without_images_is_a_user_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="holds no images"):
        ImageFolder(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        ImageFolder(tmp_path / "absent")


# --------------------------------------------------------------------------- crops

def test_random_crop_is_a_window_of_the_image_flipped_half_the_time():
    image = synthetic_image(0, 80, 96)
    crops = RandomCrop(SyntheticImages(1, 80, 96), 64)
    flips = 0
    for seed in range(12):
        torch.manual_seed(seed)
        crop = crops[0]
        assert crop.shape == (3, 64, 64) and crop.is_contiguous()
        windows = image.unfold(1, 64, 1).unfold(2, 64, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 64, 64)
        plain = (windows == crop).flatten(1).all(1).any()
        flipped = (windows == crop.flip(-1)).flatten(1).all(1).any()
        assert plain or flipped
        flips += int(flipped and not plain)
        torch.manual_seed(seed)
        assert torch.equal(crops[0], crop)  # the crop is a function of the RNG state alone
    assert 0 < flips < 12


def test_crops_name_the_file_that_is_too_small(tmp_path):
    save_rgb(tmp_path / "small.png", 60, 200)
    folder = ImageFolder(tmp_path)
    with pytest.raises(UserError, match=r"small.png is 200x60, smaller than the 64px training crop"):
        RandomCrop(folder, 64)[0]
    with pytest.raises(UserError, match=r"small.png is 200x60, smaller than the 64px minimum side"):
        CentreCrop(folder)[0]
    with pytest.raises(ValueError, match="multiple of 64"):
        RandomCrop(folder, 96)


def test_centre_crop_takes_the_centred_multiple_of_64():
    images = SyntheticImages(1, 150, 200)
    crop = CentreCrop(images)[0]
    assert crop.shape == (3, 128, 192)
    assert torch.equal(crop, images[0][:, 11:139, 4:196])
    assert torch.equal(CentreCrop(SyntheticImages(1, 128, 192))[0], SyntheticImages(1, 128, 192)[0])

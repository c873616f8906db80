"""Tests for Vimeo-90k septuplets (nvc_train.data.vimeo) on a generated tree of real PNGs."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nvc_train.data.vimeo import VimeoSeptuplets, read_septuplet_list
from nvc_train.errors import UserError

CROP = 128


def frame_pixels(sequence: int, frame: int, size: tuple[int, int] = (448, 256)) -> np.ndarray:
    """(H, W, 3) uint8 pixels that say where they come from: R = x mod 256, G = y,
    B = 32·frame + 16·(x ≥ 256) + sequence. Every pixel of the tree is distinct, so a crop
    can be traced back to one frame and one window (needs sequence < 16, H ≤ 256, W ≤ 512)."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    blue = 32 * frame + 16 * (x // 256) + sequence
    return np.stack([x % 256, y, blue], axis=-1).astype(np.uint8)


def make_vimeo_tree(root: Path, n_train: int = 3, n_test: int = 2, size: tuple[int, int] = (448, 256)) -> Path:
    """Vimeo-90k's published layout with 7 PNGs per septuplet: train septuplets are
    00001/0001.., test ones 00002/0001..; sequence numbers (in the pixels) count train first."""
    train = [f"00001/{i + 1:04d}" for i in range(n_train)]
    test = [f"00002/{i + 1:04d}" for i in range(n_test)]
    for sequence, entry in enumerate(train + test):
        folder = root / "sequences" / entry
        folder.mkdir(parents=True)
        for frame in range(1, 8):
            Image.fromarray(frame_pixels(sequence, frame, size)).save(folder / f"im{frame}.png")
    # Blank lines and stray whitespace, as in the published lists' trailing newline.
    (root / "sep_trainlist.txt").write_text("".join(f"  {e}\n" for e in train) + "\n")
    (root / "sep_testlist.txt").write_text("\n".join(test) + "\n\n")
    return root


def disk_frame(root: Path, entry: str, frame: int) -> torch.Tensor:
    """(3, H, W) uint8 frame im{frame}.png as stored, read independently of the dataset."""
    return torch.from_numpy(np.array(Image.open(root / "sequences" / entry / f"im{frame}.png"))).permute(2, 0, 1)


def locate(frame: torch.Tensor) -> tuple[int, int, int, int]:
    """(sequence, frame number, top, left) that a crop of ``frame_pixels`` came from."""
    red, green, blue = (int(v) for v in frame[:, 0, 0])
    return blue % 16, blue // 32, green, red + 256 * (blue // 16 % 2)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_vimeo_tree(tmp_path_factory.mktemp("vimeo"))


# --- the list files ----------------------------------------------------------------------


def test_lists_are_read_without_blank_lines_or_whitespace(tree: Path) -> None:
    assert read_septuplet_list(tree, "train") == ["00001/0001", "00001/0002", "00001/0003"]
    assert read_septuplet_list(tree, "test") == ["00002/0001", "00002/0002"]


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="Vimeo-90k folder not found"):
        VimeoSeptuplets(tmp_path / "nowhere")


def test_missing_list_file_names_it_and_the_layout(tmp_path: Path) -> None:
    (tmp_path / "sep_trainlist.txt").write_text("00001/0001\n")
    with pytest.raises(UserError, match="sep_testlist.txt not found.*published layout"):
        read_septuplet_list(tmp_path, "test")


def test_empty_list(tmp_path: Path) -> None:
    (tmp_path / "sep_trainlist.txt").write_text("\n  \n")
    with pytest.raises(UserError, match="sep_trainlist.txt lists no septuplets"):
        VimeoSeptuplets(tmp_path)


def test_unknown_split(tree: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        VimeoSeptuplets(tree, split="val")


# --- validation clips ----------------------------------------------------------------------


def test_validation_is_the_centred_window_of_the_first_frames(tree: Path) -> None:
    data = VimeoSeptuplets(tree, split="test", num_frames=3)
    assert len(data) == 2
    for index, entry in enumerate(["00002/0001", "00002/0002"]):
        clip = data[index]
        assert clip.dtype == torch.uint8 and clip.shape == (3, 3, 256, 384) and clip.is_contiguous()
        # 448x256 → 384x256, centred: 32 columns off each side, no row removed.
        expected = torch.stack([disk_frame(tree, entry, k)[:, :, 32:416] for k in (1, 2, 3)])
        assert torch.equal(clip, expected)


def test_validation_is_deterministic_and_ignores_the_rng(tree: Path) -> None:
    data = VimeoSeptuplets(tree, split="test", num_frames=2)
    torch.manual_seed(0)
    first = data[1]
    torch.manual_seed(1)
    assert torch.equal(first, data[1])


def test_validation_crop_limit(tree: Path) -> None:
    clip = VimeoSeptuplets(tree, split="test", num_frames=1, val_crop_limit=128)[0]
    assert clip.shape == (1, 3, 128, 128)
    assert torch.equal(clip[0], disk_frame(tree, "00002/0001", 1)[:, 64:192, 160:288])


def test_max_clips_keeps_evenly_spaced_entries(tmp_path: Path) -> None:
    # The folders are only opened by __getitem__, so the list alone is enough here.
    entries = [f"00001/{i:04d}" for i in range(1, 11)]
    (tmp_path / "sep_testlist.txt").write_text("\n".join(entries))
    data = VimeoSeptuplets(tmp_path, split="test", max_clips=3)
    assert len(data) == 3
    assert data.entries == [entries[0], entries[3], entries[6]]
    assert VimeoSeptuplets(tmp_path, split="test", max_clips=3).entries == data.entries
    assert VimeoSeptuplets(tmp_path, split="test", max_clips=50).entries == entries


# --- training clips ----------------------------------------------------------------------


def test_training_shape_and_dtype(tree: Path) -> None:
    data = VimeoSeptuplets(tree, num_frames=2, crop=CROP)
    assert len(data) == 3
    clip = data[0]
    assert clip.dtype == torch.uint8 and clip.shape == (2, 3, CROP, CROP) and clip.is_contiguous()


def test_training_is_reproducible_under_a_seed_and_varies_across_seeds(tree: Path) -> None:
    data = VimeoSeptuplets(tree, num_frames=3, crop=CROP, max_interval=3)

    def sample(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return data[0]

    assert torch.equal(sample(0), sample(0))
    assert not all(torch.equal(sample(0), sample(seed)) for seed in range(1, 6))


@pytest.mark.parametrize(("num_frames", "max_interval", "allowed"), [(3, 3, {1, 2, 3}), (4, 3, {1, 2}), (2, 1, {1})])
def test_training_frames_are_one_window_of_frames_at_one_interval(
    tree: Path, num_frames: int, max_interval: int, allowed: set[int]
) -> None:
    # allowed: intervals at which num_frames frames fit in seven (4 frames: 3·2 + 1 ≤ 7).
    data = VimeoSeptuplets(tree, num_frames=num_frames, crop=CROP, max_interval=max_interval)
    entries = read_septuplet_list(tree, "train")
    seen_steps = set()
    for seed in range(24):
        torch.manual_seed(seed)
        index = seed % len(data)
        clip = data[index]
        places = [locate(frame) for frame in clip]
        assert {(s, top, left) for s, _, top, left in places} == {(index, places[0][2], places[0][3])}
        numbers = [k for _, k, _, _ in places]
        for frame, (_, k, top, left) in zip(clip, places):
            assert torch.equal(frame, disk_frame(tree, entries[index], k)[:, top:top + CROP, left:left + CROP])
        steps = {b - a for a, b in pairwise(numbers)}
        if num_frames > 1:
            assert len(steps) == 1 and abs(next(iter(steps))) in allowed, numbers
            seen_steps |= steps
    if num_frames > 1:
        # Every interval is drawn, in both directions (temporal flip), over 24 seeds.
        assert seen_steps == allowed | {-s for s in allowed}


def test_training_without_flip_keeps_frame_order(tree: Path) -> None:
    data = VimeoSeptuplets(tree, num_frames=3, crop=CROP, max_interval=3, temporal_flip=False)
    for seed in range(8):
        torch.manual_seed(seed)
        numbers = [locate(frame)[1] for frame in data[0]]
        assert numbers == sorted(numbers)


# --- damaged data and bad arguments --------------------------------------------------------


def test_missing_png_names_the_file(tmp_path: Path) -> None:
    make_vimeo_tree(tmp_path, n_train=1, n_test=1)
    (tmp_path / "sequences" / "00002" / "0001" / "im2.png").unlink()
    with pytest.raises(UserError, match=r"00002/0001/im2\.png is missing"):
        VimeoSeptuplets(tmp_path, split="test", num_frames=3)[0]


def test_missing_sequence_folder(tmp_path: Path) -> None:
    make_vimeo_tree(tmp_path, n_train=1, n_test=1)
    (tmp_path / "sep_testlist.txt").write_text("00009/0001\n")
    with pytest.raises(UserError, match=r"00009/0001/im1\.png is missing"):
        VimeoSeptuplets(tmp_path, split="test")[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_png_names_the_file(tmp_path: Path, damage: str) -> None:
    make_vimeo_tree(tmp_path, n_train=1, n_test=1)
    png = tmp_path / "sequences" / "00002" / "0001" / "im1.png"
    png.write_bytes(b"not a png" if damage == "garbage" else png.read_bytes()[: png.stat().st_size // 2])
    with pytest.raises(UserError, match=r"00002/0001/im1\.png is damaged"):
        VimeoSeptuplets(tmp_path, split="test", num_frames=1)[0]


def test_mixed_frame_sizes(tmp_path: Path) -> None:
    make_vimeo_tree(tmp_path, n_train=1, n_test=1)
    Image.fromarray(frame_pixels(1, 2, (384, 256))).save(tmp_path / "sequences" / "00002" / "0001" / "im2.png")
    with pytest.raises(UserError, match="mixes frame sizes"):
        VimeoSeptuplets(tmp_path, split="test", num_frames=2)[0]


def test_frames_smaller_than_the_crop(tmp_path: Path) -> None:
    make_vimeo_tree(tmp_path, n_train=1, n_test=0, size=(192, 128))
    with pytest.raises(UserError, match="00001/0001"):
        VimeoSeptuplets(tmp_path, crop=256)[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": 8}, "num_frames"),
        ({"crop": 100}, "crop"),
        ({"crop": 0}, "crop"),
        ({"crop": None}, "training needs a crop"),
        ({"max_interval": 0}, "max_interval"),
        ({"max_clips": 0}, "max_clips"),
        ({"val_crop_limit": 64}, "val_crop_limit"),
    ],
)
def test_bad_arguments(tree: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VimeoSeptuplets(tree, **kwargs)

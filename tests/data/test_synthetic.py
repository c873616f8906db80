"""Tests for the built-in synthetic training clips (nvc_train.data.synthetic)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from nvc_train.data.synthetic import SyntheticClips, synthetic_clip

# Small frames keep the whole module well under a second.
H, W = 48, 64


def _mad(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference."""
    return (a - b).abs().mean().item()


# --- shape, dtype, range ---------------------------------------------------------------


@pytest.mark.parametrize(("t", "h", "w"), [(3, H, W), (1, 16, 16), (4, 16, 40), (2, 37, 19)])
def test_shape_dtype_range(t: int, h: int, w: int) -> None:
    clip = synthetic_clip(5, t, h, w)
    assert clip.shape == (t, 3, h, w)
    assert clip.dtype == torch.float32
    assert clip.is_contiguous()
    assert torch.isfinite(clip).all()
    assert clip.min().item() >= 0.0
    assert clip.max().item() <= 1.0


# --- determinism -------------------------------------------------------------------------


def test_same_seed_is_bit_identical() -> None:
    assert torch.equal(synthetic_clip(3, 3, H, W), synthetic_clip(3, 3, H, W))


def test_different_seeds_differ() -> None:
    assert _mad(synthetic_clip(3, 3, H, W), synthetic_clip(4, 3, H, W)) > 0.01


def test_independent_of_torch_threads() -> None:
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = synthetic_clip(11, 3, H, W)
        torch.set_num_threads(2)
        two = synthetic_clip(11, 3, H, W)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


def test_golden_checksum() -> None:
    # The generator is built from correctly rounded IEEE operations only, so these bytes
    # must be the same on every machine. If you change the generator on purpose, the
    # training data changes: update this value in the same commit.
    digest = hashlib.sha256(synthetic_clip(7, 2, 32, 48).numpy().tobytes()).hexdigest()
    assert digest == "d4e1022c905d1582b0e7a75747aa647b08559892fd974eaea7769ebb88390f31"


# --- content: motion and texture ---------------------------------------------------------

SEEDS = range(8)


def test_consecutive_frames_move_but_stay_close() -> None:
    for seed in SEEDS:
        clip = synthetic_clip(seed, 5, H, W)
        other = synthetic_clip(seed + 1000, 5, H, W)
        step = _mad(clip[1:], clip[:-1])
        # Something changes every frame (motion + sensor noise) ...
        assert all(_mad(clip[t + 1], clip[t]) > 0.0 for t in range(4)), seed
        # ... but far less than between two unrelated clips: the frames are predictable.
        assert step < 0.5 * _mad(clip, other), seed
        # Motion accumulates: frames 4 apart differ more than neighbours on average.
        assert _mad(clip[4], clip[0]) > step, seed


def test_textures_have_spatial_structure() -> None:
    for seed in SEEDS:
        frame = synthetic_clip(seed, 1, H, W)[0]
        # Not flat: real contrast within the frame.
        assert frame.std().item() > 0.03, seed
        # Edges and texture: horizontal/vertical gradients are clearly non-zero ...
        grad_x = _mad(frame[..., 1:], frame[..., :-1])
        grad_y = _mad(frame[..., 1:, :], frame[..., :-1, :])
        assert grad_x > 0.005 and grad_y > 0.005, seed
        # ... yet neighbouring pixels are correlated, unlike noise: adjacent pixels are
        # much closer than pixels half a frame apart.
        far = _mad(frame, frame.roll(W // 2, dims=-1))
        assert grad_x < 0.6 * far, seed


# --- Dataset -----------------------------------------------------------------------------


def test_dataset_length_and_items() -> None:
    ds = SyntheticClips(num_clips=3, num_frames=2, height=H, width=W, seed=9)
    assert len(ds) == 3
    items = [ds[i] for i in range(len(ds))]
    for item in items:
        assert item.shape == (2, 3, H, W)
        assert item.dtype == torch.float32
    assert _mad(items[0], items[1]) > 0.01
    # Deterministic, order independent, and equal to the documented per-item clip.
    ds2 = SyntheticClips(num_clips=3, num_frames=2, height=H, width=W, seed=9)
    assert torch.equal(ds2[2], items[2])
    assert torch.equal(ds[-1], items[2])
    assert torch.equal(items[1], synthetic_clip(ds.clip_seed(1), 2, H, W))
    # A different base seed gives different clips.
    other = SyntheticClips(num_clips=3, num_frames=2, height=H, width=W, seed=10)
    assert not torch.equal(other[0], items[0])
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(IndexError):
        ds[-4]


def test_dataset_defaults_and_dataloader() -> None:
    ds = SyntheticClips(num_clips=2)
    assert (ds.num_frames, ds.height, ds.width, ds.seed) == (3, 256, 256, 0)
    small = SyntheticClips(num_clips=4, num_frames=2, height=16, width=24)
    batch = next(iter(torch.utils.data.DataLoader(small, batch_size=2)))
    assert batch.shape == (2, 2, 3, 16, 24)


# --- argument validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        (0, 0, H, W),  # num_frames < 1
        (0, 3, 15, W),  # height < 16
        (0, 3, H, 8),  # width < 16
        (-1, 3, H, W),  # negative seed
        (0, 2.5, H, W),  # non-integer
    ],
)
def test_synthetic_clip_rejects_bad_arguments(args: tuple) -> None:
    with pytest.raises(ValueError):
        synthetic_clip(*args)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_clips": 0},
        {"num_clips": 2, "num_frames": 0},
        {"num_clips": 2, "height": 10},
        {"num_clips": 2, "width": 0},
        {"num_clips": 2, "seed": -3},
    ],
)
def test_dataset_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticClips(**kwargs)

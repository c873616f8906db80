"""The integer scale-space volume and warp (first block of the pixel-exact decoder): equal to
an independent numpy int64 reference on random and adversarial inputs, within rounding of
PyTorch's float64 definitions, and close to CompressAI's float motion compensation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nvc_train.data.synthetic import synthetic_clip
from nvc_train.quant import integer_warp as iw
from tests.quant import warp_reference as ref

H, W = 32, 48  # divisible by 2**4: four pooling levels come back to full size


def frames(kind: str, seed: int = 0) -> torch.Tensor:
    """(1, 2, H, W) int64 samples."""
    g = torch.Generator().manual_seed(seed)
    full = 255 * 2**iw.SAMPLE_FRAC_BITS
    if kind == "random":
        return torch.randint(0, full + 1, (1, 2, H, W), generator=g)
    if kind == "extremes":  # 0 and full scale in a checkerboard: every sum at its largest swing
        board = (torch.arange(H).view(H, 1) + torch.arange(W).view(1, W)) % 2
        return (board * full).expand(1, 2, H, W).clone()
    if kind == "overshoot":  # a decoder's unclamped sum may leave [0, 255] a little
        return torch.randint(-full // 4, full + full // 4, (1, 2, H, W), generator=g)
    if kind == "constant":
        return torch.full((1, 2, H, W), 12345)
    raise ValueError(kind)


KINDS = ["random", "extremes", "overshoot", "constant"]


def coordinates(kind: str, seed: int = 0) -> torch.Tensor:
    """(1, 3, H, W) fixed-point (x, y, depth) positions."""
    g = torch.Generator().manual_seed(seed)
    one = 1 << iw.COORD_FRAC_BITS
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    base = torch.stack((xs, ys, torch.zeros_like(xs))).unsqueeze(0) * one
    if kind == "sub-pixel":
        offset = torch.randint(-3 * one, 3 * one, (1, 3, H, W), generator=g)
        offset[:, 2] = torch.randint(0, 5 * one, (1, H, W), generator=g)
        return base + offset
    if kind == "out-of-frame":  # far outside on every side, and negative depth
        return base + torch.randint(-4 * W * one, 4 * W * one, (1, 3, H, W), generator=g)
    if kind == "depth-ends":  # the scale field at both ends and beyond
        c = base.clone()
        c[:, 2] = torch.tensor([0, 5 * one, -one, 6 * one, 5 * one - 1, 1])[torch.arange(H * W) % 6].view(H, W)
        return c
    if kind == "integer":  # exact pixel positions: weights 0 and 2**frac_bits
        return base + torch.randint(-2, 3, (1, 3, H, W), generator=g) * one
    raise ValueError(kind)


COORDS = ["sub-pixel", "out-of-frame", "depth-ends", "integer"]


def test_kernel_is_compressais_gaussian_in_integers():
    taps = iw.kernel_taps()
    assert sum(taps) == 2**iw.KERNEL_BITS and taps == taps[::-1] and len(taps) == 11
    np.testing.assert_array_equal(taps, ref.taps())
    from compressai.models.utils import gaussian_kernel1d

    float_taps = gaussian_kernel1d(11, iw.SIGMA0, torch.device("cpu"), torch.float64) * 2**iw.KERNEL_BITS
    assert (torch.tensor(taps) - float_taps).abs().max() <= 1


@pytest.mark.parametrize("kind", KINDS)
def test_volume_equals_numpy_reference(kind):
    v = frames(kind)
    np.testing.assert_array_equal(iw.gaussian_volume(v).numpy(), ref.volume(v.numpy()))


@pytest.mark.parametrize("kind", COORDS)
def test_warp_equals_numpy_reference(kind):
    volume = iw.gaussian_volume(frames("random", 1))
    coords = coordinates(kind, 2)
    np.testing.assert_array_equal(iw.warp(volume, coords).numpy(), ref.warp(volume.numpy(), coords.numpy()))


@pytest.mark.parametrize("kind", COORDS)
def test_warp_is_grid_sample_border_within_rounding(kind):
    """Against PyTorch's own float64 grid_sample (trilinear, border, align_corners=False) on
    the same integer volume and the same positions: at most half a sample unit apart."""
    volume = iw.gaussian_volume(frames("random", 3))
    coords = coordinates(kind, 4)
    d = volume.shape[2]
    c = coords.double() / 2**iw.COORD_FRAC_BITS
    grid = torch.stack(((2 * c[:, 0] + 1) / W - 1, (2 * c[:, 1] + 1) / H - 1, (2 * c[:, 2] + 1) / d - 1), -1)
    want = F.grid_sample(volume.double(), grid.unsqueeze(1), padding_mode="border", align_corners=False).squeeze(2)
    assert (iw.warp(volume, coords).double() - want).abs().max() <= 0.5 + 1e-9  # a tie rounds up


def test_volume_is_close_to_compressais_float_volume():
    """Kernel rounding and per-pass rounding cost at most 0.02 of an 8-bit level."""
    from compressai.models.video import ScaleSpaceFlow

    x = synthetic_clip(5, 1, H * 4, W * 4)  # (1, 3, 4H, 4W)
    ssf = ScaleSpaceFlow()
    want = ssf.gaussian_volume(x.double(), ssf.sigma0, ssf.num_levels) * 255
    got = iw.gaussian_volume(iw.to_samples(x)).double() / 2**iw.SAMPLE_FRAC_BITS
    assert (got - want).abs().max() < 0.02


def test_motion_compensation_is_close_to_compressais_float():
    """The whole block (samples, volume, fixed-point positions, warp) against
    ScaleSpaceFlow.forward_prediction on a synthetic frame with a smooth random flow: within
    half an 8-bit level (positions are rounded to 1/256 pixel)."""
    from compressai.models.video import ScaleSpaceFlow

    x = synthetic_clip(6, 1, H * 4, W * 4)
    g = torch.Generator().manual_seed(7)
    motion = F.interpolate(torch.randn(1, 3, 8, 12, generator=g) * 0.05, size=x.shape[-2:], mode="bilinear")
    motion[:, 2] = motion[:, 2] * 10  # scale field across most of [-1, 1]
    ssf = ScaleSpaceFlow()
    want = ssf.forward_prediction(x, motion).double() * 255
    coords = iw.fixed_point_coordinates(motion[:, :2], motion[:, 2:], ssf.num_levels + 1)
    got = iw.warp(iw.gaussian_volume(iw.to_samples(x)), coords).double() / 2**iw.SAMPLE_FRAC_BITS
    assert (got - want).abs().max() < 0.5


def test_summation_order_cannot_change_a_sample_float32_twin_does():
    """The eight corner products summed in two orders: identical in int64; the float32 twin
    of the same computation (same positions, weights as fractions) differs somewhere."""
    volume = iw.gaussian_volume(frames("random", 8))
    coords = coordinates("sub-pixel", 9)
    one = 1 << iw.COORD_FRAC_BITS

    def corners(vol, dtype):
        n, c, d, h, w = vol.shape
        x, y, z = (coords[:, i].clamp(0, (s - 1) * one) for i, s in enumerate((w, h, d)))
        out = []
        for zi, wz in ((z >> 8, one - (z & 255)), (((z >> 8) + 1).clamp(max=d - 1), z & 255)):
            for yi, wy in ((y >> 8, one - (y & 255)), (((y >> 8) + 1).clamp(max=h - 1), y & 255)):
                for xi, wx in ((x >> 8, one - (x & 255)), (((x >> 8) + 1).clamp(max=w - 1), x & 255)):
                    sample = vol.reshape(n, c, -1).gather(2, ((zi * h + yi) * w + xi).view(n, 1, -1).expand(n, c, -1))
                    weight = (wz * wy * wx).view(n, 1, -1)
                    out.append(sample.to(dtype) * (weight.to(dtype) / 2**24 if dtype.is_floating_point else weight))
        return out

    terms = corners(volume, torch.int64)
    assert torch.equal(sum(terms), sum(terms[::-1]))
    f_terms = corners(volume.float() / 2**8, torch.float32)
    assert not torch.equal(sum(f_terms), sum(f_terms[::-1]))


@pytest.mark.gpu
def test_cpu_and_cuda_compute_the_same_samples():
    """Integer arithmetic on the GPU: the same volume and warp as the CPU, bit for bit."""
    v, coords = frames("random", 10), coordinates("sub-pixel", 11)
    volume = iw.gaussian_volume(v)
    assert torch.equal(iw.gaussian_volume(v.cuda()).cpu(), volume)
    assert torch.equal(iw.warp(volume.cuda(), coords.cuda()).cpu(), iw.warp(volume, coords))

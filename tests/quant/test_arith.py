"""The integer contract against slow, obviously-correct references (numpy int64 / Python int)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nvc_train.quant import arith
from tests.quant import reference


@pytest.mark.parametrize("seed", range(3))
def test_conv_transpose_exact_matches_int64_reference_beyond_2_24(seed):
    g = np.random.default_rng(seed)
    x = g.integers(-2**20, 2**20, size=(2, 16, 5, 6), dtype=np.int64)  # wide first-layer inputs
    w = g.integers(-127, 128, size=(16, 8, 5, 5), dtype=np.int64)
    ref = reference.conv_transpose(x, w)
    got = arith.conv_transpose_exact(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    assert np.abs(ref).max() > 2**24, "test must exercise accumulators float32 cannot hold"
    np.testing.assert_array_equal(got, ref)


def test_float32_would_not_be_exact():
    """Why the float32 path works on digits in chunks: the undivided products in float32
    round (so the test above bites)."""
    g = np.random.default_rng(0)
    x = g.integers(-2**20, 2**20, size=(1, 16, 5, 6), dtype=np.int64)
    w = g.integers(-127, 128, size=(16, 8, 5, 5), dtype=np.int64)
    ref = reference.conv_transpose(x, w)
    f32 = torch.nn.functional.conv_transpose2d(torch.from_numpy(x).float(), torch.from_numpy(w).float(),
                                               stride=2, padding=2, output_padding=1)
    assert (torch.round(f32).long().numpy() != ref).any()


def python_requantize(acc: int, m: int, shift: int, sat: int, lo: int, hi: int) -> int:
    acc = max(-sat, min(sat, acc))
    return max(lo, min(hi, (acc * m + (1 << (shift - 1))) >> shift))  # Python >> floors: round half up


@pytest.mark.parametrize("out_bound", [255, 65535])
def test_requantize_matches_python_integers(out_bound):
    g = torch.Generator().manual_seed(out_bound)
    real = torch.rand(7, generator=g, dtype=torch.float64) * 1e-3 + 1e-7
    fp = arith.fixed_point(real, out_bound)
    arith.check_fixed_point(fp)
    acc = torch.randint(-2**45, 2**45, (3, 7, 4, 4), generator=g)
    acc[0, :, 0, 0] = torch.round(out_bound / real * 0.5).long()  # some values inside the range
    got = arith.requantize(acc, fp, 0, out_bound)
    for idx in np.ndindex(*acc.shape):
        c = idx[1]
        want = python_requantize(int(acc[idx]), int(fp.multiplier[c]), int(fp.shift[c]), int(fp.saturation[c]), 0, out_bound)
        assert int(got[idx]) == want


def test_requantize_rounds_half_up():
    fp = arith.FixedPoint(torch.tensor([1]), torch.tensor([1]), torch.tensor([10**6]))  # multiply by 1/2
    acc = torch.tensor([-3, -1, 1, 3]).view(1, 1, 1, 4)
    out = arith.requantize(acc, fp, -10, 10)
    assert out.flatten().tolist() == [-1, 0, 1, 2]  # -1.5→-1, -0.5→0, 0.5→1, 1.5→2


def test_fixed_point_is_precise_and_saturation_is_equivalent():
    real = torch.tensor([3.7e-5, 0.25, 0.9999, 1.7e-9], dtype=torch.float64)
    fp = arith.fixed_point(real, 255)
    approx = fp.multiplier.double() * torch.ldexp(torch.ones(4, dtype=torch.float64), -fp.shift)
    # Round to nearest: |m·2**-s − M| <= 2**-s / 2, i.e. relative error <= 1 / (2m); the shift
    # cap for tiny multipliers still leaves m >= 2**20 here (relative error < 1e-6).
    assert torch.all(torch.abs(approx / real - 1) <= 0.5 / fp.multiplier.double())
    assert torch.all(fp.multiplier >= 2**20)
    # Clamping at ±saturation changes no output: just beyond it the output is already saturated.
    for c in range(4):
        s = int(fp.saturation[c])
        assert python_requantize(s, int(fp.multiplier[c]), int(fp.shift[c]), 2**62, 0, 255) == 255


def test_scale_thresholds_with_accumulator_scales_that_are_products_of_float32():
    """Thresholds against float64 comparisons at and around every threshold, with
    accumulator scales formed as real ones are: float32 input scale × float32 weight scale."""
    g = torch.Generator().manual_seed(0)
    table = torch.exp(torch.linspace(np.log(0.11), np.log(256), 64)).float()
    s_in = (torch.rand((), generator=g) * 0.05 + 1e-3).float()
    s_w = (torch.rand(6, generator=g) * 0.02 + 1e-4).float()
    acc_scale = s_in.double() * s_w.double()
    assert torch.any(acc_scale.float().double() != acc_scale), "products must need more than float32's 24 bits"
    thr = arith.scale_index_thresholds(table, acc_scale)
    acc = (thr.unsqueeze(-1) + torch.arange(-2, 3)).reshape(6, -1).T.reshape(1, -1, 6, 1).permute(0, 2, 1, 3).contiguous()
    got = arith.scale_indexes(acc, thr)
    scales = acc.numpy().astype(np.float64) * acc_scale.numpy().reshape(1, -1, 1, 1)
    want = (scales[..., None] > table.numpy().astype(np.float64)[:-1]).sum(-1)
    np.testing.assert_array_equal(got.numpy(), want)


def test_accumulator_bound_is_attained_and_never_exceeded():
    """The stress pattern (signs of the weights, times the bias sign) reaches the per-parity
    bound exactly for signed inputs; random inputs stay below it."""
    from nvc_train.quant.conformance import stress_pattern

    g = torch.Generator().manual_seed(3)
    w = torch.randint(-127, 128, (16, 8, 5, 5), generator=g)
    b = torch.randint(-1000, 1000, (8,), generator=g)
    bound = arith.accumulator_bound(w, b, 255)
    worst = arith.add_bias(arith.conv_transpose_exact(stress_pattern(w, b, signed=True).long() * 255, w), b)
    assert worst.abs().max() == bound
    x = torch.randint(-255, 256, (4, 16, 6, 7), generator=g)
    assert arith.add_bias(arith.conv_transpose_exact(x, w), b).abs().max() < bound


def test_weight_quantization_near_rounding_ties_matches_the_reference():
    """Weights a hair either side of (k + 1/2)·scale: the integer depends on how the division
    is done; the contract says float64 (a float32 or reciprocal division flips some)."""
    g = torch.Generator().manual_seed(4)
    scale = (torch.rand(64, generator=g) * 0.01 + 1e-4).float()
    k = torch.randint(-126, 126, (32, 64, 5, 5), generator=g).double()
    w = ((k + 0.5) * scale.double().view(1, -1, 1, 1)).float()
    w = torch.where(torch.rand(w.shape, generator=g) < 0.5, torch.nextafter(w, torch.full_like(w, 1e9)), w)
    w[0, :, 0, 0] = 127 * scale  # max |w| sets the scale
    got, got_scale = arith.quantize_weight_per_channel(w)
    want, want_scale = reference.quantize_weight(w.numpy())
    np.testing.assert_array_equal(got_scale.numpy(), want_scale)
    np.testing.assert_array_equal(got.numpy().astype(np.int64), want)
    float32_division = torch.clamp(torch.round(w / got_scale.view(1, -1, 1, 1)), -127, 127)
    assert (float32_division != got).any(), "inputs must sit where the division method matters"

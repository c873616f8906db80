"""Every GEMM path and algorithm of the exact convolution gives the integers of an independent
reference, on random, worst-case and frame-sized inputs; broken variants of each path fail.

References: numpy int64 tap loops (``tests/quant/reference.py``) for small shapes; for
frame-sized ones, PyTorch's own float64 ``conv_transpose2d`` (its native kernel, no digits, no
column matrix), exact there because every sum stays below 2**53 (asserted per case).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nvc_train.quant import exact_conv
from tests.quant import reference

PATHS = exact_conv.PATHS
ALGORITHMS = ("gather", "scatter")


def native_float64(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch's float64 transposed convolution, exact when every sum is below 2**53."""
    assert int(x.abs().max()) * int(w.abs().sum(dim=(0, 2, 3)).max()) < 2**53
    out = F.conv_transpose2d(x.double(), w.double(), stride=2, padding=2, output_padding=1)
    out = torch.round(out).long()
    return out if b is None else out + b.view(1, -1, 1, 1)


CASES = [  # (name, N, C_in, C_out, H, W, input range, weight range)
    ("signed 2**20 inputs", 2, 16, 16, 9, 11, (-2**20, 2**20), 127),
    ("three images, 16-bit", 3, 8, 12, 4, 5, (0, 65535), 127),
    ("16-bit activations", 1, 24, 3, 10, 7, (0, 65535), 127),
    ("8-bit activations, odd channels", 2, 11, 17, 5, 4, (0, 255), 127),
    ("latent bound (symbols ±2**15 on the 2**-8 grid)", 1, 16, 20, 3, 5, (-(2**23 + 2**23 - 1), 2**23 + 2**23 - 1), 127),
    ("one position", 1, 8, 16, 1, 1, (-5, 5), 127),
    ("single row and column", 1, 8, 16, 1, 9, (-300, 300), 127),
    ("PTQ affine weights ±255", 1, 5, 7, 4, 9, (-3, 100), 255),
    ("positive weights only", 1, 9, 20, 6, 7, (0, 499), 200),
]


def _image_bands(x: np.ndarray, c_out: int, path: str, algorithm: str) -> tuple[int, int]:
    """Band sizes holding exactly one and exactly two whole images of ``x`` for this layer."""
    n, c_in, h, w = x.shape
    count = exact_conv.choose_digits(int(x.min()), int(x.max()), path)[0]
    pitch = exact_conv.empty_planes(1, 1, 1, w, 0, 0, path, "cpu").padded.shape[-1]
    size = exact_conv.PATH_DTYPES[path].itemsize
    if algorithm == "gather":
        per_image = 9 * exact_conv.padded_channels(c_in) * count * pitch * size * h
    else:
        per_image = 25 * c_out * count * pitch * 4 * (h + 2)
    return per_image, 2 * per_image


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_path_algorithm_and_band_split_equals_int64_tap_loops(case):
    _, n, c_in, c_out, h, w, (lo, hi), wmax = case
    g = np.random.default_rng(h * w + c_in)
    x = g.integers(lo, hi + 1, size=(n, c_in, h, w))
    x.flat[0], x.flat[-1] = lo, hi  # both ends of the range
    wt = g.integers(-wmax if wmax != 200 else 0, wmax + 1, size=(c_in, c_out, 5, 5))
    bias = g.integers(-1000, 1000, size=c_out)
    want = reference.conv_transpose(x, wt) + bias.reshape(1, -1, 1, 1)
    for path in PATHS:
        for algorithm in ALGORITHMS:
            # All images in one GEMM; one image per band (a band of bytes_per_image); two
            # images then one (three images); one input row per band.
            for band_bytes in (exact_conv.BAND_BYTES, *_image_bands(x, c_out, path, algorithm), 1):
                got = exact_conv.conv_transpose_exact(torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(bias),
                                                      path=path, band_bytes=band_bytes, algorithm=algorithm)
                np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{path} {algorithm} {band_bytes}")


def stress_inputs(w: torch.Tensor, magnitude: int, signed: bool) -> torch.Tensor:
    """Every output parity class of every channel at its proven bound (the stress record's
    pattern), tiled across a frame-sized input."""
    from nvc_train.quant.conformance import stress_pattern

    pattern = stress_pattern(w, torch.zeros(w.shape[1], dtype=torch.int64), signed=signed)
    return pattern.long() * magnitude


@pytest.mark.slow
@pytest.mark.parametrize("frame", [(768, 1280), (1088, 1920)], ids=["1280x768", "1920x1088"])
def test_frame_sized_layers_equal_the_native_float64_convolution(frame):
    """The synthesis decoders' last two layers at full frame size (input H/4×W/4 and H/2×W/2:
    many bands, the 3-channel scatter layer), 16-bit activations with worst-case tiles and
    random content; channels cut to 8 inputs to keep the native reference affordable."""
    h, w = frame
    g = torch.Generator().manual_seed(h)
    for c_out, (hi, wi) in ((128, (h // 4, w // 4)), (3, (h // 2, w // 2))):
        wt = torch.randint(-127, 128, (8, c_out, 5, 5), generator=g)
        x = torch.randint(0, 2**16, (1, 8, hi, wi), generator=g)
        x[:, :, :12, :15] = stress_inputs(wt, 2**16 - 1, signed=False)
        want = native_float64(x, wt)
        for path in PATHS:
            assert torch.equal(exact_conv.conv_transpose_exact(x, wt, path=path), want), (path, c_out)


def test_stress_inputs_reach_the_bound_on_every_path():
    """Signed layer-0 inputs at the synthesis latent bound (2**24 − 1): accumulators reach the
    per-class bound (~2**41 here), and every path computes them exactly."""
    from nvc_train.quant.arith import accumulator_bound
    from nvc_train.quant.synthesis import INPUT_BOUND

    g = torch.Generator().manual_seed(7)
    wt = torch.randint(-127, 128, (192, 128, 5, 5), generator=g)
    x = stress_inputs(wt, INPUT_BOUND, signed=True)
    want = native_float64(x, wt)
    assert int(want.abs().max()) == accumulator_bound(wt, torch.zeros(128, dtype=torch.int64), INPUT_BOUND) > 2**40
    for path in PATHS:
        for algorithm in ALGORITHMS:
            assert torch.equal(exact_conv.conv_transpose_exact(x, wt, path=path, algorithm=algorithm), want)


def test_a_dropped_digit_plane_fails(monkeypatch):
    """Control: with one digit fewer than the data needs, the int8 and float32 paths give
    other numbers (the tests above would catch it)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2**16, (1, 16, 6, 7), generator=g)
    wt = torch.randint(-127, 128, (16, 20, 5, 5), generator=g)
    want = native_float64(x, wt)
    real = exact_conv.choose_digits
    monkeypatch.setattr(exact_conv, "choose_digits", lambda lo, hi, path="int8": (max(1, real(lo, hi, path)[0] - 1),
                                                                                  real(lo, hi, path)[1]))
    for path in ("int8", "float32"):
        assert not torch.equal(exact_conv.conv_transpose_exact(x, wt, path=path), want), path


def test_float32_chunks_are_what_keeps_it_exact(monkeypatch):
    """Control: 1024 input channels, positive digits and weights (so partial sums only grow,
    to ~2**27); with the chunk limit lifted (one chunk per GEMM) the float32 path rounds,
    with it it is exact."""
    g = torch.Generator().manual_seed(2)
    wt = torch.randint(100, 128, (1024, 16, 5, 5), generator=g)
    x = torch.randint(1, 128, (1, 1024, 3, 4), generator=g) + 256 * torch.randint(1, 128, (1, 1024, 3, 4), generator=g)
    want = native_float64(x, wt)
    assert torch.equal(exact_conv.conv_transpose_exact(x, wt, path="float32"), want)
    assert len(exact_conv.prepare_weights(wt, "float32", "cpu").groups[0][0]) > 1, "must need several chunks"
    monkeypatch.setattr(exact_conv, "FLOAT32_EXACT", 2**40)
    assert not torch.equal(exact_conv.conv_transpose_exact(x, wt, path="float32"), want)


def test_float32_path_is_exact_with_reduced_precision_matmul_allowed():
    """The float32 path's operands are 8-bit digits, exact in TF32 and bfloat16 inputs: with
    every reduced-precision switch PyTorch has turned on, the results do not move."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 2**16, (1, 64, 8, 9), generator=g)
    wt = torch.randint(-127, 128, (64, 32, 5, 5), generator=g)
    want = native_float64(x, wt)
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # bfloat16 inputs where a backend has them
        assert torch.equal(exact_conv.conv_transpose_exact(x, wt, path="float32"), want)
    finally:
        torch.set_float32_matmul_precision(saved)


def test_digits_round_trip_and_offsets():
    """Balanced digits (and the offset of unsigned ranges) write every integer of the range."""
    for lo, hi in ((0, 255), (0, 65535), (-2**23, 2**23), (-5, 5), (3, 300), (-2**40, 2**40)):
        count, offset = exact_conv.choose_digits(lo, hi)
        v = torch.cat([torch.arange(lo, lo + 300), torch.arange(hi - 300, hi + 1), torch.tensor([0])])
        v = v[(v >= min(lo, 0)) & (v <= max(hi, 0))]
        d = torch.empty(count, v.numel(), dtype=torch.int64)
        exact_conv.write_digits(d, v, offset, "int8")
        assert int(d.min()) >= -128 and int(d.max()) <= 127
        back = offset + sum(d[k] * 256**k for k in range(count))
        assert torch.equal(back, v), (lo, hi)
    assert exact_conv.choose_digits(0, 65535) == (2, 32896)  # 16-bit activations: two planes
    assert exact_conv.choose_digits(-2**22, 2**22) == (3, 0)  # signed data: no offset


def test_int8_plane_sums_are_proven_below_2_31():
    w = torch.full((192, 128, 5, 5), -127)
    assert exact_conv.plane_bound(w) == 9 * 192 * 127 * 128 < 2**31
    with pytest.raises(ValueError, match="2\\*\\*31"):
        exact_conv.prepare_weights(torch.full((16000, 16, 5, 5), 127), "int8", "cpu")
    # The value-free ceiling (9 · 128 · 128 per input channel) proves small layers without a
    # look at the weights; where it cannot (16,000 channels), their actual sums still decide.
    assert exact_conv.plane_bound_ceiling(192) >= exact_conv.plane_bound(w)
    assert exact_conv.plane_bound_ceiling(16000) >= 2**31
    exact_conv.prepare_weights(torch.ones(16000, 16, 5, 5), "int8", "cpu")  # 9 · 16000 · 128 < 2**31


@pytest.mark.parametrize("lo, hi", [(-127, 127), (-255, 255)])
def test_prepared_class_sums_are_the_int64_sums_on_every_path(lo, hi):
    """The offset correction's per-class weight sums, taken in int32 for int8 weights and in
    int64 otherwise, equal int64 sums of the weights as given (float32, as QAT passes them)."""
    g = torch.Generator().manual_seed(4)
    w = torch.randint(lo, hi + 1, (40, 24, 5, 5), generator=g)
    for path in exact_conv.PATHS:
        prepared = exact_conv.prepare_weights(w.float(), path, "cpu")
        assert prepared.class_sums.dtype == torch.int64
        assert torch.equal(prepared.class_sums, exact_conv.parity_class_sums(w.long())), path


def test_int_mm_probe_and_path_selection(monkeypatch):
    """The private ``torch._int_mm`` is probed per device: it passes on this CPU; a device it
    cannot run on (meta tensors have no values) falls back to float32; the environment
    variable picks a path and a wrong value is refused."""
    monkeypatch.delenv(exact_conv.PATH_ENV, raising=False)
    assert exact_conv.int_mm_works("cpu") and exact_conv.default_path("cpu") == "int8"
    assert not exact_conv.int_mm_works("meta")
    monkeypatch.setattr(exact_conv, "int_mm_works", lambda *a: False)
    assert exact_conv.default_path("cpu") == "float32"
    monkeypatch.setenv(exact_conv.PATH_ENV, "float64")
    assert exact_conv.default_path("cpu") == "float64"
    monkeypatch.setenv(exact_conv.PATH_ENV, "fp16")
    with pytest.raises(ValueError, match="NVC_TRAIN_EXACT_GEMM"):
        exact_conv.default_path("cpu")


def test_frozen_decoder_output_is_the_same_on_every_path(frozen):
    """A whole frozen hyper-decoder chain (planes kept between layers, requantization fused
    into the bands) gives the same output on every path and equals layer-by-layer int64."""
    from nvc_train.quant import arith
    from nvc_train.quant.integer import IntegerHyperDecoder

    _, tensors = frozen
    dec = IntegerHyperDecoder("mean", {k[len("keyframe.mean."):]: v for k, v in tensors.items()
                                       if k.startswith("keyframe.mean.")})
    g = torch.Generator().manual_seed(4)
    z = torch.randint(-2**15 * 256, 2**15 * 256, (1, 192, 5, 6), generator=g)
    x = z
    for i in range(2):
        x = arith.requantize(dec.layer_accumulator(i, x, "float64"), dec._fixed_point(i), *dec.activation_range(i))
    want = arith.requantize(dec.layer_accumulator(2, x, "float64"), dec._fixed_point(2), -2**23 + 1, 2**23 - 1)
    for path in PATHS:
        dec.gemm_path = path
        assert torch.equal(dec(z), want), path


@pytest.mark.gpu
def test_every_path_on_cuda_equals_the_cpu_at_1080p(cuda_flags_restored):
    """The synthesis decoders' frame-sized layers at 1920×1088 on CUDA with cuDNN autotuning
    and TF32 on: every GEMM path (int8 via ``torch._int_mm`` if its probe passes there, the
    float32 fallback with TF32 allowed, float64) gives the CPU's integers; PyTorch's float32
    convolution is the control that differs between the devices."""
    torch.backends.cudnn.enabled = torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    g = torch.Generator().manual_seed(11)
    moved = 0
    for c_in, c_out, h, w, hi in ((192, 128, 68, 120, 2**23), (128, 128, 272, 480, 2**16 - 1),
                                  (128, 3, 544, 960, 2**16 - 1)):
        wt = torch.randint(-127, 128, (c_in, c_out, 5, 5), generator=g)
        x = torch.randint(-hi if hi > 2**16 else 0, hi, (1, c_in, h, w), generator=g)
        x[:, :, :12, :15] = stress_inputs(wt, hi, signed=hi > 2**16)
        want = exact_conv.conv_transpose_exact(x, wt, path="int8")
        for path in PATHS:
            got = exact_conv.conv_transpose_exact(x.cuda(), wt.cuda(), path=path)
            assert torch.equal(got.cpu(), want), (path, c_out)
        xf, wf = x.float() / 2**16, wt.float() / 127
        moved += int((F.conv_transpose2d(xf.cuda(), wf.cuda(), stride=2, padding=2, output_padding=1).cpu()
                      != F.conv_transpose2d(xf, wf, stride=2, padding=2, output_padding=1)).sum())
    assert moved > 0, "the float32 control must differ between CPU and GPU"
    print(f"torch._int_mm on CUDA: {'used' if exact_conv.int_mm_works('cuda', 0) else 'probe failed: float32 path'}")


def test_float_results_are_rounded_never_truncated(monkeypatch):
    """Audit finding 4: a float GEMM whose results come back a quarter below the exact integers
    (as an inexact but close GEMM might) still gives the exact accumulators on the float32
    and float64 paths, because every float result is rounded; truncating them (``.long()``,
    the former code) would not."""
    g = torch.Generator().manual_seed(9)
    x = torch.randint(0, 2**16, (1, 16, 5, 6), generator=g)
    wt = torch.randint(-127, 128, (16, 20, 5, 5), generator=g)
    want = native_float64(x, wt)
    real_mm = torch.mm
    truncated_differs = []

    def low_mm(a, b):
        out = real_mm(a, b) - 0.25
        truncated_differs.append(bool((out.long() != real_mm(a, b).long()).any()))
        return out

    monkeypatch.setattr(torch, "mm", low_mm)
    for path in ("float32", "float64"):
        assert torch.equal(exact_conv.conv_transpose_exact(x, wt, path=path), want), path
    assert any(truncated_differs), "the nudge must change truncated results"

"""Exact integer arithmetic of the hyper-decoders: the contract of DESIGN.md §3, in code.

Every function here maps integers to integers with a result that does not depend on the
device, the thread count, the batch size or the convolution algorithm:

* transposed convolutions run in float64 on integer-valued tensors; every partial sum is
  proven below 2**53 at export (:func:`accumulator_bound`), so any summation order is exact;
* requantization is a fixed-point multiply and an arithmetic right shift in int64 with
  round-half-up (:func:`requantize`);
* the scale output never becomes a float: it is compared against integer thresholds
  (:func:`scale_indexes`).

Both the QAT fake-quant modules (:mod:`nvc_train.quant.fake_quant`) and the frozen integer
decoders (:mod:`nvc_train.quant.integer`) call these functions, so training sees exactly
what inference computes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

EXACT_FLOAT64 = 2**53
"""Integers below this magnitude are exact in float64, so are sums that stay below it."""

INT64_HEADROOM = 2**62
"""Products in :func:`requantize` are kept below this, one bit clear of int64 overflow."""

MULTIPLIER_BITS = 31
"""Precision of fixed-point multipliers: relative error at most 2**-31."""

WEIGHT_QMAX = 127
"""Weights are symmetric int8 in [-127, 127] (-128 unused, so negation is closed)."""

# SSF's hyper-decoders: ConvTranspose2d(k=5, stride=2, padding=2, output_padding=1).
DECONV_STRIDE, DECONV_PADDING, DECONV_OUTPUT_PADDING = 2, 2, 1


class FixedPoint(NamedTuple):
    """Per-channel requantization ``out = clamp((acc * multiplier + 2**(shift-1)) >> shift)``.

    All tensors have shape (C,) and dtype int64. ``saturation`` bounds |acc| before the
    multiply; any accumulator beyond it saturates the output anyway, so clamping there
    changes no result and keeps the product inside int64.
    """

    multiplier: Tensor
    shift: Tensor
    saturation: Tensor


def quantize_weight_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per-output-channel quantization of a ConvTranspose2d weight.

    Args:
        weight: (C_in, C_out, kH, kW) float32; output channels are dim 1 for transposed convs.

    Returns:
        ``(weight_int, scale)``: integer-valued float32 tensor of ``weight``'s shape in
        [-127, 127] and per-output-channel scales (C_out,) float32, ``weight ≈ weight_int·scale``.
    """
    w = weight.detach().float()
    max_abs = w.abs().amax(dim=(0, 2, 3))
    # An all-zero channel gets any positive scale; its integers are all zero either way.
    scale = torch.where(max_abs > 0, max_abs / WEIGHT_QMAX, torch.ones_like(max_abs))
    weight_int = torch.clamp(torch.round(w / scale.view(1, -1, 1, 1)), -WEIGHT_QMAX, WEIGHT_QMAX)
    return weight_int, scale


def accumulator_scale(input_scale: Tensor | float, weight_scale: Tensor) -> Tensor:
    """Real value of one accumulator unit per output channel, (C,) float64.

    The product of two float32 numbers has at most 48 significant bits, so computing it in
    float64 is exact: every machine gets the same value.
    """
    s_in = torch.as_tensor(input_scale, dtype=torch.float64, device=weight_scale.device)
    return s_in * weight_scale.detach().double()


def quantize_bias(bias: Tensor, acc_scale: Tensor) -> Tensor:
    """Bias as integers at the accumulator's scale, (C,) int64 (round half to even)."""
    return torch.round(bias.detach().double() / acc_scale).long()


def fixed_point(real_multiplier: Tensor, out_bound: int) -> FixedPoint:
    """Fixed-point form of a positive per-channel multiplier, exact and device-independent.

    Args:
        real_multiplier: (C,) float64, ``input_scale·weight_scale / output_scale``.
        out_bound: largest |output| the caller keeps (255 for 8-bit activations).
    """
    if not torch.all(real_multiplier > 0) or not torch.all(torch.isfinite(real_multiplier)):
        raise ValueError("requantization multipliers must be positive and finite")
    exponent = torch.frexp(real_multiplier).exponent.long()  # M = f·2**e, f in [0.5, 1)
    shift_cap = 61 - (out_bound + 2).bit_length()
    shift = torch.clamp(MULTIPLIER_BITS - exponent, max=shift_cap)
    if torch.any(shift < 1):
        raise ValueError("requantization multiplier too large for a right shift (scale collapse?)")
    # M·2**shift scales by a power of two (exact); +0.5 and floor are exact below 2**52.
    multiplier = torch.floor(torch.ldexp(real_multiplier, shift) + 0.5).long()
    if torch.any(multiplier < 1):
        raise ValueError("requantization multiplier underflows to zero (scale collapse?)")
    two_pow_shift = torch.ldexp(torch.ones_like(real_multiplier), shift)
    saturation = torch.ceil((out_bound + 1) * two_pow_shift / multiplier.double()).long() + 1
    return FixedPoint(multiplier, shift, saturation)


def check_fixed_point(fp: FixedPoint) -> None:
    """Raise if ``acc·multiplier + rounding`` could leave int64 for any clamped accumulator."""
    worst = (fp.saturation.double() * fp.multiplier.double()) + torch.ldexp(
        torch.ones_like(fp.multiplier, dtype=torch.float64), fp.shift - 1
    )
    if torch.any(worst >= INT64_HEADROOM):
        raise ValueError(f"requantization product may overflow int64 (max {worst.max().item():.3g})")


def conv_transpose_exact(x_int: Tensor, weight_int: Tensor) -> Tensor:
    """Exact integer transposed convolution of SSF's hyper-decoder layers.

    Args:
        x_int: (N, C_in, H, W) integer-valued tensor (any dtype).
        weight_int: (C_in, C_out, 5, 5) integer-valued tensor.

    Returns:
        (N, C_out, 2H, 2W) int64 accumulators without bias. Exact when the export-time bound
        (:func:`accumulator_bound`) holds; the final round is a safety net, not a fix.
    """
    x = x_int.to(torch.float64)
    w = weight_int.to(device=x.device, dtype=torch.float64)
    # cuDNN may pick FFT/Winograd algorithms that are not exact even in float64; the native
    # kernels (im2col + GEMM) only add integers, so disable it for this call.
    with torch.backends.cudnn.flags(enabled=False):
        acc = F.conv_transpose2d(
            x, w, stride=DECONV_STRIDE, padding=DECONV_PADDING, output_padding=DECONV_OUTPUT_PADDING
        )
    return torch.round(acc).long()


def add_bias(acc: Tensor, bias_int: Tensor) -> Tensor:
    """acc (N, C, H, W) int64 + bias (C,) int64."""
    return acc + bias_int.to(acc.device).view(1, -1, 1, 1)


def requantize(acc: Tensor, fp: FixedPoint, lo: int, hi: int) -> Tensor:
    """``clamp(round_half_up(acc · multiplier · 2**-shift), lo, hi)`` in int64, per channel.

    Args:
        acc: (N, C, H, W) int64 accumulators (bias included).
        fp: per-channel fixed-point multiplier from :func:`fixed_point`.
        lo, hi: output range, e.g. 0 and 255 for an unsigned 8-bit ReLU activation.
    """
    view = (1, -1, 1, 1)
    dev = acc.device
    sat = fp.saturation.to(dev).view(view)
    shift = fp.shift.to(dev).view(view)
    acc = torch.maximum(torch.minimum(acc, sat), -sat)
    rounding = torch.bitwise_left_shift(torch.ones_like(shift), shift - 1)
    out = torch.bitwise_right_shift(acc * fp.multiplier.to(dev).view(view) + rounding, shift)
    return torch.clamp(out, lo, hi)


def scale_index_thresholds(scale_table: Tensor, acc_scale: Tensor) -> Tensor:
    """Integer thresholds that turn a scale accumulator into a CDF index without floats.

    CompressAI's ``GaussianConditional.build_indexes`` gives index = number of entries of
    ``scale_table[:-1]`` strictly below the scale. With ``scale = fl64(acc · S_c)`` (exact
    product definition, see :func:`accumulator_scale`), ``scale > t`` holds exactly when
    ``acc > T_c(t)`` where ``T_c(t)`` is the largest integer a with ``fl64(a·S_c) <= t``;
    float64 multiplication is monotone in a, so that integer exists and is unique.

    Args:
        scale_table: (L,) float32 table of the GaussianConditional.
        acc_scale: (C,) float64 accumulator scales S_c.

    Returns:
        (C, L-1) int64 thresholds.
    """
    t = scale_table[:-1].detach().double().to(acc_scale.device).view(1, -1)
    s = acc_scale.view(-1, 1)
    a = torch.floor(t / s)
    # floor(t/s) is within one or two of the exact answer; walk to it with exact tests.
    for _ in range(4):
        a = torch.where((a + 1) * s <= t, a + 1, a)
        a = torch.where(a * s > t, a - 1, a)
    if not (torch.all((a * s) <= t) and torch.all(((a + 1) * s) > t)):
        raise ValueError("could not derive exact scale-index thresholds")
    return a.long()


def scale_indexes(acc: Tensor, thresholds: Tensor) -> Tensor:
    """CDF indexes from scale accumulators: count of thresholds strictly exceeded.

    Args:
        acc: (N, C, H, W) int64.
        thresholds: (C, L-1) int64 from :func:`scale_index_thresholds`.

    Returns:
        (N, C, H, W) int32 indexes in [0, L-1].
    """
    thr = thresholds.to(acc.device)
    index = torch.zeros_like(acc, dtype=torch.int32)
    for i in range(thr.shape[1]):
        index += (acc > thr[:, i].view(1, -1, 1, 1)).int()
    return index


def accumulator_bound(weight_int: Tensor, bias_int: Tensor, input_bound: int) -> int:
    """Worst |accumulator| of a layer over every input with |x| <= input_bound (Python int).

    Sums |w| over all input channels and taps of an output channel: a superset of the taps
    that meet at any output position, so a valid (slightly loose) bound.
    """
    per_channel = weight_int.detach().abs().long().sum(dim=(0, 2, 3))
    worst = per_channel * int(input_bound) + bias_int.abs()
    return int(worst.max().item())

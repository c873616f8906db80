"""Exact integer arithmetic of the hyper-decoders: docs/integer-contract.md, in code.

Every function here maps integers to integers with a result that does not depend on the
device, the thread count, the batch size or the convolution algorithm:

* transposed convolutions are integer GEMMs of int8 digit planes (:mod:`nvc_train.quant.exact_conv`:
  int32 plane sums proven below 2**31 from the weights alone, combined in int64), or chunked
  float32 GEMMs whose every partial sum stays below 2**24 where no integer GEMM runs; every
  accumulator is proven below 2**53 at export (:func:`accumulator_bound`), which also keeps
  the selectable float64 path exact. No process-global backend flag (cuDNN, TF32, oneDNN)
  is read or written: a flag toggled here would race with other threads, and none can
  change an integer GEMM or an exact float32 one;
* requantization is a fixed-point multiply and an arithmetic right shift in int64 with
  round-half-up (:func:`requantize`);
* the scale output never becomes a float: it is compared against integer thresholds
  (:func:`scale_indexes`).

Both the QAT fake-quant modules (:mod:`nvc_train.quant.fake_quant`) and the frozen integer
decoders (:mod:`nvc_train.quant.integer`) call these functions, so training sees exactly
what inference computes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from nvc_train.quant import exact_conv

EXACT_FLOAT64 = 2**53
"""Integers below this magnitude are exact in float64, so are sums that stay below it."""

INT64_HEADROOM = 2**62
"""Products in :func:`requantize` are kept below this, one bit clear of int64 overflow."""

MULTIPLIER_BITS = 31
"""Precision of fixed-point multipliers: relative error at most 2**-31."""

WEIGHT_QMAX = 127
"""Weights are symmetric int8 in [-127, 127] (-128 unused, so negation is closed)."""


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

    Both divisions run in float64 (correctly rounded on every device; a GPU's float32
    division may be a reciprocal multiply), so a model trained on a GPU exports exactly
    the integers its last training step simulated.

    Args:
        weight: (C_in, C_out, kH, kW) float32; output channels are dim 1 for transposed convs.

    Returns:
        ``(weight_int, scale)``: integer-valued float32 tensor of ``weight``'s shape in
        [-127, 127] and per-output-channel scales (C_out,) float32, ``weight ≈ weight_int·scale``.
    """
    w = weight.detach()
    # |w| and max are exact in float32; one row per output channel reduces 5× faster than
    # amax over dims (0, 2, 3) of the (C_in, C_out, k, k) layout.
    max_abs = w.transpose(0, 1).reshape(w.shape[1], -1).abs().amax(dim=1).double()
    # An all-zero channel gets any positive scale; its integers are all zero either way.
    scale = torch.where(max_abs > 0, max_abs / WEIGHT_QMAX, torch.ones_like(max_abs)).float()
    # One float64 copy, divided, rounded and clamped in place (QAT runs this every step).
    weight_int = w.double().div_(scale.double().view(1, -1, 1, 1)).round_().clamp_(-WEIGHT_QMAX, WEIGHT_QMAX)
    return weight_int.float(), scale


def accumulator_scale(input_scale: Tensor | float, weight_scale: Tensor) -> Tensor:
    """Real value of one accumulator unit per output channel, (C,) float64.

    The product of two float32 numbers has at most 48 significant bits, so computing it in
    float64 is exact: every machine gets the same value.
    """
    s_in = torch.as_tensor(input_scale, dtype=torch.float64, device=weight_scale.device)
    return s_in * weight_scale.detach().double()


def requantization_multiplier(acc_scale: Tensor, out_scale: Tensor | float) -> Tensor:
    """``acc_scale / out_scale`` (C,) float64, divided on the host: one IEEE division, the
    same value whichever device trained the model."""
    acc = acc_scale.detach().double()
    out = torch.as_tensor(out_scale, dtype=torch.float64).detach()
    if acc.dim() == 1 and out.numel() == 1:  # the usual case: one device-to-host copy of both
        host = torch.cat((acc, out.reshape(1).to(acc.device))).cpu()
        return host[:-1] / host[-1]
    return acc.cpu() / out.cpu()


def quantize_bias(bias: Tensor, acc_scale: Tensor) -> Tensor:
    """Bias as integers at the accumulator's scale, (C,) int64 (round half to even)."""
    return torch.round(bias.detach().double() / acc_scale).long()


def fixed_point(real_multiplier: Tensor, out_bound: int) -> FixedPoint:
    """Fixed-point form of a positive per-channel multiplier, exact and device-independent.

    Computed with Python floats (IEEE float64: ``frexp`` and ``ldexp`` are exact) and
    Python integers on the host, whatever device the multiplier lives on.

    Args:
        real_multiplier: (C,) float64, ``input_scale·weight_scale / output_scale``.
        out_bound: largest |output| the caller keeps (255 for 8-bit activations).

    Returns:
        int64 tensors on ``real_multiplier``'s device.
    """
    shift_cap = 61 - (out_bound + 2).bit_length()
    multipliers, shifts, saturations = [], [], []
    for real in real_multiplier.detach().double().cpu().tolist():
        if not (math.isfinite(real) and real > 0):
            raise ValueError("requantization multipliers must be positive and finite")
        exponent = math.frexp(real)[1]  # real = f·2**exponent, f in [0.5, 1)
        shift = min(MULTIPLIER_BITS - exponent, shift_cap)
        if shift < 1:
            raise ValueError("requantization multiplier too large for a right shift (scale collapse?)")
        # real·2**shift < 2**31 scales by a power of two (exact); +0.5 and floor are exact.
        multiplier = math.floor(math.ldexp(real, shift) + 0.5)
        if multiplier < 1:
            raise ValueError("requantization multiplier underflows to zero (scale collapse?)")
        multipliers.append(multiplier)
        shifts.append(shift)
        # Smallest |acc| whose output is already beyond out_bound, plus one.
        saturations.append(-(-((out_bound + 1) << shift) // multiplier) + 1)
    # One host-to-device copy of all three.
    packed = torch.tensor([multipliers, shifts, saturations], dtype=torch.int64).to(real_multiplier.device)
    return FixedPoint(*packed.unbind(0))


def check_fixed_point(fp: FixedPoint) -> None:
    """Raise if ``acc·multiplier + rounding`` could leave int64 for any clamped accumulator."""
    for sat, mult, shift in zip(fp.saturation.tolist(), fp.multiplier.tolist(), fp.shift.tolist()):
        worst = sat * mult + (1 << (shift - 1))
        if worst >= INT64_HEADROOM:
            raise ValueError(f"requantization product may overflow int64 (max {float(worst):.3g})")


def conv_transpose_exact(x_int: Tensor, weight_int: Tensor, path: str | None = None) -> Tensor:
    """Exact integer transposed convolution of SSF's decoder layers (k=5, stride 2), without bias.

    Computed by :mod:`nvc_train.quant.exact_conv` as int8 GEMMs of balanced base-256 digit
    planes (``torch._int_mm``), or chunked float32 GEMMs where no integer GEMM passes its
    probe, or float64 GEMMs when asked (``path``, ``$NVC_TRAIN_EXACT_GEMM``): every path gives
    the same integers. No backend flag (cuDNN, TF32, ``fp32_precision``, oneDNN,
    deterministic mode) can change them, and ``torch.compile`` is kept out.

    Args:
        x_int: (N, C_in, H, W) integer-valued tensor (any dtype, any memory format).
        weight_int: (C_in, C_out, 5, 5) integer-valued tensor.

    Returns:
        (N, C_out, 2H, 2W) int64 accumulators without bias.
    """
    return exact_conv.conv_transpose_exact(x_int, weight_int, path=path)


def add_bias(acc: Tensor, bias_int: Tensor) -> Tensor:
    """acc (N, C, H, W) int64 + bias (C,) int64, added in place (``acc`` is a fresh
    accumulator from :func:`conv_transpose_exact`); returns ``acc``."""
    return acc.add_(bias_int.to(acc.device).view(1, -1, 1, 1))


def requantize(acc: Tensor, fp: FixedPoint, lo: int, hi: int, inplace: bool = False) -> Tensor:
    """``clamp(round_half_up(acc · multiplier · 2**-shift), lo, hi)`` in int64, per channel.

    Args:
        acc: (N, C, H, W) int64 accumulators (bias included).
        fp: per-channel fixed-point multiplier from :func:`fixed_point`.
        lo, hi: output range, e.g. 0 and 255 for an unsigned 8-bit ReLU activation.
        inplace: overwrite ``acc`` with the result (no frame-sized allocation: the integer
            decoders pass their fresh accumulators).
    """
    view = (1, -1, 1, 1)
    dev = acc.device
    sat = fp.saturation.to(dev).view(view)
    shift = fp.shift.to(dev).view(view)
    rounding = torch.bitwise_left_shift(torch.ones_like(shift), shift - 1)
    out = acc.clamp_(-sat, sat) if inplace else torch.clamp(acc, -sat, sat)
    out.mul_(fp.multiplier.to(dev).view(view)).add_(rounding)
    return out.bitwise_right_shift_(shift).clamp_(lo, hi)


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
    # Thresholds rise with the table, so the count is a binary search per channel (one pass
    # instead of L - 1 comparisons over the frame); equal thresholds are counted each.
    n, c = acc.shape[:2]
    per_channel = acc.transpose(0, 1).reshape(c, -1)
    index = torch.searchsorted(thresholds.to(acc.device).contiguous(), per_channel, out_int32=True)
    return index.view(c, n, *acc.shape[2:]).transpose(0, 1).contiguous()


def accumulator_bound(weight_int: Tensor, bias_int: Tensor, input_bound: int) -> int:
    """Worst |accumulator| of a layer over every input with |x| <= input_bound (Python int).

    With stride 2, output row ``oy`` gathers only the taps ``ky ≡ oy (mod 2)`` (3 of the 5
    for even rows, 2 for odd), likewise for columns: the bound is the largest, over output
    channels and the four parity classes, of ``Σ|w| · input_bound + |bias|``. An interior
    output of a signed input attains it (the stress conformance record does).
    """
    # Widened before abs(): |−128| of an int8 tensor wraps to −128 (a tampered weight would shrink the bound).
    per_class = exact_conv.parity_class_sums(weight_int.detach().long().abs()).reshape(4, -1)  # (4, C_out)
    worst = per_class.amax(dim=0) * int(input_bound) + bias_int.abs().to(per_class.device)
    return int(worst.max().item())


def lsq_grad_scale(x: Tensor, factor: float) -> Tensor:
    """Identity forward, gradient multiplied by ``factor`` (LSQ's step-size gradient scale,
    1/sqrt(elements × levels), so the step's gradient is comparable to the weights')."""
    return (x - x * factor).detach() + x * factor

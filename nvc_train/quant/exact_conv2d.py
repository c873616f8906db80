"""Exact integer k×k convolution (k = 3 or 1, stride 1, zero padding k // 2) as GEMMs of digit planes.

CompressAI's image hyperpriors end their hyper-decoder with ``conv(C_in, C_out,
kernel_size=3, stride=1)`` (bmshj2018-hyperprior: N → M; mbt2018-mean: 3M/2 → 2M), and
the inverse GDN of their synthesis sums ``γ · x²`` over channels, a 1×1 convolution. The
integer function is ``acc = conv2d(x, w) + b`` over the integers, with a zero border
(docs/integer-contract.md, "Image architectures"). It is computed with the GEMM paths of
:mod:`nvc_train.quant.exact_conv` and the same guarantees: ``int8`` (``torch._int_mm`` of
balanced base-256 digit planes, each plane product proven below 2**31 from the weights
alone), ``float32`` (chunks whose partial sums stay below 2**24) and ``float64`` (whole
values, exact while the accumulator bound proven at export is below 2**53).

Algorithm: im2col. The input, offset by a constant ``c`` so that it fits the fewest digits,
is written into zero-padded planes whose border holds the digits of −c (the value 0); the
nine shifted views of each plane, stacked, are a (9·C_in, N·H·W) column matrix, and one GEMM
per input digit and weight digit gives every output. Every output reads all nine taps (on
the border too), so the offset adds back as ``c · Σ w`` per output channel. The hyper-decoder
runs at 1/16 of the image size, where a 9× column matrix is small.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from nvc_train.quant import exact_conv
from nvc_train.quant.exact_conv import DIGIT_MIN, INT32_LIMIT, PATH_DTYPES, PATHS, PITCH_ALIGN, RADIX

KERNELS = (1, 3)


class PreparedConv(NamedTuple):
    """One k×k layer's integer weights as GEMM operands of one path.

    Attributes:
        digits: per weight digit plane j (lowest first), its chunks of the (C_out_pad, K_pad)
            matrix whose columns are (ky, kx, input channel); one chunk except on float32.
        weight_sums: (C_out,) int64 Σ w over input channels and taps (the offset correction).
        c_in, c_out: channels; kernel: k.
    """

    digits: tuple[tuple[exact_conv.Chunk, ...], ...]
    weight_sums: Tensor
    c_in: int
    c_out: int
    kernel: int = 3


def plane_bound(weight_int: Tensor) -> int:
    """Largest |GEMM result| of one input digit plane with one weight digit plane:
    ``max_out Σ|w_digit| · 128`` over input channels and the k² taps (Python int)."""
    return max(int(d.abs().sum(dim=(1, 2, 3)).max()) for d in exact_conv.weight_digits(weight_int)) * -DIGIT_MIN


def prepare_conv_weights(weight_int: Tensor, path: str, device) -> PreparedConv:
    """GEMM operands of (C_out, C_in, k, k) integer weights (k = 3 or 1) for ``path`` on ``device``."""
    if path not in PATHS:
        raise ValueError(f"exact GEMM path must be one of {', '.join(PATHS)}, got {path!r}")
    w = weight_int.detach().long()
    c_out, c_in = w.shape[:2]
    kernel = w.shape[-1]
    if kernel not in KERNELS or tuple(w.shape[2:]) != (kernel, kernel):
        raise ValueError(f"expected 3×3 or 1×1 weights, got {tuple(w.shape)}")
    if path == "int8" and plane_bound(w) >= INT32_LIMIT:
        raise ValueError(f"a {c_in}-channel {kernel}×{kernel} layer's int8 plane sums may exceed 2**31")
    digits = [w] if path == "float64" else list(exact_conv.weight_digits(w))
    k = kernel * kernel * c_in
    rows, cols = max(32, exact_conv.round_up(c_out, PITCH_ALIGN)), exact_conv.round_up(k, PITCH_ALIGN)
    prepared = []
    for d in digits:
        a = torch.zeros(rows, cols, dtype=torch.int64, device=w.device)
        a[:c_out, :k] = d.permute(0, 2, 3, 1).reshape(c_out, k)  # columns (ky, kx, c_in)
        cuts = [0, *(exact_conv.float32_cuts(a) if path == "float32" else []), cols]
        matrix = a.to(PATH_DTYPES[path]).to(device)
        prepared.append(tuple(exact_conv.Chunk(k0, k1, matrix[:, k0:k1].contiguous())
                              for k0, k1 in zip(cuts[:-1], cuts[1:])))
    return PreparedConv(tuple(prepared), w.sum(dim=(1, 2, 3)).to(device), c_in, c_out, kernel)


def _columns(plane: Tensor, h: int, w: int, k_pad: int, n_pad: int, kernel: int) -> Tensor:
    """(K_pad, N_pad) column matrix of one padded digit plane (N, C, H + k − 1, W + k − 1):
    rows (ky, kx, c), columns (n, y, x); the padding rows and columns are zero."""
    n, c = plane.shape[:2]
    views = torch.stack([plane[:, :, ky:ky + h, kx:kx + w] for ky in range(kernel) for kx in range(kernel)])
    cols = plane.new_zeros(k_pad, n_pad)
    taps = kernel * kernel
    cols[:taps * c, :n * h * w] = views.permute(0, 2, 1, 3, 4).reshape(taps * c, n * h * w)
    return cols


def conv_accumulators(x_int: Tensor, weights: PreparedConv, path: str, bias_int: Tensor | None = None) -> Tensor:
    """(N, C_out, H, W) int64 accumulators ``conv2d(x, w) + b`` of an integer (N, C_in, H, W)
    input with weights prepared for ``path``; the same integers on every path and device."""
    n, c, h, w = x_int.shape
    if c != weights.c_in:
        raise ValueError(f"input has {c} channels, the layer {weights.c_in}")
    x = x_int.long()
    count, offset = exact_conv.choose_digits(*exact_conv.value_span(x), path)
    dtype = PATH_DTYPES[path]
    pad = weights.kernel // 2
    planes = torch.empty(count, n, c, h + 2 * pad, w + 2 * pad, dtype=dtype, device=x.device)
    if pad:
        exact_conv.write_digits(planes, torch.zeros((), dtype=torch.int64, device=x.device).expand(planes.shape[1:]),
                                offset, path)  # the border: the digits of the value 0
    exact_conv.write_digits(planes[:, :, :, pad:h + pad, pad:w + pad], x, offset, path)
    k_pad, n_pad = weights.digits[0][-1].k1, exact_conv.round_up(n * h * w, PITCH_ALIGN)
    acc = None
    for j in reversed(range(len(weights.digits))):  # Horner over weight digits, then input digits
        inner = None
        for d in reversed(range(count)):
            g = exact_conv.chunked_gemm(weights.digits[j], _columns(planes[d], h, w, k_pad, n_pad, weights.kernel), 0, path)
            g = g[:weights.c_out].long() if path != "float64" else g[:weights.c_out].round().long()
            inner = g if inner is None else inner.mul_(RADIX).add_(g)
        acc = inner if acc is None else acc.mul_(RADIX).add_(inner)
    acc = acc[:, :n * h * w].reshape(weights.c_out, n, h, w).transpose(0, 1)
    correction = offset * weights.weight_sums
    if bias_int is not None:
        correction = correction + bias_int.to(x.device).long()
    return acc.add(correction.view(1, -1, 1, 1)).contiguous()


def conv3x3_exact(x_int: Tensor, weight_int: Tensor, bias_int: Tensor | None = None, path: str | None = None) -> Tensor:
    """Exact ``conv2d(x, w, padding=k // 2) (+ b)`` of integer tensors by ``path`` (default:
    :func:`nvc_train.quant.exact_conv.default_path` of the input's device).

    Args:
        x_int: (N, C_in, H, W) integer-valued tensor.
        weight_int: (C_out, C_in, k, k) integer-valued tensor (Conv2d layout), k = 3 or 1.
        bias_int: optional (C_out,) int64.

    Returns:
        (N, C_out, H, W) int64.
    """
    path = path or exact_conv.default_path(x_int.device)
    return conv_accumulators(x_int, prepare_conv_weights(weight_int, path, x_int.device), path, bias_int)


def accumulator_bound(weight_int: Tensor, bias_int: Tensor, input_bound: int) -> int:
    """Worst |accumulator| over inputs with |x| <= input_bound: ``max_c Σ|w_c| · bound + |b_c|``,
    attained at an interior output (Python int)."""
    per_channel = weight_int.detach().long().abs().sum(dim=(1, 2, 3))  # widened first: |−128| in int8 wraps
    return int((per_channel * int(input_bound) + bias_int.abs().to(per_channel.device)).max().item())


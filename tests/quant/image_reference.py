"""An independent reference of the image hyper-decoders' and synthesis' integer functions:
numpy int64 and Python integers, sharing no code with ``nvc_train.quant``.

It starts from the *float* weights of ``h_s`` and the learned activation steps and follows
docs/integer-contract.md ("Image architectures"): weights quantized per output channel, the
3×3 convolution and the transposed convolution as explicit tap loops, ReLU and LeakyReLU
requantized with unbounded Python integers (the LeakyReLU's negative side by the
multiplier times 0.01), means onto the 2**-8 grid, and CDF indexes as float64 comparisons
with the scale table. The synthesis (:func:`synthesis`) follows "Pixel-exact images": the
inverse GDN's γ as integers in [0, 2047], norms as int64 sums, square roots by Python's
``math.isqrt``.
"""

from __future__ import annotations

import math

import numpy as np

from tests.quant.reference import MEAN_BOUND, MEAN_FRAC_BITS, conv_transpose, quantize_weight, requantize

LEAKY_SLOPE = 0.01


def conv3(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Conv2d(k=3, stride 1, padding 1) of int64 arrays as nine tap sums; w is (C_out, C_in, 3, 3)."""
    n, _, h, wd = x.shape
    padded = np.zeros((n, x.shape[1], h + 2, wd + 2), dtype=np.int64)
    padded[:, :, 1:-1, 1:-1] = x
    out = np.zeros((n, w.shape[0], h, wd), dtype=np.int64)
    for ky in range(3):
        for kx in range(3):
            out += np.einsum("nchw,dc->ndhw", padded[:, :, ky:ky + h, kx:kx + wd], w[:, :, ky, kx].astype(np.int64))
    return out


def hyper_decoder(layers: list[tuple[str, np.ndarray, np.ndarray, str]], act_steps: list[float], act_qmax: int,
                  input_frac_bits: int, z_int: np.ndarray, scale_table: np.ndarray,
                  has_means: bool) -> tuple[np.ndarray | None, np.ndarray, list[np.ndarray]]:
    """(means·2**8 or None, CDF indexes, every layer's int64 accumulators) of an image hyper-decoder.

    Args:
        layers: per layer (kind "transposed" | "conv3", float32 weight in the module's layout,
            float32 bias, activation "relu" | "leaky_relu" | "none").
        act_steps: the real value of one unit of each intermediate activation (float32).
    """
    s_in = np.float32(2.0**-input_frac_bits)
    x = z_int
    accumulators = []
    for i, (kind, weight, bias, activation) in enumerate(layers):
        if kind == "transposed":
            w_int, s_w = quantize_weight(weight)
            acc_scale = np.float64(s_in) * s_w.astype(np.float64)
            b_int = np.rint(bias.astype(np.float64) / acc_scale).astype(np.int64)
            acc = conv_transpose(x, w_int) + b_int.reshape(1, -1, 1, 1)
        else:
            w_t, s_w = quantize_weight(weight.transpose(1, 0, 2, 3))
            acc_scale = np.float64(s_in) * s_w.astype(np.float64)
            b_int = np.rint(bias.astype(np.float64) / acc_scale).astype(np.int64)
            acc = conv3(x, w_t.transpose(1, 0, 2, 3)) + b_int.reshape(1, -1, 1, 1)
        accumulators.append(acc)
        if i < len(layers) - 1:
            s_out = np.float32(act_steps[i])
            real = acc_scale / np.float64(s_out)
            lo = -(act_qmax // 8) if activation == "leaky_relu" else 0
            bound = max(-lo, act_qmax)
            x = requantize(acc, real, bound, lo, act_qmax)
            if activation == "leaky_relu":
                negative = requantize(acc, real * LEAKY_SLOPE, bound, lo, act_qmax)
                x = np.where(acc < 0, negative, x)
            s_in = s_out
    channels = acc.shape[1]
    scale_channels = channels // 2 if has_means else channels
    scales = acc[:, :scale_channels].astype(np.float64) * acc_scale[:scale_channels].reshape(1, -1, 1, 1)
    indexes = (scales[..., None] > scale_table.astype(np.float64)[:-1]).sum(-1)
    if not has_means:
        return None, indexes, accumulators
    means = requantize(acc[:, scale_channels:], acc_scale[scale_channels:] * 2.0**MEAN_FRAC_BITS, MEAN_BOUND,
                       -MEAN_BOUND, MEAN_BOUND)
    return means, indexes, accumulators



GAMMA_QMAX = 2**11 - 1
BETA_LIMIT = 2**50
SAMPLE_UNITS = 255 * 2**8
SAMPLE_BOUND = 2**17 - 1
ROOT_BITS = 24


def _shifted_root(v: int, f: int) -> int:
    """floor(sqrt(v·4**f)) or floor(sqrt(v >> −2f)) with Python's exact integer square root."""
    return math.isqrt(v << (2 * f) if f >= 0 else v >> (-2 * f))


def synthesis(layers: list[tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]],
              act_steps: list[float], qmax: int, y_int: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(samples, [layer 0 accumulators, GDN 0 norms, layer 1 accumulators, …]) of an image
    synthesis, from its float weights, docs/integer-contract.md "Pixel-exact images".

    Args:
        layers: per transposed layer (float32 weight (C_in, C_out, 5, 5), float32 bias, and
            the inverse GDN after it as (γ (C, C) float32, β (C,) float32), or None).
        act_steps: float32 steps of each GDN's input and output, in order.
        qmax: Q, activations are in [−Q, Q].
        y_int: (N, M, h, w) int64 latents on the 2**-8 grid.
    """
    s_in = np.float32(2.0**-MEAN_FRAC_BITS)
    x, trace = y_int, []
    for i, (weight, bias, gdn) in enumerate(layers):
        w_int, s_w = quantize_weight(weight)
        acc_scale = np.float64(s_in) * s_w.astype(np.float64)
        b_int = np.rint(bias.astype(np.float64) / acc_scale).astype(np.int64)
        acc = conv_transpose(x, w_int) + b_int.reshape(1, -1, 1, 1)
        trace.append(acc)
        if gdn is None:
            return requantize(acc, acc_scale * SAMPLE_UNITS, SAMPLE_BOUND, -SAMPLE_BOUND, SAMPLE_BOUND), trace
        s_x, s_y = np.float32(act_steps[2 * i]), np.float32(act_steps[2 * i + 1])
        xq = requantize(acc, acc_scale / np.float64(s_x), qmax, -qmax, qmax)
        gamma, beta = (a.astype(np.float64) for a in gdn)
        # γ's step per output channel: its row's max / GAMMA_QMAX, or coarser where β dominates.
        step = np.maximum(gamma.max(axis=1) / GAMMA_QMAX, beta / (np.float64(s_x) ** 2 * BETA_LIMIT))
        step = np.where(step > 0, step, 1.0).astype(np.float32).astype(np.float64)
        g_int = np.clip(np.rint(gamma / step[:, None]), 0, GAMMA_QMAX).astype(np.int64)
        b_norm = np.rint(beta / (step * np.float64(s_x) ** 2)).astype(np.int64)
        norm = np.einsum("nchw,dc->ndhw", xq * xq, g_int) + b_norm.reshape(1, -1, 1, 1)
        trace.append(norm)
        bound = max(int(b) + int(g.sum()) * qmax * qmax for b, g in zip(b_norm.tolist(), g_int))
        f = ROOT_BITS - (bound.bit_length() + 1) // 2
        roots = np.vectorize(lambda v: _shifted_root(int(v), f), otypes=[np.int64])(norm)
        real = np.array([float(s_x) ** 2 * math.sqrt(g) * 2.0**-f / float(s_y) for g in step.tolist()])
        x = requantize(xq * roots, real, qmax, -qmax, qmax)
        s_in = s_y
    raise AssertionError("unreachable")

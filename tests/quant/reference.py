"""An independent reference of the integer hyper-decoders: numpy int64 and Python integers.

It shares no code with ``nvc_train.quant``: it starts from the *float* weights and biases of a
hyper-decoder and the learned activation scales, and follows docs/integer-contract.md step by
step — weight and bias quantization, the transposed convolution as explicit tap loops,
requantization with unbounded Python integers (no saturation trick), and the scale index as
float64 comparisons with the scale table (no precomputed thresholds). The package's fake-quant
(prepare) and frozen integer (convert) decoders are both measured against it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

WEIGHT_QMAX = 127
MULTIPLIER_BITS = 31
MEAN_FRAC_BITS = 8
MEAN_BOUND = 2**23 - 1
SYMBOL_LIMIT = 2**15


def conv_transpose(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ConvTranspose2d(k=5, stride=2, padding=2, output_padding=1) as int64 tap loops.

    Every input pixel scatters w[:, :, ky, kx] into output position (2i + ky - 2, 2j + kx - 2).
    """
    n, _, h, wd = x.shape
    _, cout, k, _ = w.shape
    full = np.zeros((n, cout, 2 * h + 4, 2 * wd + 4), dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            full[:, :, ky:ky + 2 * h:2, kx:kx + 2 * wd:2] += np.einsum("nchw,cd->ndhw", x, w[:, :, ky, kx].astype(np.int64))
    return full[:, :, 2:2 + 2 * h, 2:2 + 2 * wd]


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C_in, C_out, 5, 5) float32 → int64 weights in [-127, 127] and (C_out,) float32 scales."""
    w64 = w.astype(np.float64)
    max_abs = np.abs(w64).max(axis=(0, 2, 3))
    scale = np.where(max_abs > 0, max_abs / WEIGHT_QMAX, 1.0).astype(np.float32)
    w_int = np.clip(np.rint(w64 / scale.astype(np.float64)[None, :, None, None]), -WEIGHT_QMAX, WEIGHT_QMAX)
    return w_int.astype(np.int64), scale


def requantize(acc: np.ndarray, real: np.ndarray, out_bound: int, lo: int, hi: int) -> np.ndarray:
    """clamp(round_half_up(acc · m · 2**-shift)) per channel, in unbounded Python integers."""
    out = np.empty(acc.shape, dtype=np.int64)
    for c, r in enumerate(real.tolist()):
        exponent = math.frexp(r)[1]
        shift = min(MULTIPLIER_BITS - exponent, 61 - (out_bound + 2).bit_length())
        m = math.floor(math.ldexp(r, shift) + 0.5)
        values = [(int(a) * m + (1 << (shift - 1))) >> shift for a in acc[:, c].ravel().tolist()]
        out[:, c] = np.clip(np.array(values, dtype=object), lo, hi).astype(np.int64).reshape(acc[:, c].shape)
    return out


class Layers(NamedTuple):
    """Everything the reference needs of one hyper-decoder, as float32 numpy arrays."""

    weights: list[np.ndarray]  # 3 × (C_in, C_out, 5, 5)
    biases: list[np.ndarray]  # 3 × (C_out,)
    act_scales: np.ndarray  # (2,) float32, real value of one unit of each intermediate activation
    act_qmax: int  # 255 or 65535
    input_frac_bits: int


class Trace(NamedTuple):
    """Reference output and what each layer saw: inputs (3 int64 arrays) and accumulators."""

    output: np.ndarray
    inputs: list[np.ndarray]
    accumulators: list[np.ndarray]


def median_q(medians: np.ndarray, frac_bits: int) -> np.ndarray:
    return np.floor(medians.astype(np.float64).reshape(-1) * 2.0**frac_bits + 0.5).astype(np.int64)


def z_int(symbols: np.ndarray, med_q: np.ndarray, frac_bits: int) -> np.ndarray:
    sym = np.clip(symbols.astype(np.int64), -SYMBOL_LIMIT, SYMBOL_LIMIT)
    return sym * 2**frac_bits + med_q.reshape(1, -1, 1, 1)


def hyper_decoder(layers: Layers, role: str, x: np.ndarray, scale_table: np.ndarray | None = None) -> Trace:
    """Means on the 2**-8 grid (role "mean") or CDF indexes (role "scale") from z_int."""
    s_in = np.float32(2.0**-layers.input_frac_bits)
    inputs, accs = [], []
    for i in range(3):
        w_int, s_w = quantize_weight(layers.weights[i])
        acc_scale = np.float64(s_in) * s_w.astype(np.float64)  # exact: a product of two float32
        b_int = np.rint(layers.biases[i].astype(np.float64) / acc_scale).astype(np.int64)
        acc = conv_transpose(x, w_int) + b_int.reshape(1, -1, 1, 1)
        inputs.append(x)
        accs.append(acc)
        if i < 2:
            s_out = np.float32(layers.act_scales[i])
            x = requantize(acc, acc_scale / np.float64(s_out), layers.act_qmax, 0, layers.act_qmax)
            s_in = s_out
        elif role == "mean":
            out = requantize(acc, acc_scale * 2.0**MEAN_FRAC_BITS, MEAN_BOUND, -MEAN_BOUND, MEAN_BOUND)
            return Trace(out, inputs, accs)
        else:
            scales = acc.astype(np.float64) * acc_scale.reshape(1, -1, 1, 1)
            table = scale_table.astype(np.float64)[:-1]
            return Trace((scales[..., None] > table).sum(-1), inputs, accs)
    raise AssertionError("unreachable")

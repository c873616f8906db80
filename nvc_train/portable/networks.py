"""The ONNX graphs of one integer checkpoint.

Decoders (from the frozen integer tensors of :mod:`nvc_train.quant.integer` and
:mod:`nvc_train.quant.synthesis`):

- ``<part>.mean``: z_int (N, 192, h, w) int64 → means on the 2**-8 grid (N, 192, 4h, 4w)
  int64 (contract steps 5–7); ``<part>.scale``: → CDF indexes int32 (step 8);
- ``synth.img``, ``synth.res``: latents y_int → samples (8-bit levels × 2**8) int64;
  ``synth.motion``: → flow x, flow y, scale field on the 2**-16 grid. ``synth.res`` reads
  ``cat(y_res, y_motion)`` along channels, as SSF does;
- ``layers/<decoder>.layer<i>``: one layer's int64 accumulators, bias included, for the
  conformance stress record and the load-time self-test.

Each decoder clamps its input to the bound its accumulators were proven for (a no-op for
every input a bitstream can give).

Pixel steps ("Pixel path" of the contract):

- ``pixels.predict``: reference samples (1, 3, H, W) and the motion decoder's output →
  the motion-compensated prediction: fixed-point positions, the Gaussian scale-space volume,
  the trilinear warp;
- ``pixels.reconstruct``: prediction + residual, clamped to the reference range;
  ``pixels.reference``: a keyframe's samples clamped the same way;
- ``pixels.levels``: samples and ``peak = 2**B − 1`` → output levels (int32).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from nvc_train.portable.graph import Graph, channel, clamp, conv_transpose, floor_div, requantize, round_shift

INT64, INT32 = TensorProto.INT64, TensorProto.INT32
INT64_END = int(np.iinfo(np.int64).max)
"""Slice end meaning "to the end of the axis"."""


def _array(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def decoder_graph(name: str, dec, in_bound: int, metadata: dict[str, str], float_twin: bool = False) -> onnx.ModelProto:
    """Graph of a whole frozen decoder (:class:`IntegerHyperDecoder` or :class:`IntegerSynthesis`).

    Args:
        name: ``"<part>.mean"``, ``"<part>.scale"`` or ``"synth.<img|motion|res>"``.
        dec: the frozen decoder (its integer tensors are read, nothing is run).
        in_bound: largest |input| its layer 0 is proven for.
        float_twin: every convolution as float32 ``Conv`` (the control; not exact).
    """
    from nvc_train.quant.config import MEAN_BOUND
    from nvc_train.quant.synthesis import output_format

    g = Graph(name)
    c_in = dec.layer_weight(0).shape[0]
    x = g.input("y_int" if name.startswith("synth.") else "z_int", INT64, ["N", c_in, "h", "w"])
    x = clamp(g, x, -in_bound, in_bound)
    lo, hi = -in_bound, in_bound
    last = dec.num_layers - 1
    for i in range(dec.num_layers):
        acc = conv_transpose(g, x, _array(dec.layer_weight(i)), _array(dec.layer_bias(i)), lo, hi, float_twin)
        if i < last:
            lo, hi = dec.activation_range(i)
            x = requantize(g, acc, *(_array(t) for t in dec._fixed_point(i)), lo, hi)
    c_out = dec.layer_weight(last).shape[1]
    shape = ["N", c_out, "H", "W"]
    if name.endswith(".scale"):
        g.output(_scale_indexes(g, acc, _array(dec._t("scale_thresholds"))), "indexes", INT32, shape)
    else:
        bound = MEAN_BOUND if name.endswith(".mean") else output_format(name.split(".")[1])[1]
        out = requantize(g, acc, *(_array(t) for t in dec._fixed_point(last)), -bound, bound)
        g.output(out, "means" if name.endswith(".mean") else "output", INT64, shape)
    return g.model(metadata)


def _scale_indexes(g: Graph, acc: str, thresholds: np.ndarray) -> str:
    """Contract step 8: per channel, the number of thresholds the accumulator exceeds."""
    count = None
    for j in range(thresholds.shape[1]):
        above = g.op("Cast", g.op("Greater", acc, g.const(channel(thresholds[:, j]))), to=INT32)
        count = above if count is None else g.op("Add", count, above)
    return count


def layer_graph(name: str, dec, layer: int, in_bound: int, metadata: dict[str, str]) -> onnx.ModelProto:
    """Graph of one layer's accumulators (bias included): x (N, C_in, h, w) int64 with
    |x| ≤ in_bound (layer 0) or x in the previous activation's range → (N, C_out, 2h, 2w) int64."""
    g = Graph(f"{name}.layer{layer}")
    weight = _array(dec.layer_weight(layer))
    x = g.input("x", INT64, ["N", weight.shape[0], "h", "w"])
    lo, hi = (-in_bound, in_bound) if layer == 0 else dec.activation_range(layer - 1)
    acc = conv_transpose(g, x, weight, _array(dec.layer_bias(layer)), lo, hi)
    g.output(acc, "accumulators", INT64, ["N", weight.shape[1], "H", "W"])
    return g.model(metadata)


# --- pixel steps ----------------------------------------------------------------------------

def reference_graph(metadata: dict[str, str]) -> onnx.ModelProto:
    """samples (N, 3, H, W) int64 → clamped to [−U, 2U], U = 255·2**8 (a keyframe's reference)."""
    from nvc_train.codec.pixel_decoder import REFERENCE_HI, REFERENCE_LO

    g = Graph("pixels.reference")
    x = g.input("samples", INT64, ["N", 3, "H", "W"])
    g.output(clamp(g, x, REFERENCE_LO, REFERENCE_HI), "reference", INT64, ["N", 3, "H", "W"])
    return g.model(metadata)


def reconstruct_graph(metadata: dict[str, str]) -> onnx.ModelProto:
    """prediction + residual (both (N, 3, H, W) int64), clamped to [−U, 2U]: the next reference."""
    from nvc_train.codec.pixel_decoder import REFERENCE_HI, REFERENCE_LO

    g = Graph("pixels.reconstruct")
    pred = g.input("prediction", INT64, ["N", 3, "H", "W"])
    res = g.input("residual", INT64, ["N", 3, "H", "W"])
    g.output(clamp(g, g.op("Add", pred, res), REFERENCE_LO, REFERENCE_HI), "reference", INT64, ["N", 3, "H", "W"])
    return g.model(metadata)


def levels_graph(metadata: dict[str, str]) -> onnx.ModelProto:
    """samples (N, 3, H, W) int64 and ``peak`` = 2**B − 1 (int64 scalar) → levels int32:
    ``(2·peak·clamp(s, 0, U) + U) // (2U)``; at B = 8 this is ``clamp((s + 2**7) >> 8, 0, 255)``."""
    from nvc_train.quant.synthesis import SAMPLE_UNITS

    g = Graph("pixels.levels")
    s = g.input("samples", INT64, ["N", 3, "H", "W"])
    peak = g.input("peak", INT64, [])
    s = clamp(g, s, 0, SAMPLE_UNITS)
    numerator = g.op("Add", g.op("Mul", g.op("Mul", s, peak), g.const(2)), g.const(SAMPLE_UNITS))
    levels = floor_div(g, numerator, 2 * SAMPLE_UNITS)
    g.output(g.op("Cast", levels, to=INT32), "levels", INT32, ["N", 3, "H", "W"])
    return g.model(metadata)


def _dim(g: Graph, shape: str, axis: int) -> str:
    """Dimension ``axis`` of a Shape value as a (1,) int64."""
    return g.op("Slice", shape, g.const([axis]), g.const([axis + 1]))


def _slice(g: Graph, v: str, axis: int, start, end, step: int = 1) -> str:
    starts = start if isinstance(start, str) else g.const([start])
    ends = end if isinstance(end, str) else g.const([end])
    return g.op("Slice", v, starts, ends, g.const([axis]), g.const([step]))


def _blur(g: Graph, v: str, taps: list[int], kernel_bits: int) -> str:
    """Separable integer Gaussian, replicate padding, rounded after each pass (rows, then columns)."""
    pad = len(taps) // 2
    for axis in (3, 2):
        pads = [0] * 8
        pads[axis], pads[4 + axis] = pad, pad
        padded = g.op("Pad", v, g.const(pads), mode="edge")
        size = _dim(g, g.op("Shape", v), axis)
        acc = None
        for t, tap in enumerate(taps):
            start = g.const([t])
            window = _slice(g, padded, axis, start, g.op("Add", size, start))
            term = g.op("Mul", window, g.const(tap))
            acc = term if acc is None else g.op("Add", acc, term)
        v = round_shift(g, acc, kernel_bits)
    return v


def _avg_pool2(g: Graph, v: str) -> str:
    """2×2 average, stride 2, odd last row or column dropped: ``(a + b + c + d + 2) >> 2``."""
    shape = g.op("Shape", v)
    ends = g.op("Mul", g.op("Div", g.op("Slice", shape, g.const([2]), g.const([4])), g.const([2])), g.const([2]))
    total = None
    for dy in (0, 1):
        for dx in (0, 1):
            part = g.op("Slice", v, g.const([dy, dx]), ends, g.const([2, 3]), g.const([2, 2]))
            total = part if total is None else g.op("Add", total, part)
    return round_shift(g, total, 2)


def _upsample2(g: Graph, v: str) -> str:
    """Bilinear ×2, ``align_corners=False``: per axis even = 3·v[m] + v[m−1], odd = 3·v[m] +
    v[m+1] (indices clamped), both axes, then one rounding of the ×16 sum."""
    for axis in (3, 2):
        three = g.op("Mul", v, g.const(3))
        before = g.op("Concat", _slice(g, v, axis, 0, 1), _slice(g, v, axis, 0, -1), axis=axis)
        after = g.op("Concat", _slice(g, v, axis, 1, INT64_END), _slice(g, v, axis, -1, INT64_END), axis=axis)
        even = g.op("Unsqueeze", g.op("Add", three, before), g.const([axis + 1]))
        odd = g.op("Unsqueeze", g.op("Add", three, after), g.const([axis + 1]))
        both = g.op("Concat", even, odd, axis=axis + 1)  # (…, n, 2, …): interleaved by the reshape
        shape = g.op("Shape", v)
        doubled = g.op("Mul", _dim(g, shape, axis), g.const([2]))
        parts = [_dim(g, shape, a) for a in range(4)]
        parts[axis] = doubled
        v = g.op("Reshape", both, g.op("Concat", *parts, axis=0))
    return round_shift(g, v, 4)


def _volume(g: Graph, v: str, num_levels: int, taps: list[int], kernel_bits: int) -> str:
    """(N, C, H, W) → (N, C, num_levels + 1, H, W): the frame, its blur, then pooled blurs
    upsampled back (as ``ScaleSpaceFlow.gaussian_volume``)."""
    levels = [v]
    x = _blur(g, v, taps, kernel_bits)
    levels.append(x)
    for i in range(1, num_levels):
        x = _blur(g, _avg_pool2(g, x), taps, kernel_bits)
        up = x
        for _ in range(i):
            up = _upsample2(g, up)
        levels.append(up)
    return g.op("Concat", *(g.op("Unsqueeze", lv, g.const([2])) for lv in levels), axis=2)


def predict_graph(num_levels: int, sigma0: float, flow_reference: int | None, metadata: dict[str, str]) -> onnx.ModelProto:
    """reference (1, 3, H, W) int64 and motion (1, 3, H, W) int64 (flow x, flow y, scale field
    on the 2**-16 grid) → prediction (1, 3, H, W) int64."""
    from nvc_train.quant.integer_warp import COORD_FRAC_BITS, KERNEL_BITS, kernel_taps
    from nvc_train.quant.synthesis import MOTION_FRAC_BITS

    b = COORD_FRAC_BITS
    depth = num_levels + 1
    g = Graph("pixels.predict")
    ref = g.input("reference", INT64, ["N", 3, "H", "W"])
    motion = g.input("motion", INT64, ["N", 3, "H", "W"])
    shape = g.op("Shape", ref)
    h, w = _dim(g, shape, 2), _dim(g, shape, 3)
    # Positions: x = j·2**b + round(flow_x · S_x / 2**(17 − b)), likewise y; z from the scale field.
    shift = MOTION_FRAC_BITS + 1 - b
    sx, sy = (g.const([flow_reference]), g.const([flow_reference])) if flow_reference is not None else (w, h)
    zero = g.const(0, hint="zero")
    xs = g.op("Mul", g.op("Range", zero, g.op("Squeeze", w), g.const(1)), g.const(1 << b))
    ys = g.op("Mul", g.op("Range", zero, g.op("Squeeze", h), g.const(1)), g.const(1 << b))
    xs = g.op("Reshape", xs, g.const([1, 1, 1, -1]))
    ys = g.op("Reshape", ys, g.const([1, 1, -1, 1]))
    x = g.op("Add", xs, round_shift(g, g.op("Mul", _slice(g, motion, 1, 0, 1), sx), shift))
    y = g.op("Add", ys, round_shift(g, g.op("Mul", _slice(g, motion, 1, 1, 2), sy), shift))
    z = g.op("Add", round_shift(g, g.op("Mul", _slice(g, motion, 1, 2, 3), g.const(depth)), shift),
             g.const((depth - 1) << (b - 1)))
    volume = _volume(g, ref, num_levels, kernel_taps(sigma0), KERNEL_BITS)
    g.output(_warp(g, volume, x, y, z, h, w, depth, b), "prediction", INT64, ["N", 3, "H", "W"])
    return g.model(metadata)


def _warp(g: Graph, volume: str, x: str, y: str, z: str, h: str, w: str, depth: int, b: int) -> str:
    """Trilinear sampling of ``volume`` (N, C, D, H, W) at fixed-point positions (N, 1, H, W)
    each, border padding; eight products summed exactly, rounded once by 3b bits."""
    one = 1 << b
    top = lambda size: g.op("Mul", g.op("Sub", size, g.const([1])), g.const(one))  # noqa: E731
    x = g.op("Min", g.op("Max", x, g.const(0)), top(w))
    y = g.op("Min", g.op("Max", y, g.const(0)), top(h))
    z = clamp(g, z, 0, (depth - 1) * one)
    x0, y0, z0 = (g.op("Div", c, g.const(one)) for c in (x, y, z))  # non-negative: Div is floor
    fx, fy, fz = (g.op("Sub", c, g.op("Mul", c0, g.const(one))) for c, c0 in ((x, x0), (y, y0), (z, z0)))
    last = lambda size: g.op("Sub", size, g.const([1]))  # noqa: E731
    x1 = g.op("Min", g.op("Add", x0, g.const(1)), last(w))
    y1 = g.op("Min", g.op("Add", y0, g.const(1)), last(h))
    z1 = g.op("Min", g.op("Add", z0, g.const(1)), g.const(depth - 1))
    complement = lambda f: g.op("Sub", g.const(one), f)  # noqa: E731
    shape = g.op("Shape", volume)
    n, c = _dim(g, shape, 0), _dim(g, shape, 1)
    flat = g.op("Reshape", volume, g.op("Concat", n, c, g.const([-1]), axis=0))
    index_shape = g.op("Concat", n, g.const([1, -1]), axis=0)
    expand_shape = g.op("Concat", n, c, g.const([1]), axis=0)
    total = None
    for zi, wz in ((z0, complement(fz)), (z1, fz)):
        for yi, wy in ((y0, complement(fy)), (y1, fy)):
            for xi, wx in ((x0, complement(fx)), (x1, fx)):
                index = g.op("Add", g.op("Mul", g.op("Add", g.op("Mul", zi, h), yi), w), xi)
                index = g.op("Expand", g.op("Reshape", index, index_shape), expand_shape)
                sample = g.op("GatherElements", flat, index, axis=2)
                weight = g.op("Reshape", g.op("Mul", g.op("Mul", wz, wy), wx), index_shape)
                term = g.op("Mul", sample, weight)
                total = term if total is None else g.op("Add", total, term)
    out = round_shift(g, total, 3 * b)
    return g.op("Reshape", out, _frame_shape(g, shape))


def _frame_shape(g: Graph, volume_shape: str) -> str:
    """(N, C, D, H, W) shape → (N, C, H, W)."""
    return g.op("Concat", _dim(g, volume_shape, 0), _dim(g, volume_shape, 1), _dim(g, volume_shape, 3),
                _dim(g, volume_shape, 4), axis=0)


def float_synthesis_graph(name: str, decoder, metadata: dict[str, str]) -> onnx.ModelProto:
    """A float synthesis decoder (ConvTranspose2d and ReLU layers) as a float32 ONNX graph:
    ``x`` (N, C_in, h, w) float32 → (N, C_out, 16h, 16w) float32. Not part of an export: the
    cross-check's ONNX Runtime rows run it as their float control (the same float network in
    another runtime, which rounds differently)."""
    from torch import nn

    g = Graph(f"float.{name}")
    first = next(m for m in decoder.modules() if isinstance(m, nn.ConvTranspose2d))
    x = g.input("x", TensorProto.FLOAT, ["N", first.in_channels, "h", "w"])
    c_out = first.out_channels
    for module in decoder.children():
        if isinstance(module, nn.ConvTranspose2d):
            c_out = module.out_channels
            x = g.op("ConvTranspose", x, g.const(_array(module.weight), np.float32), g.const(_array(module.bias), np.float32),
                     strides=list(module.stride), pads=[*module.padding, *module.padding],
                     output_padding=list(module.output_padding), kernel_shape=list(module.kernel_size))
        elif isinstance(module, nn.ReLU):
            x = g.op("Relu", x)
        else:
            raise ValueError(f"float_synthesis_graph: unexpected layer {type(module).__name__}")
    g.output(x, "y", TensorProto.FLOAT, ["N", c_out, "H", "W"])
    return g.model(metadata)

"""An ONNX graph builder and the integer contract's operations in ONNX operators.

Everything here is a second implementation of docs/integer-contract.md, written against the
ONNX operator set rather than PyTorch, and sharing no arithmetic code with
:mod:`nvc_train.quant`: the tests compare the two.

Operators: every value is int64, int32, uint8, int8 or bool. ONNX has no arithmetic right
shift on signed integers (``BitShift`` is unsigned only) and its integer ``Div`` truncates
towards zero, so a floor division first adds a multiple of the divisor that makes the
operand non-negative (:func:`floor_div`).

The transposed convolution (k = 5, stride 2, padding 2, output padding 1) is four ordinary
3×3 convolutions, one per output parity class ``(p, q)``: output pixel ``(2m + p, 2n + q)``
reads input rows ``m − 1 .. m + 1`` with taps ``(4, 2, 0)`` for ``p = 0`` and ``(–, 3, 1)``
for ``p = 1`` (a zero tap), likewise columns. The four classes are one ``ConvInteger`` with
``4·C_out`` output channels, interleaved by a reshape and a transpose. Its input, offset by
a constant ``c`` to be non-negative and zero-padded first (so the pad holds ``c``, the value
0), is split into base-256 digit planes in [0, 255] (uint8). The weights are uint8 too,
``w + 128`` with ``w_zero_point = 128``: on x86 without VNNI the 8-bit instruction
``vpmaddubsw`` adds pairs of u8·s8 products in int16 with saturation, and it cannot multiply
two unsigned bytes, so u8·u8 kernels take another route (u8·u8 also ran 4.6× faster than u8·s8
in ONNX Runtime 1.32 here). Each plane's result is below ``255 · 255 · 9 · C_in < 2**31`` (exact int32). Planes are
combined in int64 and the offset's contribution ``c · Σ w`` is removed per class and channel.
The load-time self-test (:mod:`nvc_train.portable.runtime`) drives every layer to its bound
on the runtime at hand, so a kernel that saturates after all is refused.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
"""ONNX opset of every graph (ONNX Runtime ≥ 1.12 runs it)."""

IR_VERSION = 8
"""ONNX IR version written (that of opset 17), so older runtimes read the files."""

DIGIT_BITS = 8
RADIX = 1 << DIGIT_BITS
WEIGHT_ZERO_POINT = 128
"""Weights are stored as uint8 ``w + 128`` (u8·u8 kernels, see the module docstring)."""

INT_TYPES = {TensorProto.INT64, TensorProto.INT32, TensorProto.INT8, TensorProto.UINT8, TensorProto.BOOL}
"""Element types an integer graph may hold."""

INT64_MAX = np.iinfo(np.int64).max


class Graph:
    """Accumulates nodes, initializers, inputs and outputs of one ONNX graph."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, dtype=np.int64, hint: str = "const") -> str:
        """An initializer holding ``value`` (array-like) as ``dtype``; returns its name."""
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, hint: str | None = None, **attrs) -> str:
        """One node with one output; returns the output's name."""
        out = self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: list) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def model(self, metadata: dict[str, str]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="nvc-train", ir_version=IR_VERSION)
        for key, value in sorted(metadata.items()):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.checker.check_model(model)
        return model


def channel(values) -> np.ndarray:
    """Per-channel constant (C,) → (1, C, 1, 1) int64 for broadcasting over (N, C, H, W)."""
    return np.asarray(values, dtype=np.int64).reshape(1, -1, 1, 1)


OFFSET = 1 << 62
"""Added before a division so that truncation is floor: ``a + 2**62`` is non-negative and
below 2**63 for every ``|a| < 2**62`` (the contract proves its products below that)."""


def floor_div(g: Graph, a: str, divisor) -> str:
    """``floor(a / d)`` for int64 ``a`` and positive int64 ``d`` (scalar or per channel).

    ONNX's integer ``Div`` truncates towards zero; on ``a + o`` with ``o`` a multiple of ``d``
    near 2**62 the operand is non-negative, so truncation is floor, and ``o / d`` is subtracted
    back: ``floor(a / d) = (a + o) / d − o / d``. Exact for ``|a| < 2**62`` when ``d`` is a
    power of two (``o = 2**62``), and for ``0 ≤ a < 2**62`` otherwise. (``Mod`` with its
    sign-of-divisor rule gives the same in three passes instead of two, and was the slowest
    operator of the decoders.)
    """
    d = np.asarray(divisor, dtype=np.int64)
    steps = OFFSET // d
    return g.op("Sub", g.op("Div", g.op("Add", a, g.const(steps * d)), g.const(d)), g.const(steps))


def round_shift(g: Graph, v: str, shift: int) -> str:
    """Round half up of ``v / 2**shift``: ``(v + 2**(shift−1)) >> shift`` (arithmetic)."""
    if shift <= 0:
        return v
    return floor_div(g, g.op("Add", v, g.const(1 << (shift - 1))), 1 << shift)


def clamp(g: Graph, v: str, lo, hi) -> str:
    """``min(max(v, lo), hi)`` with int64 bounds (scalars or broadcastable arrays)."""
    return g.op("Min", g.op("Max", v, g.const(lo)), g.const(hi))


def requantize(g: Graph, acc: str, multiplier, shift, saturation, lo: int, hi: int) -> str:
    """Contract step 6: ``clamp((clamp(acc, ±sat) · m + 2**(s−1)) >> s, lo, hi)`` per channel
    (``multiplier``, ``shift``, ``saturation``: (C,) integer arrays)."""
    shift = np.asarray(shift, dtype=np.int64)
    sat = channel(saturation)
    acc = clamp(g, acc, -sat, sat)
    product = g.op("Add", g.op("Mul", acc, g.const(channel(multiplier))), g.const(channel(1 << (shift - 1))))
    return clamp(g, floor_div(g, product, channel(1 << shift)), lo, hi)


CLASSES = ((0, 0), (0, 1), (1, 0), (1, 1))
"""Output parity classes (row p, column q), in the channel order of the concatenated result."""

TAPS = {0: (4, 2, 0), 1: (3, 1)}
"""Kernel rows read by output row parity p: from input rows m−1, m, m+1 (p = 0) or m, m+1 (p = 1)."""


def class_kernels(weight: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """(C_in, C_out, 5, 5) transposed-convolution weights → per parity class (p, q) the
    (C_out, C_in, len(TAPS[p]), len(TAPS[q])) correlation kernel that computes it."""
    w = np.asarray(weight, dtype=np.int64).transpose(1, 0, 2, 3)  # (C_out, C_in, 5, 5)
    return {(p, q): w[:, :, list(TAPS[p]), :][:, :, :, list(TAPS[q])] for p, q in CLASSES}


def digit_count(top: int) -> int:
    """Base-256 digits needed for the integers 0..top."""
    return max(1, -(-int(top).bit_length() // DIGIT_BITS))


def weight_planes(kernels: np.ndarray) -> list[np.ndarray]:
    """Integer kernels → planes ``w = Σ_j 256**j · w_j`` with ``w_j`` in [−128, 127]
    (balanced), stored as uint8 ``w_j + 128``; one plane for int8 weights."""
    if np.abs(kernels).max(initial=0) <= 127:
        return [(kernels + WEIGHT_ZERO_POINT).astype(np.uint8)]
    planes, rest = [], kernels.astype(np.int64)
    while np.any(rest):
        digit = (rest + RADIX // 2) % RADIX - RADIX // 2
        planes.append((digit + WEIGHT_ZERO_POINT).astype(np.uint8))
        rest = (rest - digit) // RADIX
    return planes


def conv_transpose(g: Graph, x: str, weight: np.ndarray, bias: np.ndarray, in_lo: int, in_hi: int,
                   float_twin: bool = False) -> str:
    """Exact ``conv_transpose(x, w) + b`` (k 5, stride 2, padding 2, output padding 1).

    Args:
        x: (N, C_in, H, W) int64 graph value with every element in [in_lo, in_hi].
        weight: (C_in, C_out, 5, 5) integer weights (int8, or int16 for PTQ's affine weights).
        bias: (C_out,) int64 at the accumulator scale.
        float_twin: compute the convolution as float32 ``Conv`` of the undivided values
            instead (the control: the same network in float, which rounds).

    Returns:
        (N, C_out, 2H, 2W) int64 accumulators.
    """
    kernels = class_kernels(weight)
    c_out = weight.shape[1]
    # Class (p, q) reads the one-pixel-padded input from row p, column q on.
    padded = g.op("Pad", x, g.const([0, 0, 1, 1, 0, 0, 1, 1]), g.const(0))
    windows = lambda v, p, q: g.op("Slice", v, g.const([p, q]), g.const([INT64_MAX] * 2), g.const([2, 3]))  # noqa: E731
    if float_twin:
        xf = g.op("Cast", padded, to=TensorProto.FLOAT)
        outs = [g.op("Conv", windows(xf, p, q), g.const(kernels[p, q], np.float32)) for p, q in CLASSES]
        acc = g.op("Cast", g.op("Round", g.op("Concat", *outs, axis=1)), to=TensorProto.INT64)
        constant = np.tile(np.asarray(bias, dtype=np.int64), 4)
    else:
        offset = max(0, -int(in_lo))
        if offset:
            padded = g.op("Add", padded, g.const(offset))
        planes = {pq: [g.const(w_j, np.uint8, "kernel") for w_j in weight_planes(k)] for pq, k in kernels.items()}
        w_zero = g.const(WEIGHT_ZERO_POINT, np.uint8, "weight_zero_point")
        x_zero = g.const(0, np.uint8, "input_zero_point")
        terms: dict[tuple[int, int], list[str]] = {pq: [] for pq in CLASSES}
        count = digit_count(int(in_hi) + offset)
        quotient = padded  # floor(v / 256**k), v ≥ 0: Div truncates = floors
        for k in range(count):
            if k < count - 1:
                higher = g.op("Div", quotient, g.const(RADIX))
                digit = g.op("Sub", quotient, g.op("Mul", higher, g.const(RADIX)))
            else:  # the top digit: v < 256**count by the input bound
                digit = quotient
            digit = g.op("Cast", digit, to=TensorProto.UINT8, hint="digits")
            quotient = higher if k < count - 1 else None
            for p, q in CLASSES:
                window = windows(digit, p, q)
                for j, w_j in enumerate(planes[p, q]):
                    prod = g.op("Cast", g.op("ConvInteger", window, w_j, x_zero, w_zero), to=TensorProto.INT64)
                    terms[p, q].append(prod if k + j == 0 else g.op("Mul", prod, g.const(RADIX ** (k + j))))
        sums = []
        for pq in CLASSES:
            total = terms[pq][0]
            for term in terms[pq][1:]:
                total = g.op("Add", total, term)
            sums.append(total)
        acc = g.op("Concat", *sums, axis=1)
        # Every output read all taps of its class (the pad holds the offset): remove c·Σw.
        constant = np.concatenate([np.asarray(bias, dtype=np.int64) - offset * kernels[pq].sum(axis=(1, 2, 3))
                                   for pq in CLASSES])
    acc = g.op("Add", acc, g.const(channel(constant)))
    # (N, 4·C_out, H, W) → (N, 2, 2, C_out, H, W) → (N, C_out, H, 2, W, 2) → (N, C_out, 2H, 2W)
    shape = g.op("Shape", x)
    n = g.op("Slice", shape, g.const([0]), g.const([1]))
    hw = g.op("Slice", shape, g.const([2]), g.const([4]))
    split = g.op("Reshape", acc, g.op("Concat", n, g.const([2, 2, c_out]), hw, axis=0))
    moved = g.op("Transpose", split, perm=[0, 3, 4, 1, 5, 2])
    return g.op("Reshape", moved, g.op("Concat", n, g.const([c_out]), g.op("Mul", hw, g.const([2])), axis=0))


def model_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value of ``model`` (inputs, initializers, node outputs), by
    ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def float_values(model: onnx.ModelProto) -> list[str]:
    """Values of ``model`` whose element type is not an integer or bool type (should be none)."""
    return sorted(name for name, t in model_types(model).items() if t not in INT_TYPES)


def operators(model: onnx.ModelProto) -> list[str]:
    """The operator types ``model`` uses, sorted."""
    return sorted({node.op_type for node in model.graph.node})

"""Exact integer transposed convolution as int8 GEMMs (or chunked float32 / float64 GEMMs).

The integer function is fixed by docs/integer-contract.md §5: ``acc = conv_transpose(x, w) +
b`` over the integers (k = 5, stride 2, padding 2, output padding 1). This module computes
it with GEMMs whose every result is an exact integer on any machine, in one of three paths:

* ``int8`` — ``torch._int_mm`` (int8 × int8 → int32). The input is written in balanced base-256
  digits ("planes"), each an int8 tensor; weights outside [−128, 127] (PTQ's affine int16)
  are split the same way. Each plane product is exact in int32 because
  ``Σ|w_digit| · 128 < 2**31`` per output (:func:`plane_bound`, data-independent), and planes
  are combined in int64.
* ``float32`` — the same planes as float32 GEMMs, the reduction cut into chunks whose
  ``Σ|w_digit| · 128`` stays below 2**24, so every partial sum is an exact float32 integer
  whatever the summation order, blocking, TF32 or bfloat16 input rounding (8-bit digits are
  exact in all of them); chunks are summed in int32. For any backend without an integer GEMM
  (Apple MPS, NPUs) or where ``torch._int_mm`` fails its probe.
* ``float64`` — one float64 GEMM of the undivided values, exact while ``acc_bound < 2**53``
  (the path before integer GEMMs), kept selectable for comparison (``NVC_TRAIN_EXACT_GEMM=float64``).

Algorithms. *Gather* (every layer with more than 15 outputs): output pixel (2m + p, 2n + q) sums input rows
m−1..m+1 (row parity p = 0: 3 taps) or m..m+1 (p = 1: 2 taps), likewise columns. The input,
offset by a constant ``c`` and zero-padded by one pixel (the pad holding ``−c``), is laid out
with a row pitch a multiple of 8; the nine shifted views of it, stacked, form a column
matrix (9·C_in, rows·pitch) built by nine block copies, and two GEMMs give all four parity
classes: ``A_p (2·C_out, K_p) @ cols[K_p]`` with K_0 = all nine shifts and K_1 = the six
with dy ≥ 0 (a contiguous block). Because every output then reads all taps of its class
(inside the frame or on the ``−c`` pad), the offset adds back as one constant per class and
channel, ``c · Σ_class w``, folded into the bias. *Scatter* (the 3-channel last layers):
one GEMM ``W_taps (25·C_out, C_in) @ x`` over the padded planes and 25 shifted int64 adds.
Both work in bands of input rows, so no 25× column matrix or frame-sized int32 is held; a
:class:`PlaneSink` requantizes each band straight into the next layer's planes.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import NamedTuple

import torch
from torch import Tensor

PATHS = ("int8", "float32", "float64")
"""GEMM paths, fastest first; every one gives the same integers."""

PATH_DTYPES = {"int8": torch.int8, "float32": torch.float32, "float64": torch.float64}
"""Element type of each path's digit planes and GEMM operands."""

PATH_ENV = "NVC_TRAIN_EXACT_GEMM"
"""Environment variable that picks a path for every exact convolution (for comparisons)."""

DIGIT_BITS = 8
RADIX = 1 << DIGIT_BITS
DIGIT_MIN, DIGIT_MAX = -(RADIX // 2), RADIX // 2 - 1
"""Balanced base-256 digits: every plane is a true int8, zero is all-zero digits."""

INT32_LIMIT = 2**31
FLOAT32_EXACT = 2**24

KERNEL, STRIDE, PADDING = 5, 2, 2
ROW_SHIFTS = (-1, 0, 1)
"""Input-row offsets dy of output row 2m + p: p = 0 reads all three, p = 1 only dy ≥ 0."""

PITCH_ALIGN = 8
"""Row pitch and GEMM sizes are multiples of 8 (``torch._int_mm``'s shape rule on CUDA)."""

BAND_BYTES = 2**24
"""Target size of one band's column matrix (int8 bytes): 16 MiB keeps the int32 results of
a band in the tens of MiB at 1080p."""

SCATTER_MAX_CHANNELS = 15
"""Layers with at most this many output channels (the synthesis decoders' 3-channel last
layers) scatter: one GEMM ``W_taps (25·C_out, C_in) @ x`` and 25 shifted adds, instead of
building a 9·C_in column matrix for a handful of outputs."""

PathName = str


class Planes(NamedTuple):
    """An integer tensor (N, C, H, W) as digit planes, padded for the convolution.

    ``padded`` is (P, N, C_pad, H + 3, pitch) in the path's dtype: value(n, c, y, x) =
    ``offset + Σ_k 256**k · padded[k, n, c, y + 1, x + 1]``; every other position (a one-pixel
    ring, channels up to C_pad, the row tail up to ``pitch``, one spare row) holds the digits
    of −offset, i.e. the value 0. On the float64 path P = 1 and the "digit" is the value.
    """

    padded: Tensor
    offset: int
    channels: int
    height: int
    width: int

    @property
    def count(self) -> int:
        return self.padded.shape[0]


class Chunk(NamedTuple):
    """Columns k0:k1 of one GEMM operand, as a contiguous (M, k1 − k0) matrix."""

    k0: int
    k1: int
    matrix: Tensor


class PreparedWeights(NamedTuple):
    """One layer's integer weights as GEMM operands of one path.

    ``groups``: one GEMM group per output row parity p (gather: rows [q = 0 channels,
    q = 1 channels], columns (dy, dx, input channel) for the shifts p reads, starting at
    column ``k_starts[p]`` of the column matrix) or a single group (scatter: rows (ky, kx,
    output channel), columns input channels). Each group holds, per weight digit plane j,
    its chunks (one, except on the float32 path). ``class_sums``: (2, 2, C_out) int64, the
    weights of each output parity class summed over input channels and taps.
    """

    algorithm: str
    groups: tuple[tuple[tuple[Chunk, ...], ...], ...]
    k_starts: tuple[int, ...]
    class_sums: Tensor
    c_in: int
    c_out: int


def round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def padded_channels(c: int) -> int:
    return round_up(c, PITCH_ALIGN)


def _tap(shift: int, parity: int) -> int | None:
    """Kernel index through which input row ``m + shift`` reaches output row ``2m + parity``
    (``2m + p = 2(m + shift) − 2 + k``), or None."""
    k = PADDING - STRIDE * shift + parity
    return k if 0 <= k < KERNEL else None


def _shifts(parity: int) -> list[int]:
    return [dy for dy in ROW_SHIFTS if _tap(dy, parity) is not None]


def parity_class_sums(w: Tensor) -> Tensor:
    """(2, 2, C_out) sums of (C_in, C_out, 5, 5) weights over input channels and the taps of
    each output parity class [py][px] (taps ky ≡ py, kx ≡ px mod 2)."""
    per_tap = w.sum(dim=0)  # (C_out, 5, 5): one contiguous reduction first
    return torch.stack([torch.stack([per_tap[:, py::STRIDE, px::STRIDE].sum(dim=(1, 2)) for px in (0, 1)])
                        for py in (0, 1)])


def digit_span(count: int) -> tuple[int, int]:
    """(lowest, highest) integer that ``count`` balanced base-256 digits write."""
    ones = (RADIX**count - 1) // (RADIX - 1)
    return DIGIT_MIN * ones, DIGIT_MAX * ones


def choose_digits(lo: int, hi: int, path: PathName = "int8") -> tuple[int, int]:
    """(digit count, offset) for integers in [lo, hi]: the fewest digits that hold
    ``v − offset`` for every v in the range and for 0 (the pad), offset 0 where that suffices
    (signed data then needs no correction). The float64 path keeps values whole: (1, 0)."""
    if path == "float64":
        return 1, 0
    lo, hi = min(lo, 0), max(hi, 0)
    for count in range(1, 8):
        low, high = digit_span(count)
        if low <= lo and hi <= high:
            return count, 0
        if hi - lo <= high - low:
            return count, lo - low
    raise ValueError(f"integers in [{lo}, {hi}] are too wide for digit planes")


def write_digits(dst: Tensor, v: Tensor, offset: int, path: PathName) -> None:
    """Write integers ``v`` (int64, any shape S) as the digits ``dst`` (P, *S) of ``v − offset``.

    With ``C = 128 · (256**P − 1) / 255``, ``u = v − offset + C`` lies in [0, 256**P) and
    digit k is ``((u >> 8k) & 255) − 128`` (balanced base 256). ``dst`` may be any strided
    view (the interior of a padded plane tensor, one parity class of it).
    """
    if path == "float64":
        dst[0].copy_(v)
        return
    count = dst.shape[0]
    bias = -digit_span(count)[0] - offset
    u = v.to(torch.int32) if count <= 3 else v  # u < 2**24: int32 halves the memory traffic
    if bias:
        u = u + bias
    for k in range(count):
        d = torch.bitwise_right_shift(u, DIGIT_BITS * k) if k else u
        d = torch.bitwise_and(d, RADIX - 1).sub_(RADIX // 2)
        dst[k].copy_(d)


def empty_planes(n: int, c: int, h: int, w: int, lo: int, hi: int, path: PathName, device) -> Planes:
    """Planes for an (N, C, H, W) tensor with values in [lo, hi], every digit set to the pad's
    (value 0): the caller writes the interior."""
    count, offset = choose_digits(lo, hi, path)
    dtype = PATH_DTYPES[path]
    pad = torch.empty(count, 1, dtype=dtype)
    write_digits(pad, torch.zeros(1, dtype=torch.int64), offset, path)
    pitch = round_up(w + 2, PITCH_ALIGN)
    padded = pad.to(device).view(count, 1, 1, 1, 1).repeat(1, n, padded_channels(c), h + 3, pitch)
    return Planes(padded, offset, c, h, w)


def to_planes(x_int: Tensor, path: PathName) -> Planes:
    """Integer tensor (N, C, H, W), any integer-valued dtype and memory format → planes with
    the fewest digits that hold the data (more digits would be all zero: same result)."""
    n, c, h, w = x_int.shape
    x = x_int.long()
    lo, hi = value_span(x)
    planes = empty_planes(n, c, h, w, lo, hi, path, x.device)
    write_digits(planes.padded[:, :, :c, 1:h + 1, 1:w + 1], x, planes.offset, path)
    return planes


def weight_digits(weight_int: Tensor) -> Tensor:
    """(J, C_in, C_out, 5, 5) int64 balanced base-256 digits of integer weights, lowest first,
    on the weights' device: J = 1 for int8 weights, 2 for PTQ's affine weights in [−255, 255]."""
    rest = weight_int.detach().long()
    lo, hi = value_span(rest)
    if lo >= DIGIT_MIN and hi <= DIGIT_MAX:
        return rest.unsqueeze(0)  # int8 weights are their own single digit
    count = 1  # no offset for weights (it would need a data-dependent correction)
    while not (digit_span(count)[0] <= lo and hi <= digit_span(count)[1]):
        count += 1
    out = torch.empty((count, *rest.shape), dtype=torch.int64, device=rest.device)
    for k in range(count):
        out[k] = torch.bitwise_and(rest + RADIX // 2, RADIX - 1) - RADIX // 2
        rest = (rest - out[k]).bitwise_right_shift_(DIGIT_BITS)
    return out


def value_span(t: Tensor) -> tuple[int, int]:
    """(min, max) of an integer-valued tensor as Python ints: one host round trip."""
    if not t.numel():
        return 0, 0
    lo, hi = torch.aminmax(t)
    return tuple(int(v) for v in torch.stack((lo, hi)).tolist())


@lru_cache(maxsize=None)
def _gather_taps(p: int) -> tuple[tuple[int, ...], ...]:
    """(2, S) kernel tap (ky·5 + kx, or 25: none) of each column-parity q and shift of row parity p."""
    none = KERNEL * KERNEL
    return tuple(tuple((_tap(dy, p) * KERNEL + _tap(dx, q)) if _tap(dx, q) is not None else none
                       for dy in _shifts(p) for dx in ROW_SHIFTS) for q in (0, 1))


def gather_matrix(w: Tensor, p: int, c_in_padded: int) -> Tensor:
    """(2·C_out, len(shifts_p)·3·C_in_padded) int64 GEMM operand of row parity ``p`` from one
    (C_in, C_out, 5, 5) weight digit plane: rows (q, output channel), columns (dy, dx, input
    channel); zero where a shift has no tap in a class."""
    c_in, c_out = w.shape[:2]
    taps = torch.cat([w.permute(1, 2, 3, 0).reshape(c_out, KERNEL * KERNEL, c_in),
                      w.new_zeros(c_out, 1, c_in)], dim=1)  # tap 25: none
    index = torch.tensor(_gather_taps(p), device=w.device)  # (2, S)
    blocks = taps[:, index]  # (C_out, 2, S, C_in)
    if c_in_padded > c_in:
        blocks = torch.cat([blocks, blocks.new_zeros(*blocks.shape[:3], c_in_padded - c_in)], dim=3)
    return blocks.permute(1, 0, 2, 3).reshape(2 * c_out, -1)


def scatter_matrix(w: Tensor, c_in_padded: int) -> Tensor:
    """(25·C_out, C_in_padded) int64 GEMM operand of the scatter algorithm: row (ky, kx, c)."""
    c_in, c_out = w.shape[:2]
    out = w.new_zeros(KERNEL * KERNEL * c_out, c_in_padded)
    out[:, :c_in] = w.permute(2, 3, 1, 0).reshape(-1, c_in)
    return out


def _matrices(w: Tensor, algorithm: str) -> list[Tensor]:
    c_pad = padded_channels(w.shape[0])
    if algorithm == "scatter":
        return [scatter_matrix(w, c_pad)]
    return [gather_matrix(w, p, c_pad) for p in (0, 1)]


def algorithm_for(c_out: int) -> str:
    return "scatter" if c_out <= SCATTER_MAX_CHANNELS else "gather"


def plane_bound(weight_int: Tensor) -> int:
    """Largest |GEMM result| of one input digit plane with one weight digit plane, over every
    output: ``Σ|w_digit| · 128`` over the taps of one parity class and all input channels,
    the most any GEMM row of either algorithm sums (a scatter row sums one tap). Below 2**31
    proves the int8 path exact in int32; it depends on the weights only, never on the data."""
    return max(int(parity_class_sums(w.abs()).max()) for w in weight_digits(weight_int)) * -DIGIT_MIN


CLASS_TAPS = 9
"""The most taps one output parity class reads (3 × 3 of the 5 × 5 kernel)."""


def plane_bound_ceiling(c_in: int) -> int:
    """:func:`plane_bound` of any single-digit (int8) weights of ``c_in`` input channels is at
    most ``c_in · 9 · 128 · 128``: below 2**31 for up to 14,563 channels, so such layers need
    no look at their values."""
    return c_in * CLASS_TAPS * -DIGIT_MIN * -DIGIT_MIN


def float32_cuts(a: Tensor) -> list[int]:
    """Column indexes where the float32 path cuts ``a`` (int64) so that every row's
    Σ|a| · 128 over one chunk stays below 2**24 (greedy: each chunk as long as it can be)."""
    col = a.abs() * -DIGIT_MIN
    if a.numel() and int(col.max()) >= FLOAT32_EXACT:
        raise ValueError("a weight digit times 128 is beyond float32's exact integers")
    cuts, start = [], 0
    while start < a.shape[1]:
        over = (col[:, start:].cumsum(dim=1) >= FLOAT32_EXACT).any(dim=0).nonzero()
        if not len(over):
            break
        start += int(over[0])
        cuts.append(start)
    return cuts


def prepare_weights(weight_int: Tensor, path: PathName, device, algorithm: str | None = None) -> PreparedWeights:
    """GEMM operands of one layer's (C_in, C_out, 5, 5) integer weights for ``path``, built on
    ``device``.

    QAT prepares every layer once per optimizer step, so the work stays on the weights'
    device (no host round trip of GPU-trained weights) and int8 weights, the usual case, are
    never widened to int64: one (min, max) read decides that they are a single digit, and
    :func:`plane_bound_ceiling` proves the int8 path exact for them without a data-dependent
    bound.
    """
    if path not in PATHS:
        raise ValueError(f"exact GEMM path must be one of {', '.join(PATHS)}, got {path!r}")
    w = weight_int.detach()
    c_in, c_out = w.shape[:2]
    algorithm = algorithm or algorithm_for(c_out)
    lo, hi = value_span(w)
    single = DIGIT_MIN <= lo and hi <= DIGIT_MAX
    if path == "int8" and not (single and plane_bound_ceiling(c_in) < INT32_LIMIT) \
            and plane_bound(w) >= INT32_LIMIT:
        raise ValueError(f"a {c_in}-channel layer's int8 plane sums may exceed 2**31")
    digits = [w] if single or path == "float64" else list(weight_digits(w))
    dtype = PATH_DTYPES[path]
    # Operands are built in their own dtype (int8 digits: 8× less to move than int64).
    per_digit = [_matrices(d.to(dtype).to(device), algorithm) for d in digits]
    groups = []
    for g in range(len(per_digit[0])):
        chunks_j = []
        for mats in per_digit:
            a = mats[g]
            padded = a.new_zeros(max(32, round_up(a.shape[0], PITCH_ALIGN)), a.shape[1])
            padded[:a.shape[0]] = a
            cuts = [0, *(float32_cuts(padded.long()) if path == "float32" else []), a.shape[1]]
            chunks_j.append(tuple(Chunk(k0, k1, padded[:, k0:k1].contiguous())
                                  for k0, k1 in zip(cuts[:-1], cuts[1:])))
        groups.append(tuple(chunks_j))
    c_pad = padded_channels(c_in)
    k_starts = (0,) if algorithm == "scatter" else (0, (len(ROW_SHIFTS) - len(_shifts(1))) * len(ROW_SHIFTS) * c_pad)
    # int32 sums are exact for single-digit weights (|Σ| ≤ 128 · 25 · C_in); int64 otherwise.
    sums_dtype = torch.int32 if single and c_in * KERNEL * KERNEL * -DIGIT_MIN < INT32_LIMIT else torch.int64
    class_sums = parity_class_sums(w.to(device=device, dtype=sums_dtype)).long()
    return PreparedWeights(algorithm, tuple(groups), k_starts, class_sums, c_in, c_out)


PROBE_SHAPES = ((32, 48, 8), (32, 72, 64), (264, 1152, 968))
"""(M, K, N) of the ``torch._int_mm`` probe: the sizes and 8-alignment this module uses."""


@lru_cache(maxsize=None)
def int_mm_works(device_type: str, device_index: int | None = None) -> bool:
    """Whether ``torch._int_mm`` (private API) runs on this device and is exact, probed once
    per device: shapes of the kind this module uses, checked against int64 products."""
    if not hasattr(torch, "_int_mm"):
        return False
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    g = torch.Generator().manual_seed(0)
    try:
        for m, k, n in PROBE_SHAPES:
            a = torch.randint(DIGIT_MIN, DIGIT_MAX + 1, (m, k), generator=g, dtype=torch.int8)
            b = torch.randint(DIGIT_MIN, DIGIT_MAX + 1, (k, n), generator=g, dtype=torch.int8)
            a[0], b[:, 0] = DIGIT_MIN, DIGIT_MIN  # the largest product sum
            got = torch._int_mm(a.to(device), b.to(device)).cpu()
            if got.dtype != torch.int32 or not torch.equal(got.long(), a.long() @ b.long()):
                return False
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False
    return True


def default_path(device) -> PathName:
    """``$NVC_TRAIN_EXACT_GEMM`` if set, else ``int8`` where ``torch._int_mm`` passes its
    probe on ``device``, else ``float32``."""
    chosen = os.environ.get(PATH_ENV, "").strip()
    if chosen:
        if chosen not in PATHS:
            raise ValueError(f"{PATH_ENV}={chosen!r}: choose one of {', '.join(PATHS)}")
        return chosen
    device = torch.device(device)
    return "int8" if int_mm_works(device.type, device.index) else "float32"


def chunked_gemm(chunks: tuple[Chunk, ...], cols: Tensor, k_start: int, path: PathName) -> Tensor:
    """Σ over chunks of ``chunk.matrix @ cols[k_start + k0 : k_start + k1]``: (M, N) int32
    (int8 and float32 paths: every chunk exact) or float64."""
    total = None
    for k0, k1, a in chunks:
        b = cols[k_start + k0:k_start + k1]
        if path == "int8":
            part = torch._int_mm(a, b)
        elif path == "float32":
            part = torch.mm(a, b).round_().to(torch.int32)  # an exact integer below 2**24
        else:
            part = torch.mm(a, b)
        total = part if total is None else total.add_(part)
    return total


def _group_accumulators(group, digit_matrices: list[Tensor], k_start: int, rows: int,
                        path: PathName) -> Tensor:
    """int64 (rows, N) = Σ_j 256**j Σ_d 256**d (weight digit j @ input digit d); each inner sum
    by Horner from the top digit, every GEMM result contiguous."""
    acc = None
    for j, chunks in enumerate(group):
        total = None
        for matrix in reversed(digit_matrices):
            g = chunked_gemm(chunks, matrix, k_start, path)[:rows]
            if path == "float64":
                g = g.round_()  # exact integers; rounded, never truncated
            total = g.to(torch.int64) if total is None else total.bitwise_left_shift_(DIGIT_BITS).add_(g)
        if j:
            total.bitwise_left_shift_(DIGIT_BITS * j)
        acc = total if acc is None else acc.add_(total)
    return acc


class AccumulatorSink:
    """Collects (N, C, 2H, 2W) int64 results; ``transform`` (e.g. requantization, in place on
    an (N', C, h, w) int64 block, possibly a strided view) is applied to each block before it
    is stored."""

    def __init__(self, n: int, c: int, h: int, w: int, device, transform=None):
        self.out = torch.empty(n, c, 2 * h, 2 * w, dtype=torch.int64, device=device)
        self.transform = transform

    def write(self, images: slice, rows: slice, cols: slice, values: Tensor) -> None:
        """Store ``values`` (N', C, h, w) at ``[images, :, rows, cols]``."""
        self.out[images, :, rows, cols] = values

    def result(self) -> Tensor:
        return self.out


class PlaneSink:
    """Requantizes each block (``transform``: values into [lo, hi]) and writes it straight into
    the next layer's digit planes: no frame-sized int64 activation is ever held."""

    def __init__(self, n: int, c: int, h: int, w: int, lo: int, hi: int, path: PathName, device, transform):
        self.planes = empty_planes(n, c, 2 * h, 2 * w, lo, hi, path, device)
        self.path, self.transform = path, transform

    def write(self, images: slice, rows: slice, cols: slice, values: Tensor) -> None:
        """Write ``values`` (N', C, h, w) as digits at ``[images, :, rows, cols]``."""
        ring = lambda s: slice(s.start + 1, s.stop + 1, s.step)  # noqa: E731 (inside the pad ring)
        dst = self.planes.padded[:, images, :values.shape[1], ring(rows), ring(cols)]
        write_digits(dst, values, self.planes.offset, self.path)

    def result(self) -> Planes:
        return self.planes


def conv_transpose_planes(planes: Planes, weights: PreparedWeights, path: PathName, sink,
                          bias_int: Tensor | None = None, band_bytes: int = BAND_BYTES):
    """The exact transposed convolution (k = 5, stride 2, padding 2, output padding 1) of a
    planed input, accumulators (bias included) handed to ``sink`` band by band.

    Args:
        planes: :func:`to_planes` of the (N, C_in, H, W) input, or a :class:`PlaneSink`'s result.
        weights: :func:`prepare_weights` of the layer for the same ``path``.
        sink: :class:`AccumulatorSink` or :class:`PlaneSink` for (N, C_out, 2H, 2W).
        bias_int: optional (C_out,) int64.
        band_bytes: column-matrix bytes per band of input rows (tests shrink it).

    Returns:
        ``sink.result()``.
    """
    if planes.channels != weights.c_in:
        raise ValueError(f"input has {planes.channels} channels, the layer {weights.c_in}")
    const = weights.class_sums * planes.offset  # (2, 2, C_out): offset correction, bias, per class
    if bias_int is not None:
        const = const + bias_int.to(const.device).view(1, 1, -1)
    if weights.algorithm == "scatter":
        _scatter(planes, weights, path, sink, const, band_bytes)
    else:
        _gather(planes, weights, path, sink, const, band_bytes)
    return sink.result()


def _batches(n: int, h: int, bytes_per_row: int, band_bytes: int) -> tuple[int, int]:
    """(images, rows) per band: bands of ``rows`` input rows of one image (frames), or, where
    a whole image fits, ``images`` whole images side by side in one GEMM (training batches
    of small crops: fewer, larger GEMMs)."""
    rows = max(1, min(h, band_bytes // bytes_per_row))
    images = max(1, min(n, band_bytes // (bytes_per_row * h))) if rows == h else 1
    return images, rows


def _gather(planes: Planes, weights: PreparedWeights, path: PathName, sink, const: Tensor, band_bytes: int) -> None:
    """Nine shifted views → column matrix → one GEMM per output row parity, by bands."""
    padded = planes.padded
    count, n, c_pad, _, pitch = padded.shape
    h, w, c_out = planes.height, planes.width, weights.c_out
    flat = padded.contiguous().view(count, n, c_pad, -1)  # the windows below assume this layout
    k_all = len(ROW_SHIFTS) ** 2 * c_pad
    images, rows = _batches(n, h, k_all * count * pitch * padded.element_size(), band_bytes)
    buffers: dict[tuple[int, int], Tensor] = {}
    for b0 in range(0, n, images):
        nb = min(images, n - b0)
        batch = slice(b0, b0 + nb)
        for r0 in range(0, h, rows):
            bh = min(rows, h - r0)
            length = bh * pitch
            if (nb, bh) not in buffers:
                buffers[nb, bh] = torch.empty(count, k_all, nb, length, dtype=padded.dtype, device=padded.device)
            cols = buffers[nb, bh]
            # The nine shifted windows (dy, dx) of the band as one strided view of the planes,
            # [digit, dy, dx, channel, image, position] (read overlapping, never written):
            # one copy instead of nine. Window (dy, dx) starts at (r0 + 1 + dy)·pitch + 1 + dx.
            windows = flat.as_strided(
                (count, len(ROW_SHIFTS), len(ROW_SHIFTS), c_pad, nb, length),
                (flat.stride(0), pitch, 1, flat.stride(2), flat.stride(1), 1),
                flat.storage_offset() + b0 * flat.stride(1) + r0 * pitch)
            cols.view(count, len(ROW_SHIFTS), len(ROW_SHIFTS), c_pad, nb, length).copy_(windows)
            matrices = list(cols.view(count, k_all, nb * length))
            for p in (0, 1):
                acc = _group_accumulators(weights.groups[p], matrices, weights.k_starts[p], 2 * c_out, path)
                acc = acc.view(2, c_out, nb, bh, pitch).add_(const[p].view(2, c_out, 1, 1, 1))
                for q in (0, 1):
                    block = acc[q].transpose(0, 1)  # (nb, C_out, bh, pitch), a view
                    if sink.transform is not None:
                        block = sink.transform(block)
                    sink.write(batch, slice(2 * r0 + p, 2 * (r0 + bh), 2), slice(q, 2 * w, 2), block[..., :w])


def _scatter(planes: Planes, weights: PreparedWeights, path: PathName, sink, const: Tensor, band_bytes: int) -> None:
    """One GEMM ``W_taps @ x`` over the padded input (ring included, so every output gets all
    taps of its class), then 25 shifted adds into a canvas, by bands."""
    padded = planes.padded
    count, n, c_pad, h_pad, pitch = padded.shape
    h, w, c_out = planes.height, planes.width, weights.c_out
    taps = KERNEL * KERNEL
    # Padded row r (input row r − 1) reaches output row 2(r − 1) − 2 + ky = 2r − 4 + ky.
    images, rows = _batches(n, h + 2, taps * c_out * count * pitch * 4, band_bytes)
    for b0 in range(0, n, images):
        nb = min(images, n - b0)
        canvas = torch.zeros(c_out, nb, 2 * (h + 2) + KERNEL, 2 * pitch + KERNEL, dtype=torch.int64,
                             device=padded.device)
        for r0 in range(0, h + 2, rows):  # padded rows 0 … h + 1
            bh = min(rows, h + 2 - r0)
            length = bh * pitch
            band = padded[:, b0:b0 + nb, :, r0:r0 + bh]  # (P, nb, C_pad, bh, pitch)
            mats = list(band.transpose(1, 2).reshape(count, c_pad, nb * length))
            acc = _group_accumulators(weights.groups[0], mats, 0, taps * c_out, path)
            acc = acc.view(KERNEL, KERNEL, c_out, nb, bh, pitch)
            for ky in range(KERNEL):
                for kx in range(KERNEL):
                    canvas[:, :, 2 * r0 + ky:2 * (r0 + bh) + ky:2, kx:2 * pitch + kx:2] += acc[ky, kx]
        out = canvas[:, :, 4:4 + 2 * h, 4:4 + 2 * w]
        for p in (0, 1):
            for q in (0, 1):
                out[:, :, p::2, q::2] += const[p, q].view(-1, 1, 1, 1)
        out = out.transpose(0, 1)  # (nb, C_out, 2h, 2w), a view
        if sink.transform is not None:
            out = sink.transform(out)
        sink.write(slice(b0, b0 + nb), slice(0, 2 * h), slice(0, 2 * w), out)


def conv_transpose_exact(x_int: Tensor, weight_int: Tensor, bias_int: Tensor | None = None,
                         path: PathName | None = None, band_bytes: int = BAND_BYTES,
                         algorithm: str | None = None) -> Tensor:
    """Exact ``conv_transpose(x, w) (+ b)`` of integer tensors by ``path`` (default:
    :func:`default_path` of the input's device) and ``algorithm`` (default by C_out).

    Args:
        x_int: (N, C_in, H, W) integer-valued tensor (any dtype, any memory format).
        weight_int: (C_in, C_out, 5, 5) integer-valued tensor.
        bias_int: optional (C_out,) int64.

    Returns:
        (N, C_out, 2H, 2W) int64 accumulators, the same on every path, algorithm and device.
    """
    path = path or default_path(x_int.device)
    weights = prepare_weights(weight_int, path, x_int.device, algorithm)
    return accumulators(x_int, weights, path, bias_int, band_bytes)


def accumulators(x_int: Tensor, weights: PreparedWeights, path: PathName, bias_int: Tensor | None = None,
                 band_bytes: int = BAND_BYTES) -> Tensor:
    """(N, C_out, 2H, 2W) int64 accumulators (bias included) of an integer (N, C_in, H, W)
    input with weights already prepared for ``path``."""
    n, _, h, w = x_int.shape
    sink = AccumulatorSink(n, weights.c_out, h, w, x_int.device)
    return conv_transpose_planes(to_planes(x_int, path), weights, path, sink, bias_int, band_bytes)

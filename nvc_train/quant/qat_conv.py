"""QAT transposed convolutions whose forward runs only the exact integer arithmetic.

A fake-quant layer needs two things from its convolution: the value the frozen integer
model will compute (the exact accumulators) and the gradients of the float convolution it
stands for (straight-through estimators). Computing the value with the integer GEMMs and
the gradient with a second, float forward convolution would do the layer's work twice;
:func:`conv_transpose_qat` runs the integer GEMMs (:mod:`nvc_train.quant.exact_conv`) in
the forward and only the float convolution's *backward* (``aten.convolution_backward``,
the kernels ``F.conv_transpose2d``'s autograd calls) in the backward.

The float output ``y = acc · acc_scale`` it returns is the real value of the integer
accumulators, which a float convolution of the same quantized inputs and weights only
approximates (float32 round-off); its gradient is that convolution's.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from nvc_train.quant import exact_conv

STRIDE, PADDING, OUTPUT_PADDING = 2, 2, 1
"""The geometry of every SSF decoder layer (k=5): (N, C, h, w) → (N, C_out, 2h, 2w)."""


class QuantizedLayer(NamedTuple):
    """One layer's quantized weights as a training step uses them.

    Attributes:
        weight_int: (C_in, C_out, 5, 5) integer-valued float32 weights.
        weight_scale: (C_out,) float32 per-output-channel scales.
        weight_value: (C_in, C_out, 5, 5) float32 ``weight_int · weight_scale``, detached:
            the fake-quant weight's value, which the backward uses.
        prepared: the integer GEMM operands of ``weight_int`` for ``path`` (None if not asked for).
        path: the exact GEMM path of the weight's device.
    """

    weight_int: Tensor
    weight_scale: Tensor
    weight_value: Tensor
    prepared: exact_conv.PreparedWeights | None
    path: str


class LayerCache:
    """Quantized weights and GEMM operands per layer, rebuilt only when the float weight changes.

    A training step calls each hyper-decoder up to twice and each synthesis decoder up to
    twice with the same weights (SSF's three frames); quantizing (in float64) and preparing the operands once per
    optimizer step instead of once per call is most of what QAT used to add to a step. An
    optimizer step or ``load_state_dict`` changes the weight in place, which bumps its
    version counter; the entry holds the weight itself, so a new weight at a reused address
    is never mistaken for the old one.
    """

    def __init__(self):
        self._entries: dict[int, tuple[Tensor, tuple, QuantizedLayer]] = {}

    def clear(self) -> None:
        self._entries.clear()

    def get(self, layer: int, weight: Tensor, quantize: Callable[[Tensor], tuple[Tensor, Tensor]],
            prepare: bool = True) -> QuantizedLayer:
        """Layer ``layer``'s :class:`QuantizedLayer` for float ``weight`` quantized by ``quantize``
        (``weight → (weight_int, scale)``); ``prepare=False`` leaves out the GEMM operands
        (``prepared`` is None) for a caller that only simulates the layer."""
        path = exact_conv.default_path(weight.device)
        key = (weight.data_ptr(), weight._version, str(weight.device), path, prepare)
        hit = self._entries.get(layer)
        if hit is not None and hit[0] is weight and hit[1] == key:
            return hit[2]
        w_int, scale = quantize(weight)
        value = (w_int * scale.view(1, -1, 1, 1)).detach()
        prepared = exact_conv.prepare_weights(w_int, path, weight.device) if prepare else None
        entry = QuantizedLayer(w_int, scale, value, prepared, path)
        self._entries[layer] = (weight, key, entry)
        return entry


class _ValueOfIntegers(torch.autograd.Function):
    """Forward ``acc · acc_scale``; backward the gradients of ``conv_transpose2d(x, w_q, b)``
    (or, with ``transposed`` False, of ``conv2d(x, w_q, b, padding=1)``, the 3×3 layers of
    the image hyper-decoders) passed straight through to the float weight and bias."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, acc: Tensor, acc_scale: Tensor,
                weight_value: Tensor, transposed: bool = True) -> Tensor:
        ctx.save_for_backward(x)
        ctx.weight_value = weight_value
        ctx.has_bias = bias is not None
        ctx.transposed = transposed
        return acc.to(torch.float32).mul_(acc_scale.to(acc.device, torch.float32).view(1, -1, 1, 1))

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias]
        if not any(mask):
            return None, None, None, None, None, None, None
        w = ctx.weight_value
        if ctx.transposed:
            geometry = [STRIDE, STRIDE], [PADDING, PADDING], [1, 1], True, [OUTPUT_PADDING, OUTPUT_PADDING]
        else:
            geometry = [1, 1], [1, 1], [1, 1], False, [0, 0]
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad.to(x.dtype), x, w, [w.shape[1 if ctx.transposed else 0]] if ctx.has_bias else None,
            *geometry, 1, mask)
        return grad_x, grad_w, grad_b, None, None, None, None


def conv_transpose_qat(x: Tensor, x_int: Tensor, weight: Tensor, bias: Tensor | None, layer: QuantizedLayer,
                       bias_int: Tensor, acc_scale: Tensor) -> tuple[Tensor, Tensor]:
    """One fake-quant transposed convolution (k=5, stride 2, padding 2, output padding 1).

    Args:
        x: (N, C_in, h, w) float32 input carrying the gradient; its value is ``x_int · s_in``.
        x_int: (N, C_in, h, w) integer-valued input of the integer model.
        weight: (C_in, C_out, 5, 5) float32 weight being trained; its gradient is the one a
            straight-through fake-quant weight would get.
        bias: (C_out,) float32 bias being trained (straight-through), or None.
        layer: the layer's quantized weights (:meth:`LayerCache.get` of ``weight``).
        bias_int: (C_out,) int64 bias at the accumulator scale.
        acc_scale: (C_out,) real value of one accumulator unit (``s_in · s_w``).

    Returns:
        ``(y, acc)``: ``acc`` (N, C_out, 2h, 2w) int64 exact accumulators, bias included, as
        the frozen model computes them; ``y`` (N, C_out, 2h, 2w) float32 ``acc · acc_scale``,
        whose gradients are those of ``conv_transpose2d(x, w_int·s_w, b_int·acc_scale)``.
    """
    acc = exact_conv.accumulators(x_int, layer.prepared, layer.path, bias_int)
    return _ValueOfIntegers.apply(x, weight, bias, acc, acc_scale, layer.weight_value), acc


def value_of_accumulators(x: Tensor, weight: Tensor, bias: Tensor | None, acc: Tensor, acc_scale: Tensor,
                          weight_value: Tensor, transposed: bool) -> Tensor:
    """``acc · acc_scale`` (N, C_out, H, W) float32, with the gradients of the float
    convolution of ``x`` by ``weight_value`` (transposed: k=5, stride 2, as
    :func:`conv_transpose_qat`; else 3×3, stride 1, padding 1) passed straight through to
    ``x``, ``weight`` and ``bias``. For a caller that computed the exact accumulators itself."""
    return _ValueOfIntegers.apply(x, weight, bias, acc, acc_scale, weight_value, transposed)


class _FakeQuantLSQ(torch.autograd.Function):
    """``clamp(round(y / s), lo, hi) · s`` with LSQ's straight-through gradients, fused."""

    @staticmethod
    def forward(ctx, y: Tensor, s: Tensor, lo: int, hi: int) -> Tensor:
        ctx.save_for_backward(y, s)
        ctx.lo, ctx.hi = lo, hi
        return torch.div(y, s).round_().clamp_(lo, hi).mul_(s)

    @staticmethod
    def backward(ctx, grad: Tensor):
        y, s = ctx.saved_tensors
        v = torch.div(y, s)
        q = torch.round(v)
        inside = (q >= ctx.lo) & (q <= ctx.hi)
        grad_y = grad * inside if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            # d/ds [clamp(round(y/s))·s] = clamp(round(v)) − v inside the range (STE), lo or hi outside.
            ds = q.clamp_(ctx.lo, ctx.hi).sub_(v.mul_(inside))
            grad_s = (grad * ds).sum().reshape(s.shape)
        return grad_y, grad_s, None, None


def fake_quant_lsq(y: Tensor, s: Tensor, lo: int, hi: int) -> Tensor:
    """``clamp(round(y / s), lo, hi) · s``, the gradients of LSQ (Esser et al., ICLR 2020):
    straight through to ``y`` where the rounded value is inside [lo, hi], and to the scalar
    step ``s`` the sum of ``clamp(round(y/s)) − y/s`` inside, ``lo`` or ``hi`` outside (scale
    ``s`` with :func:`nvc_train.quant.arith.lsq_grad_scale` first). One forward pass and one
    backward node instead of the seven of ``clamp(quantize_ste(y / s), lo, hi) * s``, which
    it equals (value and gradients).

    Args:
        y: (N, C, H, W) float32 pre-activations.
        s: scalar float32 step (a 0-dim tensor).
    """
    return _FakeQuantLSQ.apply(y, s, lo, hi)


QUANTILE_SAMPLE = 1_000_000
"""torch.quantile's input limit; larger activations are sampled with a stride."""


@torch.no_grad()
def observed_quantile(x: Tensor, q: float) -> Tensor:
    """The ``q`` quantile of ``x`` (any shape, float32), from a strided sample of at most
    ``QUANTILE_SAMPLE`` values, and the maximum over ranks under DDP, so that every rank
    calibrates the same activation range. 0-dim float32."""
    x = x.detach().float().flatten()
    if x.numel() > QUANTILE_SAMPLE:
        x = x[:: x.numel() // QUANTILE_SAMPLE + 1]
    value = torch.quantile(x, q)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value

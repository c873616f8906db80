"""The QAT convolution's forward is the exact integer layer and its backward the float one's.

References: numpy int64 tap loops (``tests/quant/reference.py``) for the accumulators; for the
gradients, autograd through PyTorch's own ``conv_transpose2d`` of the straight-through
fake-quant weight and bias (the formulation the QAT layers used before).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nvc_train.quant import arith
from nvc_train.quant.qat_conv import LayerCache, conv_transpose_qat
from tests.quant import reference


def _case(seed: int, c_in: int = 12, c_out: int = 10, hi: int = 65535):
    g = torch.Generator().manual_seed(seed)
    x_int = torch.randint(0, hi + 1, (2, c_in, 5, 6), generator=g)
    weight = torch.nn.Parameter(torch.randn(c_in, c_out, 5, 5, generator=g) * 0.05)
    bias = torch.nn.Parameter(torch.randn(c_out, generator=g) * 0.1)
    return x_int, weight, bias


@pytest.mark.parametrize("c_out", [3, 10], ids=["scatter", "gather"])
def test_forward_is_the_integer_layer_and_backward_the_float_convolutions(c_out):
    x_int, weight, bias = _case(0, c_out=c_out)
    s_in = torch.tensor(1.0 / 65535)
    layer = LayerCache().get(0, weight, arith.quantize_weight_per_channel)
    acc_scale = arith.accumulator_scale(s_in, layer.weight_scale)
    b_int = arith.quantize_bias(bias, acc_scale)
    x = (x_int.float() * s_in).requires_grad_()
    y, acc = conv_transpose_qat(x, x_int, weight, bias, layer, b_int, acc_scale)

    expected = reference.conv_transpose(x_int.numpy(), layer.weight_int.long().numpy()) + b_int.numpy().reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(acc.numpy(), expected)
    assert torch.equal(y, acc.float() * acc_scale.float().view(1, -1, 1, 1))

    # The old formulation: a float forward of the straight-through fake-quant weight and bias.
    x_ref = x.detach().clone().requires_grad_()
    w_fq = weight + (layer.weight_int * layer.weight_scale.view(1, -1, 1, 1) - weight).detach()
    b_fq = bias + ((b_int.double() * acc_scale).float() - bias).detach()
    y_ref = F.conv_transpose2d(x_ref, w_fq, b_fq, stride=2, padding=2, output_padding=1)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)

    upstream = torch.randn_like(y)
    grads = torch.autograd.grad((y * upstream).sum(), (x, weight, bias))
    grads_ref = torch.autograd.grad((y_ref * upstream).sum(), (x_ref, weight, bias))
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_no_bias_and_no_input_gradient():
    x_int, weight, _ = _case(1)
    layer = LayerCache().get(0, weight, arith.quantize_weight_per_channel)
    acc_scale = arith.accumulator_scale(torch.tensor(1.0), layer.weight_scale)
    zero = torch.zeros(weight.shape[1], dtype=torch.int64)
    y, _ = conv_transpose_qat(x_int.float(), x_int, weight, None, layer, zero, acc_scale)
    (grad_w,) = torch.autograd.grad(y.sum(), (weight,))
    x_ref = x_int.float()
    w_fq = weight + (layer.weight_int * layer.weight_scale.view(1, -1, 1, 1) - weight).detach()
    (want,) = torch.autograd.grad(F.conv_transpose2d(x_ref, w_fq, stride=2, padding=2, output_padding=1).sum(), (weight,))
    torch.testing.assert_close(grad_w, want, rtol=1e-5, atol=1e-3)


def test_cache_reuses_a_layer_until_an_optimizer_step_changes_the_weight():
    """Within a step every call gets the same quantized layer; after an optimizer step (an in-place
    update) the next call re-quantizes. Control: a cache keyed on the weight alone (no version)
    would hand back the stale integers, which differ from the new weight's."""
    _, weight, _ = _case(2)
    cache, calls = LayerCache(), []

    def quantize(w):
        calls.append(1)
        return arith.quantize_weight_per_channel(w)

    first = cache.get(0, weight, quantize)
    assert cache.get(0, weight, quantize) is first and len(calls) == 1
    optimizer = torch.optim.SGD([weight], lr=1.0)
    weight.grad = torch.randn_like(weight) * 0.05
    optimizer.step()
    second = cache.get(0, weight, quantize)
    assert len(calls) == 2
    assert torch.equal(second.weight_int, arith.quantize_weight_per_channel(weight)[0])
    assert not torch.equal(second.weight_int, first.weight_int), "the step changed no integer: no control"
    # Another weight with the same layer index is never served the first one's integers.
    other = torch.nn.Parameter(weight.detach().clone() * 2)
    assert cache.get(0, other, quantize).weight_int.data_ptr() != second.weight_int.data_ptr()


@pytest.mark.parametrize("lo,hi", [(0, 255), (0, 65535), (-127, 127)])
def test_fused_lsq_equals_the_composed_fake_quant(lo, hi):
    """Value and gradients (to y and to the step) of the fused function equal those of
    ``clamp(quantize_ste(y / s), lo, hi) * s``, the composition it replaces, on inputs that
    reach below, inside and above the range. Control: the same check against a composition
    without the clamp's gradient mask fails."""
    from compressai.ops import quantize_ste

    from nvc_train.quant.qat_conv import fake_quant_lsq

    g = torch.Generator().manual_seed(lo + hi)
    s0 = 3.0 / (hi - lo)
    y0 = (torch.rand(2, 5, 7, 9, generator=g) * 4 - 1.5) * (hi - lo) * s0  # ~30 % outside the range
    upstream = torch.randn(y0.shape, generator=g)

    def run(fn):
        y = y0.clone().requires_grad_()
        s = torch.tensor(s0, requires_grad=True)
        s_lsq = arith.lsq_grad_scale(s, 0.01)
        out = fn(y, s_lsq)
        return (out, *torch.autograd.grad((out * upstream).sum(), (y, s)))

    got = run(lambda y, s: fake_quant_lsq(y, s, lo, hi))
    want = run(lambda y, s: torch.clamp(quantize_ste(y / s), lo, hi) * s)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    unmasked = run(lambda y, s: (quantize_ste(y / s) + (torch.clamp(torch.round(y / s), lo, hi) - torch.round(y / s)).detach()) * s)
    assert not torch.allclose(got[1], unmasked[1]), "masking made no difference: no control"

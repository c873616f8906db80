"""Prepare (fake-quant) and convert (frozen integer) against the independent reference.

All three hyperpriors, both outputs (means and CDF indexes), on z from real latents of
coded frames and on adversarial z (the stress record's worst case, and random symbols of
every magnitude up to the clamp limit). The reference (``tests/quant/reference.py``) starts
from the float weights, so a wrong weight, bias or multiplier quantization in the package
would show here, not only a wrong convolution.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from nvc_train.data.synthetic import synthetic_clip
from nvc_train.models.ssf import PARTS, hyperprior
from nvc_train.quant.conformance import stress_pattern
from nvc_train.quant import arith
from nvc_train.quant.fake_quant import (
    ROLES, fake_quant_scale_indexes, hyper_decoder, hyper_decoder_layers, integer_hyper_input, quantize_medians,
)
from tests.quant import reference as ref
from tests.quant.helpers import integer_decoder

INTERIOR_SHARE = {"real": 0.15, "random": 0.05}
"""Least share of intermediate activations strictly inside (0, qmax) per input kind, so that
rounding and requantization (not only the clamps) are compared. Measured on the test model
(8-bit activations): real latents 0.22-0.77, random symbols 0.09-0.58 depending on the
decoder; the stress input saturates by design. On 2026-12-05 a fresh install (same pins) trained
a session model whose motion scale decoder had 0.185 on real latents, also at the commit before
(f86aaff) whose CI had passed: the bound for real latents went from 0.2 to 0.15 (18 % of that
decoder's activations are interior values)."""


def reference_layers(m, part: str, role: str) -> ref.Layers:
    convs = hyper_decoder_layers(hyper_decoder(hyperprior(m.model, part), role))
    fq = m.qat.decoder(part, role)
    return ref.Layers([c.weight.detach().numpy() for c in convs], [c.bias.detach().numpy() for c in convs],
                      fq.effective_act_scales().detach().numpy(), fq.config.activation_qmax, fq.config.input_frac_bits)


def real_symbols(model, part: str) -> np.ndarray:
    """z symbols of a coded 256×384 clip (hyper-latent 4×6: interior and border taps)."""
    frames = [f.unsqueeze(0) for f in synthetic_clip(77, 2, 256, 384)]
    with torch.no_grad():
        y = {"keyframe": lambda: model.img_encoder(frames[0]),
             "motion": lambda: model.motion_encoder(torch.cat(frames[::-1], dim=1)),
             "residual": lambda: model.res_encoder(frames[1] - frames[0])}[part]()
        hp = hyperprior(model, part)
        z = hp.hyper_encoder(y)
        return torch.round(z - hp.entropy_bottleneck._get_medians().reshape(1, -1, 1, 1)).long().numpy()


def symbols(m, tensors, part: str, role: str, kind: str) -> np.ndarray:
    if kind == "real":
        return real_symbols(m.model, part)
    if kind == "stress":
        prefix = f"{part}.{role}.layer0."
        return stress_pattern(tensors[prefix + "weight"], tensors[prefix + "bias"], signed=True).long().numpy() * ref.SYMBOL_LIMIT
    rng = np.random.default_rng(PARTS.index(part))
    shape = (2, 192, 3, 4)
    magnitude = np.floor(2.0 ** rng.uniform(0, 15, shape))
    magnitude[rng.random(shape) < 0.2] = ref.SYMBOL_LIMIT  # at the clamp limit
    return (magnitude * rng.choice([-1, 1], shape)).astype(np.int64)


def interior_share(trace: ref.Trace, qmax: int) -> float:
    acts = np.concatenate([trace.inputs[1].ravel(), trace.inputs[2].ravel()])
    return float(((acts > 0) & (acts < qmax)).mean())


@pytest.mark.parametrize("kind", ["real", "stress", "random"])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("part", PARTS)
def test_prepare_and_convert_equal_the_reference(frozen, part, role, kind):
    m, tensors = frozen
    layers = reference_layers(m, part, role)
    hp = hyperprior(m.model, part)
    sym = symbols(m, tensors, part, role, kind)
    med_q = ref.median_q(hp.entropy_bottleneck._get_medians().detach().numpy(), layers.input_frac_bits)
    x = ref.z_int(sym, med_q, layers.input_frac_bits)
    np.testing.assert_array_equal(  # the package builds the decoder input the same way
        integer_hyper_input(torch.from_numpy(sym), quantize_medians(hp.entropy_bottleneck._get_medians(), 8), 8).numpy(), x)
    trace = ref.hyper_decoder(layers, role, x, hp.gaussian_conditional.scale_table.numpy())
    for i, acc in enumerate(trace.accumulators):  # the bound proven at export really bounds
        assert np.abs(acc).max() <= int(tensors[f"{part}.{role}.layer{i}.acc_bound"])
    if kind in INTERIOR_SHARE:
        assert interior_share(trace, layers.act_qmax) >= INTERIOR_SHARE[kind]
    if kind == "stress":
        bound = int(tensors[f"{part}.{role}.layer0.acc_bound"])
        assert np.abs(trace.accumulators[0]).max() >= 0.99 * bound  # the worst case, reached

    convert = integer_decoder(tensors, part, role)
    converted = convert(torch.from_numpy(x)).numpy()
    z_int = torch.from_numpy(x)
    with torch.no_grad():
        fq = m.qat.decoder(part, role)(hyper_decoder(hp, role), z_int, z_int.float() * 2.0**-layers.input_frac_bits)
    prepared = fq.integer if role == "mean" else fake_quant_scale_indexes(fq, hp.gaussian_conditional.scale_table)
    np.testing.assert_array_equal(converted, trace.output)
    np.testing.assert_array_equal(prepared.numpy(), trace.output)
    if role == "scale":
        assert len(np.unique(trace.output)) > 3, "the comparison must span several CDF tables"


def test_requantization_ties_round_half_up_as_the_reference():
    """Exact ties never occur with 31-bit multipliers on real data, so make them: multipliers
    that are powers of two (times 3) put acc·m exactly halfway between two outputs."""
    reals = np.array([2.0**-10, 3 * 2.0**-12, 2.0**-3, 5 * 2.0**-9])
    fp = arith.fixed_point(torch.from_numpy(reals), 255)
    half = [int(v) for v in (torch.ldexp(torch.ones(4, dtype=torch.float64), fp.shift - 1) / fp.multiplier).round().long()]
    acc = np.array([[q * 2 * h + h for q in range(-3, 60)] for h in half]).T  # (63, 4): ties q + 1/2
    acc = np.concatenate([acc, acc + 1, acc - 1])[:, :, None, None]
    got = arith.requantize(torch.from_numpy(acc), fp, 0, 255).numpy()
    np.testing.assert_array_equal(got, ref.requantize(acc, reals, 255, 0, 255))
    assert (got[:63, 0, 0, 0] == np.clip(np.arange(-3, 60) + 1, 0, 255)).all()  # q + 1/2 → q + 1

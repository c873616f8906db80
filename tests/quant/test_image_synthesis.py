"""The integer synthesis of the image models (pixel-exact images): inverse GDN, square root,
the 1×1 γ sums, the whole decoder against the independent reference on every GEMM path, and
the QAT simulation; each exactness claim with a float control that the same check rejects."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from compressai.layers import GDN

from nvc_train.models.image import build_image_model
from nvc_train.quant import arith, exact_conv2d
from nvc_train.quant.config import QuantConfig
from nvc_train.quant.image_synthesis import (
    FakeQuantImageSynthesis,
    IntegerImageSynthesis,
    convert_image_synthesis,
    floor_sqrt,
    root_shift,
    scaled_root,
    synthesis_stages,
)
from nvc_train.quant.synthesis import INPUT_BOUND, SAMPLE_UNITS
from tests.quant import image_reference

PATHS = ("int8", "float32", "float64")


def test_floor_sqrt_is_the_integer_square_root():
    g = torch.Generator().manual_seed(0)
    roots = torch.randint(0, 2**31 - 1, (3000,), generator=g, dtype=torch.int64)
    values = torch.cat([roots * roots + d for d in (-1, 0, 1)] +
                       [torch.randint(0, 2**62, (3000,), generator=g, dtype=torch.int64),
                        torch.arange(0, 5000, dtype=torch.int64), torch.tensor([2**62 - 1])]).clamp(0, 2**62 - 1)
    want = [math.isqrt(v) for v in values.tolist()]
    assert floor_sqrt(values).tolist() == want
    # A float32 estimate (backends without float64) is off by up to hundreds: corrected the same.
    assert floor_sqrt(values, torch.float32).tolist() == want
    # Control: the float64 square root alone, floored, is wrong near large perfect squares
    # (too high just below them, too low at some of them).
    estimate = torch.sqrt(values.double()).floor().long()
    assert bool((estimate > torch.tensor(want)).any()) and bool((estimate < torch.tensor(want)).any())
    for bad in (-1, 2**62):
        with pytest.raises(ValueError, match="defined on"):
            floor_sqrt(torch.tensor([4, bad]))


@pytest.mark.parametrize("bound", [2**10, 2**47, 2**50 + 12345, 2**52])
def test_scaled_root_keeps_24_bits_for_both_signs_of_the_shift(bound):
    f = root_shift(bound)
    assert (f > 0) == (bound < 2**47)
    norms = torch.tensor([0, 1, 2, bound // 7, bound // 2, bound - 1, bound])
    want = [math.isqrt(v << 2 * f if f >= 0 else v >> -2 * f) for v in norms.tolist()]
    got = scaled_root(norms, f)
    assert got.tolist() == want and int(got.max()) < 2**24 <= 4 * int(got.max())


@pytest.mark.parametrize("c, x_max, g_max", [(16, 2**15 - 1, 2047), (192, 2**15 - 1, 2047), (8, 255, 127)])
def test_gamma_sums_equal_int64_on_every_path(c, x_max, g_max):
    """The inverse GDN's norm is a 1×1 exact convolution of x² (up to 2**30) with γ in [0, 2047]."""
    g = torch.Generator().manual_seed(c)
    x = torch.randint(-x_max, x_max + 1, (2, c, 5, 7), generator=g)
    x[0, :, 0] = x_max  # the bound on one row: four digit planes on the int8 path
    gamma = torch.randint(0, g_max + 1, (c, c, 1, 1), generator=g)
    beta = torch.randint(0, 2**40, (c,), generator=g)
    squares = x * x
    want = torch.einsum("nchw,dc->ndhw", squares, gamma[:, :, 0, 0]) + beta.view(1, -1, 1, 1)
    for path in PATHS:
        assert torch.equal(exact_conv2d.conv3x3_exact(squares, gamma, beta, path), want), path
    # Control: PyTorch's float32 convolution of the same integers rounds.
    twin = F.conv2d(squares.float(), gamma.float(), beta.float()).double().round().long()
    assert not torch.equal(twin, want)


VARIANTS = ("typical", "gamma-dominant", "dead-row")
"""The GDNs of the toy model: as initialised plus small off-diagonal terms (the norm is mostly
β); γ × 100 (the x-dependent part dominates, the GDN is far from the identity); and one
channel whose γ row is zero, so that β alone sets its bound and the root shift is negative."""


def _synthesis_setup(seed: int = 0, variant: str = "typical"):
    """A toy bmshj2018-hyperprior, its last layer scaled up so that the samples span the
    levels, its GDNs per ``variant``, its fake-quant synthesis calibrated on the latents of a
    generated image, the converted tensors, and typical latents (1, 24, 3, 4) on the 2**-8
    grid as integers and as floats."""
    from compressai.layers.gdn import GDN as GDNLayer

    from nvc_train.data.synthetic import synthetic_clip

    torch.manual_seed(seed)
    model = build_image_model("bmshj2018-hyperprior", (16, 24)).eval()
    with torch.no_grad():
        model.g_s[-1].weight.mul_(40)
        for gdn in (m for m in model.g_s if isinstance(m, GDNLayer)):
            gamma = gdn.gamma_reparam(gdn.gamma) + 0.02 * torch.rand(gdn.gamma.shape)  # off-diagonal terms
            if variant == "gamma-dominant":
                gamma = gamma * 100
            elif variant == "dead-row":
                gamma[3] = 0
            gdn.gamma.copy_(gdn.gamma_reparam.init(gamma))
        y = model.g_a(synthetic_clip(seed, 1, 48, 64))
        y_hat = torch.round(y * 256 + 37 * torch.randn(y.shape)) / 256  # means on the 2**-8 grid
    fq = FakeQuantImageSynthesis(3, QuantConfig(scope="decoder"))
    with torch.no_grad():
        fq(model.g_s, y_hat)
    y_int = torch.round(y_hat.double() * 256).long()
    return model, fq, convert_image_synthesis(model.g_s, fq), y_int, y_hat


def _reference(model, fq, y_int):
    """The reference on ``model``'s float parameters: γ and β from CompressAI's own
    reparametrisation, layers in ``g_s``'s order."""
    from compressai.layers.gdn import GDN as GDNLayer

    layers = []
    for m in model.g_s:
        if isinstance(m, GDNLayer):
            c = m.beta.numel()
            gamma = m.gamma_reparam(m.gamma).reshape(c, c).detach().numpy()
            layers[-1] = (*layers[-1][:2], (gamma, m.beta_reparam(m.beta).detach().numpy()))
        else:
            layers.append((m.weight.detach().numpy(), m.bias.detach().numpy(), None))
    steps = [float(fq.act_step(k).detach()) for k in range(6)]
    return image_reference.synthesis(layers, steps, fq.qmax, y_int.numpy())


@pytest.mark.parametrize("variant", VARIANTS)
def test_integer_synthesis_equals_reference_on_every_path(variant):
    model, fq, tensors, y_typical, _ = _synthesis_setup(variant=variant)
    shifts = [int(tensors[f"gdn{i}.root_shift"]) for i in range(3)]
    assert (min(shifts) < 0) == (variant == "dead-row")
    g = torch.Generator().manual_seed(3)
    y_stress = (torch.randint(0, 2, y_typical.shape, generator=g) * 2 - 1) * INPUT_BOUND
    syn = IntegerImageSynthesis(tensors)
    for y_int in (y_typical, y_stress):
        ref_samples, ref_trace = _reference(model, fq, y_int)
        if y_int is y_typical:
            levels = np.clip((ref_samples + 128) >> 8, 0, 255)
            assert len(np.unique(levels)) > 100  # the output spans the levels
        for path in PATHS:
            syn.gemm_path = path
            assert np.array_equal(syn(y_int).numpy(), ref_samples), path
            trace = syn.accumulators(y_int)
            assert len(trace) == len(ref_trace) == 7
            for i, (got, want) in enumerate(zip(trace, ref_trace)):
                assert np.array_equal(got.numpy(), want), (path, i)
    # The stress latents drive the first accumulators past 2**33 and the γ sums of the norms
    # (without β) past 2**40, where float32 arithmetic (the controls) cannot follow.
    _, ref_trace = _reference(model, fq, y_stress)
    beta0 = tensors["gdn0.beta"].numpy().reshape(1, -1, 1, 1)
    assert np.abs(ref_trace[0]).max() > 2**33 and (ref_trace[1] - beta0).max() > 2**40
    w0 = tensors["layer0.weight"].float()
    twin = F.conv_transpose2d(y_stress.float(), w0, stride=2, padding=2, output_padding=1).double().round().long()
    assert not np.array_equal(twin.numpy() + tensors["layer0.bias"].numpy().reshape(1, -1, 1, 1), ref_trace[0])
    # The first GDN's input on the stress latents, then its γ sums by PyTorch's float32 conv.
    q = int(tensors["gdn0.act_hi"])
    x = arith.requantize(torch.from_numpy(ref_trace[0].copy()), syn._fp("gdn0.in."), -q, q)
    norm_twin = F.conv2d((x * x).float(), tensors["gdn0.gamma"].float()).double().round().long()
    assert not np.array_equal(norm_twin.numpy() + beta0, ref_trace[1])


def test_float_synthesis_is_not_the_integer_one():
    """Control of the pixel claim: CompressAI's float g_s on the same latents gives other
    levels than the integer synthesis (whose levels the reference reproduces)."""
    model, _, tensors, y_int, y_hat = _synthesis_setup()
    samples = IntegerImageSynthesis(tensors)(y_int)
    with torch.no_grad():
        float_levels = torch.floor(model.g_s(y_hat).double() * 255 + 0.5).clamp(0, 255).long()
    int_levels = ((samples + 128) >> 8).clamp(0, 255)
    assert not torch.equal(float_levels, int_levels)
    assert (float_levels - int_levels).abs().float().mean() < 2.0  # and yet the same picture


@pytest.mark.parametrize("variant", VARIANTS)
def test_qat_simulation_tracks_the_integer_synthesis(variant):
    """What training sees is the integer model up to the square root's floor and rounding
    ties: at most 32 samples (1/8 of an 8-bit level) apart, under 2 on average."""
    model, fq, tensors, y_int, y_hat = _synthesis_setup(seed=1, variant=variant)
    with torch.no_grad():
        simulated = fq(model.g_s, y_hat).double() * SAMPLE_UNITS
        float_samples = model.g_s(y_hat).double() * SAMPLE_UNITS
    exact = IntegerImageSynthesis(tensors)(y_int).double()
    assert (simulated - exact).abs().max() <= 32 and (simulated - exact).abs().mean() < 2
    # Control: the float synthesis is a quarter of a level away on average.
    assert (float_samples - exact).abs().mean() > 64


def test_qat_gradients_reach_every_synthesis_parameter():
    model, fq, _, _, y_hat = _synthesis_setup()
    fq(model.g_s, y_hat.requires_grad_()).square().mean().backward()
    for name, p in model.g_s.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert fq.act_log_range.grad is not None and bool((fq.act_log_range.grad != 0).all())
    assert y_hat.grad.abs().sum() > 0


def test_unsupported_synthesis_is_refused():
    model = build_image_model("bmshj2018-hyperprior", (16, 24))
    with pytest.raises(ValueError, match="synthesis"):
        synthesis_stages(torch.nn.Sequential(model.g_s[0], GDN(16), model.g_s[2]))  # a forward GDN
    with pytest.raises(ValueError, match="alternate"):
        synthesis_stages(torch.nn.Sequential(model.g_s[0], model.g_s[2]))
    uncalibrated = FakeQuantImageSynthesis(3, QuantConfig(scope="decoder"))
    with pytest.raises(Exception, match="never calibrated"):
        convert_image_synthesis(model.g_s, uncalibrated)


@pytest.mark.gpu
def test_cuda_synthesis_equals_the_reference_with_tf32_on(cuda_flags_restored):
    """On the GPU (int8 and float32 paths, cuDNN autotuning and TF32 allowed): the same
    samples, norms and accumulators as the reference; PyTorch's float32 `g_s` on the GPU
    differs from the CPU's (the control)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model, fq, tensors, y_int, y_hat = _synthesis_setup()
    ref_samples, ref_trace = _reference(model, fq, y_int)
    # Converted on the GPU (as validation's real coding does during GPU training): the same integers.
    on_gpu = convert_image_synthesis(copy.deepcopy(model).cuda().g_s, copy.deepcopy(fq).cuda())
    assert on_gpu.keys() == tensors.keys() and all(torch.equal(on_gpu[k], tensors[k]) for k in tensors)
    syn = IntegerImageSynthesis(tensors).cuda()
    for path in ("int8", "float32"):
        syn.gemm_path = path
        assert np.array_equal(syn(y_int.cuda()).cpu().numpy(), ref_samples), path
        for i, (got, want) in enumerate(zip(syn.accumulators(y_int.cuda()), ref_trace)):
            assert np.array_equal(got.cpu().numpy(), want), (path, i)
    with torch.no_grad():
        assert not torch.equal(model.g_s(y_hat), model.cuda().g_s(y_hat.cuda()).cpu())

"""The image hyperpriors' integer hyper-decoders (bmshj2018-hyperprior, mbt2018-mean).

Measured against the independent numpy/Python-int reference (tests/quant/image_reference.py),
on every GEMM path, with inputs up to the symbol clamp; each exactness claim has a float32
control that the same check rejects.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nvc_train.models.image import build_image_model, image_forward, image_hyperprior
from nvc_train.quant import exact_conv2d, image_hyper
from nvc_train.quant.config import QuantConfig
from nvc_train.quant.fake_quant import input_bound, integer_hyper_input, quantize_medians
from nvc_train.quant.image_hyper import (
    Head,
    ImageHyperpriorQAT,
    IntegerImageHyperDecoder,
    convert_image_decoder,
    decoder_layers,
)
from tests.quant import image_reference, reference

ARCHITECTURES = ("bmshj2018-hyperprior", "mbt2018-mean")
CHANNELS = (16, 24)
FRAC_BITS = 8


@pytest.mark.parametrize("c_in, c_out, x_range, w_range", [
    (16, 24, (0, 255), (-127, 127)),            # ReLU activations, int8 weights
    (8, 40, (-31, 255), (-127, 127)),           # LeakyReLU activations (signed, offset digits)
    (12, 10, (-2**20, 2**20), (-255, 255)),     # multi-digit input, two-digit (PTQ-like) weights
    (5, 3, (-2**30, 2**30), (-127, 127)),       # four digit planes
    (288, 40, (-31, 255), (-127, 127)),         # mbt2018-mean's 3M/2 inputs: the float32 path cuts its sums
])
def test_conv3x3_equals_tap_sums_on_every_path(c_in, c_out, x_range, w_range):
    g = torch.Generator().manual_seed(c_in)
    x = torch.randint(x_range[0], x_range[1] + 1, (2, c_in, 5, 7), generator=g)
    w = torch.randint(w_range[0], w_range[1] + 1, (c_out, c_in, 3, 3), generator=g)
    b = torch.randint(-1000, 1000, (c_out,), generator=g)
    expected = image_reference.conv3(x.numpy(), w.numpy()) + b.numpy().reshape(1, -1, 1, 1)
    if x_range[1] <= 2**20:
        # The reference's orientation is PyTorch's: float64 conv2d is exact at these magnitudes.
        torch_conv = F.conv2d(x.double(), w.double(), b.double(), padding=1)
        assert np.array_equal(torch_conv.round().long().numpy(), expected)
    for path in ("int8", "float32", "float64"):
        got = exact_conv2d.conv3x3_exact(x, w, b, path)
        assert got.dtype == torch.int64 and np.array_equal(got.numpy(), expected), path
    if c_in >= 128:
        chunks = exact_conv2d.prepare_conv_weights(w, "float32", "cpu").digits[0]
        assert len(chunks) > 1, "the float32 path did not cut this reduction"
    if x_range[1] >= 2**20:
        # Control: float32 convolution of the same integers rounds at these magnitudes.
        twin = F.conv2d(x.float(), w.float(), b.float(), padding=1).double().round().long()
        assert not np.array_equal(twin.numpy(), expected)


def _decoder_setup(architecture: str, seed: int = 0):
    """A model whose hyper-decoder output spans the scale table (last layer scaled up) and
    whose hyper-latent spans several symbols (h_a's last layer scaled up), a fake-quant twin
    calibrated on z symbols up to ±60, its integer tensors and those symbols as z_int."""
    torch.manual_seed(seed)
    model = build_image_model(architecture, CHANNELS).eval()
    hp = image_hyperprior(model)
    layers = decoder_layers(hp.hyper_decoder)
    with torch.no_grad():
        layers[-1].conv.weight.mul_(40)
        layers[-1].conv.bias.uniform_(0, 6)
        model.h_a[-1].weight.mul_(300)
    model.update(force=True)
    head = Head.of(layers[-1].conv.out_channels, hp.has_means)
    qat = ImageHyperpriorQAT(len(layers), head, QuantConfig())
    median_q = tensors_median_q(hp)
    symbols = torch.randint(-60, 61, (2, CHANNELS[0], 4, 6), generator=torch.Generator().manual_seed(seed))
    z_int = integer_hyper_input(symbols, median_q, FRAC_BITS)
    with torch.no_grad():
        qat.decoder(hp.hyper_decoder, z_int, z_int.float() * 2.0**-FRAC_BITS)  # calibrates
    tensors = convert_image_decoder(hp.hyper_decoder, qat.decoder, input_bound(median_q, FRAC_BITS),
                                    hp.gaussian_conditional.scale_table)
    return model, hp, qat, tensors, z_int


def tensors_median_q(hp) -> torch.Tensor:
    return quantize_medians(hp.entropy_bottleneck._get_medians(), FRAC_BITS)


def _reference(hp, qat, z_int):
    # The layer list read from the modules themselves, not through the package's decoder_layers.
    modules = list(hp.hyper_decoder.children())
    spec = []
    for i, m in enumerate(modules):
        if isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.Conv2d)):
            after = modules[i + 1] if i + 1 < len(modules) else None
            activation = ("leaky_relu" if isinstance(after, torch.nn.LeakyReLU) else
                          "relu" if isinstance(after, torch.nn.ReLU) else "none")
            kind = "transposed" if isinstance(m, torch.nn.ConvTranspose2d) else "conv3"
            spec.append((kind, m.weight.detach().numpy(), m.bias.detach().numpy(), activation))
    steps = [float(qat.decoder.act_step(i).detach()) for i in range(len(spec) - 1)]
    return image_reference.hyper_decoder(spec, steps, qat.config.activation_qmax, FRAC_BITS, z_int.numpy(),
                                         hp.gaussian_conditional.scale_table.numpy(), hp.has_means)


def _stress_input(z_int: torch.Tensor, median_q: torch.Tensor) -> torch.Tensor:
    """z_int with symbols at the clamp (±2**15, random signs) in every other row: the first
    layers' accumulators reach the magnitudes where float32 sums round."""
    g = torch.Generator().manual_seed(7)
    signs = torch.randint(0, 2, z_int[:, :, ::2].shape, generator=g) * 2 - 1
    out = z_int.clone()
    out[:, :, ::2] = integer_hyper_input(signs * 2**15, median_q, FRAC_BITS)
    return out


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_integer_decoder_equals_reference_on_every_path(architecture):
    model, hp, qat, tensors, z_typical = _decoder_setup(architecture)
    z_stress = _stress_input(z_typical, tensors_median_q(hp))
    # The reference's own reading of the input (median rounding, symbol clamp) agrees.
    medians = hp.entropy_bottleneck._get_medians().detach().numpy()
    symbols = (z_typical - tensors_median_q(hp).view(1, -1, 1, 1)) // 2**FRAC_BITS
    assert np.array_equal(reference.z_int(symbols.numpy(), reference.median_q(medians, FRAC_BITS), FRAC_BITS),
                          z_typical.numpy())
    decoder = IntegerImageHyperDecoder(tensors)
    for z_int in (z_typical, z_stress):
        ref_means, ref_indexes, ref_accs = _reference(hp, qat, z_int)
        if z_int is z_typical:
            assert len(np.unique(ref_indexes)) >= 10  # the outputs span the table, not one index
            assert ref_means is None or len(np.unique(ref_means)) > 100
        for path in ("int8", "float32", "float64"):
            decoder.gemm_path = path
            means, indexes = decoder(z_int)
            assert np.array_equal(indexes.numpy(), ref_indexes), path
            assert (means is None) == (ref_means is None)
            if means is not None:
                assert np.array_equal(means.numpy(), ref_means), path
            # Every layer's accumulators, not only the outputs (saturated activations hide errors).
            for i, (acc, ref) in enumerate(zip(decoder.accumulators(z_int), ref_accs)):
                assert np.array_equal(acc.numpy(), ref), (path, i)

    # The stress input's first-layer accumulators pass 2**33: the package's equal the
    # reference tap sums, and a float32 convolution of the same integers (the control) does not.
    w0, b0 = tensors["layer0.weight"], tensors["layer0.bias"]
    expected = reference.conv_transpose(z_stress.numpy(), w0.long().numpy()) + b0.numpy().reshape(1, -1, 1, 1)
    assert np.abs(expected).max() > 2**33
    assert np.array_equal(image_hyper.layer_accumulators("transposed", z_stress, w0, b0).numpy(), expected)
    twin = F.conv_transpose2d(z_stress.float(), w0.float(), stride=2, padding=2, output_padding=1)
    assert not np.array_equal(twin.double().round().long().numpy() + b0.numpy().reshape(1, -1, 1, 1), expected)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_qat_forward_is_the_integer_decoder(architecture):
    """What training sees (prepare) is what the frozen decoder computes (convert)."""
    _, hp, qat, tensors, z_int = _decoder_setup(architecture, seed=1)

    def qat_outputs():
        with torch.no_grad():
            out = qat.decoder(hp.hyper_decoder, z_int, z_int.float() * 2.0**-FRAC_BITS)
        scales = out.scale_acc.double() * out.scale_acc_scale.view(1, -1, 1, 1)
        table = hp.gaussian_conditional.scale_table.double()[:-1]
        return out, (scales[..., None] > table).sum(-1).int()

    means, indexes = IntegerImageHyperDecoder(tensors)(z_int)
    out, qat_indexes = qat_outputs()
    assert torch.equal(qat_indexes, indexes)
    if means is not None:
        assert torch.equal(out.mean_q, means)
        assert torch.equal(out.means, means.float() / 256)
    # Control: a step moved by 1 % after conversion, and training no longer sees the export.
    with torch.no_grad():
        qat.decoder.act_log_range.add_(0.01)
    out, qat_indexes = qat_outputs()
    assert not torch.equal(qat_indexes, indexes) or (means is not None and not torch.equal(out.mean_q, means))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_qat_gradients_reach_every_parameter(architecture):
    model, hp, qat, _, _ = _decoder_setup(architecture, seed=2)
    model.train()
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    out = image_forward(model, x, qat.hyperprior_forward)
    bits = sum(-lk.log2().sum() for lk in out["likelihoods"].values())
    (bits / x[0, 0].numel() + 50 * F.mse_loss(out["x_hat"], x)).backward()
    for name, p in [*hp.hyper_decoder.named_parameters(), ("act_log_range", qat.decoder.act_log_range)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_unsupported_hyper_decoder_is_refused():
    with pytest.raises(ValueError, match="LeakyReLU slope"):
        decoder_layers(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.LeakyReLU(0.2),
                                           torch.nn.Conv2d(4, 4, 3, padding=1)))
    with pytest.raises(ValueError, match="unsupported hyper-decoder module"):
        decoder_layers(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Sigmoid()))

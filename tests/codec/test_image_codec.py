"""The integer image codec end to end on a toy model trained here (float, then QAT)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nvc_train.codec.image_codec import build_integer_image_codec, pad_image
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.models.image import build_image_model, image_forward
from nvc_train.quant.image_hyper import Head, ImageHyperpriorQAT, decoder_layers, image_integer_tensors

FLOAT_STEPS, QAT_STEPS = 40, 15


def _train(architecture: str):
    """A toy (N=16, M=24) model: float steps, then QAT steps, on one synthetic image."""
    torch.manual_seed(0)
    model = build_image_model(architecture, (16, 24))
    layers = decoder_layers(model.h_s)
    qat = ImageHyperpriorQAT(len(layers), Head.of(layers[-1].conv.out_channels, architecture == "mbt2018-mean"))
    x = synthetic_clip(0, 1, 128, 192)
    for steps, hp_forward, params in ((FLOAT_STEPS, None, list(model.parameters())),
                                      (QAT_STEPS, qat.hyperprior_forward, [*model.parameters(), *qat.parameters()])):
        opt = torch.optim.Adam(params, 1e-3)
        for _ in range(steps):
            out = image_forward(model, x, hp_forward)
            bpp = sum(-lk.log2().sum() for lk in out["likelihoods"].values()) / x[0, 0].numel()
            loss = bpp + 100 * F.mse_loss(out["x_hat"], x)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval().update(force=True)
    return model, qat.eval(), x


@pytest.fixture(scope="module", params=["bmshj2018-hyperprior", "mbt2018-mean"])
def trained(request):
    return _train(request.param)


def test_decoded_latent_is_the_encoders_on_every_path_and_thread_count(trained):
    model, qat, x = trained
    codec = build_integer_image_codec(model, image_integer_tensors(model, qat), qat.config.input_frac_bits).eval()
    coded, encoded = codec.compress(x)
    threads = torch.get_num_threads()
    try:
        for path, n in (("int8", threads), ("float32", threads), ("float64", threads), (None, 1)):
            torch.set_num_threads(n)
            decoded = codec.set_gemm_path(path).decompress(coded)
            assert decoded.latent_sha256 == encoded.latent_sha256, (path, n)
            # The synthesis is CompressAI's float g_s (not in the contract): close, not identical.
            assert (decoded.x_hat - encoded.x_hat).abs().max() < 1e-4
    finally:
        torch.set_num_threads(threads)
    # Against CompressAI's own float inference of the same weights (``model(x)`` in eval mode:
    # y rounded, float hyper-decoder): the same image up to the integer means' last bits.
    with torch.no_grad():
        stock = model(x)["x_hat"].clamp(0, 1)
    psnr = -10 * torch.log10(F.mse_loss(decoded.x_hat, stock))
    assert psnr > 30, f"{psnr:.1f} dB from CompressAI's float decoding of the same model"


def test_coded_size_is_the_models_rate(trained):
    """The rANS strings cost what the model's likelihoods at inference promise: within 10 %
    plus 8 bytes per string (the coder's flush and the tables' tail mass)."""
    model, qat, x = trained
    codec = build_integer_image_codec(model, image_integer_tensors(model, qat), qat.config.input_frac_bits).eval()
    coded, _ = codec.compress(x)
    with torch.no_grad():
        likelihoods = image_forward(model, x, qat.hyperprior_forward)["likelihoods"]
    for name, string in (("y", coded.y_string), ("z", coded.z_string)):
        promised = float(-likelihoods[name].log2().sum()) / 8
        assert abs(len(string) - promised) < 0.1 * promised + 8, (name, len(string), promised)
    # Independently: CompressAI's own compress() of the same weights (float hyper-decoder) codes
    # the same z and a y of nearly the same size (its scales and means differ in the last bits).
    with torch.no_grad():
        stock = model.compress(x)["strings"]
    assert stock[1][0] == coded.z_string
    assert abs(len(stock[0][0]) - len(coded.y_string)) < 0.05 * len(stock[0][0]) + 8


def test_pad_image_reaches_multiples_of_64_by_replication():
    x = torch.rand(1, 3, 70, 130)
    padded = pad_image(x)
    assert padded.shape[-2:] == (128, 192)
    assert torch.equal(padded[..., :70, :130], x)
    assert torch.equal(padded[..., 100, :130], x[..., 69, :])

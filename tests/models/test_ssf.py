"""Our training forward mirrors CompressAI's ScaleSpaceFlow.forward exactly."""

import torch

from nvc_train.models.loss import QUALITY_LAMBDAS, quality_to_lambda
from nvc_train.models.ssf import build_ssf, ssf_forward


def test_ssf_forward_equals_stock_forward():
    torch.manual_seed(0)
    model = build_ssf().eval()
    frames = [torch.rand(1, 3, 128, 128) for _ in range(3)]
    with torch.no_grad():
        stock = model(frames)
        ours = ssf_forward(model, frames)
    for t, out in enumerate(ours):
        assert torch.equal(out.x_hat, stock["x_hat"][t])
        for part, liks in out.likelihoods.items():
            for name, lik in liks.items():
                assert torch.equal(lik, stock["likelihoods"][t][part][name])


def test_quality_presets():
    assert sorted(QUALITY_LAMBDAS) == list(range(1, 10))
    assert all(a < b for a, b in zip(list(QUALITY_LAMBDAS.values()), list(QUALITY_LAMBDAS.values())[1:]))
    assert quality_to_lambda(3) == 0.0067

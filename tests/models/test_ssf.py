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


def _scalar_reads(fn) -> int:
    """How many tensor values ``fn`` reads back to the host (``aten._local_scalar_dense``:
    ``.item()``, ``int(t)``, a permutation given as a tensor); each is a GPU synchronisation."""
    from torch.utils._python_dispatch import TorchDispatchMode

    count = 0

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal count
            count += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return count


def test_entropy_bottleneck_is_compressais_minus_the_host_reads():
    """Same outputs, likelihoods and gradients as CompressAI's EntropyBottleneck, training
    (noise, same seed) and eval; no value read back to the host. Control: CompressAI's own
    forward reads 12 per call."""
    from compressai.entropy_models import EntropyBottleneck

    from nvc_train.models.ssf import HostFreeEntropyBottleneck

    model = build_ssf()
    ours = model.img_hyperprior.entropy_bottleneck
    assert type(ours) is HostFreeEntropyBottleneck
    stock = EntropyBottleneck(ours.channels)
    stock.load_state_dict(ours.state_dict())
    z = torch.randn(2, ours.channels, 5, 7) * 3
    for training in (True, False):
        results = []
        for eb in (ours, stock):
            zz = z.clone().requires_grad_(True)
            torch.manual_seed(1)
            outputs, likelihood = eb(zz, training=training)
            (outputs.square().sum() + likelihood.log2().sum()).backward()
            results.append((outputs, likelihood, zz.grad, [p.grad for p in eb.parameters()]))
            eb.zero_grad(set_to_none=True)
        (o1, l1, g1, p1), (o2, l2, g2, p2) = results
        assert torch.equal(o1, o2) and torch.equal(l1, l2) and torch.equal(g1, g2)
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(p1, p2))
        assert any(a is not None for a in p1)
    with torch.no_grad():
        assert _scalar_reads(lambda: ours(z)) == 0
        assert _scalar_reads(lambda: stock(z)) == 12


def test_every_entropy_bottleneck_of_the_model_is_host_free_and_the_state_dict_is_compressais():
    from compressai.entropy_models import EntropyBottleneck
    from compressai.models.video import ScaleSpaceFlow

    from nvc_train.models.ssf import HostFreeEntropyBottleneck

    model = build_ssf()
    bottlenecks = [m for m in model.modules() if isinstance(m, EntropyBottleneck)]
    assert len(bottlenecks) == 3 and all(type(m) is HostFreeEntropyBottleneck for m in bottlenecks)
    assert list(model.state_dict()) == list(ScaleSpaceFlow().state_dict())


def test_rescaled_flow_equals_a_float32_factor_tensor():
    """The flow rescaling by Python numbers (no host-to-device copy) gives exactly the
    products with float32 factors, the previous formula."""
    from nvc_train.models.ssf import rescale_flow

    motion = torch.randn(2, 3, 72, 136) * 4
    factors = torch.tensor([128 / 136, 128 / 72, 1.0], dtype=torch.float32).view(1, 3, 1, 1)
    assert torch.equal(rescale_flow(motion, 128), motion * factors)
    assert _scalar_reads(lambda: rescale_flow(motion, 128)) == 0

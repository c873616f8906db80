"""prepare (fake-quant, float) and convert (integer) agree element for element."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nvc_train.data.synthetic import synthetic_clip
from nvc_train.models.ssf import PARTS, hyperprior
from nvc_train.quant.export import integer_tensors
from nvc_train.quant.fake_quant import (
    fake_quant_scale_indexes, hyper_decoder, hyper_input, input_bound, quantize_medians,
)
from nvc_train.quant.integer import ExportError, IntegerHyperDecoder, convert_decoder


@pytest.fixture(scope="module")
def frozen(qat_module):
    m = copy.deepcopy(qat_module)
    m.model.update(force=True)
    tensors = integer_tensors(m.model, m.qat)
    return m, tensors


def integer_decoder(tensors, part, role):
    prefix = f"{part}.{role}."
    return IntegerHyperDecoder(role, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})


def real_latents(model, seed):
    """Latents y of each part from a synthetic clip (keyframe, motion, residual encoders)."""
    frames = [f.unsqueeze(0) for f in synthetic_clip(seed, 2, 128, 128)]
    with torch.no_grad():
        y_key = model.img_encoder(frames[0])
        y_motion = model.motion_encoder(torch.cat(frames[::-1], dim=1))
        y_res = model.res_encoder(frames[1] - frames[0])
    return {"keyframe": y_key, "motion": y_motion, "residual": y_res}


def compare(m, tensors, part, y):
    hp = hyperprior(m.model, part)
    k = m.qat.config.input_frac_bits
    with torch.no_grad():
        _, z_int, z_hat = hyper_input(hp.hyper_encoder(y), hp.entropy_bottleneck._get_medians(), k)
        fq_mean = m.qat.decoder(part, "mean")(hyper_decoder(hp, "mean"), z_int, z_hat)
        fq_scale = m.qat.decoder(part, "scale")(hyper_decoder(hp, "scale"), z_int, z_hat)
    int_mean = integer_decoder(tensors, part, "mean")(z_int)
    int_index = integer_decoder(tensors, part, "scale")(z_int)
    fq_index = fake_quant_scale_indexes(fq_scale, hp.gaussian_conditional.scale_table)
    return fq_mean, int_mean, fq_index, int_index


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("part", PARTS)
def test_convert_matches_fake_quant_on_real_latents(frozen, part, seed):
    m, tensors = frozen
    y = real_latents(m.model, 100 + seed)[part]
    fq_mean, int_mean, fq_index, int_index = compare(m, tensors, part, y)
    assert torch.equal(int_mean, fq_mean.integer)
    assert torch.equal(int_mean.float() * 2**-8, fq_mean.value)  # means on the grid, as float32
    assert torch.equal(int_index, fq_index)


@pytest.mark.parametrize("seed", range(4))
def test_convert_matches_fake_quant_on_random_inputs(frozen, seed):
    m, tensors = frozen
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(2, 192, 16, 16, generator=g) * (2 + 6 * seed)  # from tame to far outside training range
    fq_mean, int_mean, fq_index, int_index = compare(m, tensors, "keyframe", y)
    assert torch.equal(int_mean, fq_mean.integer)
    assert torch.equal(int_index, fq_index)
    assert int_index.unique().numel() > 5, "inputs must exercise many CDF tables for the test to mean anything"


def test_export_refuses_uncalibrated_decoders(float_module):
    from nvc_train.quant.config import QuantConfig
    from nvc_train.quant.fake_quant import HyperpriorQAT

    qat = HyperpriorQAT(QuantConfig())
    hp = hyperprior(float_module.model, "keyframe")
    with pytest.raises(ExportError, match="never calibrated"):
        convert_decoder(hyper_decoder(hp, "mean"), qat.decoder("keyframe", "mean"), 2**20)


def test_export_proves_the_accumulator_bound(frozen):
    m, _ = frozen
    hp = hyperprior(m.model, "keyframe")
    median_q = quantize_medians(hp.entropy_bottleneck._get_medians(), 8)
    fq = m.qat.decoder("keyframe", "mean")
    convert_decoder(hyper_decoder(hp, "mean"), fq, input_bound(median_q, 8))  # fine
    with pytest.raises(ExportError, match="2\\*\\*53"):
        convert_decoder(hyper_decoder(hp, "mean"), fq, 2**40)  # inputs this wide could round


def test_qat_state_survives_state_dict(qat_module):
    from nvc_train.lit.module import SSFLitModule

    clone = SSFLitModule(quality=5, qat=qat_module.hparams.qat)
    clone.load_state_dict(qat_module.state_dict())
    for key in ("keyframe_mean", "residual_scale"):
        a, b = clone.qat.decoders[key], qat_module.qat.decoders[key]
        assert torch.equal(a.act_scale, b.act_scale) and bool(a.calibrated)


def test_qat_gradients_reach_weights_scales_and_encoder(qat_module):
    m = copy.deepcopy(qat_module).train()
    hp = hyperprior(m.model, "keyframe")
    y = real_latents(m.model, 5)["keyframe"].requires_grad_(True)
    y_hat, lik = m.qat.hyperprior_forward("keyframe", hp, y)
    (lik["y"].log().sum() + lik["z"].log().sum() + y_hat.square().sum()).backward()
    assert hyper_decoder(hp, "mean")[0].weight.grad.abs().sum() > 0
    assert hp.hyper_decoder_scale.deconv3.weight.grad.abs().sum() > 0
    assert m.qat.decoder("keyframe", "scale").act_scale.grad.abs().sum() > 0
    assert hp.hyper_encoder[0].weight.grad.abs().sum() > 0


def test_first_forward_calibrates_even_in_eval_mode(float_module):
    """Lightning's sanity-check validation runs before training: it must not leave the
    default scales (1.0) marked as calibrated."""
    from nvc_train.quant.config import QuantConfig
    from nvc_train.quant.fake_quant import HyperpriorQAT

    qat = HyperpriorQAT(QuantConfig()).eval()
    hp = hyperprior(float_module.model, "keyframe")
    y = real_latents(float_module.model, 11)["keyframe"]
    with torch.no_grad():
        qat.hyperprior_forward("keyframe", hp, y)
    for role in ("mean", "scale"):
        dec = qat.decoder("keyframe", role)
        assert bool(dec.calibrated) and torch.all(dec.act_scale < 0.5), dec.act_scale


def numpy_integer_decoder(tensors: dict, part: str, role: str, z_int: np.ndarray) -> np.ndarray:
    """The whole integer hyper-decoder in numpy int64, straight from the stored tensors."""
    from tests.quant.test_arith import reference_conv_transpose

    t = {k[len(f"{part}.{role}."):]: v.numpy() for k, v in tensors.items() if k.startswith(f"{part}.{role}.")}
    x = z_int
    for i in range(3):
        acc = reference_conv_transpose(x, t[f"layer{i}.weight"].astype(np.int64)) + t[f"layer{i}.bias"].reshape(1, -1, 1, 1)
        if i == 2 and role == "scale":
            thr = t["scale_thresholds"]  # (C, L-1)
            return (acc[:, :, :, :, None] > thr[None, :, None, None, :]).sum(-1)
        sat, m, s = (t[f"layer{i}.{n}"].reshape(1, -1, 1, 1) for n in ("saturation", "multiplier", "shift"))
        out = (np.clip(acc, -sat, sat) * m + (np.int64(1) << (s - 1))) >> s
        lo, hi = (int(t[f"layer{i}.act_lo"]), int(t[f"layer{i}.act_hi"])) if i < 2 else (-(2**23 - 1), 2**23 - 1)
        x = np.clip(out, lo, hi)
    return x


@pytest.mark.parametrize("role", ["mean", "scale"])
def test_integer_decoder_matches_numpy_int64_reference(frozen, role):
    _, tensors = frozen
    rng = np.random.default_rng(7)
    z_int = rng.integers(-2**20, 2**20, size=(2, 192, 2, 2), dtype=np.int64)  # accumulators far beyond 2**24
    got = integer_decoder(tensors, "motion", role)(torch.from_numpy(z_int)).numpy()
    np.testing.assert_array_equal(got, numpy_integer_decoder(tensors, "motion", role, z_int))


def test_16_bit_activations_convert_exactly(float_module):
    """The 16-bit option: wider activations, same agreement, accumulators still proven exact."""
    from nvc_train.quant.config import QuantConfig
    from nvc_train.quant.fake_quant import HyperpriorQAT

    m = copy.deepcopy(float_module.model).eval()
    m.update(force=True)
    qat = HyperpriorQAT(QuantConfig(activation_bits=16)).eval()
    hp = hyperprior(m, "residual")
    y = real_latents(m, 21)["residual"]
    with torch.no_grad():
        _, z_int, z_hat = hyper_input(hp.hyper_encoder(y), hp.entropy_bottleneck._get_medians(), 8)
        fq_mean = qat.decoder("residual", "mean")(hyper_decoder(hp, "mean"), z_int, z_hat)
        fq_scale = qat.decoder("residual", "scale")(hyper_decoder(hp, "scale"), z_int, z_hat)
        for part in ("keyframe", "motion"):  # calibrate the others so the whole model converts
            other = hyperprior(m, part)
            y_o = real_latents(m, 21)[part]
            _, zi, zh = hyper_input(other.hyper_encoder(y_o), other.entropy_bottleneck._get_medians(), 8)
            for role in ("mean", "scale"):
                qat.decoder(part, role)(hyper_decoder(other, role), zi, zh)
    tensors = integer_tensors(m, qat)
    assert int(tensors["residual.mean.layer0.act_hi"]) == 65535
    assert torch.equal(integer_decoder(tensors, "residual", "mean")(z_int), fq_mean.integer)
    assert torch.equal(integer_decoder(tensors, "residual", "scale")(z_int),
                       fake_quant_scale_indexes(fq_scale, hp.gaussian_conditional.scale_table))

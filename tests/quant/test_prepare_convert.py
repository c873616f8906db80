"""QAT state, gradients, calibration and export checks; prepare and convert are compared with
the independent reference in ``test_reference.py``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nvc_train.data.synthetic import synthetic_clip
from nvc_train.models.ssf import hyperprior
from nvc_train.quant.export import integer_tensors
from nvc_train.quant.fake_quant import (
    fake_quant_scale_indexes, hyper_decoder, hyper_decoder_layers, hyper_input, input_bound, quantize_medians,
)
from nvc_train.quant.integer import ExportError, convert_decoder
from tests.quant import reference as ref
from tests.quant.helpers import integer_decoder


def real_latents(model, seed):
    """Latents y of each part from a synthetic clip (keyframe, motion, residual encoders)."""
    frames = [f.unsqueeze(0) for f in synthetic_clip(seed, 2, 128, 128)]
    with torch.no_grad():
        y_key = model.img_encoder(frames[0])
        y_motion = model.motion_encoder(torch.cat(frames[::-1], dim=1))
        y_res = model.res_encoder(frames[1] - frames[0])
    return {"keyframe": y_key, "motion": y_motion, "residual": y_res}


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
    for role, fq in (("mean", fq_mean), ("scale", fq_scale)):
        convs = hyper_decoder_layers(hyper_decoder(hp, role))
        dec = qat.decoder("residual", role)
        layers = ref.Layers([c.weight.detach().numpy() for c in convs], [c.bias.detach().numpy() for c in convs],
                            dec.effective_act_scales().detach().numpy(), 65535, 8)
        want = ref.hyper_decoder(layers, role, z_int.numpy(), hp.gaussian_conditional.scale_table.numpy()).output
        convert = integer_decoder(tensors, "residual", role)
        prepared = fq.integer if role == "mean" else fake_quant_scale_indexes(fq, hp.gaussian_conditional.scale_table)
        np.testing.assert_array_equal(convert(z_int).numpy(), want)
        np.testing.assert_array_equal(prepared.numpy(), want)


def _calibrated_16_bit_decoder():
    from nvc_train.quant.config import QuantConfig
    from nvc_train.quant.fake_quant import FakeQuantHyperDecoder

    fq = FakeQuantHyperDecoder("mean", QuantConfig(activation_bits=16))
    g = torch.Generator().manual_seed(0)
    for layer in (0, 1):
        fq._calibrate(layer, torch.rand(1, 192, 8, 8, generator=g) * 4)
    fq.calibrated.fill_(True)
    return fq


def test_one_adam_update_moves_a_16_bit_hyper_decoder_step_by_under_1_percent():
    """``act_scale`` is the range / 255, so at 16 bits an Adam update (≈ lr whatever the
    gradient) changes the step ``act_scale · 255 / 65535`` by well under 1 %. Control: the
    step as the parameter (the previous parametrisation) is driven past zero by the same update."""
    fq = _calibrated_16_bit_decoder()
    before = fq.effective_act_scales().detach().clone()
    assert torch.allclose(before * 65535, torch.full((2,), 4 * 0.9999 * 4.0), rtol=1e-3)  # quantile × headroom
    step_as_parameter = torch.nn.Parameter(before.clone())
    optimizer = torch.optim.Adam([fq.act_scale, step_as_parameter], lr=3e-4)
    fq.act_scale.grad = torch.ones(2)
    step_as_parameter.grad = torch.ones(2)
    optimizer.step()
    assert ((fq.effective_act_scales() / before - 1).abs() < 0.01).all()
    assert (step_as_parameter < 0).all()


def test_checkpoints_that_stored_the_16_bit_step_itself_load_to_the_same_steps():
    fq = _calibrated_16_bit_decoder()
    legacy = {k: v.clone() for k, v in fq.state_dict().items() if k != "act_scale_format"}
    legacy["act_scale"] = fq.effective_act_scales().detach().clone()  # format 1: the step
    fresh = type(fq)(fq.role, fq.config)
    fresh.load_state_dict(legacy)
    assert torch.allclose(fresh.effective_act_scales(), fq.effective_act_scales(), rtol=1e-6)
    assert int(fresh.act_scale_format) == 2 and bool(fresh.calibrated)
    fresh.load_state_dict(fq.state_dict())  # format 2 loads as written
    assert torch.equal(fresh.act_scale, fq.act_scale)

"""PTQ baseline: observer × scheme candidates through the same exact integer path."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from nvc_train.data.synthetic import synthetic_clip
from nvc_train.models.ssf import PARTS, hyperprior
from nvc_train.quant import ptq as P
from nvc_train.quant.export import integer_tensors
from nvc_train.quant.fake_quant import hyper_decoder
from tests.cli_runner import assert_one_line_error, cli
from tests.quant.helpers import integer_decoder


@pytest.fixture(scope="module")
def model(float_module):
    m = copy.deepcopy(float_module.model).eval()
    m.update(force=True)
    return m


@pytest.fixture(scope="module")
def latents(model):
    clips = [[f.unsqueeze(0) for f in synthetic_clip(s, 2, 128, 128)] for s in (1, 2)]
    return P.hyper_latents(model, clips, 8)


def test_search_space_is_the_papers():
    choices = P.all_choices()
    assert len(choices) == len(set(choices)) == 60
    assert {c.weight_observer for c in choices} == set(P.WEIGHT_OBSERVERS)
    with pytest.raises(ValueError, match="per-tensor"):
        P.PTQChoice(act_observer="PerChannelMinMax")


@pytest.mark.parametrize("choice", [P.PTQChoice(), P.PTQChoice("Histogram", "affine", "Histogram", "symmetric"),
                                    P.PTQChoice("MovingAverageMinMax", "affine", "MovingAverageMinMax", "affine")])
def test_observed_decoders_convert_exactly(model, latents, choice):
    q = P.ptq_quantizer(model, choice, latents)
    tensors = integer_tensors(model, q)
    for part in PARTS:
        hp = hyperprior(model, part)
        for z_hat in latents[part]:
            z_int = torch.round(z_hat * 2**8).long()
            with torch.no_grad():
                fq = q.decoder(part, "mean")(hyper_decoder(hp, "mean"), z_int, z_hat)
            assert torch.equal(integer_decoder(tensors, part, "mean")(z_int), fq.integer)
    if choice.weight_scheme == "affine":  # w_q - zero_point spans more than int8
        assert any(v.dtype == torch.int16 for k, v in tensors.items() if k.endswith("weight"))


def test_ptq_codes_close_to_float(model, latents):
    clips = [[f.unsqueeze(0) for f in synthetic_clip(77, 2, 128, 128)]]
    lmbda = 0.025
    float_point = P.evaluate_float(model, clips, lmbda)
    point = P.evaluate_integer(model, P.ptq_quantizer(model, P.PTQChoice(), latents), clips, lmbda)
    # Same transforms: only the entropy model's precision changes, so PSNR moves little and
    # the rate stays within a factor that a broken quantizer (e.g. scales off by 2x) exceeds.
    assert abs(point.psnr - float_point.psnr) < 0.5
    assert 0.7 < point.bpp / float_point.bpp < 1.3


@pytest.mark.slow  # over 9 s on the 2-core machine: `make test` runs it, `make test-fast` does not
def test_ptq_cli_single_candidate(float_module, float_weights, tmp_path):
    src = tmp_path / "float.pth.tar"  # a plain state dict: records no λ
    m = copy.deepcopy(float_module.model)
    m.update(force=True)
    torch.save(m.state_dict(), src)
    out = tmp_path / "ptq"
    # export-float's file records the model's quality and λ: no --quality needed
    result = cli("ptq", str(float_weights), "--out-dir", str(out), "--size", "128", "--num-frames", "2",
                 "--calib-clips", "1", "--val-clips", "1", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "ptq_report.json").read_text())
    assert len(report["candidates"]) == 1 and report["candidates"][0]["bpp"] > 0
    assert report["lmbda"] == float_module.lmbda
    assert list(out.glob("ssf-ptq-*.ckpt")) and (out / "ptq_report.md").is_file()
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    conf = cli("conformance", str(next(out.glob("ssf-ptq-*.ckpt"))))
    assert conf.returncode == 0 and "PASS" in conf.stdout
    assert_one_line_error(cli("ptq", str(src), "--out-dir", str(out), "--weight-observer", "Nope"), "weight observer")
    assert_one_line_error(cli("ptq", str(src), "--out-dir", str(out), "--quality", "5"), "already holds ptq_report.json")
    assert_one_line_error(cli("ptq", str(src), "--out-dir", str(tmp_path / "new")), "pass --quality Q")


@pytest.mark.slow
def test_ptq_full_search_cli(float_module, tmp_path):
    src = tmp_path / "float.pth.tar"
    m = copy.deepcopy(float_module.model)
    m.update(force=True)
    torch.save(m.state_dict(), src)
    result = cli("ptq", str(src), "--out-dir", str(tmp_path / "s"), "--search", "--size", "128", "--num-frames", "2",
                 "--calib-clips", "1", "--val-clips", "1", "--quality", "5", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "s" / "ptq_report.json").read_text())["candidates"]
    assert len(rows) == 60
    costs = [r["cost"] for r in rows if "cost" in r]
    assert costs == sorted(costs)

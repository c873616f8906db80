"""Flow that means the same pixel motion at every frame size (CompressAI issue #307)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from compressai.models.video import ScaleSpaceFlow

from nvc_train.cli import main
from nvc_train.codec.bitstream import read_bitstream_bytes
from nvc_train.codec.files import pad_frame
from nvc_train.io.video import InputOptions, open_video
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.errors import UserError
from nvc_train.models.ssf import build_ssf, load_ssf, read_state_dict
from nvc_train.quant.export import export_integer_checkpoint, load_integer_checkpoint
from tests.codec.video_fixtures import clip, uint8_frames, write_h264

LEVEL0 = 1 / 6 - 1
"""Normalised depth of the scale-space volume's first level (the reference itself, then five
blurred levels; grid_sample with align_corners=False): a pure translation is a pure shift."""


def pan(model, frame: torch.Tensor, flow_x: float) -> torch.Tensor:
    """Predict ``frame`` moved by a uniform flow ``flow_x`` (CompressAI's units) at level 0."""
    n, _, h, w = frame.shape
    motion = torch.zeros(n, 3, h, w)
    motion[:, 0] = flow_x
    motion[:, 2] = LEVEL0
    with torch.no_grad():
        return model.forward_prediction(frame, motion)


def shifted_by(pred: torch.Tensor, frame: torch.Tensor, d: int) -> bool:
    """pred[x] == frame[x + d] away from the borders (bilinear sampling at whole pixels)."""
    w = frame.shape[-1]
    interior = slice(8, w - 8 - d)
    return bool(torch.allclose(pred[..., 8:-8, interior], frame[..., 8:-8, interior.start + d:interior.stop + d], atol=1e-4))


def test_at_the_reference_size_the_warp_is_bit_identical_to_stock():
    stock = ScaleSpaceFlow().eval()
    model = build_ssf(256).eval()
    model.load_state_dict(stock.state_dict())
    g = torch.Generator().manual_seed(0)
    x_ref = torch.rand(2, 3, 256, 256, generator=g)
    motion = torch.randn(2, 3, 256, 256, generator=g) * 0.3
    with torch.no_grad():
        assert torch.equal(model.forward_prediction(x_ref, motion), stock.forward_prediction(x_ref, motion))


def test_a_pan_of_d_pixels_at_the_reference_size_moves_d_pixels_at_four_times_the_size():
    reference, d = 128, 3
    flow_x = 2 * d / reference  # d pixels on a reference-sized frame: one unit is half its width
    small = synthetic_clip(5, 1, reference, reference)
    large = synthetic_clip(5, 1, 4 * reference, 4 * reference)
    rescaled, stock = build_ssf(reference).eval(), build_ssf(None).eval()
    assert shifted_by(pan(rescaled, small, flow_x), small, d) and shifted_by(pan(stock, small, flow_x), small, d)
    assert shifted_by(pan(rescaled, large, flow_x), large, d)
    assert shifted_by(pan(stock, large, flow_x), large, 4 * d)
    assert not shifted_by(pan(stock, large, flow_x), large, d)


def test_x_by_the_width_and_y_by_the_height():
    """A non-square frame (256×512) and a diagonal pan of 2 px down and 3 px right at the
    reference size: x is rescaled by R/W, y by R/H (swapped factors would move 6 px and 1.5 px)."""
    model = build_ssf(128).eval()
    frame = synthetic_clip(6, 1, 256, 512)
    motion = torch.zeros(1, 3, 256, 512)
    motion[:, 0] = 2 * 3 / 128
    motion[:, 1] = 2 * 2 / 128
    motion[:, 2] = LEVEL0
    with torch.no_grad():
        pred = model.forward_prediction(frame, motion)
    assert torch.allclose(pred[..., 8:-10, 8:-11], frame[..., 10:-8, 11:-8], atol=1e-4)


def test_flow_reference_is_validated():
    with pytest.raises(UserError, match="flow_reference must be a positive"):
        build_ssf(0)
    with pytest.raises(UserError, match="flow_reference must be a positive"):
        build_ssf("256")


def test_export_float_records_it_warns_and_compressai_still_loads(tmp_path, capsys):
    from nvc_train.lit.checkpoints import save_float_state_dict

    model = build_ssf(256)
    path = tmp_path / "f.pth.tar"
    save_float_state_dict(model, path)
    assert "records flow_reference=256" in capsys.readouterr().err
    assert read_state_dict(path).flow_reference == 256
    assert load_ssf(path).flow_reference == 256
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_ssf(path, 128).flow_reference == 128
    assert any("records flow_reference=256" in str(w.message) for w in caught)
    # What CompressAI's video eval_model does with a checkpoint file: the "state_dict" entry.
    obj = torch.load(path, weights_only=True)
    ScaleSpaceFlow().load_state_dict(obj["state_dict"])
    stock = tmp_path / "s.pth.tar"
    save_float_state_dict(build_ssf(None), stock)
    assert isinstance(torch.load(stock, weights_only=True), dict) and "state_dict" not in torch.load(stock, weights_only=True)


@pytest.fixture(scope="module")
def referenced_checkpoint(qat_module, tmp_path_factory):
    """The QAT test model with flow units defined at its 128² training crop."""
    m = copy.deepcopy(qat_module)
    m.model.flow_reference = 128
    return export_integer_checkpoint(m.model, m.qat, tmp_path_factory.mktemp("flowref"), "ref", {"quality": 5})


def test_integer_checkpoint_stores_it_and_decoding_uses_it(referenced_checkpoint, int_checkpoint):
    ck = load_integer_checkpoint(referenced_checkpoint)
    assert ck.metadata["flow_reference"] == 128 and ck.codec.model.flow_reference == 128
    assert "flow reference: 128 px" in referenced_checkpoint.with_suffix(".md").read_text()
    assert load_integer_checkpoint(int_checkpoint).codec.model.flow_reference is None


@pytest.mark.slow
def test_encoder_and_decoder_agree_through_the_cli(referenced_checkpoint, tmp_path, capsys):
    """encode → decode of a 256×384 clip (twice the reference): the decoder's latents and
    pixels equal the encoder's own reconstruction. Control: the same stream decoded with the
    stock flow gives other pixels, so the value stored in the checkpoint is really used."""
    source = write_h264(tmp_path / "src.mp4", clip(3, 3, 256, 384))
    nvc, out = tmp_path / "c.nvc", tmp_path / "d.y4m"
    assert main(["encode", str(source), "-o", str(nvc), "--checkpoint", str(referenced_checkpoint), "--quiet"]) == 0
    assert main(["decode", str(nvc), "-o", str(out), "--checkpoint", str(referenced_checkpoint), "--quiet"]) == 0
    capsys.readouterr()
    ck = load_integer_checkpoint(referenced_checkpoint)
    with open_video(source, InputOptions()) as reader:
        encoder = list(ck.codec.compress_iter([pad_frame(f) for f in reader]))
    _, coded = read_bitstream_bytes(nvc.read_bytes())
    decoded = list(ck.codec.decompress_iter(coded))
    assert [d.latent_sha256 for d in decoded] == [r.latent_sha256 for _, r in encoder]
    assert all(torch.equal(d.x_hat, r.x_hat) for d, (_, r) in zip(decoded, encoder))
    stock = copy.deepcopy(ck.codec)
    stock.model.flow_reference = None
    stock_decoded = list(stock.decompress_iter(coded))
    assert not torch.equal(stock_decoded[1].x_hat, decoded[1].x_hat)
    with open_video(out, InputOptions()) as reader:
        assert uint8_frames(list(reader)).shape == (3, 256, 384, 3)


def test_training_module_uses_and_records_the_value(tmp_path, capsys):
    """The LightningModule's forward warps through the same override, and its hyper-parameters
    record the value in effect (here read from the float file it starts from)."""
    from nvc_train.lit.checkpoints import save_float_state_dict
    from nvc_train.lit.module import SSFLitModule

    parent = tmp_path / "parent.pth.tar"
    save_float_state_dict(build_ssf(128), parent)
    capsys.readouterr()
    module = SSFLitModule(init_weights=str(parent), real_coding_clips=0).eval()
    assert module.model.flow_reference == 128 and module.hparams.flow_reference == 128
    stock = SSFLitModule(real_coding_clips=0).eval()
    stock.model.load_state_dict(module.model.state_dict())
    for size, same in ((128, True), (256, False)):
        frames = [f.unsqueeze(0) for f in synthetic_clip(8, 2, size, size)]
        torch.manual_seed(0)
        with torch.no_grad():
            a, b = module(frames)[1].x_hat, stock(frames)[1].x_hat
        assert torch.equal(a, b) == same, size

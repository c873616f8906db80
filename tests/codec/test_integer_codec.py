"""Integer codec: round trip, real bits, encoder input checks, damaged streams; the exactness
evidence proper is in tests/quant/test_exactness.py and test_reference.py."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from nvc_train.codec.bitstream import BitstreamError, read_bitstream_bytes, write_bitstream_bytes
from nvc_train.codec.integer_codec import coded_bits, latent_digest
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.errors import UserError
from nvc_train.models.loss import likelihood_bits
from nvc_train.quant.conformance import run_checks
from nvc_train.quant.export import load_integer_checkpoint


@pytest.fixture(scope="module")
def loaded(int_checkpoint):
    return load_integer_checkpoint(int_checkpoint)


@pytest.fixture(scope="module")
def clip():
    return [f.unsqueeze(0) for f in synthetic_clip(4242, 3, 128, 256)]


@pytest.fixture(scope="module")
def encoded(loaded, clip):
    coded, recon = loaded.codec.compress(clip)
    data = write_bitstream_bytes(coded, width=256, height=128, checkpoint_sha256=loaded.sha256)
    return data, recon


def decode_hashes(codec, data, device="cpu"):
    _, coded = read_bitstream_bytes(data)
    return [f.latent_sha256 for f in codec.decompress_iter(coded, device)]


def perturb_(module: torch.nn.Module, rel: float, seed: int) -> None:
    """Multiply every float parameter by (1 + rel·N(0, 1)): another machine's round-off, simulated."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1 + rel * torch.randn(p.shape, generator=g))


def test_round_trip_reproduces_encoder_latents_and_reconstruction(loaded, encoded):
    data, recon = encoded
    _, coded = read_bitstream_bytes(data)
    decoded = list(loaded.codec.decompress_iter(coded))
    assert [d.latent_sha256 for d in decoded] == [r.latent_sha256 for r in recon]
    for d, r in zip(decoded, recon):
        assert torch.equal(d.x_hat, r.x_hat)  # same machine, same float synthesis: identical


def test_real_bits_match_the_estimate(qat_module, loaded, clip):
    """Real rANS bits vs the model's eval-mode estimate on the same clip.

    The coder adds a flush of a few bytes per string (6 strings per P-frame) and codes each
    element with the table scale just above its predicted scale (64 log-spaced scales, a
    ratio of 1.13 between neighbours), which costs a little over the continuous estimate;
    10 % + 32 bytes per string covers both with margin.
    """
    coded, _ = loaded.codec.compress(clip)
    real = coded_bits(coded)
    with torch.no_grad():
        m = copy.deepcopy(qat_module).eval()
        outputs = m(clip)
    est = sum(float(likelihood_bits(lik)) for o in outputs for liks in o.likelihoods.values() for lik in liks.values())
    n_strings = sum(2 * len(cf.latents) for cf in coded)
    assert abs(real - est) <= 0.10 * est + 8 * 32 * n_strings, (real, est)


def test_decoded_latents_read_no_float_weight(int_checkpoint, encoded):
    """Every float parameter perturbed (hyper-decoders' float copies, synthesis, encoders):
    the decoded latents do not change, because nothing on their path reads a float weight.
    This is all it shows; cross-machine arithmetic is tested in tests/quant/test_exactness.py."""
    data, recon = encoded
    other_machine = load_integer_checkpoint(int_checkpoint)
    perturb_(other_machine.codec.model, 1e-6, seed=1)
    assert decode_hashes(other_machine.codec, data) == [r.latent_sha256 for r in recon]


def test_same_perturbation_breaks_stock_float_ssf(loaded, clip):
    """Control: stock CompressAI SSF decodes different latents under the same perturbation."""
    model = copy.deepcopy(loaded.codec.model)
    with torch.no_grad():
        strings, shapes = model.compress(clip)
        y_ref = model.img_hyperprior.decompress(strings[0], shapes[0])  # keyframe: [y_strings, z_strings]
        perturb_(model, 1e-6, seed=1)
        y_other = model.img_hyperprior.decompress(strings[0], shapes[0])
    assert latent_digest([y_ref]) != latent_digest([y_other])


@pytest.mark.gpu
def test_cpu_encode_gpu_decode_latents_equal(int_checkpoint, encoded, cuda_flags_restored):
    data, recon = encoded
    gpu = load_integer_checkpoint(int_checkpoint, device="cuda")
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        assert decode_hashes(gpu.codec, data, "cuda") == [r.latent_sha256 for r in recon]
    checks = list(run_checks(gpu.codec, gpu.conformance, "cuda"))
    assert checks and all(c.ok for c in checks), [c.item for c in checks if not c.ok]


def test_encoder_refuses_non_finite_latents(loaded):
    frame = torch.zeros(1, 3, 128, 128)
    frame[0, 1, 5, 7] = float("nan")
    with pytest.raises(UserError, match="keyframe latent y contains NaN or infinity"):
        loaded.codec.compress([frame])


def test_huge_latents_are_clamped_and_decode_identically(loaded):
    """y far beyond any trained range: symbols are clamped to ±2**15, so symbol·256 + mean
    stays below 2**24 and y_hat is exact in float32; the decoder gets the same y_hat."""
    ihp = loaded.codec.hyperpriors["keyframe"]
    y = torch.full((1, 192, 8, 8), 1e9)
    y[0, ::2] = -1e9
    with torch.no_grad():
        y_hat, coded = ihp.compress(y, "keyframe")
    assert torch.equal(ihp.decompress(coded, torch.device("cpu")), y_hat)
    assert y_hat.abs().max() <= 2**15 + 2**15  # |symbol| <= 2**15, |mean| < 2**15


def test_a_crafted_stream_with_huge_y_symbols_decodes_within_the_proven_bound(loaded):
    """rANS carries out-of-range symbols through its bypass mode: a stream written with a y
    symbol of 2**20 really holds it (CompressAI's own decoder returns it), yet the integer
    decoder clamps it like the encoder, so every synthesis layer-0 input stays within the
    bound its accumulators were proven for (audit finding 1)."""
    from compressai.entropy_models import EntropyModel

    from nvc_train.codec.frames import CodedLatent
    from nvc_train.quant.synthesis import INPUT_BOUND, latent_integers

    ihp = loaded.codec.hyperpriors["keyframe"]
    with torch.no_grad():
        _, coded = ihp.compress(torch.zeros(1, 192, 8, 8), "keyframe")
        gc = ihp.hp.gaussian_conditional
        z_symbols = EntropyModel.decompress(ihp.hp.entropy_bottleneck, [coded.z_string],
                                            ihp.hp.entropy_bottleneck._build_indexes((1, 192, *coded.z_shape)), torch.float32)
        _, indexes = ihp._entropy_parameters(z_symbols.long())
        y_symbols = torch.zeros(1, 192, 8, 8)
        y_symbols[0, 5, 1, 2], y_symbols[0, 7, 3, 3] = 2**20, -2**20
        crafted = CodedLatent(EntropyModel.compress(gc, y_symbols, indexes)[0], coded.z_string, coded.z_shape)
        carried = EntropyModel.decompress(gc, [crafted.y_string], indexes, torch.float32)
        assert carried.abs().max() == 2**20, "the crafted stream must carry the huge symbol"
        y_int = latent_integers(ihp.decompress(crafted, torch.device("cpu")))
    assert int(y_int.abs().max()) <= INPUT_BOUND
    assert int(y_int[0, 5, 1, 2]) >= 2**15 * 256 - 2**23 and int(y_int[0, 7, 3, 3]) <= -(2**15 * 256) + 2**23


def test_big_endian_hosts_are_refused(loaded, clip, monkeypatch):
    monkeypatch.setattr(sys, "byteorder", "big")
    with pytest.raises(UserError, match="big-endian"):
        loaded.codec.compress(clip)


def test_damaged_bitstreams_are_rejected(encoded):
    data, _ = encoded
    flipped = bytearray(data)
    flipped[len(data) - 10] ^= 0x40
    with pytest.raises(BitstreamError, match="CRC"):
        read_bitstream_bytes(bytes(flipped))
    with pytest.raises(BitstreamError, match="truncated"):
        read_bitstream_bytes(data[:-7])
    with pytest.raises(BitstreamError, match="magic"):
        read_bitstream_bytes(b"XXXX" + data[4:])
    with pytest.raises(BitstreamError, match="empty"):
        read_bitstream_bytes(b"")
    header = bytearray(data)
    header[20] ^= 1  # inside the checkpoint hash: header CRC catches it
    with pytest.raises(BitstreamError, match="header CRC"):
        read_bitstream_bytes(bytes(header))

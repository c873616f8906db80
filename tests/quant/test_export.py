"""Integer checkpoint: conformance, and clean refusal of damaged or foreign files (via the CLI)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from nvc_train.errors import UserError
from nvc_train.quant.export import FORMAT_VERSION, load_integer_checkpoint


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nvc_train.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("nvc-train: error:")]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_file_name_model_card_and_content_hash(int_checkpoint):
    ck = load_integer_checkpoint(int_checkpoint)
    assert int_checkpoint.name == f"test-{ck.sha256[:8]}.ckpt"
    card = int_checkpoint.with_suffix(".md").read_text()
    assert ck.sha256 in card and "2**53" in card
    assert ck.metadata["format_version"] == FORMAT_VERSION and ck.metadata["quant"]["activation_bits"] == 8


def test_loading_never_recomputes_entropy_tables(int_checkpoint, monkeypatch):
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional

    def refuse(*args, **kwargs):
        raise AssertionError("a table was recomputed on load")

    monkeypatch.setattr(EntropyBottleneck, "update", refuse)
    monkeypatch.setattr(GaussianConditional, "update", refuse)
    monkeypatch.setattr(GaussianConditional, "update_scale_table", refuse)
    ck = load_integer_checkpoint(int_checkpoint)
    assert ck.codec.model.img_hyperprior.gaussian_conditional._quantized_cdf.numel() > 0


def test_conformance_cli_passes(int_checkpoint):
    result = cli("conformance", str(int_checkpoint))
    assert result.returncode == 0, result.stderr
    assert "conformance PASS" in result.stdout
    assert result.stdout.count(" OK") == 3


def test_conformance_fails_when_expected_hashes_differ(int_checkpoint, tmp_path, monkeypatch):
    """The command must be able to fail: corrupt one decoded latent and it reports FAIL."""
    from argparse import Namespace

    from nvc_train import commands
    from nvc_train.codec import integer_codec

    real = integer_codec.IntegerHyperprior._y_hat

    def off_by_one(y_symbols, mean_q):
        return real(y_symbols, mean_q + 1)

    monkeypatch.setattr(integer_codec.IntegerHyperprior, "_y_hat", staticmethod(off_by_one))
    assert commands.conformance(Namespace(checkpoint=str(int_checkpoint), device="cpu")) == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "version", "magic", "empty"])
def test_damaged_checkpoints_are_refused(int_checkpoint, tmp_path, damage):
    data = bytearray(int_checkpoint.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) - 1000]
    elif damage == "version":
        data[12:16] = (FORMAT_VERSION + 1).to_bytes(4, "big")
    elif damage == "magic":
        data[:4] = b"JUNK"
    else:
        data = bytearray()
    bad = tmp_path / f"{damage}.ckpt"
    bad.write_bytes(bytes(data))
    expected = {"flip": "SHA-256", "truncate": "truncated", "version": "upgrade", "magic": "not an nvc-train",
                "empty": "not an nvc-train"}[damage]
    with pytest.raises(UserError, match=expected):
        load_integer_checkpoint(bad)
    assert_one_line_error(cli("conformance", str(bad)), expected)


def test_float_checkpoint_where_integer_needed(tmp_path):
    from compressai.models.video import ScaleSpaceFlow

    path = tmp_path / "float.pth.tar"
    torch.save(ScaleSpaceFlow().state_dict(), path)
    assert_one_line_error(cli("conformance", str(path)), "float PyTorch checkpoint")


def test_verify_prints_hashes_and_refuses_other_checkpoints(int_checkpoint, tmp_path):
    from nvc_train.codec.bitstream import write_bitstream_bytes
    from nvc_train.data.synthetic import synthetic_clip

    ck = load_integer_checkpoint(int_checkpoint)
    frames = [f.unsqueeze(0) for f in synthetic_clip(9, 2, 128, 128)]
    coded, recon = ck.codec.compress(frames)
    good = tmp_path / "clip.nvc"
    good.write_bytes(write_bitstream_bytes(coded, 128, 128, ck.sha256))
    result = cli("verify", str(good), "--checkpoint", str(int_checkpoint))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{t} {c.frame_type} {r.latent_sha256}" for t, (c, r) in enumerate(zip(coded, recon))]
    other = tmp_path / "other.nvc"
    other.write_bytes(write_bitstream_bytes(coded, 128, 128, "ab" * 32))
    assert_one_line_error(cli("verify", str(other), "--checkpoint", str(int_checkpoint)), "encoded with checkpoint abababab")

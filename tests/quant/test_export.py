"""Integer checkpoint: conformance, and clean refusal of damaged or foreign files (via the CLI)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch

from nvc_train.errors import UserError
from nvc_train.quant.export import _HEADER, FORMAT_VERSION, HYPERPRIOR_FORMAT_VERSION, MAGIC, load_integer_checkpoint
from nvc_train.quant.header import MAX_FORMAT_VERSION
from tests.cli_runner import assert_one_line_error, cli


def test_file_name_model_card_and_content_hash(int_checkpoint):
    ck = load_integer_checkpoint(int_checkpoint)
    assert int_checkpoint.name == f"test-{ck.sha256[:8]}.ckpt"
    card = int_checkpoint.with_suffix(".md").read_text()
    assert ck.sha256 in card and "2**53" in card
    assert ck.metadata["format_version"] == HYPERPRIOR_FORMAT_VERSION and ck.metadata["quant"]["activation_bits"] == 8


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
    lines = result.stdout.splitlines()
    # Per frame and part: I (keyframe), P (motion, residual), P: 5 lines per clip record;
    # stress: 6 hyper-decoders × (3 layers + output).
    assert [line.split()[0] for line in lines[:-1]] == ["small"] * 5 + ["realistic"] * 5 + ["stress"] * 24
    assert all(line.endswith(" OK") for line in lines[:-1])
    assert lines[-1].startswith("conformance PASS: 34 checks in records small, realistic, stress")
    quiet = cli("conformance", str(int_checkpoint), "--quiet")
    assert quiet.returncode == 0 and quiet.stdout.splitlines() == lines[-1:]
    card = int_checkpoint.with_suffix(".md").read_text()
    assert "realistic (768×512, 3 frames IPP)" in card and "docs/integer-contract.md" in card
    assert "DESIGN.md" not in card


def rewrite_checkpoint(src: Path, dst: Path, mutate, version: int = FORMAT_VERSION) -> Path:
    """Re-save ``src`` with ``mutate(payload)`` applied and a valid header (hash recomputed)."""
    data = src.read_bytes()
    payload = torch.load(io.BytesIO(data[_HEADER.size:]), weights_only=True)
    mutate(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    dst.write_bytes(_HEADER.pack(MAGIC, version, len(body), hashlib.sha256(body).digest()) + body)
    return dst


def _records(payload) -> list:
    return json.loads(payload["conformance"]["records"])


def _set_records(payload, records) -> None:
    payload["conformance"]["records"] = json.dumps(records)


@pytest.mark.parametrize("damage,fragment", [
    ("no records", "checkpoint conformance records none"),
    ("empty record", "realistic frame count: 3 coded 0 expected"),
    ("stress check dropped", "stress 1 stress checks missing"),
])
def test_conformance_counts_missing_evidence_as_failure(int_checkpoint, tmp_path, capsys, damage, fragment):
    def mutate(payload):
        records = _records(payload)
        if damage == "no records":
            records = []
        elif damage == "empty record":
            records[1]["frames"] = []
        else:
            records[2]["checks"].pop()
        _set_records(payload, records)

    from argparse import Namespace

    from nvc_train.commands.conformance import conformance

    bad = rewrite_checkpoint(int_checkpoint, tmp_path / "bad.ckpt", mutate)
    assert conformance(Namespace(checkpoint=str(bad), device="cpu", quiet=False)) == 1
    out = capsys.readouterr().out
    assert fragment in " ".join(out.split()) and "conformance FAIL" in out


def test_format_1_checkpoints_still_load_and_check(int_checkpoint, tmp_path):
    """A checkpoint as format 1 wrote it: one 128×128 record, whole-frame hashes, no stress."""
    def mutate(payload):
        small = _records(payload)[0]
        payload["conformance"] = {"bitstream": payload["conformance"]["tensors"]["small.bitstream"],
                                  "latent_sha256": json.dumps([f["latent_sha256"] for f in small["frames"]])}

    old = rewrite_checkpoint(int_checkpoint, tmp_path / "old.ckpt", mutate, version=1)
    assert [r["name"] for r in load_integer_checkpoint(old).conformance.records] == ["small"]
    result = cli("conformance", str(old))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" OK") == 3 and "conformance PASS: 3 checks in records small" in result.stdout


def gemm_accurate_to_32_bits(real_gemm):
    """A float64 GEMM that is not IEEE-exact: results rounded to 32 significant bits (as an
    emulated FP64 with too few slices might be). Sums below 2**32 still come out exact."""
    def gemm(chunks, cols, k_start, path):
        exact = real_gemm(chunks, cols, k_start, path)
        if path != "float64":
            return exact
        mantissa, exponent = torch.frexp(exact)
        return torch.ldexp(torch.round(mantissa * 2.0**32), exponent - 32)
    return gemm


@pytest.mark.slow
def test_an_inexact_float64_gemm_is_caught_by_the_stress_record(int_checkpoint, monkeypatch, capsys):
    """On the float64 path (selected), the clip records' accumulators stay below 2**26 and
    survive such a GEMM; the stress record's reach 2**36 and do not. Loading refuses
    (self-test), naming the layers and the path."""
    from argparse import Namespace

    from nvc_train.commands.conformance import conformance
    from nvc_train.quant import exact_conv

    monkeypatch.setenv(exact_conv.PATH_ENV, "float64")
    monkeypatch.setattr(exact_conv, "chunked_gemm", gemm_accurate_to_32_bits(exact_conv.chunked_gemm))
    with pytest.raises(UserError, match=r"computes keyframe\.mean layer 0 on the float64 path differently") as err:
        load_integer_checkpoint(int_checkpoint)
    assert "\n" not in str(err.value) and "float32 path" not in str(err.value)
    assert conformance(Namespace(checkpoint=str(int_checkpoint), device="cpu", quiet=False)) == 1
    lines = capsys.readouterr().out.splitlines()
    verdicts = {(line.split()[0], line.endswith(" OK")) for line in lines[:-1]}
    assert verdicts == {("small", True), ("realistic", True), ("stress", False)} | (
        {("stress", True)} if ("stress", True) in verdicts else set())
    assert any(line.startswith("stress") and "layer 0" in line and "MISMATCH" in line for line in lines)


def test_a_broken_int8_gemm_is_refused_at_load_one_line_naming_each_layer(int_checkpoint, monkeypatch):
    """An integer GEMM that saturates at 2**20 (a too-narrow accumulator): the stress inputs'
    plane sums reach ~2**23, and the self-test, which drives every layer to its bound on every
    path, names each failing layer; the float32 fallback is checked too and stays exact."""
    from nvc_train.quant import exact_conv

    real = exact_conv.chunked_gemm

    def saturating(chunks, cols, k_start, path):
        out = real(chunks, cols, k_start, path)
        return out.clamp(-2**20, 2**20) if path == "int8" else out

    monkeypatch.setattr(exact_conv, "chunked_gemm", saturating)
    monkeypatch.delenv(exact_conv.PATH_ENV, raising=False)
    with pytest.raises(UserError) as err:
        load_integer_checkpoint(int_checkpoint)
    message = str(err.value)
    assert "\n" not in message and "on the int8 path" in message and "float32 path" not in message
    assert message.count("layer") >= 2


def test_an_edited_rehashed_checkpoint_is_refused_by_its_recomputed_bounds(int_checkpoint, tmp_path):
    """Weights edited and the file re-hashed: the stored accumulator bound no longer follows
    from the stored integers, and loading says so for that layer."""
    def mutate(payload):
        key = next(k for k in payload["tensors"] if k.endswith("mean.layer1.weight"))
        w = payload["tensors"][key]
        payload["tensors"][key] = torch.where(w >= 0, 127, -127).to(w.dtype)  # every |weight| at its maximum

    edited = rewrite_checkpoint(int_checkpoint, tmp_path / "edited.ckpt", mutate)
    with pytest.raises(UserError, match=r"mean layer 1: accumulator bound \d+ recomputed from its weights, \d+ stored"):
        load_integer_checkpoint(edited)


def test_conformance_fails_when_expected_hashes_differ(int_checkpoint, tmp_path, monkeypatch):
    """The command must be able to fail: corrupt one decoded latent and it reports FAIL."""
    from argparse import Namespace

    from nvc_train.commands.conformance import conformance
    from nvc_train.codec import integer_codec

    real = integer_codec.IntegerHyperprior._y_hat

    def off_by_one(y_symbols, mean_q):
        return real(y_symbols, mean_q + 1)

    monkeypatch.setattr(integer_codec.IntegerHyperprior, "_y_hat", staticmethod(off_by_one))
    assert conformance(Namespace(checkpoint=str(int_checkpoint), device="cpu", quiet=False)) == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "version", "magic", "empty"])
def test_damaged_checkpoints_are_refused(int_checkpoint, tmp_path, damage):
    data = bytearray(int_checkpoint.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) - 1000]
    elif damage == "version":
        data[12:16] = (MAX_FORMAT_VERSION + 1).to_bytes(4, "big")  # a version no reader knows yet
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
    assert_one_line_error(cli("conformance", str(path)), "is a float model, not an integer checkpoint: quantize it with `nvc-train ptq")


@pytest.mark.slow
def test_verify_prints_hashes_and_refuses_other_checkpoints(int_checkpoint, tmp_path):
    from nvc_train.codec.bitstream import write_bitstream_bytes
    from nvc_train.data.synthetic import synthetic_clip

    ck = load_integer_checkpoint(int_checkpoint)
    frames = [f.unsqueeze(0) for f in synthetic_clip(9, 2, 128, 128)]
    coded, recon = ck.codec.compress(frames)
    good = tmp_path / "clip.nvc"
    good.write_bytes(write_bitstream_bytes(coded, 128, 128, ck.sha256))
    result = cli("hashes", str(good), "--checkpoint", str(int_checkpoint))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{t} {c.frame_type} {r.latent_sha256}" for t, (c, r) in enumerate(zip(coded, recon))]
    other = tmp_path / "other.nvc"
    other.write_bytes(write_bitstream_bytes(coded, 128, 128, "ab" * 32))
    assert_one_line_error(cli("hashes", str(other), "--checkpoint", str(int_checkpoint)), "encoded with checkpoint abababab")


@pytest.mark.slow
def test_a_wrong_stored_stress_hash_is_reported_and_named(int_checkpoint, tmp_path, capsys):
    """The stress hashes are really compared, at load (naming the decoder) and by the command."""
    from argparse import Namespace

    from nvc_train.commands.conformance import conformance

    def mutate(payload):
        records = _records(payload)
        check = next(c for c in records[2]["checks"] if c["decoder"] == "residual.scale" and c["layer"] == 0)
        check["sha256"] = "0" * 64
        _set_records(payload, records)

    bad = rewrite_checkpoint(int_checkpoint, tmp_path / "bad.ckpt", mutate)
    with pytest.raises(UserError, match=r"computes residual\.scale layer 0 differently"):
        load_integer_checkpoint(bad)
    assert conformance(Namespace(checkpoint=str(bad), device="cpu", quiet=False)) == 1
    mismatches = [line for line in capsys.readouterr().out.splitlines() if "MISMATCH" in line]
    assert len(mismatches) == 1 and mismatches[0].split()[:3] == ["stress", "residual.scale", "layer"]


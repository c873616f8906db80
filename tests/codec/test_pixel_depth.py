"""Pixel-exact output at the source's bit depth: 10-bit sources decode to 10-bit frames whose
MD5 (two little-endian bytes per sample) is the same on encoder and decoder, in PNG and y4m."""

from __future__ import annotations

import hashlib
import io
import math
import struct
import zlib
from fractions import Fraction

import numpy as np
import pytest
import torch

from nvc_train.codec.bitstream import BitstreamError, colour_code, header_bytes, read_header
from nvc_train.codec.pixel_decoder import frame_md5, to_levels
from nvc_train.io.colour import ColourSpec
from nvc_train.io.video import _pix_fmt_bits, open_video, open_writer
from nvc_train.quant.synthesis import SAMPLE_UNITS
from tests.codec.test_codec_cli import FRAMES, HEIGHT, WIDTH, run_cli
from tests.codec.video_fixtures import clip


def test_levels_round_the_same_real_value_at_every_depth():
    """Exhaustive over the sample range (and beyond it, where outputs clamp): 8 bits is the
    shift rule ``(s + 128) >> 8``; every depth is round-half-up of ``s / (255·2**8)`` scaled to
    its peak, checked in exact rationals."""
    s = torch.arange(-700, SAMPLE_UNITS + 700)
    eight = to_levels(s, 8)
    assert eight.dtype == torch.uint8
    assert eight.tolist() == [max(0, min(255, (v + 128) >> 8)) for v in s.tolist()]
    for bits in (10, 12, 16):
        peak = 2**bits - 1
        got = to_levels(s, bits).tolist()
        want = [math.floor(Fraction(min(max(v, 0), SAMPLE_UNITS) * peak, SAMPLE_UNITS) + Fraction(1, 2))
                for v in s.tolist()]
        assert got == want, bits
        assert got[700] == 0 and got[700 + SAMPLE_UNITS] == peak


def test_deep_frame_md5_hashes_two_little_endian_bytes_per_sample():
    levels = torch.tensor([[[0, 1023]], [[256, 5]], [[1, 2]]], dtype=torch.int32)  # (3, 1, 2)
    want = hashlib.md5(b"".join(struct.pack("<H", v) for v in [0, 1023, 256, 5, 1, 2])).hexdigest()
    assert frame_md5(levels) == want
    assert frame_md5(levels.to(torch.uint8)) != want  # 8-bit levels hash one byte per sample


def test_the_header_records_the_source_depth_and_8_bit_streams_stay_version_1():
    spec = ColourSpec("bt709", "limited")
    for bits, version in ((8, 1), (10, 2), (12, 2), (16, 2)):
        raw = header_bytes(64, 64, "00" * 32, (25, 1), 1, 8, colour_code(spec, bits))
        header = read_header(io.BytesIO(raw + b"\0"))
        assert (header.bits, header.version, header.colour_name()) == (bits, version, "bt709/limited")
    # A version-1 header cannot carry a depth (an older writer never set those bits).
    raw = bytearray(header_bytes(64, 64, "00" * 32, (25, 1), 1, 8, colour_code(spec, 8) | 8))
    raw[4:6] = (1).to_bytes(2, "big")
    raw[-4:] = zlib.crc32(bytes(raw[:-4])).to_bytes(4, "big")
    with pytest.raises(BitstreamError, match="invalid values"):
        read_header(io.BytesIO(bytes(raw)))


@pytest.mark.parametrize("pix_fmt,bits", [("yuv420p", 8), ("yuvj420p", 8), ("yuv420p10le", 10), ("yuv422p12be", 12),
                                          ("yuv420p9le", 10), ("yuv444p14le", 16), ("gray10le", 10), ("p010le", 10),
                                          ("rgb48le", 16), ("gbrp12le", 12), ("rgb24", 8), ("nv12", 8)])
def test_source_depth_of_ffmpeg_pixel_formats(pix_fmt, bits):
    assert _pix_fmt_bits(pix_fmt) == bits


@pytest.fixture(scope="module")
def source10(tmp_path_factory):
    """A 10-bit y4m (C420p10) of the test clip."""
    path = tmp_path_factory.mktemp("src10") / "source10.y4m"
    with open_writer(path, WIDTH, HEIGHT, Fraction(25), ColourSpec(), bits=10) as writer:
        for rgb in clip(11, FRAMES, HEIGHT, WIDTH):
            writer.write(rgb)
    return path


def _md5s(out: str) -> list[str]:
    return [line.split()[2] for line in out.splitlines() if line[:1].isdigit()]


def _png16_levels(path, bits: int) -> np.ndarray:
    """A 16-bit PNG read by FFmpeg (not by nvc-train), its sBIT depth restored: (3, H, W)."""
    import av

    with av.open(str(path)) as container:
        rgb48 = next(container.decode(video=0)).to_ndarray(format="rgb48le")
    return np.ascontiguousarray((rgb48 >> (16 - bits)).transpose(2, 0, 1))


@pytest.mark.slow
def test_a_10_bit_source_decodes_to_10_bit_frames_md5_for_md5(pixel_checkpoint, source10, tmp_path, capsys):
    with open_video(source10) as reader:
        assert reader.info.bits == 10
    nvc = tmp_path / "s.nvc"
    code, enc, _ = run_cli(["encode", source10, "-o", nvc, "--checkpoint", pixel_checkpoint, "--gop", "3", "--md5",
                            "--quiet"], capsys)
    assert code == 0
    encoder = _md5s(enc)
    assert len(encoder) == FRAMES
    code, out, _ = run_cli(["info", nvc, "--json"], capsys)
    assert code == 0 and '"source_bits": 10' in out and '"format_version": 2' in out

    # PNG folder: 16-bit PNGs (sBIT 10); their samples >> 6 are the decoder's levels, whose
    # MD5 (two little-endian bytes per sample) is the encoder's.
    code, dec, err = run_cli(["decode", nvc, "-o", tmp_path / "png", "--checkpoint", pixel_checkpoint, "--md5",
                              "--quiet"], capsys)
    assert code == 0 and _md5s(dec) == encoder
    pngs = sorted((tmp_path / "png").glob("*.png"))
    levels = [_png16_levels(p, 10) for p in pngs]
    assert levels[0].shape == (3, HEIGHT, WIDTH) and max(int(v.max()) for v in levels) > 255
    assert [hashlib.md5(v.astype("<u2").tobytes()).hexdigest() for v in levels] == encoder

    # The 8-bit output of the same stream rounds the same samples to 8 bits: other MD5s,
    # and levels within one 8-bit step of the 10-bit ones.
    code, dec8, _ = run_cli(["decode", nvc, "-o", tmp_path / "png8", "--checkpoint", pixel_checkpoint, "--md5",
                             "--depth", "8", "--quiet"], capsys)
    assert code == 0 and _md5s(dec8) != encoder
    from PIL import Image

    first8 = np.asarray(Image.open(sorted((tmp_path / "png8").glob("*.png"))[0]).convert("RGB")).transpose(2, 0, 1)
    assert np.abs(first8.astype(np.float64) / 255 - levels[0] / 1023).max() <= 0.5 / 255 + 0.5 / 1023

    # y4m: a 10-bit stream (C420p10) that nvc-train reads back as 10-bit.
    code, _, _ = run_cli(["decode", nvc, "-o", tmp_path / "out.y4m", "--checkpoint", pixel_checkpoint, "--quiet"],
                         capsys)
    assert code == 0 and b"C420p10" in (tmp_path / "out.y4m").read_bytes()[:100]
    with open_video(tmp_path / "out.y4m") as reader:
        assert reader.info.bits == 10 and sum(1 for _ in reader) == FRAMES


@pytest.mark.slow
def test_h264_outputs_are_8_bit(pixel_checkpoint, source10, tmp_path, capsys):
    nvc = tmp_path / "s.nvc"
    assert run_cli(["encode", source10, "-o", nvc, "--checkpoint", pixel_checkpoint, "--frames", "1", "--quiet"],
                   capsys)[0] == 0
    code, _, err = run_cli(["decode", nvc, "-o", tmp_path / "o.mp4", "--checkpoint", pixel_checkpoint], capsys)
    assert code == 0 and "source was 10-bit; H.264 output is 8-bit" in err
    code, _, err = run_cli(["decode", nvc, "-o", tmp_path / "p.mp4", "--checkpoint", pixel_checkpoint,
                            "--depth", "10"], capsys)
    assert code == 2 and err.startswith("nvc-train: error: --depth 10: H.264 output is 8-bit")
    assert not (tmp_path / "p.mp4").exists()

"""`nvc-train encode / decode / info` on real video files, and bitstreams that must be refused."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import zlib
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from nvc_train.cli import main
from nvc_train.codec.bitstream import VERSION, BitstreamError, read_bitstream_bytes
from nvc_train.codec.files import pad_frame
from nvc_train.io.video import InputOptions, open_video
from nvc_train.quant.export import load_integer_checkpoint
from tests.codec.video_fixtures import clip, uint8_frames, write_h264

WIDTH, HEIGHT, FRAMES = 200, 136, 5  # not multiples of 128: padding and cropping are exercised


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_h264(tmp_path_factory.mktemp("src") / "source.mp4", clip(11, FRAMES, HEIGHT, WIDTH),
                      fps=Fraction(30000, 1001))


@pytest.fixture(scope="module")
def nvc(int_checkpoint, source, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "source.nvc"
    assert main(["encode", str(source), "-o", str(out), "--checkpoint", str(int_checkpoint), "--gop", "3", "--quiet"]) == 0
    return out


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_encode_writes_a_valid_bitstream_with_the_source_geometry(nvc, int_checkpoint):
    header, frames = read_bitstream_bytes(nvc.read_bytes())
    ck = load_integer_checkpoint(int_checkpoint)
    assert (header.width, header.height, header.frames, header.gop) == (WIDTH, HEIGHT, FRAMES, 3)
    assert (header.fps_num, header.fps_den) == (30000, 1001)
    assert header.checkpoint_sha256.hex() == ck.sha256
    assert [f.frame_type for f in frames] == ["I", "P", "P", "I", "P"]
    assert str(header.colour_spec()) == "bt709/limited"


def test_decoder_latents_equal_the_encoders(nvc, source, int_checkpoint, capsys):
    """The encoder-side latent hashes (re-encoding the same input) equal `verify`'s."""
    ck = load_integer_checkpoint(int_checkpoint)
    with open_video(source, InputOptions()) as reader:
        encoder_side = [rec.latent_sha256 for _, rec in ck.codec.compress_iter((pad_frame(f) for f in reader), 3)]
    code, out, _ = run_cli(["hashes", nvc, "--checkpoint", int_checkpoint], capsys)
    assert code == 0
    assert [line.split()[2] for line in out.splitlines()] == encoder_side


@pytest.mark.slow
def test_decode_to_every_format_gives_the_same_pixels(nvc, int_checkpoint, tmp_path, capsys):
    outputs = {}
    for name in ("d.y4m", "d_200x136.yuv", "d.mp4", "d.mkv", "dpng"):
        code, _, err = run_cli(["decode", nvc, "-o", tmp_path / name, "--checkpoint", int_checkpoint, "--quiet"], capsys)
        assert code == 0, err
        with open_video(tmp_path / name, InputOptions()) as reader:
            assert (reader.info.width, reader.info.height) == (WIDTH, HEIGHT)
            outputs[name] = uint8_frames(list(reader))
    assert outputs["d.mp4"].shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert np.array_equal(outputs["d.mp4"], outputs["dpng"])  # lossless RGB H.264
    assert np.array_equal(outputs["d.mkv"], outputs["dpng"])
    assert np.array_equal(outputs["d.y4m"], outputs["d_200x136.yuv"])  # same 4:2:0 samples, two containers
    mse = np.mean((outputs["d.y4m"].astype(float) - outputs["dpng"].astype(float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30  # 4:2:0 chroma subsampling is all that differs
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["d.y4m", "d_200x136.yuv", "d.mp4", "d.mkv", "dpng"])


def test_decode_reference_report_matches_an_independent_psnr(nvc, source, int_checkpoint, tmp_path, capsys):
    code, out, _ = run_cli(["decode", nvc, "-o", tmp_path / "r", "--checkpoint", int_checkpoint,
                            "--reference", source], capsys)
    assert code == 0
    reported = float(out.split("PSNR-RGB ")[1].split(" dB")[0])
    with open_video(source, InputOptions()) as ref:
        refs = list(ref)
    from PIL import Image

    decoded = [torch.from_numpy(np.array(Image.open(tmp_path / "r" / f"frame_{t:05d}.png"))).permute(2, 0, 1) / 255
               for t in range(FRAMES)]
    mse = [torch.mean((d - r) ** 2).item() for d, r in zip(decoded, refs)]
    independent = float(np.mean([-10 * np.log10(m) for m in mse]))
    assert abs(reported - independent) < 0.1  # the report is on float output, the PNGs are 8-bit
    bpp = float(out.split(" bpp")[0].split(", ")[-1])
    assert bpp == pytest.approx(8 * nvc.stat().st_size / (WIDTH * HEIGHT * FRAMES), abs=1e-4)


@pytest.mark.slow
def test_the_output_matrix_does_not_change_how_the_reference_is_read(nvc, source, int_checkpoint, tmp_path, capsys):
    """`--matrix bt601` writes BT.601 output; the BT.709-tagged reference is still read as
    BT.709, so the reported PSNR is that of the default decode. Reading it as BT.601 on
    purpose (`--reference-matrix bt601`) is what changes the figure."""
    def reported(*extra):
        code, out, err = run_cli(["decode", nvc, "--checkpoint", int_checkpoint, "--reference", source, *extra], capsys)
        assert code == 0, err
        return out.split("PSNR-RGB ")[1].split(" dB")[0]

    default = reported()
    assert reported("-o", tmp_path / "601.y4m", "--matrix", "bt601") == default
    assert reported("--reference-matrix", "bt601") != default


def test_info_reports_header_and_frames(nvc, int_checkpoint, tmp_path, capsys):
    code, out, _ = run_cli(["info", nvc, "--json", "--per-frame"], capsys)
    assert code == 0
    data = json.loads(out)
    assert (data["width"], data["height"], data["frames"], data["keyframes"], data["fps"]) == (WIDTH, HEIGHT, FRAMES, 2, "30000/1001")
    assert sum(f["bytes"] for f in data["per_frame"]) + 68 == data["bytes"]  # 64-byte header + its CRC
    assert data["checkpoint_kind"] is None and "--checkpoint CKPT says whether" in data["needs"]
    code, out, _ = run_cli(["info", nvc], capsys)
    assert "checkpoint_sha256" in out and "bt709/limited" in out
    # With the checkpoint: whether the stream needs it and what it decodes (its header's format).
    code, out, _ = run_cli(["info", nvc, "--checkpoint", int_checkpoint, "--json"], capsys)
    assert code == 0 and json.loads(out)["checkpoint_kind"] == "hyperprior-integer"
    other = tmp_path / "other.ckpt"  # same header but another payload hash
    data = int_checkpoint.read_bytes()
    other.write_bytes(data[:24] + bytes(32) + data[56:])
    code, _, err = run_cli(["info", nvc, "--checkpoint", other], capsys)
    assert code == 2 and f"was encoded with checkpoint {data[24:28].hex()}, not 00000000" in err
    code, _, err = run_cli(["info", nvc, "--checkpoint", nvc], capsys)
    assert code == 2 and "is not an nvc-train integer checkpoint" in err


def test_info_and_argument_errors_answer_without_importing_torch(nvc, int_checkpoint):
    """`info` reads the header with the standard library alone, and an argument error is
    reported before any heavy import: neither loads torch (which takes seconds)."""
    probe = ("import sys; from nvc_train.cli import main; codes = [main(a) for a in sys.argv[1:3]]; "
             "print(codes, sorted(m for m in ('torch', 'lightning', 'compressai') if m in sys.modules))")
    calls = [["info", str(nvc)], ["info", str(nvc), "--checkpoint", str(int_checkpoint)],
             ["encode", "x.mp4", "-o", "y.nvc", "--checkpoint", "c", "--gop", "-1"],
             # a missing input with valid options (before: reported after torch's import, 6.7 s)
             ["encode", "missing.mp4", "-o", "y.nvc", "--checkpoint", "c"],
             ["encode", str(nvc), "-o", "y.nvc", "--checkpoint", "missing.ckpt", "--fps", "25"]]
    proc = subprocess.run([sys.executable, "-c", probe.replace("sys.argv[1:3]", repr(calls))],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "[0, 0, 2, 2, 2] []", proc.stdout + proc.stderr
    assert "input not found: missing.mp4" in proc.stderr and "checkpoint not found: missing.ckpt" in proc.stderr


@pytest.mark.slow
def test_raw_yuv_10_bit_and_png_inputs_encode(int_checkpoint, tmp_path, capsys):
    frames = clip(12, 2, 64, 96)
    write_h264(tmp_path / "ten.mp4", frames, pix_fmt="yuv420p10le")
    png = tmp_path / "png"
    png.mkdir()
    from PIL import Image

    for t, f in enumerate(uint8_frames(frames)):
        Image.fromarray(f).save(png / f"{t}.png")
    (tmp_path / "raw.yuv").write_bytes(bytes([128]) * (96 * 64 * 3 // 2) * 2)
    for src, extra in ((tmp_path / "ten.mp4", []), (png, ["--fps", "24"]), (tmp_path / "raw.yuv", ["--size", "96x64"])):
        out = tmp_path / f"{src.stem}.nvc"
        code, _, err = run_cli(["encode", src, "-o", out, "--checkpoint", int_checkpoint, "--quiet", *extra], capsys)
        assert code == 0, err
        header, frames_ = read_bitstream_bytes(out.read_bytes())
        assert (header.width, header.height, header.frames) == (96, 64, 2)
    assert read_bitstream_bytes((tmp_path / "png.nvc").read_bytes())[0].fps_num == 24


# --------------------------------------------------------------------------- bad input

def _rewrite_header(data: bytes, **fields) -> bytes:
    """Change header fields and recompute the header CRC (a well-formed but different header)."""
    fmt = struct.Struct(">4sHH32sIIIIII")
    names = ("magic", "version", "colour", "sha", "w", "h", "fnum", "fden", "frames", "gop")
    values = dict(zip(names, fmt.unpack(data[:fmt.size])))
    values.update(fields)
    head = fmt.pack(*values.values())
    return head + struct.pack(">I", zlib.crc32(head)) + data[fmt.size + 4:]


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[: len(d) // 2], "truncated"),
    (lambda d: d[:20], "truncated"),
    (lambda d: b"", "empty"),
    (lambda d: bytes(random.Random(0).randrange(256) for _ in range(len(d))), "bad magic"),
    (lambda d: b"XXXX" + d[4:], "bad magic"),
    (lambda d: d[:10] + bytes([d[10] ^ 1]) + d[11:], "header CRC"),
    (lambda d: d[:-10] + bytes([d[-10] ^ 0x40]) + d[-9:], "CRC mismatch"),
    (lambda d: _rewrite_header(d, version=VERSION + 1), "newer than this nvc-train"),
    (lambda d: _rewrite_header(d, sha=bytes(range(32))), "encoded with checkpoint 00010203"),
    (lambda d: _rewrite_header(d, w=4000), "does not match"),
    (lambda d: d + b"\0", "unexpected bytes"),
])
def test_damaged_bitstreams_fail_with_one_line(nvc, int_checkpoint, tmp_path, capsys, damage, message):
    bad = tmp_path / "bad.nvc"
    bad.write_bytes(damage(nvc.read_bytes()))
    out = tmp_path / "out.y4m"
    code, stdout, err = run_cli(["decode", bad, "-o", out, "--checkpoint", int_checkpoint, "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.nvc"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random corruption: flipped bits, overwritten/inserted/deleted/duplicated bytes, truncation."""
    b = bytearray(data)
    kind = rng.randrange(7)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        i = rng.randrange(len(b))
        b[i:i + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
    elif kind == 2:
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 64))
    elif kind == 3:
        i = rng.randrange(len(b))
        del b[i:i + rng.randint(1, 64)]
    elif kind == 4:
        i = rng.randrange(len(b))
        b[i:i] = b[i:i + rng.randint(1, 64)]
    elif kind == 5:
        del b[rng.randrange(len(b)):]
    else:
        i = rng.randrange(len(b))
        b[i:i + rng.randint(1, 256)] = bytes(min(256, len(b) - i))
    return bytes(b)


def test_fuzz_1200_mutated_bitstreams_are_all_rejected(nvc):
    """Every mutation is caught by the container (magic, version, sizes, CRC32s) before the
    entropy decoder sees a byte; nothing else may be raised."""
    data = nvc.read_bytes()
    rng = random.Random(20261126)
    rejected = 0
    for _ in range(1200):
        bad = mutate(data, rng)
        if bad == data:
            continue
        with pytest.raises(BitstreamError):
            read_bitstream_bytes(bad)
        rejected += 1
    assert rejected >= 1000


@pytest.mark.slow  # over 9 s on the 2-core machine: `make test` runs it, `make test-fast` does not
def test_fuzzed_bitstreams_through_the_decoder_cli(nvc, int_checkpoint, tmp_path, capsys):
    data = nvc.read_bytes()
    rng = random.Random(7)
    for i in range(25):
        bad = tmp_path / "fuzz.nvc"
        bad.write_bytes(mutate(data, rng))
        code, _, err = run_cli(["decode", bad, "-o", tmp_path / "o.y4m", "--checkpoint", int_checkpoint, "--quiet"], capsys)
        assert code == 2 and err.startswith("nvc-train: error:") and err.count("\n") == 1
    assert not (tmp_path / "o.y4m").exists()


@pytest.mark.slow
def test_bad_video_inputs_fail_with_one_line(int_checkpoint, tmp_path, capsys):
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(1).bytes(2000))
    with av.open(str(tmp_path / "zero.mp4"), "w") as c:  # an mp4 whose video track never got a frame
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()
    (tmp_path / "zero.y4m").write_bytes(b"YUV4MPEG2 W64 H64 F25:1 C420jpeg\n")
    (tmp_path / "t.y4m").write_bytes(b"YUV4MPEG2 W64 H64 F25:1 C420jpeg\nFRAME\n" + bytes(64 * 64 * 3 // 2)
                                     + b"FRAME\n" + bytes(1000))
    cases = {"junk.mp4": "cannot read video", "zero.mp4": "no video stream", "zero.y4m": "has no frames", "t.y4m": "truncated in frame 1",
             "missing.mov": "not found"}
    for name, message in cases.items():
        out = tmp_path / f"{name}.nvc"
        code, _, err = run_cli(["encode", tmp_path / name, "-o", out, "--checkpoint", int_checkpoint, "--quiet"], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_outputs_are_never_overwritten_silently(nvc, source, int_checkpoint, capsys):
    before = nvc.read_bytes()
    code, _, err = run_cli(["encode", source, "-o", nvc, "--checkpoint", int_checkpoint], capsys)
    assert code == 2 and "--overwrite" in err and nvc.read_bytes() == before


def test_decode_failing_midway_leaves_no_output(nvc, int_checkpoint, tmp_path, capsys):
    short_ref = write_h264(tmp_path / "short.mp4", clip(11, 2, HEIGHT, WIDTH))
    out = tmp_path / "o.mp4"
    code, _, err = run_cli(["decode", nvc, "-o", out, "--checkpoint", int_checkpoint, "--reference", short_ref,
                            "--quiet"], capsys)
    assert code == 2 and "reference has only 2 frames" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.mp4"]


def test_console_script_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.nvc"
    bad.write_bytes(b"NVCB" + bytes(60))
    proc = subprocess.run([sys.executable, "-m", "nvc_train.cli", "info", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("nvc-train: error:") and "Traceback" not in proc.stderr


def test_a_closed_pipe_ends_quietly(nvc):
    """``info --per-frame | true``: the reader is gone before the first line is written. The
    command ends without a word (before: "nvc-train: error: Broken pipe"), with the shell's
    SIGPIPE status."""
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m nvc_train.cli info {nvc} --per-frame "
                                         "| true"], capture_output=True, text=True)
    assert proc.stderr == "" and proc.returncode == 141

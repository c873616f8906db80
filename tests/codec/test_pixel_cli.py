"""The pixel-exact codec on files: `encode --md5`, `decode --md5`, `hashes` and `compare` on pixels."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np
import pytest

from tests.codec.test_codec_cli import FRAMES, HEIGHT, WIDTH, run_cli
from tests.codec.video_fixtures import clip, write_h264


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_h264(tmp_path_factory.mktemp("src") / "source.mp4", clip(11, FRAMES, HEIGHT, WIDTH),
                      fps=Fraction(25))


def _md5_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line[:1].isdigit()]


def test_decoder_outputs_the_encoders_reconstruction_md5_for_md5(pixel_checkpoint, source, tmp_path, capsys):
    nvc = tmp_path / "s.nvc"
    code, enc, _ = run_cli(["encode", source, "-o", nvc, "--checkpoint", pixel_checkpoint, "--gop", "3", "--md5",
                            "--quiet"], capsys)
    assert code == 0
    encoder = _md5_lines(enc)
    assert [line.split()[:2] for line in encoder] == [[str(t), ft] for t, ft in enumerate("IPPIP")]
    code, dec, err = run_cli(["decode", nvc, "-o", tmp_path / "png", "--checkpoint", pixel_checkpoint, "--md5",
                              "--quiet"], capsys)
    assert code == 0 and "note" not in err
    assert _md5_lines(dec) == encoder == dec.splitlines()  # --quiet keeps only the MD5 lines
    # The written PNGs hold exactly those frames: their R, G, B planes hash to the printed MD5s.
    from PIL import Image

    pngs = sorted((tmp_path / "png").glob("*.png"))
    planes = [np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1)) for p in pngs]
    assert planes[0].shape == (3, HEIGHT, WIDTH)
    assert [hashlib.md5(p.tobytes()).hexdigest() for p in planes] == [line.split()[2] for line in encoder]
    # Without --md5 the decode loop hashes nothing (only --md5, `hashes` and `eval` need it).
    from nvc_train.codec.files import decode_video
    from nvc_train.quant.export import load_integer_checkpoint

    ck = load_integer_checkpoint(pixel_checkpoint)
    assert [f.md5 for f in decode_video(nvc, ck, progress=False).frames] == [""] * FRAMES
    assert [f.md5 for f in decode_video(nvc, ck, progress=False, md5=True).frames] == [
        line.split()[2] for line in encoder]

    # `hashes` adds the MD5 column; `compare` reads it against `decode --md5`'s lines.
    code, hashes, _ = run_cli(["hashes", nvc, "--checkpoint", pixel_checkpoint], capsys)
    assert code == 0 and [row.split()[3] for row in hashes.splitlines()] == [row.split()[2] for row in encoder]
    (tmp_path / "a.txt").write_text(hashes)
    (tmp_path / "b.txt").write_text(dec)
    code, out, _ = run_cli(["compare", tmp_path / "a.txt", tmp_path / "b.txt"], capsys)
    assert code == 0 and f"pixels: {FRAMES} of {FRAMES} frames identical (MD5)" in out
    lines = dec.splitlines()
    lines[2] = lines[2][:-32] + "0" * 32
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    code, out, _ = run_cli(["compare", tmp_path / "a.txt", tmp_path / "c.txt"], capsys)
    assert code == 1 and "frame 2 (P): pixels differ" in out and f"pixels: {FRAMES - 1} of {FRAMES}" in out
    # `info` says what the stream needs: this checkpoint, pixel-exact (read from its header).
    code, out, _ = run_cli(["info", nvc, "--checkpoint", pixel_checkpoint], capsys)
    assert code == 0 and f"{pixel_checkpoint}: pixel-exact (the whole decoder integer" in out


def test_md5_of_a_float_synthesis_checkpoint_comes_with_a_note(int_checkpoint, source, tmp_path, capsys):
    nvc = tmp_path / "f.nvc"
    code, out, err = run_cli(["encode", source, "-o", nvc, "--checkpoint", int_checkpoint, "--frames", "2", "--md5",
                              "--quiet"], capsys)
    assert code == 0 and len(_md5_lines(out)) == 2
    assert "synthesis is float" in err and "can differ between machines" in err


def test_eval_checks_every_decoded_frame_against_the_encoders(pixel_checkpoint, source, tmp_path, capsys):
    import json

    code, out, _ = run_cli(["eval", "--checkpoint", pixel_checkpoint, "--data", source, "--frames", "2",
                            "--out-dir", tmp_path / "eval", "--quiet"], capsys)
    assert code == 0 and "MISMATCH" not in out
    (curve,) = (json.loads(p.read_text()) for p in (tmp_path / "eval").glob("*.json"))
    assert curve["name"] == "pixel-exact"  # its own curve, never on the integer hyperprior's line
    assert "| model |" not in out  # --quiet: the summary table is in summary.md, not printed
    assert curve["results"]["frames_match"] == [1.0] and curve["results"]["latents_match"] == [1.0]

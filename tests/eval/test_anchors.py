"""`nvc-train eval --anchor`: x264 / x265 / SVT-AV1 curves from the same frames, measured the same way."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from nvc_train.eval import anchors
from nvc_train.io.video import InputOptions
from tests.cli_runner import assert_one_line_error, cli


@pytest.fixture(scope="module")
def anchor_eval(sequences, tmp_path_factory):
    """x264 and x265 at CRF 22 and 37 on the two shared sequences, 4 frames, GOP 2."""
    out = tmp_path_factory.mktemp("anchors")
    result = cli("eval", "--anchor", "x264", "x265", "--anchor-crf", "22", "37", "--data", sequences,
                 "--out-dir", out, "--frames", "4", "--gop", "2", "--quiet")
    return result, out


def test_anchor_curves_are_compressai_results_ordered_by_rate(anchor_eval):
    result, out = anchor_eval
    assert result.returncode == 0, result.stderr
    for codec in ("x264", "x265"):
        curve = json.loads((out / f"{codec}.json").read_text())
        r = curve["results"]
        assert curve["name"] == codec and curve["family"] == codec
        assert r["model"] == [f"{codec}-crf37", f"{codec}-crf22"] and r["crf"] == [37.0, 22.0]
        assert r["bpp"][0] < r["bpp"][1] and r["psnr-rgb"][0] < r["psnr-rgb"][1]  # more rate, more quality
        for key in ("bitrate", "psnr-y", "psnr-u", "psnr-v", "psnr-yuv", "ms-ssim-rgb", "encoding_time", "decoding_time"):
            assert len(r[key]) == 2, key
        assert "medium" in curve["description"]
    summary = (out / "summary.md").read_text()
    assert "| x264-crf22 | x264 |" in summary and "| x265-crf37 | x265 |" in summary
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in (out / "sequences").iterdir()} == {
        f"{s}-{c}-crf{q}.json" for s in ("pan", "walk") for c in ("x264", "x265") for q in (22, 37)}


def test_anchor_rate_counts_every_byte_and_the_gop_is_matched(anchor_eval):
    _, out = anchor_eval
    record = json.loads((out / "sequences" / "walk-x264-crf22.json").read_text())
    r, frames = record["results"], record["frames"]
    assert [f["type"] for f in frames] == ["I", "P", "I", "P"]  # --gop 2: keyint = min-keyint = 2, no scene cuts
    total = sum(f["bytes"] for f in frames)
    assert r["bpp"] == pytest.approx(8 * total / (200 * 176 * 4))
    assert r["bitrate"] == pytest.approx(8 * total * 30 / (4 * 1000))
    assert frames[0]["bytes"] > frames[1]["bytes"]  # the keyframe carries the headers and the intra picture
    assert r["psnr-yuv"] == pytest.approx((4 * r["psnr-y"] + r["psnr-u"] + r["psnr-v"]) / 6)


def test_bdrate_reads_anchor_curves_like_any_curve(anchor_eval):
    _, out = anchor_eval
    result = cli("bdrate", out / "x265.json", out / "x264.json")
    assert result.returncode == 0, result.stderr
    assert "anchor: x265" in result.stdout and "x264: BD-rate" in result.stdout


def test_a_lossless_anchor_returns_the_source_planes_and_a_lossy_one_does_not(sequences):
    """x264 at CRF 0 is lossless for 8-bit 4:2:0: the decoded planes are the source's own (the
    independent reference: the .y4m file's samples), so every PSNR is the capped 100 dB; the
    control, CRF 1, is not. Proves the planes go in and come out untouched by the plumbing."""
    point = anchors.anchor_points(["x264"], [0])[0]
    exact = anchors.code_sequence(point, Path(sequences) / "pan.y4m", InputOptions(), gop=2, max_frames=3)
    assert {exact["results"][k] for k in ("psnr-y", "psnr-u", "psnr-v", "psnr-rgb")} == {100.0}
    lossy = anchors.code_sequence(anchors.anchor_points(["x264"], [1])[0], Path(sequences) / "pan.y4m",
                                  InputOptions(), gop=2, max_frames=3)
    assert lossy["results"]["psnr-y"] < 100.0 and lossy["results"]["bpp"] < exact["results"]["bpp"]


def test_gop_zero_codes_only_the_first_frame_intra_in_every_codec(sequences):
    for name in ("x264", "x265", "av1"):
        point = anchors.anchor_points([name])[1]
        record = anchors.code_sequence(point, Path(sequences) / "pan.y4m", InputOptions(), gop=0, max_frames=4)
        assert [f["type"] for f in record["frames"]] == ["I", "P", "P", "P"], name
        assert 20 < record["results"]["psnr-rgb"] < 60, name


def test_an_rgb_source_is_converted_with_evals_own_conversion(tmp_path):
    """A PNG folder has no planes: the encoder gets rgb_to_ycbcr420's planes, so a lossless
    anchor's PSNR-Y/U/V are 100 (the planes round-trip) while PSNR-RGB measures the conversion."""
    from nvc_train.io.video import open_writer
    from tests.codec.video_fixtures import clip

    folder = tmp_path / "rgb"
    with open_writer(folder, 64, 48, Fraction(25)) as w:
        for frame in clip(5, 2, 48, 64):
            w.write(frame)
    record = anchors.code_sequence(anchors.anchor_points(["x264"], [0])[0], folder, InputOptions(), 2, None)
    assert {record["results"][k] for k in ("psnr-y", "psnr-u", "psnr-v")} == {100.0}
    assert 30 < record["results"]["psnr-rgb"] < 100.0  # 4:2:0 loses chroma detail of the RGB source


def test_eval_refuses_bad_anchor_requests_before_any_coding(sequences, tmp_path, monkeypatch):
    out = tmp_path / "o"
    cases = [(["--anchor", "vvc"], "unknown anchor 'vvc'"),
             (["--anchor-crf", "22"], "--anchor-crf sets the CRFs"),
             ([], "give models to evaluate"),
             (["--anchor", "x264", "--anchor-crf", "60"], "CRF runs from 0 to 51")]
    for args, fragment in cases:
        assert_one_line_error(cli("eval", *args, "--data", sequences, "--out-dir", out), fragment)
    # A codec this FFmpeg build lacks (an encoder name FFmpeg does not know stands in for a build without it).
    monkeypatch.setitem(anchors.ANCHORS, "x265", anchors.AnchorCodec("x265", "libx265-absent", ("hevc",), (22,), ""))
    assert_one_line_error(cli("eval", "--anchor", "x265", "--data", sequences, "--out-dir", out),
                          "has no libx265-absent encoder")
    assert not out.exists()  # refused before the output folder was made


def test_every_default_ladder_is_monotone_in_rate(sequences):
    """The default ladders give rising rate and quality point by point (BD-rate refuses dips)."""
    for name in anchors.ANCHORS:
        records = [anchors.code_sequence(p, Path(sequences) / "walk.mp4", InputOptions(), 2, 2)
                   for p in anchors.anchor_points([name])]
        bpp = [r["results"]["bpp"] for r in records]
        psnr = [r["results"]["psnr-rgb"] for r in records]
        assert np.all(np.diff(bpp) < 0) and np.all(np.diff(psnr) < 0), (name, bpp, psnr)

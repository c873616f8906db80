"""`nvc-train eval / bdrate / compare`: real-coding RD evaluation and cross-machine reports."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from nvc_train.cli import main
from nvc_train.io.colour import ColourSpec
from nvc_train.codec.files import decode_video
from nvc_train.io.video import SourceFrame, open_writer
from nvc_train.eval.evaluate import frame_metrics
from nvc_train.quant.export import load_integer_checkpoint


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_writes_compressai_results_per_family_and_sequence(evaluation, int_checkpoint):
    code, out = evaluation
    assert code == 0
    qat, flt = (json.loads((out / f"{f}.json").read_text()) for f in ("qat", "float"))
    assert qat["name"] == "qat" and flt["name"] == "float"
    for curve in (qat, flt):
        for key in ("q", "model", "bpp", "bitrate", "psnr-rgb", "psnr-y", "psnr-u", "psnr-v", "psnr-yuv", "ms-ssim-rgb",
                    "encoding_time", "decoding_time", "bpp-keyframe", "bpp-motion", "bpp-residual"):
            assert len(curve["results"][key]) == 1, key
    assert qat["results"]["model"] == [Path(int_checkpoint).stem]
    assert qat["results"]["q"] == [5]  # the quality the checkpoint records
    assert flt["results"]["q"] == [5]  # the quality the export-float file records (before: null)
    assert qat["results"]["latents_match"] == [1.0] and "latents_match" not in flt["results"]
    names = sorted(p.name for p in (out / "sequences").iterdir())
    assert names == sorted(f"{s}-{m}.json" for s in ("pan", "walk") for m in (Path(int_checkpoint).stem, "ssf-float"))
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| qat |" in (out / "summary.md").read_text()
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))


def test_rate_is_the_real_bitstream_and_metrics_are_consistent(evaluation, int_checkpoint):
    _, out = evaluation
    record = json.loads((out / "sequences" / f"walk-{Path(int_checkpoint).stem}.json").read_text())
    r, frames = record["results"], record["frames"]
    size = Path(record["bitstream"]).stat().st_size
    assert r["frames"] == 3 and [f["type"] for f in frames] == ["I", "P", "I"]
    assert r["bpp"] == pytest.approx(8 * size / (200 * 176 * 3))
    assert r["bitrate"] == pytest.approx(8 * size * 30 / (3 * 1000))
    assert all(f["encoder_latent_sha256"] == f["decoder_latent_sha256"] for f in frames)
    assert r["psnr-yuv"] == pytest.approx((4 * r["psnr-y"] + r["psnr-u"] + r["psnr-v"]) / 6)
    assert sum(f["bytes"] for f in frames) + 68 == size
    assert 0 < r["ms-ssim-rgb"] < 1 and 5 < r["psnr-rgb"] < 60


@pytest.mark.slow
def test_results_plot_unchanged_in_compressai(evaluation, tmp_path):
    _, out = evaluation
    png = tmp_path / "plot.png"
    proc = subprocess.run([sys.executable, "-m", "compressai.utils.video.plot", "-f", str(out / "qat.json"),
                           str(out / "float.json"), "-o", str(png)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_frame_metrics_on_known_errors():
    rgb = torch.full((3, 16, 16), 100 / 255)
    src = SourceFrame(rgb)
    exact = frame_metrics(rgb, src, ColourSpec())
    assert exact["psnr-rgb"] == 100.0 and exact["psnr-y"] == 100.0  # identical: capped like infinity
    off = frame_metrics(rgb + 2 / 255, src, ColourSpec())
    assert off["psnr-rgb"] == pytest.approx(10 * math.log10(255**2 / 4))
    assert off["psnr-yuv"] == pytest.approx((4 * off["psnr-y"] + off["psnr-u"] + off["psnr-v"]) / 6)


def test_a_10_bit_source_is_measured_at_its_own_peak_as_compressai_does():
    """PSNR-RGB and MS-SSIM of a 10-bit source use peak 1023 (CompressAI's 2**bitdepth - 1):
    an error of 2 levels in 1023 is 10·log10(1023²/4) dB; rounded to 8 bits it would vanish
    (0.5 of an 8-bit level) and the frame would read as perfect."""
    rgb = torch.full((3, 176, 176), 400 / 1023)
    off = frame_metrics(rgb + 2 / 1023, SourceFrame(rgb, bits=10), ColourSpec())
    assert off["psnr-rgb"] == pytest.approx(10 * math.log10(1023**2 / 4))
    as_8_bit = frame_metrics(rgb + 2 / 1023, SourceFrame(rgb, bits=8), ColourSpec())
    assert as_8_bit["psnr-rgb"] == 100.0  # the control: the same error is below one 8-bit level
    assert 0.99 < off["ms-ssim-rgb"] < 1.0


@pytest.mark.slow
def test_eval_refuses_bad_inputs(int_checkpoint, sequences, tmp_path, capsys):
    lightning = tmp_path / "last.ckpt"
    lightning.write_bytes(b"PK not an integer checkpoint")
    cases = [(["--checkpoint", lightning, "--data", sequences], "Lightning checkpoint"),
             (["--checkpoint", int_checkpoint, "--data", tmp_path / "nope"], "data not found"),
             (["--checkpoint", int_checkpoint, int_checkpoint, "--data", sequences], "share a file name")]
    for args, message in cases:
        code, _, err = run_cli(["eval", *args, "--out-dir", tmp_path / "o", "--quiet"], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err


# --------------------------------------------------------------------------- bdrate

def _curve(path: Path, name: str, bpp, psnr) -> Path:
    path.write_text(json.dumps({"name": name, "results": {"bpp": bpp, "psnr-rgb": psnr}}))
    return path


def test_bdrate_cli_on_an_analytic_case(tmp_path, capsys):
    a = _curve(tmp_path / "a.json", "float", [0.1, 0.2, 0.4, 0.8], [30.0, 32.0, 34.5, 36.0])
    b = _curve(tmp_path / "b.json", "qat", [0.11, 0.22, 0.44, 0.88], [30.0, 32.0, 34.5, 36.0])
    code, out, _ = run_cli(["bdrate", a, b], capsys)
    assert code == 0 and "qat: BD-rate +10.00 %" in out
    code, out, _ = run_cli(["bdrate", a, a], capsys)
    assert "BD-rate +0.00 %" in out and "+0.000 dB" in out


def test_bdrate_cli_errors(tmp_path, capsys):
    a = _curve(tmp_path / "a.json", "float", [0.1, 0.2], [30.0, 32.0])
    (tmp_path / "bad.json").write_text("{not json")
    far = _curve(tmp_path / "far.json", "x", [0.1, 0.2], [40.0, 42.0])
    for other, message in ((tmp_path / "missing.json", "not found"), (tmp_path / "bad.json", "not a JSON"),
                           (far, "do not overlap")):
        code, _, err = run_cli(["bdrate", a, other], capsys)
        assert code == 2 and message in err, err
    code, _, err = run_cli(["bdrate", a, a, "--metric", "psnr-yuv"], capsys)
    assert code == 2 and "no 'psnr-yuv' results" in err
    # A one-model "curve" is explained in plain words, and nothing is printed before the error
    # (before: "need at least 2 (rate, quality) points of equal count" after an "anchor:" header).
    one = _curve(tmp_path / "one.json", "qat", [0.15], [31.0])
    code, out, err = run_cli(["bdrate", a, one], capsys)
    assert code == 2 and out == ""
    assert "one.json vs " in err and "the test curve has 1 point: BD-rate compares two curves" in err and "2 or more qualities" in err


def test_curves_keep_kinds_apart_sort_by_quality_and_label_their_points():
    """Float, PTQ, integer-hyperprior and pixel-exact models are four curves; a curve's points are
    in quality order where every quality is known (before: by rate, which zig-zags when a
    higher quality codes smaller), and each marker is labelled with its model's name."""
    import matplotlib.pyplot as plt

    from nvc_train.eval.evaluate import family_curves, rd_figure

    def model(family, q, bpp, psnr):
        return {"family": family, "quality": q, "results": {"bpp": bpp, "psnr-rgb": psnr}}

    per_model = {"f-q4": model("float", 4, 0.30, 33.0), "f-q1": model("float", 1, 0.35, 30.0),
                 "int-q2": model("qat", 2, 0.2, 31.0), "px-q2": model("pixel-exact", 2, 0.21, 30.9),
                 "px-q5": model("pixel-exact", None, 0.5, 34.0), "px-q3": model("pixel-exact", None, 0.3, 32.0)}
    curves = family_curves(per_model)
    assert sorted(curves) == ["float", "pixel-exact", "qat"]
    assert curves["float"]["results"]["model"] == ["f-q1", "f-q4"]  # by quality, not by rate
    assert curves["float"]["results"]["q"] == [1, 4]
    assert curves["pixel-exact"]["results"]["model"] == ["px-q2", "px-q3", "px-q5"]  # a quality unknown: by rate
    fig = rd_figure(curves)
    labels = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert set(per_model) <= labels
    plt.close(fig)


def test_a_curve_joins_one_series_of_parents_never_two_fine_tunings_of_a_quality(tmp_path):
    """Integer checkpoints from CompressAI's zoo and from the user's own float models (kept in
    one folder, a file per quality) are two QAT curves, each in quality order; float files of
    the zoo and of that folder are two float curves; the series is read from what the
    checkpoints record (zoo name, init_weights "PATH (SHA-256 …)", PTQ source)."""
    from nvc_train.eval.evaluate import _integer_series, family_curves, parent_series

    ours = tmp_path / "footage-float"
    zoo = "CompressAI zoo ssf2020-mse"
    assert _integer_series({"config": {"model": {"pretrained": "ssf2020-mse-3"}}}) == zoo
    assert _integer_series({"config": {"model": {"pretrained": False}},
                            "init_weights": f"{ours}/q3.pth.tar (SHA-256 {'ab' * 32})"}) == str(ours)
    assert _integer_series({"config": {"ptq": {}, "source": str(ours / "q5.pth.tar")}}) == str(ours)
    assert _integer_series({"quality": 3}) is None
    assert parent_series(tmp_path / "hub" / "ssf2020-mse-5-1dd7d574.pth.tar") == zoo
    assert parent_series(ours / "q1.pth.tar") == str(ours)

    def model(family, q, bpp, series):
        return {"family": family, "quality": q, "series": series, "results": {"bpp": bpp, "psnr-rgb": 30 + q}}

    per_model = {"zoo-q5": model("qat", 5, 0.5, zoo), "ours-q3": model("qat", 3, 0.2, str(ours)),
                 "zoo-q3": model("qat", 3, 0.3, zoo), "ours-q5": model("qat", 5, 0.4, str(ours)),
                 "px-q3": model("pixel-exact", 3, 0.3, str(ours)),
                 "f-zoo-q3": model("float", 3, 0.3, zoo), "f-ours-q3": model("float", 3, 0.25, str(ours))}
    curves = family_curves(per_model)
    assert sorted(curves) == ["float-1", "float-2", "pixel-exact", "qat-1", "qat-2"]
    by_series = {(c["family"], c["series"]): c for c in curves.values()}
    assert by_series["qat", zoo]["results"]["model"] == ["zoo-q3", "zoo-q5"]
    assert by_series["qat", str(ours)]["results"]["model"] == ["ours-q3", "ours-q5"]
    assert by_series["qat", str(ours)]["name"] == f"qat ({ours})"
    assert by_series["float", zoo]["results"]["model"] == ["f-zoo-q3"]
    assert curves["pixel-exact"]["name"] == "pixel-exact" and curves["pixel-exact"]["series"] == str(ours)
    for curve in curves.values():  # no curve holds a quality twice: no zig-zag between two parents
        assert len(set(curve["results"]["q"])) == len(curve["results"]["q"])


# --------------------------------------------------------------------------- compare

@pytest.mark.slow
def test_compare_names_differing_frames_and_measures_pixel_drift(int_checkpoint, sequences, tmp_path, capsys):
    """Machine B is simulated by perturbing the float synthesis transforms: latents stay
    identical (integer hyperprior), pixels drift slightly."""
    nvc = tmp_path / "walk.nvc"
    assert main(["encode", str(sequences / "walk.mp4"), "-o", str(nvc), "--checkpoint", str(int_checkpoint),
                 "--gop", "2", "--quiet"]) == 0
    decodes = {}
    for machine, rel in (("a", 0.0), ("b", 1e-3)):
        ck = load_integer_checkpoint(int_checkpoint)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for module in (ck.codec.model.img_decoder, ck.codec.model.res_decoder, ck.codec.model.motion_decoder):
                for p in module.parameters():
                    p.mul_(1 + rel * torch.randn(p.shape, generator=g))
        out = tmp_path / f"{machine}.y4m"
        report = decode_video(nvc, ck, lambda h: open_writer(out, h.width, h.height, Fraction(25)), progress=False)
        (tmp_path / f"{machine}.txt").write_text("".join(f"{f.index} {f.frame_type} {f.latent_sha256}\n"
                                                         for f in report.frames))
        decodes[machine] = out
    code, out, _ = run_cli(["compare", tmp_path / "a.txt", tmp_path / "b.txt", "--decodes", decodes["a"], decodes["b"]],
                           capsys)
    assert code == 0 and "4 of 4 frames identical (bit-exact)" in out
    drift = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert [row[1:3] for row in drift] == [["I", "0"], ["P", "1"], ["I", "0"], ["P", "1"]]
    assert all(row[3] != "identical" and 25 < float(row[3]) < 100 for row in drift)

    lines = (tmp_path / "b.txt").read_text().splitlines()
    lines[2] = lines[2][:-64] + "0" * 64
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    code, out, _ = run_cli(["compare", tmp_path / "a.txt", tmp_path / "c.txt"], capsys)
    assert code == 1 and "frame 2 (I): latents differ" in out and "3 of 4 frames identical" in out
    (tmp_path / "junk.txt").write_text("hello\n")
    code, _, err = run_cli(["compare", tmp_path / "a.txt", tmp_path / "junk.txt"], capsys)
    assert code == 2 and "not a `nvc-train hashes` or `decode --md5` line" in err


@pytest.mark.slow
def test_eval_shows_progress_per_frame_and_quiet_silences_it(int_checkpoint, sequences, tmp_path, capsys):
    args = ["eval", "--checkpoint", int_checkpoint, "--data", sequences / "pan.y4m", "--frames", "2"]
    code, _, err = run_cli([*args, "--out-dir", tmp_path / "loud"], capsys)
    assert code == 0
    stem = Path(int_checkpoint).stem
    assert f"encode {stem} on pan" in err and f"decode {stem} on pan" in err and "2frame" in err.replace(" ", "")
    code, out, err = run_cli([*args, "--out-dir", tmp_path / "quiet", "--quiet"], capsys)
    assert code == 0 and "frame" not in err


def test_the_rd_legend_covers_no_point_and_no_point_sits_on_the_frame():
    """One model per family (the footage recipe's case): every marker is inside its panel,
    clear of the frame, and outside the legend's box."""
    import matplotlib.pyplot as plt

    from nvc_train.eval.evaluate import rd_figure

    curves = {family: {"results": {"bpp": [bpp], "psnr-rgb": [psnr], "ms-ssim-rgb": [0.95]}}
              for family, bpp, psnr in (("float", 0.2, 32.0), ("ptq", 0.3, 31.0), ("qat", 0.4, 30.0))}
    fig = rd_figure(curves)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [legend.get_window_extent(renderer) for legend in
               [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]]
    assert legends
    for ax in fig.axes:
        frame = ax.get_window_extent(renderer)
        for line in ax.get_lines():
            for x, y in ax.transData.transform(line.get_xydata()):
                assert not any(box.contains(x, y) for box in legends)
                assert frame.x0 + 10 < x < frame.x1 - 10 and frame.y0 + 10 < y < frame.y1 - 10
    plt.close(fig)

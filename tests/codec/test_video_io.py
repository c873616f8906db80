"""Video file input and output: colour conversion, every reader and writer, bad files."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from nvc_train.io.colour import ColourSpec, rgb_to_ycbcr420, ycbcr_to_rgb
from nvc_train.io.video import (InputOptions, VideoError, check_output_path, open_video, open_writer,
                                      parse_yuv_name)
from tests.codec.video_fixtures import clip, uint8_frames, write_h264


def read_all(path, **options):
    with open_video(path, InputOptions(**options)) as reader:
        return reader.info, torch.stack(list(reader))


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(torch.mean((a - b) ** 2)))


# --------------------------------------------------------------------------- colour

@pytest.mark.parametrize("rgb, expected", [
    ((1.0, 1.0, 1.0), (235, 128, 128)),
    ((0.0, 0.0, 0.0), (16, 128, 128)),
    ((1.0, 0.0, 0.0), (63, 102, 240)),   # BT.709 limited-range red (ITU-R BT.709 table)
    ((0.0, 1.0, 0.0), (173, 42, 26)),
    ((0.0, 0.0, 1.0), (32, 240, 118)),
])
def test_bt709_limited_range_code_values(rgb, expected):
    frame = torch.tensor(rgb).reshape(3, 1, 1).expand(3, 2, 2)
    y, cb, cr = rgb_to_ycbcr420(frame, 8, ColourSpec())
    assert (int(y[0, 0]), int(cb[0, 0]), int(cr[0, 0])) == expected
    back = ycbcr_to_rgb(y, cb, cr, 8, ColourSpec())
    assert torch.allclose(back[:, 0, 0], torch.tensor(rgb), atol=6 / 255)


def test_full_range_and_bt601_differ_from_the_default():
    frame = torch.tensor([0.8, 0.3, 0.1]).reshape(3, 1, 1).expand(3, 2, 2)
    codes = {str(s): tuple(int(p[0, 0]) for p in rgb_to_ycbcr420(frame, 8, s))
             for s in (ColourSpec(), ColourSpec("bt601"), ColourSpec("bt709", "full"), ColourSpec("bt2020"))}
    assert len(set(codes.values())) == 4
    y, cb, cr = rgb_to_ycbcr420(frame, 10, ColourSpec())
    assert y.dtype == np.uint16 and 64 <= y[0, 0] <= 940


def test_colour_round_trip_is_close_on_natural_content():
    frames = clip(1, 1, 64, 96)[0]
    for spec in (ColourSpec(), ColourSpec("bt601", "full")):
        back = ycbcr_to_rgb(*rgb_to_ycbcr420(frames, 8, spec), 8, spec)
        assert psnr_db(back, frames) > 30  # only 4:2:0 chroma loss and 8-bit rounding


def test_unknown_colour_options_are_refused():
    with pytest.raises(ValueError, match="matrix"):
        ColourSpec("bt2100")
    with pytest.raises(VideoError, match="range"):
        InputOptions(range="tv").colour()


# --------------------------------------------------------------------------- readers

def test_mp4_reader_streams_rgb_frames_with_stream_metadata(tmp_path):
    frames = clip(2, 5, 72, 104)
    info, got = read_all(write_h264(tmp_path / "a.mp4", frames, fps=Fraction(30000, 1001)))
    assert (info.width, info.height, info.fps, info.frames) == (104, 72, Fraction(30000, 1001), 5)
    assert got.shape == frames.shape and psnr_db(got, frames) > 30


def test_10_bit_mp4_is_converted_at_full_precision(tmp_path):
    frames = clip(3, 3, 64, 64)
    _, got8 = read_all(write_h264(tmp_path / "a8.mp4", frames, crf=0))
    info, got10 = read_all(write_h264(tmp_path / "a10.mp4", frames, pix_fmt="yuv420p10le", crf=0))
    assert "yuv420p10le" in info.description
    assert psnr_db(got10, frames) > 32 and psnr_db(got10, got8) > 32


def test_y4m_and_raw_yuv_writers_and_readers_agree(tmp_path):
    frames = clip(4, 3, 66, 98)  # even, not multiples of 128
    spec = ColourSpec()
    for name in ("c.y4m", "c_98x66_50fps.yuv"):
        with open_writer(tmp_path / name, 98, 66, Fraction(50), spec) as w:
            for f in frames:
                w.write(f)
    info_y4m, y4m = read_all(tmp_path / "c.y4m")
    info_yuv, yuv = read_all(tmp_path / "c_98x66_50fps.yuv")
    assert (info_y4m.width, info_y4m.height, info_y4m.fps) == (98, 66, Fraction(50))
    assert (info_yuv.width, info_yuv.height, info_yuv.fps, info_yuv.frames) == (98, 66, Fraction(50), 3)
    assert torch.equal(y4m, yuv) and psnr_db(y4m, frames) > 30
    header = (tmp_path / "c.y4m").read_bytes().split(b"\n", 1)[0]
    assert header == b"YUV4MPEG2 W98 H66 F50:1 Ip A1:1 C420jpeg XCOLORRANGE=LIMITED"


def test_odd_sized_y4m_round_trip(tmp_path):
    frames = clip(5, 2, 37, 51)
    with open_writer(tmp_path / "odd.y4m", 51, 37, Fraction(25)) as w:
        for f in frames:
            w.write(f)
    info, got = read_all(tmp_path / "odd.y4m")
    assert got.shape == frames.shape and psnr_db(got, frames) > 28


def test_y4m_full_range_tag_is_honoured(tmp_path):
    grey = torch.full((3, 32, 32), 64 / 255)
    with open_writer(tmp_path / "f.y4m", 32, 32, Fraction(25), ColourSpec("bt709", "full")) as w:
        w.write(grey)
    assert b"XCOLORRANGE=FULL" in (tmp_path / "f.y4m").read_bytes()[:80]
    info, got = read_all(tmp_path / "f.y4m")
    assert info.colour == ColourSpec("bt709", "full")
    assert torch.allclose(got, grey[None], atol=1e-6)
    _, forced = read_all(tmp_path / "f.y4m", range="limited")
    assert torch.allclose(forced, torch.full_like(forced, (64 - 16) / 219), atol=1e-6)


@pytest.mark.parametrize("name, expected", [
    ("BasketballDrive_1920x1080_50.yuv", (1920, 1080, Fraction(50), None)),
    ("Beauty_1920x1080_120fps_420_8bit_YUV.yuv", (1920, 1080, Fraction(120), 8)),
    ("Jockey_3840x2160_30fps_420_10bit.yuv", (3840, 2160, Fraction(30), 10)),
    ("clip_352x288.yuv", (352, 288, None, None)),
    ("foreman.yuv", (None, None, None, None)),
])
def test_yuv_file_names_are_parsed(name, expected):
    assert parse_yuv_name(name) == expected


def test_raw_yuv_errors_name_the_problem(tmp_path):
    (tmp_path / "noname.yuv").write_bytes(bytes(100))
    with pytest.raises(VideoError, match="--size"):
        open_video(tmp_path / "noname.yuv")
    (tmp_path / "c_16x16.yuv").write_bytes(bytes(16 * 16 * 3 // 2 * 2 + 5))
    with pytest.raises(VideoError, match="not a whole number of 16x16"):
        open_video(tmp_path / "c_16x16.yuv")


def test_png_folder_natural_order_and_size_check(tmp_path):
    frames = uint8_frames(clip(7, 3, 24, 40))
    folder = tmp_path / "png"
    folder.mkdir()
    for i, name in enumerate(("f2.png", "f10.png", "f1.png")):
        Image.fromarray(frames[[1, 2, 0][i]]).save(folder / name)
    info, got = read_all(folder)
    assert info.frames == 3 and np.array_equal(uint8_frames(got), frames)  # f1, f2, f10
    Image.fromarray(frames[0][:10]).save(folder / "f11.png")
    with pytest.raises(VideoError, match="f11.png is 40x10"):
        read_all(folder)


def test_unreadable_inputs(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoError, match="cannot read video"):
        open_video(tmp_path / "junk.mp4")
    (tmp_path / "empty.mov").write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        open_video(tmp_path / "empty.mov")
    with pytest.raises(VideoError, match="not found"):
        open_video(tmp_path / "missing.mkv")
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(VideoError, match="unsupported input"):
        open_video(tmp_path / "a.gif")
    (tmp_path / "bad.y4m").write_bytes(b"YUV4MPEG2 W16 H16 F25:1 C420\nFRAME\n" + bytes(100))
    with pytest.raises(VideoError, match="truncated in frame 0"):
        read_all(tmp_path / "bad.y4m")
    (tmp_path / "deep.y4m").write_bytes(b"YUV4MPEG2 W16 H16 F25:1 C411\n")
    with pytest.raises(VideoError, match="unsupported YUV4MPEG2 colour space C411"):
        open_video(tmp_path / "deep.y4m")


# --------------------------------------------------------------------------- writers

def test_lossless_mp4_is_bit_exact_rgb(tmp_path):
    frames = clip(8, 4, 50, 70)
    with open_writer(tmp_path / "l.mp4", 70, 50, Fraction(24), mp4_mode="lossless") as w:
        for f in frames:
            w.write(f)
    _, got = read_all(tmp_path / "l.mp4")
    assert np.array_equal(uint8_frames(got), uint8_frames(frames))


def test_high_quality_mp4_is_tagged_and_close(tmp_path):
    frames = clip(9, 4, 64, 96)
    with open_writer(tmp_path / "h.mp4", 96, 64, Fraction(24), ColourSpec(), mp4_mode="high") as w:
        for f in frames:
            w.write(f)
    with av.open(str(tmp_path / "h.mp4")) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.pix_fmt, int(cc.colorspace), int(cc.color_range)) == ("yuv420p", 1, 1)
    _, got = read_all(tmp_path / "h.mp4")
    assert psnr_db(got, frames) > 30
    with pytest.raises(VideoError, match="even sides"):
        open_writer(tmp_path / "odd.mp4", 95, 64, Fraction(24), mp4_mode="high")


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    for name in ("x.y4m", "x.mp4", "xpng"):
        with pytest.raises(ValueError, match="frame of shape"):
            with open_writer(tmp_path / name, 32, 32, Fraction(25)) as w:
                w.write(torch.zeros(3, 32, 32))
                w.write(torch.zeros(3, 16, 16))
    assert list(tmp_path.iterdir()) == []


def test_existing_outputs_are_kept_unless_overwrite(tmp_path):
    (tmp_path / "o.y4m").write_bytes(b"precious")
    with pytest.raises(VideoError, match="--overwrite"):
        check_output_path(tmp_path / "o.y4m", overwrite=False)
    assert check_output_path(tmp_path / "o.y4m", overwrite=True) == tmp_path / "o.y4m"
    with pytest.raises(VideoError, match="unsupported output"):
        check_output_path(tmp_path / "o.avi", overwrite=False)
    with pytest.raises(VideoError, match="does not exist"):
        check_output_path(tmp_path / "nope" / "o.y4m", overwrite=False)


def test_png_folder_output_replaces_atomically(tmp_path):
    out = tmp_path / "frames"
    out.mkdir()
    (out / "old.png").write_bytes(b"x")
    with open_writer(out, 16, 16, Fraction(25)) as w:
        w.write(torch.full((3, 16, 16), 0.5))
    assert sorted(p.name for p in out.iterdir()) == ["frame_00000.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


@pytest.mark.parametrize("chroma", [(2, 2), (1, 2), (1, 1)], ids=["420", "422", "444"])
def test_converting_a_window_equals_the_window_of_the_whole_conversion(chroma):
    """Exact, including odd sides (converted whole) and windows touching the frame's edges."""
    rng = np.random.default_rng(sum(chroma))
    for _ in range(60):
        height, width = (int(v) for v in rng.integers(8, 70, 2))
        ch, cw = -(-height // chroma[0]), -(-width // chroma[1])
        planes = [rng.integers(0, 1024, shape).astype(np.uint16) for shape in ((height, width), (ch, cw), (ch, cw))]
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        whole = ycbcr_to_rgb(*planes, 10, ColourSpec("bt2020"))
        window = ycbcr_to_rgb(*planes, 10, ColourSpec("bt2020"), (top, left, h, w))
        assert torch.equal(window, whole[:, top:top + h, left:left + w]), (height, width, top, left, h, w)


@pytest.mark.parametrize("pix_fmt, semi_planar", [("yuv420p", "nv12"), ("yuv420p10le", "p010le")])
def test_hardware_decoder_layouts_convert_exactly_as_planar_frames(tmp_path, pix_fmt, semi_planar):
    """NVDEC hands back NV12 (8-bit) or P010 (10-bit, samples in the high bits); the same
    samples repacked by FFmpeg from a software frame must give the same RGB, whole and windowed.
    Control: FFmpeg's own RGB conversion of the frame (swscale) differs from ours."""
    path = write_h264(tmp_path / "a.mp4", clip(5, 3, 96, 160), pix_fmt=pix_fmt, crf=0)
    with open_video(path) as reader:
        for _, frame in reader.decoded_frames():
            repacked = frame.reformat(format=semi_planar)
            assert repacked.format.name == semi_planar
            assert torch.equal(reader.convert(repacked).rgb, reader.convert(frame).rgb)
            window = (17, 33, 48, 64)
            assert torch.equal(reader.convert(repacked, window).rgb, reader.convert(frame, window).rgb)
            swscale = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float() / 255
            assert not torch.equal(swscale, reader.convert(frame).rgb)


def test_a_hardware_decoder_that_is_not_there_is_a_video_error(tmp_path):
    path = write_h264(tmp_path / "a.mp4", clip(5, 2, 64, 64))
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: tests/data/test_footage.py decodes on it")
    with pytest.raises(VideoError, match="on the cuda decoder"):
        open_video(path, InputOptions(hwaccel="cuda"))

"""Still image input and output (nvc_train.io.images): exact levels at 8 and 16 bits, a 16-bit
PNG decoder checked against other encoders, alpha, refused kinds of image, damaged files, and
atomic writes. Every file is real, written by Pillow, FFmpeg (PyAV) or write_png16."""

from __future__ import annotations

import hashlib
import resource
import struct
import zlib

import av
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from nvc_train.data.synthetic import synthetic_clip
from nvc_train.errors import UserError
from nvc_train.io.images import image_md5, read_image, to_levels, to_unit_float, write_image
from nvc_train.io.video import write_png16

H, W = 24, 20


def random_levels(bits: int, shape=(3, H, W), seed: int = 0) -> np.ndarray:
    levels = np.random.default_rng(seed).integers(0, 2**bits, shape, dtype=np.uint16)
    levels.flat[:2] = (0, 2**bits - 1)  # both ends of the range
    return levels


def hwc(levels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(levels.transpose(1, 2, 0))


def ffmpeg_png(path, samples: np.ndarray, pix_fmt: str, interlaced: bool = False):
    """Encode (H, W, C) samples with FFmpeg's PNG encoder, which picks each row's filter
    (pred=mixed): a writer independent of ours and of Pillow's."""
    cc = av.CodecContext.create("png", "w")
    cc.width, cc.height, cc.pix_fmt = samples.shape[1], samples.shape[0], pix_fmt
    cc.options = {"pred": "mixed"}
    if interlaced:
        cc.flags = cc.flags | av.codec.context.Flags.interlaced_dct  # the PNG encoder then writes Adam7
    source = {"rgb48be": "rgb48le", "rgba64be": "rgba64le", "rgb24": "rgb24"}[pix_fmt]
    frame = av.VideoFrame.from_ndarray(samples, format=source).reformat(format=pix_fmt)
    path.write_bytes(b"".join(bytes(p) for p in [*cc.encode(frame), *cc.encode(None)]))
    return path


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def handmade_png(path, width: int, height: int, colour_type: int, rows: bytes, *extra: bytes):
    """A 16-bit PNG assembled here from ``rows`` (each a filter byte, then the row's bytes)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + b"".join(extra) + png_chunk(b"IDAT", zlib.compress(rows))
                     + png_chunk(b"IEND", b""))
    return path


def png_filter_types(path) -> set[int]:
    """The filter type of every row of a non-interlaced PNG (read independently of the module)."""
    data, pos, idat = path.read_bytes(), 8, b""
    while pos < len(data):
        (length,), kind = struct.unpack_from(">I", data, pos), data[pos + 4:pos + 8]
        if kind == b"IHDR":
            width, height, depth, colour_type = struct.unpack_from(">IIBB", data, pos + 8)
        idat += data[pos + 8:pos + 8 + length] if kind == b"IDAT" else b""
        pos += 12 + length
    row = 1 + width * depth // 8 * {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    return set(np.frombuffer(zlib.decompress(idat), np.uint8)[::row].tolist()[:height])


def refused(path, match: str, **kwargs) -> str:
    """read_image(path) raises a one-line UserError that names the file and matches ``match``."""
    with pytest.raises(UserError, match=match) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# --------------------------------------------------------------------------- exact levels

@pytest.mark.parametrize("suffix", [".png", ".ppm", ".bmp"])
def test_8_bit_rgb_reads_exactly(tmp_path, suffix):
    levels = random_levels(8)
    path = tmp_path / f"rgb{suffix}"
    PILImage.fromarray(hwc(levels).astype(np.uint8)).save(path)
    image = read_image(path)
    assert image.bits == 8 and not image.alpha_dropped
    assert image.levels.dtype == np.uint16 and np.array_equal(image.levels, levels)


@pytest.mark.parametrize("suffix", [".png", ".pgm"])
def test_8_bit_grey_is_replicated_to_three_channels(tmp_path, suffix):
    grey = random_levels(8, (H, W)).astype(np.uint8)
    path = tmp_path / f"grey{suffix}"
    PILImage.fromarray(grey).save(path)
    image = read_image(path)
    assert image.bits == 8 and image.levels.shape == (3, H, W)
    assert all(np.array_equal(channel, grey) for channel in image.levels)


def test_jpeg_reads_as_pillow_decodes_it(tmp_path):
    path = tmp_path / "photo.jpg"
    PILImage.fromarray(hwc(random_levels(8)).astype(np.uint8)).save(path, quality=90)
    image = read_image(path)
    assert image.bits == 8 and np.array_equal(hwc(image.levels), np.asarray(PILImage.open(path)))


@pytest.mark.parametrize("bits", [8, 10, 16])
def test_write_image_then_read_image_is_exact(tmp_path, bits):
    levels = random_levels(bits)
    write_image(tmp_path / "out.png", levels, bits)
    image = read_image(tmp_path / "out.png")
    assert image.bits == bits and np.array_equal(image.levels, levels)


@pytest.mark.parametrize("bits", [9, 10, 12, 16])
def test_write_png16_file_reads_back_at_its_sbit_depth(tmp_path, bits):
    """write_png16 stores B-bit levels by left bit replication with an sBIT chunk of B."""
    levels = random_levels(bits)
    write_png16(tmp_path / "deep.png", levels, bits)
    image = read_image(tmp_path / "deep.png")
    assert image.bits == bits and np.array_equal(image.levels, levels)


@pytest.mark.parametrize("sbit, bits", [((10, 12, 10), 12), ((5, 5, 5), 8), ((0, 0, 0), 16), ((17, 17, 17), 16)])
def test_sbit_depths_that_differ_or_are_shallow_or_invalid(tmp_path, sbit, bits):
    """The deepest colour channel's sBIT (none loses a significant bit), at least 8; an invalid
    sBIT is ignored. Levels are the samples shifted right by 16 − bits."""
    samples = hwc(random_levels(16))
    rows = b"".join(b"\0" + row.tobytes() for row in samples.astype(">u2"))
    image = read_image(handmade_png(tmp_path / "sbit.png", W, H, 2, rows, png_chunk(b"sBIT", bytes(sbit))))
    assert image.bits == bits and np.array_equal(hwc(image.levels), samples >> (16 - bits))


def test_sbit_of_an_alpha_channel_does_not_count(tmp_path):
    grey_alpha = hwc(random_levels(10, (2, H, W))) << 6
    rows = b"".join(b"\0" + row.tobytes() for row in grey_alpha.astype(">u2"))
    image = read_image(handmade_png(tmp_path / "la.png", W, H, 4, rows, png_chunk(b"sBIT", bytes((10, 16)))),
                       drop_alpha=True)
    assert image.bits == 10 and np.array_equal(image.levels[0], grey_alpha[..., 0] >> 6)


def test_16_bit_decoder_agrees_with_ffmpeg_on_every_filter_type(tmp_path):
    # Natural content at 16 bits with every 7th row noise: FFmpeg's per-row choice then uses
    # all five PNG filters (asserted, so the test cannot silently stop covering one).
    smooth = synthetic_clip(3, 1, 48, 40)[0].numpy() * 65535
    samples = hwc(np.round(smooth).astype(np.uint16))
    samples[::7] = random_levels(16, samples[::7].shape)
    path = ffmpeg_png(tmp_path / "ffmpeg.png", samples, "rgb48be")
    assert png_filter_types(path) == {0, 1, 2, 3, 4}
    image = read_image(path)
    assert image.bits == 16 and np.array_equal(hwc(image.levels), samples)
    with av.open(str(path)) as container:  # FFmpeg's own decoder reads the same file alike
        assert np.array_equal(next(container.decode(video=0)).to_ndarray(format="rgb48le"), samples)


def test_16_bit_grey_from_pillow_is_read_exactly(tmp_path):
    grey = random_levels(16, (H, W))
    path = tmp_path / "grey16.png"
    PILImage.fromarray(grey).save(path)  # mode I;16: Pillow writes and reads 16-bit grey exactly
    assert png_filter_types(path) - {0}  # Pillow filters its rows: the decoder undoes them
    image = read_image(path)
    assert image.bits == 16 and all(np.array_equal(channel, grey) for channel in image.levels)
    assert np.array_equal(image.levels[0], np.asarray(PILImage.open(path)))


def test_interlaced_8_bit_png_reads_exactly_and_16_bit_is_refused(tmp_path):
    levels = random_levels(8)
    image = read_image(ffmpeg_png(tmp_path / "adam7.png", hwc(levels).astype(np.uint8), "rgb24", interlaced=True))
    assert np.array_equal(image.levels, levels)
    refused(ffmpeg_png(tmp_path / "adam7_16.png", hwc(random_levels(16)), "rgb48be", interlaced=True),
            "interlaced 16-bit PNG")


@pytest.mark.parametrize("level", range(0, 2**16, 4099))
def test_unit_float_and_levels_are_inverse(level):
    for bits in (8, 10, 16):
        levels = np.full((3, 2, 2), level % 2**bits, np.uint16)
        x = to_unit_float(levels, bits)
        assert x.dtype == torch.float32 and np.array_equal(to_levels(x, bits), levels)


def test_to_levels_rounds_half_up_and_clamps():
    x = torch.tensor([-0.2, 0.0, 0.5, 1.0, 1.3])  # 0.5 · 1023 = 511.5 exactly: half up gives 512
    assert to_levels(x, 10).tolist() == [0, 0, 512, 1023, 1023]
    assert to_levels(torch.tensor([254.49 / 255, 254.51 / 255]), 8).tolist() == [254, 255]


def test_image_md5_hashes_the_levels_not_the_file(tmp_path):
    levels = random_levels(8)
    for level in (0, 9):  # same pixels, different zlib effort: different files, same picture
        PILImage.fromarray(hwc(levels).astype(np.uint8)).save(tmp_path / f"c{level}.png", compress_level=level)
    fast, small = (read_image(tmp_path / f"c{level}.png") for level in (0, 9))
    assert (tmp_path / "c0.png").read_bytes() != (tmp_path / "c9.png").read_bytes()
    assert image_md5(fast.levels, 8) == image_md5(small.levels, 8) == hashlib.md5(
        b"".join(struct.pack("<H", int(v)) for v in levels.ravel())).hexdigest()
    with pytest.raises(ValueError, match="lie in"):
        image_md5(levels + 256, 8)


# --------------------------------------------------------------------------- alpha

def rgba_files(tmp_path):
    rgba = random_levels(8, (4, H, W))
    grey_alpha = random_levels(8, (2, H, W))
    PILImage.fromarray(hwc(rgba).astype(np.uint8), "RGBA").save(tmp_path / "rgba.png")
    PILImage.fromarray(hwc(grey_alpha).astype(np.uint8), "LA").save(tmp_path / "la.png")
    PILImage.fromarray(hwc(rgba[:3]).astype(np.uint8)).save(tmp_path / "trns.png", transparency=(1, 2, 3))
    rgba16 = random_levels(16, (4, H, W))
    ffmpeg_png(tmp_path / "rgba16.png", hwc(rgba16), "rgba64be")
    grey_alpha16 = random_levels(16, (2, H, W))
    handmade_png(tmp_path / "la16.png", W, H, 4,
                 b"".join(b"\0" + row.tobytes() for row in hwc(grey_alpha16).astype(">u2")))
    return {"rgba.png": rgba[:3], "la.png": grey_alpha[:1], "trns.png": rgba[:3],
            "rgba16.png": rgba16[:3], "la16.png": grey_alpha16[:1]}


def test_alpha_is_refused_unless_dropped_and_then_ignored(tmp_path):
    for name, colour in rgba_files(tmp_path).items():
        message = refused(tmp_path / name, "alpha channel|transparent colour")
        assert "--drop-alpha" in message
        image = read_image(tmp_path / name, drop_alpha=True)
        assert image.alpha_dropped, name
        assert np.array_equal(image.levels, np.broadcast_to(colour, (3, H, W))), name  # not composited


# --------------------------------------------------------------------------- refused images

def test_kinds_of_image_the_codecs_do_not_take_are_refused(tmp_path):
    PILImage.new("P", (W, H)).save(tmp_path / "palette.png")
    PILImage.new("CMYK", (W, H)).save(tmp_path / "cmyk.jpg")
    PILImage.new("1", (W, H)).save(tmp_path / "bilevel.png")
    PILImage.new("RGB", (W, H)).save(tmp_path / "picture.tiff")
    deep = random_levels(16, (H, W)).astype(">u2").tobytes()
    (tmp_path / "deep.pgm").write_bytes(b"P5\n%d %d\n65535\n" % (W, H) + deep)  # Pillow: mode I
    (tmp_path / "deep.ppm").write_bytes(b"P6\n# made here\n%d %d\n65535\n" % (W, H) + deep * 3)  # Pillow: 8-bit RGB
    refused(tmp_path / "palette.png", "palette image; convert it to RGB")
    refused(tmp_path / "cmyk.jpg", "CMYK")
    refused(tmp_path / "bilevel.png", "1-bit")
    refused(tmp_path / "picture.tiff", "TIFF image")
    refused(tmp_path / "deep.pgm", "16-bit PNG")
    refused(tmp_path / "deep.ppm", "maxval 65535")


def test_missing_empty_and_non_image_files_are_refused(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not a picture\n")
    refused(tmp_path / "absent.png", "not found")
    refused(tmp_path, "is a directory")
    refused(tmp_path / "empty.png", "is empty")
    refused(tmp_path / "notes.png", "not an image")


@pytest.mark.parametrize("name, bits", [("png8.png", 8), ("png16.png", 16), ("photo.jpg", 8)])
def test_truncated_files_are_refused(tmp_path, name, bits):
    path = tmp_path / name
    if bits == 16:
        write_image(path, random_levels(16), 16)
    else:
        PILImage.fromarray(hwc(random_levels(8)).astype(np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    refused(path, "truncated")


@pytest.mark.parametrize("bits", [8, 16])
def test_a_flipped_byte_in_the_image_data_fails_the_crc(tmp_path, bits):
    path = tmp_path / "flipped.png"
    write_image(path, random_levels(bits), bits)
    data = bytearray(path.read_bytes())
    data[data.index(b"IDAT") + 20] ^= 0x10
    path.write_bytes(bytes(data))
    refused(path, "CRC mismatch in its IDAT chunk")


def test_corrupt_image_data_with_valid_crcs_is_refused(tmp_path):
    row = b"\5" + bytes(6 * W)  # filter type 5 does not exist
    refused(handmade_png(tmp_path / "filter5.png", W, H, 2, row * H), "unknown filter type 5")
    refused(handmade_png(tmp_path / "short.png", W, H, 2, row[:1] * H), r"image data for 0 of its 24 rows")


# --------------------------------------------------------------------------- writing

def test_write_image_refuses_to_overwrite_unless_asked(tmp_path):
    path = tmp_path / "out.png"
    write_image(path, random_levels(8, seed=1), 8)
    with pytest.raises(UserError, match="exists.*--overwrite") as info:
        write_image(path, random_levels(8, seed=2), 8)
    assert "\n" not in str(info.value)
    assert np.array_equal(read_image(path).levels, random_levels(8, seed=1))
    write_image(path, random_levels(8, seed=2), 8, overwrite=True)
    assert np.array_equal(read_image(path).levels, random_levels(8, seed=2))
    with pytest.raises(UserError, match="does not exist"):
        write_image(tmp_path / "absent" / "out.png", random_levels(8), 8)


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_partial(tmp_path):
    """A real failure part-way through writing: the process may not write files over 4 KiB
    (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the write raises EFBIG)."""
    path = tmp_path / "out.png"
    write_image(path, random_levels(8, seed=1), 8)
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(UserError, match="cannot write .*out.png: File too large"):
            write_image(path, random_levels(16, (3, 64, 64)), 16, overwrite=True)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_write_image_checks_levels_and_bits(tmp_path):
    with pytest.raises(ValueError, match="lie in"):
        write_image(tmp_path / "a.png", random_levels(10), 8)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        write_image(tmp_path / "a.png", random_levels(8, (H, W)), 8)
    with pytest.raises(ValueError, match="bits"):
        write_image(tmp_path / "a.png", random_levels(8), 7)
    assert not list(tmp_path.iterdir())

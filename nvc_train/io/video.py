"""Reading and writing video files frame by frame, as RGB (3, H, W) float32 in [0, 1].

Inputs: .mp4/.mov/.mkv/.avi/.webm (PyAV), .y4m, raw .yuv (4:2:0, 8 or 10 bit; size and fps from
options or from a ``name_WxH_FPS…`` file name), and folders of PNG files. Outputs: .y4m, raw
.yuv (yuv420p 8-bit), .mp4/.mkv/.mov (H.264: lossless RGB or high-quality 4:2:0), PNG
folders. Colour conversion is defined in :mod:`nvc_train.io.colour`.

Readers and writers stream: memory does not grow with the length of the video. Writers are
atomic: they write to a hidden temporary beside the target and rename it into place only
when the last frame is written, so a failed run never leaves a half-written output.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor

from nvc_train.io.paths import CONTAINER_SUFFIXES, OUTPUT_SUFFIXES, VideoError, check_output_path  # noqa: F401 (re-exported)
from nvc_train.io.atomic import AtomicOutput
from nvc_train.io.colour import (
    ColourSpec,
    Window,
    crop,
    rgb_to_uint8,
    rgb_to_ycbcr420,
    uint_to_rgb,
    ycbcr_to_rgb,
)

MP4_MODES = ("lossless", "high")


@dataclass(frozen=True)
class VideoInfo:
    """What a reader knows before decoding: size in pixels, frame rate, frame count if known."""

    width: int
    height: int
    fps: Fraction
    frames: int | None
    description: str = ""
    colour: ColourSpec | None = None
    """How the source's Y'CbCr became RGB (None for RGB sources)."""
    bits: int = 8
    """The source's bit depth per sample (8, 10, 12 or 16)."""


@dataclass(frozen=True)
class InputOptions:
    """User options for inputs; ``None`` fields are taken from the file (or its name).

    ``matrix``/``range`` of ``None`` mean: the file's colour tags when it has them, else
    BT.709 limited range.
    """

    width: int | None = None
    height: int | None = None
    fps: Fraction | None = None
    bits: int | None = None
    matrix: str | None = None
    range: str | None = None
    hwaccel: str | None = None
    """Decode containers on this FFmpeg hardware device type (``cuda``: NVDEC), frames then
    downloaded as NV12/P010 and converted exactly as software frames; None: the CPU."""

    def colour(self, tagged_matrix: str | None = None, tagged_range: str | None = None) -> ColourSpec:
        try:
            return ColourSpec(self.matrix or tagged_matrix or "bt709", self.range or tagged_range or "limited")
        except ValueError as exc:
            raise VideoError(str(exc)) from None


class SourceFrame(NamedTuple):
    """A decoded input frame: RGB (3, H, W) float32 in [0, 1], and for 4:2:0 Y'CbCr sources
    the original integer planes (Y' (H, W), Cb, Cr (ceil(H/2), ceil(W/2))) at ``bits``."""

    rgb: Tensor
    planes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    bits: int = 8


class FrameReader:
    """Iterate RGB frames (3, H, W) float32 in [0, 1]; ``info`` describes the source."""

    info: VideoInfo

    def __iter__(self) -> Iterator[Tensor]:
        return (frame.rgb for frame in self.source_frames())

    def source_frames(self) -> Iterator[SourceFrame]:
        """Frames with their original 4:2:0 planes where the source has them (for PSNR-YUV)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- Y'CbCr layouts

_YUV_FORMAT = re.compile(r"^(yuvj?)(420|422|444)p(?:(9|10|12|14|16)le)?$")
_SUBSAMPLING = {"420": (2, 2), "422": (1, 2), "444": (1, 1)}  # (vertical, horizontal)
_PIX_FMT_BITS = re.compile(r"p(9|10|12|14|16)(?:le|be)$|^(?:gray|gbrp|p0)(9|10|12|14|16)(?:le|be)$|^(rgb|bgr)48")


def _pix_fmt_bits(pix_fmt: str | None) -> int:
    """Bit depth per sample of an FFmpeg pixel format (yuv420p10le → 10, rgb48le → 16, else
    8), rounded up to a depth nvc-train writes (9 → 10, 14 → 16)."""
    m = _PIX_FMT_BITS.search(pix_fmt or "")
    if not m:
        return 8
    bits = 16 if m.group(3) else int(m.group(1) or m.group(2))
    return next(d for d in (10, 12, 16) if d >= bits)


def _plane_sizes(width: int, height: int, chroma: str) -> tuple[tuple[int, int], tuple[int, int]]:
    sv, sh = _SUBSAMPLING[chroma]
    return (height, width), (-(-height // sv), -(-width // sh))


def _split_planes(buf: np.ndarray, width: int, height: int, chroma: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    (lh, lw), (ch, cw) = _plane_sizes(width, height, chroma)
    y = buf[: lh * lw].reshape(lh, lw)
    cb = buf[lh * lw: lh * lw + ch * cw].reshape(ch, cw)
    cr = buf[lh * lw + ch * cw: lh * lw + 2 * ch * cw].reshape(ch, cw)
    return y, cb, cr


def _frame_samples(width: int, height: int, chroma: str) -> int:
    (lh, lw), (ch, cw) = _plane_sizes(width, height, chroma)
    return lh * lw + 2 * ch * cw


# --------------------------------------------------------------------------- PyAV containers

# FFmpeg's AVColorSpace / AVColorRange codes (libavutil/pixfmt.h).
_AV_MATRIX = {1: "bt709", 5: "bt601", 6: "bt601", 9: "bt2020"}
_AV_RANGE = {1: "limited", 2: "full"}
_AV_TAGS = {"bt709": (1, 1, 1), "bt601": (6, 6, 6), "bt2020": (9, 9, 14)}  # colorspace, primaries, trc


class PyAVReader(FrameReader):
    """Video containers through PyAV (FFmpeg): the first video stream, decoded in order."""

    def __init__(self, path: Path, options: InputOptions):
        import av

        self.path = path
        hwaccel = None
        if options.hwaccel:
            from av.codec.hwaccel import HWAccel

            hwaccel = HWAccel(device_type=options.hwaccel, allow_software_fallback=False)
        try:
            self.container = av.open(str(path), hwaccel=hwaccel)
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
            where = f" on the {options.hwaccel} decoder" if options.hwaccel else ""
            raise VideoError(f"cannot read video {path}{where}: {_av_reason(exc)}") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{path} has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        cc = self.stream.codec_context
        fps = options.fps or self.stream.average_rate or self.stream.guessed_rate
        if not fps:
            fps = Fraction(25)
            warnings.warn(f"{path} does not state its frame rate; assuming 25 fps", stacklevel=2)
        self.options = options
        self._spec = options.colour(_AV_MATRIX.get(int(cc.colorspace or 0)), _AV_RANGE.get(int(cc.color_range or 0)))
        self.info = VideoInfo(cc.width, cc.height, Fraction(fps), self.stream.frames or None,
                              f"{path.suffix[1:]} {cc.name} {cc.pix_fmt}, {self._spec}", self._spec,
                              _pix_fmt_bits(cc.pix_fmt))
        self._warned_fallback = False

    def source_frames(self) -> Iterator[SourceFrame]:
        return (frame for _, frame in self.timed_frames())

    def timed_frames(self, start_pts: int | None = None, window: Window | None = None
                     ) -> Iterator[tuple[int | None, SourceFrame]]:
        """(pts, frame) in presentation order; with ``start_pts``, seek to the keyframe at or
        before it and skip the frames before it (pts in the stream's time base). With
        ``window``, frames are only that rectangle, converted alone (no ``planes``)."""
        for pts, frame in self.decoded_frames(start_pts):
            yield pts, self.convert(frame, window)

    def decoded_frames(self, start_pts: int | None = None) -> Iterator[tuple[int | None, object]]:
        """(pts, PyAV frame) in presentation order, not converted, from ``start_pts`` on as
        :meth:`timed_frames`. Before ``start_pts`` only reference frames are decoded: a frame no
        other frame predicts from (most B-frames) cannot change a later one, so skipping it
        leaves every frame from ``start_pts`` on bit-identical, and a seek to the keyframe
        before a clip decodes about half as many frames."""
        import av

        cc = self.stream.codec_context
        try:
            if start_pts is not None:
                # seek() also flushes the decoder, so a reader can be reused for any clip.
                self.container.seek(start_pts, stream=self.stream, backward=True, any_frame=False)
            for packet in self.container.demux(self.stream):
                before = start_pts is not None and packet.pts is not None and packet.pts < start_pts
                cc.skip_frame = "NONREF" if before else "DEFAULT"
                for frame in packet.decode():
                    if start_pts is not None and frame.pts is not None and frame.pts < start_pts:
                        continue
                    yield frame.pts, frame
        except av.error.FFmpegError as exc:
            raise VideoError(f"cannot decode {self.path}: {_av_reason(exc)}") from None
        finally:
            cc.skip_frame = "DEFAULT"

    def frame_pts(self) -> list[int | None]:
        """Decode every frame without converting it; their pts in presentation order. Proves
        the whole file decodes and counts its frames exactly (container headers can be wrong)."""
        import av

        try:
            return [frame.pts for frame in self.container.decode(self.stream)]
        except av.error.FFmpegError as exc:
            raise VideoError(f"cannot decode {self.path}: {_av_reason(exc)}") from None

    def convert(self, frame, window: Window | None = None) -> SourceFrame:
        """A decoded PyAV frame as RGB (only ``window``, if given)."""
        name = frame.format.name
        if name in _SEMI_PLANAR:  # hardware decoders' layout: the same samples, chroma interleaved
            bits = self.info.bits if name != "nv12" else 8
            planes = _semi_planar_planes(frame, name, bits)
            rgb = ycbcr_to_rgb(*planes, bits=bits, spec=self._spec, window=window)
            return SourceFrame(rgb, tuple(planes) if window is None else None, bits)
        m = _YUV_FORMAT.match(name)
        if m:
            jpeg, chroma, bits = m.group(1) == "yuvj", m.group(2), int(m.group(3) or 8)
            spec = replace(self._spec, range="full") if jpeg else self._spec
            dtype = np.uint8 if bits == 8 else np.dtype("<u2")
            planes = [_plane_array(p, dtype) for p in frame.planes[:3]]
            rgb = ycbcr_to_rgb(*planes, bits=bits, spec=spec, window=window)
            return SourceFrame(rgb, tuple(planes) if chroma == "420" and window is None else None, bits)
        converted = self._convert_other(frame, name)
        return converted if window is None else SourceFrame(crop(converted.rgb, window), bits=converted.bits)

    def _convert_other(self, frame, name: str) -> SourceFrame:
        if name in ("gray", "gray10le", "gray12le", "gray16le"):
            bits = 8 if name == "gray" else int(name[4:6])
            y = _plane_array(frame.planes[0], np.uint8 if bits == 8 else np.dtype("<u2"))
            mid = np.full((1, 1), 2 ** (bits - 1), dtype=y.dtype)
            return SourceFrame(ycbcr_to_rgb(y, mid, mid, bits=bits, spec=self._spec), bits=bits)
        deep = any(tag in name for tag in ("48", "64", "10", "12", "16"))
        if not self._warned_fallback and not name.startswith(("rgb", "bgr", "gbr", "argb", "abgr")):
            warnings.warn(f"{self.path}: pixel format {name} is converted to RGB by FFmpeg's swscale", stacklevel=2)
            self._warned_fallback = True
        return SourceFrame(uint_to_rgb(frame.to_ndarray(format="rgb48le" if deep else "rgb24")))

    def close(self) -> None:
        self.container.close()


_SEMI_PLANAR = ("nv12", "p010le", "p012le", "p016le")
"""4:2:0 with Y then interleaved Cb/Cr: what NVDEC (and most hardware decoders) hand back;
the P0xx formats keep a B-bit sample in the high bits of 16."""


def _semi_planar_planes(frame, name: str, bits: int) -> list[np.ndarray]:
    """(Y, Cb, Cr) sample planes of an NV12/P0xx frame, as the planar formats give them."""
    dtype = np.dtype(np.uint8 if name == "nv12" else "<u2")
    y, chroma = _plane_array(frame.planes[0], dtype), frame.planes[1]
    rows = np.frombuffer(chroma, dtype=dtype).reshape(chroma.height, chroma.line_size // dtype.itemsize)
    uv = rows[:, : 2 * ((frame.width + 1) // 2)]  # Cb, Cr pairs: twice the chroma width in samples
    planes = [y, np.ascontiguousarray(uv[:, 0::2]), np.ascontiguousarray(uv[:, 1::2])]
    if name != "nv12":
        planes = [p >> (16 - bits) for p in planes]
    return planes


def _plane_array(plane, dtype) -> np.ndarray:
    """A PyAV plane as (height, width), without its line padding."""
    dtype = np.dtype(dtype)
    rows = np.frombuffer(plane, dtype=dtype).reshape(plane.height, plane.line_size // dtype.itemsize)
    return rows[:, : plane.width]


def _av_reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0]


# --------------------------------------------------------------------------- Y4M

_Y4M_MAGIC = b"YUV4MPEG2 "
_Y4M_COLOUR = re.compile(r"^(420|422|444|mono)(jpeg|paldv|mpeg2)?(?:p(\d+))?$")


class Y4MReader(FrameReader):
    """YUV4MPEG2 files: 4:2:0 (any siting; resampled as centre-sited), 4:2:2, 4:4:4, mono, 8–16 bit."""

    def __init__(self, path: Path, options: InputOptions):
        self.path = path
        self.file = open(path, "rb")
        header = self.file.readline(4096)
        if not header.startswith(_Y4M_MAGIC) or not header.endswith(b"\n"):
            self.file.close()
            raise VideoError(f"{path} is not a YUV4MPEG2 file (bad header)")
        tokens = header[len(_Y4M_MAGIC):].decode("ascii", "replace").split()
        params = {tok[:1]: tok[1:] for tok in tokens if not tok.startswith("X")}
        extensions = dict(tok[1:].partition("=")[::2] for tok in tokens if tok.startswith("X"))
        try:
            width, height = int(params["W"]), int(params["H"])
            num, den = params.get("F", "25:1").split(":")
            fps = Fraction(int(num), int(den))
        except (KeyError, ValueError, ZeroDivisionError):
            self.file.close()
            raise VideoError(f"{path}: YUV4MPEG2 header lacks a valid size or frame rate") from None
        colour = params.get("C", "420jpeg")
        m = _Y4M_COLOUR.match(colour)
        if not m or width <= 0 or height <= 0:
            self.file.close()
            raise VideoError(f"{path}: unsupported YUV4MPEG2 colour space C{colour}")
        self.chroma, self.bits = m.group(1), int(m.group(3) or 8)
        self.spec = options.colour(None, {"FULL": "full", "LIMITED": "limited"}.get(extensions.get("COLORRANGE", "")))
        self.dtype = np.dtype(np.uint8) if self.bits == 8 else np.dtype("<u2")
        samples = width * height if self.chroma == "mono" else _frame_samples(width, height, self.chroma)
        self.frame_bytes = samples * self.dtype.itemsize
        self.info = VideoInfo(width, height, options.fps or fps, None, f"y4m C{colour}, {self.spec}", self.spec,
                              self.bits)
        self._first_frame = self.file.tell()

    def seek(self, index: int) -> None:
        """Continue :meth:`source_frames` at frame ``index`` (0-based). Assumes bare ``FRAME``
        markers, as every writer we know emits; a marker with parameters fails the marker check."""
        self.file.seek(self._first_frame + index * (len(b"FRAME\n") + self.frame_bytes))

    def source_frames(self) -> Iterator[SourceFrame]:
        w, h = self.info.width, self.info.height
        t = 0
        while True:
            marker = self.file.readline(1024)
            if not marker:
                return
            if not marker.startswith(b"FRAME"):
                raise VideoError(f"{self.path}: frame {t} does not start with FRAME (damaged file?)")
            data = self.file.read(self.frame_bytes)
            if len(data) != self.frame_bytes:
                raise VideoError(f"{self.path} is truncated in frame {t}")
            buf = np.frombuffer(data, dtype=self.dtype)
            if self.chroma == "mono":
                y = buf.reshape(h, w)
                mid = np.full((1, 1), 2 ** (self.bits - 1), dtype=self.dtype)
                yield SourceFrame(ycbcr_to_rgb(y, mid, mid, self.bits, self.spec), bits=self.bits)
            else:
                planes = _split_planes(buf, w, h, self.chroma)
                yield SourceFrame(ycbcr_to_rgb(*planes, self.bits, self.spec),
                                  planes if self.chroma == "420" else None, self.bits)
            t += 1

    def close(self) -> None:
        self.file.close()


# --------------------------------------------------------------------------- raw YUV

_YUV_NAME_SIZE = re.compile(r"(?:^|[_\-.])(\d{2,5})x(\d{2,5})(?=$|[_\-.])")
_YUV_NAME_FPS = re.compile(r"^[_\-](\d{1,3}(?:\.\d+)?)(?:fps|hz|p)?(?=$|[_\-.])", re.IGNORECASE)
_YUV_NAME_BITS = re.compile(r"(?:^|[_\-.])(8|10|12|16)[-_]?bits?(?=$|[_\-.])", re.IGNORECASE)


def parse_yuv_name(name: str) -> tuple[int | None, int | None, Fraction | None, int | None]:
    """(width, height, fps, bits) from names like ``Beauty_1920x1080_120fps_420_8bit_YUV.yuv``
    or ``BasketballDrive_1920x1080_50.yuv``; ``None`` where the name does not say."""
    stem = Path(name).stem
    m = _YUV_NAME_SIZE.search(stem)
    if not m:
        return None, None, None, _bits_from_name(stem)
    fps_m = _YUV_NAME_FPS.match(stem[m.end():])
    fps = Fraction(fps_m.group(1)) if fps_m else None
    return int(m.group(1)), int(m.group(2)), fps, _bits_from_name(stem)


def _bits_from_name(stem: str) -> int | None:
    m = _YUV_NAME_BITS.search(stem)
    return int(m.group(1)) if m else None


class RawYUVReader(FrameReader):
    """Raw planar 4:2:0 (yuv420p, or yuv420p10le when ``bits`` is 10), no header."""

    def __init__(self, path: Path, options: InputOptions):
        name_w, name_h, name_fps, name_bits = parse_yuv_name(path.name)
        width, height = options.width or name_w, options.height or name_h
        if not width or not height:
            raise VideoError(f"{path}: raw .yuv needs its size: pass --size WxH or name the file like clip_1920x1080_30fps.yuv")
        bits = options.bits or name_bits or 8
        if bits not in (8, 10, 12, 16):
            raise VideoError(f"{path}: unsupported bit depth {bits}")
        self.path, self.bits = path, bits
        self.dtype = np.dtype(np.uint8) if bits == 8 else np.dtype("<u2")
        self.frame_bytes = _frame_samples(width, height, "420") * self.dtype.itemsize
        size = path.stat().st_size
        if size % self.frame_bytes:
            raise VideoError(f"{path}: {size} bytes is not a whole number of {width}x{height} yuv420p "
                             f"{bits}-bit frames ({self.frame_bytes} bytes each): check --size and --bits")
        self.spec = options.colour()
        self.file = open(path, "rb")
        self.info = VideoInfo(width, height, options.fps or name_fps or Fraction(25), size // self.frame_bytes,
                              f"raw yuv420p {bits}-bit, {self.spec}", self.spec, bits)

    def source_frames(self) -> Iterator[SourceFrame]:
        w, h = self.info.width, self.info.height
        while len(data := self.file.read(self.frame_bytes)) == self.frame_bytes:
            planes = _split_planes(np.frombuffer(data, dtype=self.dtype), w, h, "420")
            yield SourceFrame(ycbcr_to_rgb(*planes, self.bits, self.spec), planes, self.bits)

    def close(self) -> None:
        self.file.close()


# --------------------------------------------------------------------------- PNG folders

def natural_key(path: Path):
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", path.name)]


class PNGFolderReader(FrameReader):
    """A folder of PNG files in natural order (frame2 before frame10); 8 or 16 bit RGB(A)/grey."""

    def __init__(self, path: Path, options: InputOptions):
        self.files = sorted((p for p in path.iterdir() if p.suffix.lower() == ".png"), key=natural_key)
        if not self.files:
            raise VideoError(f"{path} holds no .png files")
        self.path = path
        with self._open(self.files[0]) as im:
            width, height = im.size
        self.info = VideoInfo(width, height, options.fps or Fraction(25), len(self.files), "PNG folder, RGB")

    @staticmethod
    def _open(file: Path):
        from PIL import Image, UnidentifiedImageError

        try:
            return Image.open(file)
        except (UnidentifiedImageError, OSError) as exc:
            raise VideoError(f"cannot read {file}: {exc}") from None

    def source_frames(self) -> Iterator[SourceFrame]:
        for file in self.files:
            with self._open(file) as im:
                if im.size != (self.info.width, self.info.height):
                    raise VideoError(f"{file} is {im.size[0]}x{im.size[1]}, the folder's first frame "
                                     f"{self.info.width}x{self.info.height}")
                try:
                    pixels = np.asarray(im.convert("RGB"))
                except OSError as exc:
                    raise VideoError(f"cannot read {file}: {exc}") from None
            yield SourceFrame(uint_to_rgb(pixels))


def open_video(path: str | Path, options: InputOptions = InputOptions()) -> FrameReader:
    """Open any supported input by its suffix (a folder is read as PNG frames)."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"input not found: {path}")
    if path.is_dir():
        return PNGFolderReader(path, options)
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise VideoError(f"{path} is empty")
    if suffix == ".y4m":
        return Y4MReader(path, options)
    if suffix == ".yuv":
        return RawYUVReader(path, options)
    if suffix in CONTAINER_SUFFIXES:
        return PyAVReader(path, options)
    raise VideoError(f"unsupported input {path.name}: use {', '.join(CONTAINER_SUFFIXES)}, .y4m, .yuv or a PNG folder")


# --------------------------------------------------------------------------- writers

class FrameWriter(AtomicOutput):
    """Write RGB frames (3, H, W) in [0, 1] to a temporary; ``commit`` renames it into place.

    Use as a context manager: leaving the block with an exception removes the temporary.
    """

    max_bits = 16
    """Deepest output this format writes (bits per sample)."""

    def __init__(self, path: Path, width: int, height: int, fps: Fraction, tmp_suffix: str | None = None,
                 bits: int = 8):
        super().__init__(path, path.suffix if tmp_suffix is None else tmp_suffix)
        self.width, self.height, self.fps, self.bits = width, height, fps, bits
        self.frames = 0

    def write(self, rgb: Tensor) -> None:
        if tuple(rgb.shape) != (3, self.height, self.width):
            raise ValueError(f"frame of shape {tuple(rgb.shape)} for a {self.width}x{self.height} output")
        self._write(rgb)
        self.frames += 1

    def _write(self, rgb: Tensor) -> None:
        raise NotImplementedError


class _YUVFileWriter(FrameWriter):
    """Planar Y'CbCr 4:2:0 at ``bits`` (yuv420p, or yuv420p10le/12le/16le: little-endian uint16)."""

    def __init__(self, path: Path, width: int, height: int, fps: Fraction, spec: ColourSpec, header: bytes = b"",
                 bits: int = 8):
        super().__init__(path, width, height, fps, bits=bits)
        self.spec = spec
        self.file = open(self.tmp, "wb")
        self.frame_marker = b"FRAME\n" if header else b""
        self.file.write(header)

    def _write(self, rgb: Tensor) -> None:
        planes = rgb_to_ycbcr420(rgb, self.bits, self.spec)
        if self.bits > 8:
            planes = [p.astype("<u2") for p in planes]
        self.file.write(self.frame_marker + b"".join(p.tobytes() for p in planes))

    def _finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def _close(self) -> None:
        self.file.close()


def y4m_header(width: int, height: int, fps: Fraction, spec: ColourSpec, bits: int = 8) -> bytes:
    """The YUV4MPEG2 stream header, as FFmpeg writes it (C420jpeg, or C420p10 XYSCSS=420P10…)."""
    rng = "FULL" if spec.range == "full" else "LIMITED"
    colour = "C420jpeg" if bits == 8 else f"C420p{bits} XYSCSS=420P{bits}"
    return f"YUV4MPEG2 W{width} H{height} F{fps.numerator}:{fps.denominator} Ip A1:1 {colour} XCOLORRANGE={rng}\n".encode()


class PNGFolderWriter(FrameWriter):
    """frame_00000.png, frame_00001.png, … in a new folder: 8-bit RGB, or 16-bit RGB for
    deeper outputs (see :func:`write_png16`)."""

    def __init__(self, path: Path, width: int, height: int, fps: Fraction, bits: int = 8):
        super().__init__(path, width, height, fps, tmp_suffix="", bits=bits)
        self.tmp.mkdir(parents=True)

    def _write(self, rgb: Tensor) -> None:
        from PIL import Image

        file = self.tmp / f"frame_{self.frames:05d}.png"
        if self.bits == 8:
            Image.fromarray(rgb_to_uint8(rgb)).save(file)
        else:
            levels = torch.round(rgb.detach().to("cpu", torch.float32).clamp(0, 1) * (2**self.bits - 1))
            write_png16(file, levels.to(torch.int32).numpy(), self.bits)


def write_png16(path: Path, levels: np.ndarray, bits: int) -> None:
    """(3, H, W) levels in [0, 2**bits − 1] → a 16-bit RGB PNG with an sBIT chunk of ``bits``.

    Samples are scaled to 16 bits by left bit replication, as the PNG specification
    recommends (10-bit v → v·2**6 + v >> 4), so viewers show the full range and
    ``sample >> (16 − bits)`` gives the levels back exactly. Written directly (Pillow does
    not write 48-bit RGB): signature, IHDR, sBIT, one IDAT of unfiltered rows, IEND.
    """
    import zlib

    v = levels.astype(np.uint32)
    shift = 16 - bits
    v16 = (v << shift) | (v >> (bits - shift)) if shift else v
    rows = v16.astype(">u2").transpose(1, 2, 0).reshape(levels.shape[1], -1)  # (H, W·3) big-endian
    height, width = levels.shape[1:]
    raw = np.concatenate([np.zeros((height, 1), np.uint8), np.ascontiguousarray(rows).view(np.uint8)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
           + chunk(b"sBIT", bytes([bits] * 3)) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))
    path.write_bytes(png)


class H264Writer(FrameWriter):
    """H.264 in .mp4/.mkv/.mov: ``lossless`` is libx264rgb at QP 0 (bit-exact 8-bit RGB);
    ``high`` is libx264 4:2:0 at CRF 12 with our Y'CbCr conversion, tagged in the stream."""

    max_bits = 8

    def __init__(self, path: Path, width: int, height: int, fps: Fraction, spec: ColourSpec, mode: str,
                 encoder_options: dict[str, str] | None = None):
        """``encoder_options`` add to or override libx264's (e.g. ``{"crf": "20",
        "x264-params": "keyint=30:bframes=3"}``, as camera-like test footage)."""
        import av

        super().__init__(path, width, height, fps)
        if mode == "high" and (width % 2 or height % 2):
            raise VideoError(f"--h264-mode high needs even sides for 4:2:0, not {width}x{height}: use --h264-mode lossless")
        self.mode, self.spec = mode, spec
        self.container = av.open(str(self.tmp), "w", format={".mkv": "matroska", ".mov": "mov"}.get(path.suffix, "mp4"))
        if mode == "lossless":
            self.stream = self.container.add_stream("libx264rgb", rate=fps,
                                                    options={"qp": "0", "preset": "medium", **(encoder_options or {})})
            self.stream.pix_fmt = "rgb24"
        else:
            self.stream = self.container.add_stream("libx264", rate=fps,
                                                    options={"crf": "12", "preset": "medium", **(encoder_options or {})})
            self.stream.pix_fmt = "yuv420p"
            cc = self.stream.codec_context
            cc.colorspace, cc.color_primaries, cc.color_trc = _AV_TAGS[spec.matrix]
            cc.color_range = 2 if spec.range == "full" else 1
        self.stream.width, self.stream.height = width, height

    def _write(self, rgb: Tensor) -> None:
        import av

        if self.mode == "lossless":
            frame = av.VideoFrame.from_ndarray(rgb_to_uint8(rgb), format="rgb24")
        else:
            y, cb, cr = rgb_to_ycbcr420(rgb, 8, self.spec)
            frame = av.VideoFrame.from_ndarray(np.concatenate((y.ravel(), cb.ravel(), cr.ravel()))
                                               .reshape(self.height * 3 // 2, self.width), format="yuv420p")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def _finish(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def _close(self) -> None:
        self.container.close()


def output_max_bits(path: Path) -> int:
    """Deepest output the format of ``path`` writes: 8 for H.264, 16 for y4m, yuv and PNG."""
    return 8 if path.suffix.lower() in (".mp4", ".mkv", ".mov") else 16


def open_writer(path: Path, width: int, height: int, fps: Fraction, spec: ColourSpec = ColourSpec(),
                mp4_mode: str = "lossless", bits: int = 8) -> FrameWriter:
    """A writer chosen by suffix: .y4m, .yuv, .mp4/.mkv/.mov, or no suffix for a PNG folder;
    ``bits`` per sample (8, or 10/12/16 for y4m, yuv and PNG)."""
    suffix = path.suffix.lower()
    if bits not in (8, 10, 12, 16):
        raise VideoError(f"unsupported output bit depth {bits}: use 8, 10, 12 or 16")
    if bits > output_max_bits(path):
        raise VideoError(f"{path.name}: H.264 output is 8-bit; write {bits}-bit frames to .y4m, .yuv or a PNG folder")
    if suffix == ".y4m":
        return _YUVFileWriter(path, width, height, fps, spec, y4m_header(width, height, fps, spec, bits), bits)
    if suffix == ".yuv":
        return _YUVFileWriter(path, width, height, fps, spec, bits=bits)
    if suffix in (".mp4", ".mkv", ".mov"):
        if mp4_mode not in MP4_MODES:
            raise VideoError(f"unknown --h264-mode {mp4_mode!r}: use lossless or high")
        return H264Writer(path, width, height, fps, spec, mp4_mode)
    if suffix:
        raise VideoError(f"unsupported output {path.name}: use {', '.join(OUTPUT_SUFFIXES)} or a folder for PNG frames")
    return PNGFolderWriter(path, width, height, fps, bits)

"""Classical codecs as RD anchors: x264, x265 and SVT-AV1 through PyAV's FFmpeg.

Learned-codec results are read against the codecs people already use (CompressAI ships x264
and x265 curves for UVG; DCVC reports HM and VTM). Each anchor codes the same frames ``eval``
gives the learned models, at a ladder of CRFs, with the settings CompressAI's video bench uses
for its UVG anchors (preset medium, tuned for PSNR, no B-frames) and the GOP matched to the
learned codec's intra period (``keyint`` = ``min-keyint`` = G, no scene-cut keyframes; G = 0:
only the first frame is intra). Low delay everywhere: no frame is coded after a later one.

What is fed to the encoder: the source's own 4:2:0 planes where it has them (.y4m, .yuv,
4:2:0 video files), else the RGB frames converted with the same Y'CbCr conversion eval uses.
What is measured: the decoded planes converted to RGB with that conversion, through eval's
:func:`~nvc_train.eval.evaluate.frame_metrics` (so PSNR-RGB and MS-SSIM are the learned
models' code on the same RGB), and PSNR-Y/U/V on the decoded planes themselves (the codec's
native output, as CompressAI's bench measures them). Rate: every byte of the elementary
stream (packets and any out-of-band headers), no container, as ``.nvc`` files count theirs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from nvc_train.errors import UserError
from nvc_train.io.colour import ColourSpec, rgb_to_ycbcr420, ycbcr_to_rgb
from nvc_train.io.video import InputOptions, open_video


@dataclass(frozen=True)
class AnchorCodec:
    """One classical codec: which FFmpeg encoder and decoder, its default CRF ladder, how it is set."""

    name: str
    encoder: str
    decoders: tuple[str, ...]
    """FFmpeg decoders in order of preference (the first this build has is used)."""
    ladder: tuple[int, ...]
    """Default CRFs, high rate first: chosen so the points span about the bpp range of
    CompressAI's ssf2020 qualities 1–8 on UVG-like content."""
    settings: str
    """The encoder settings in words, for results files and tables."""

    def options(self, crf: int, gop: int) -> dict[str, str]:
        """FFmpeg encoder options for one point."""
        if self.encoder == "libx264":
            keyint = f"keyint={gop}:min-keyint={gop}" if gop else "keyint=infinite"
            return {"crf": str(crf), "preset": "medium", "tune": "psnr",
                    "x264-params": f"{keyint}:scenecut=0:bframes=0"}
        if self.encoder == "libx265":
            keyint = f"keyint={gop}:min-keyint={gop}" if gop else "keyint=-1"
            return {"crf": str(crf), "preset": "medium", "tune": "psnr",
                    "x265-params": f"{keyint}:scenecut=0:bframes=0:open-gop=0:log-level=error"}
        keyint = f"keyint={gop}" if gop else "keyint=-1"
        return {"crf": str(crf), "preset": "8", "svtav1-params": f"{keyint}:scd=0:pred-struct=1:tune=1"}


ANCHORS = {
    "x264": AnchorCodec("x264", "libx264", ("h264",), (22, 27, 32, 37),
                        "libx264 CRF, preset medium, tune psnr, no B-frames, low delay"),
    "x265": AnchorCodec("x265", "libx265", ("hevc",), (22, 27, 32, 37),
                        "libx265 CRF, preset medium, tune psnr, no B-frames, closed GOP, low delay"),
    "av1": AnchorCodec("av1", "libsvtav1", ("libdav1d", "av1", "libaom-av1"), (27, 35, 43, 51),
                       "SVT-AV1 CRF, preset 8, tune PSNR, low-delay prediction structure"),
}
"""The anchors ``eval --anchor`` knows, by the name given on the command line."""


@dataclass(frozen=True)
class AnchorPoint:
    """One point of an anchor curve: a codec at one CRF."""

    codec: AnchorCodec
    crf: int

    @property
    def name(self) -> str:
        return f"{self.codec.name}-crf{self.crf}"


def _codec_available(name: str, mode: str) -> bool:
    import av

    try:
        av.codec.Codec(name, mode)
        return True
    except Exception:  # av raises UnknownCodecError (a ValueError) or FFmpegError by version
        return False


def anchor_points(names: list[str], crfs: list[int] | None = None) -> list[AnchorPoint]:
    """The points to code for ``--anchor NAME …`` (each codec's ladder, or ``crfs``).

    Raises UserError, before any coding, for an unknown name or a codec this FFmpeg build lacks.
    """
    points = []
    for name in dict.fromkeys(names):  # a codec named twice is one curve
        codec = ANCHORS.get(name)
        if codec is None:
            raise UserError(f"unknown anchor {name!r}: choose from {', '.join(ANCHORS)}")
        if not _codec_available(codec.encoder, "w"):
            raise UserError(f"anchor {name}: this FFmpeg build (PyAV) has no {codec.encoder} encoder")
        if decoder_for(codec) is None:
            raise UserError(f"anchor {name}: this FFmpeg build (PyAV) has none of the decoders "
                            f"{', '.join(codec.decoders)}")
        ladder = crfs or codec.ladder
        top = 63 if codec.encoder == "libsvtav1" else 51
        bad = [c for c in ladder if not 0 <= c <= top]
        if bad:
            raise UserError(f"--anchor-crf {bad[0]}: {codec.encoder}'s CRF runs from 0 to {top}")
        points.extend(AnchorPoint(codec, int(c)) for c in ladder)
    return points


def decoder_for(codec: AnchorCodec) -> str | None:
    return next((d for d in codec.decoders if _codec_available(d, "r")), None)


def _pix_fmt(bits: int) -> str:
    return "yuv420p" if bits == 8 else "yuv420p10le"


def _frame_array(planes: tuple[np.ndarray, np.ndarray, np.ndarray], bits: int):
    import av

    y, cb, cr = planes
    fmt = _pix_fmt(bits)
    frame = av.VideoFrame(y.shape[1], y.shape[0], fmt)
    for plane, values in zip(frame.planes, (y, cb, cr)):
        dtype = np.uint8 if bits == 8 else np.dtype("<u2")
        row = plane.line_size // np.dtype(dtype).itemsize
        buf = np.zeros((plane.height, row), dtype=dtype)
        buf[:, : plane.width] = values
        plane.update(buf.tobytes())
    return frame


def _decoded_planes(frame, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from nvc_train.io.video import _plane_array

    dtype = np.uint8 if bits == 8 else np.dtype("<u2")
    return tuple(_plane_array(p, dtype).copy() for p in frame.planes[:3])  # type: ignore[return-value]


def code_sequence(point: AnchorPoint, source: Path, options: InputOptions, gop: int, max_frames: int | None,
                  on_frame: Callable[[str], None] | None = None) -> dict:
    """Encode and decode one sequence with one anchor point; eval's per-sequence record.

    Returns ``{"name", "family", "sequence", "description", "results", "frames", "first_frame",
    "bitstream"}`` like :func:`~nvc_train.eval.evaluate.evaluate_sequence` (``bitstream`` None:
    the packets are not kept).
    """
    import av

    from nvc_train.eval.evaluate import frame_metrics

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at info level
    sources, planes_in = [], []
    with open_video(source, options) as reader:
        info = reader.info
        spec = info.colour or ColourSpec()
        for t, src in enumerate(reader.source_frames()):
            if max_frames is not None and t >= max_frames:
                break
            sources.append(src)
            planes_in.append(src.planes if src.planes is not None else rgb_to_ycbcr420(src.rgb, src.bits, spec))
    bits = 8 if sources[0].bits == 8 else 10
    if bits != sources[0].bits:
        raise UserError(f"{source}: {point.codec.name} anchors code 8- and 10-bit sources, not {sources[0].bits}-bit")
    if planes_in[0][0].shape[0] % 2 or planes_in[0][0].shape[1] % 2:
        raise UserError(f"{source}: 4:2:0 anchors need even sides, not {info.width}x{info.height}")
    fps = Fraction(info.fps).limit_denominator(1001 * 1000)
    enc = av.CodecContext.create(point.codec.encoder, "w")
    enc.width, enc.height, enc.pix_fmt = info.width, info.height, _pix_fmt(bits)
    enc.time_base, enc.framerate = 1 / fps, fps
    enc.options = point.codec.options(point.crf, gop)
    dec = av.CodecContext.create(decoder_for(point.codec), "r")
    packets = []
    start = time.perf_counter()
    for t, planes in enumerate(planes_in):
        frame = _frame_array(planes, bits)
        frame.pts = t
        packets.extend(enc.encode(frame))
        if on_frame is not None:
            on_frame("encode")
    packets.extend(enc.encode(None))
    encode_seconds = time.perf_counter() - start
    extradata = bytes(enc.extradata or b"")
    if extradata:
        dec.extradata = extradata
    start = time.perf_counter()
    decoded = [f for p in packets for f in dec.decode(p)] + list(dec.decode(None))
    decoded_planes = [_decoded_planes(f, bits) for f in decoded]
    decode_seconds = time.perf_counter() - start
    if len(decoded) != len(sources) or len(packets) != len(sources):
        raise RuntimeError(f"{point.name} on {source.name}: {len(sources)} frames in, {len(packets)} packets, "
                           f"{len(decoded)} frames out")
    pixels = info.width * info.height
    per_frame, first = [], None
    for t, (src, packet, planes) in enumerate(zip(sources, packets, decoded_planes)):
        rec = ycbcr_to_rgb(*planes, bits=bits, spec=spec)
        if first is None:
            first = (rec.clamp(0, 1), src.rgb)
        nbytes = packet.size + (len(extradata) if t == 0 else 0)
        row = {"index": t, "type": "I" if packet.is_keyframe else "P", "bytes": nbytes, "bpp": 8 * nbytes / pixels,
               **frame_metrics(rec, src, spec, rec_planes=planes)}
        per_frame.append(row)
        if on_frame is not None:
            on_frame("decode")
    n = len(per_frame)
    total = sum(r["bytes"] for r in per_frame)
    results = {k: float(np.mean([r[k] for r in per_frame])) for k in per_frame[0] if k not in ("index", "type", "bytes")}
    results.update({"bpp": 8 * total / (pixels * n), "bitrate": 8 * total * float(info.fps) / (n * 1000),
                    "encoding_time": encode_seconds, "decoding_time": decode_seconds, "frames": n,
                    "crf": float(point.crf)})
    return {"name": point.name, "family": point.codec.name, "sequence": source.stem,
            "description": f"{point.name} on {source.name} ({info.width}x{info.height}, {n} frames, GOP {gop}; "
                           f"{point.codec.settings}, libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))})",
            "results": results, "frames": per_frame, "first_frame": first, "bitstream": None}

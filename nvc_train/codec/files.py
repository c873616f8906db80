"""Encode video files to .nvc bitstreams and decode them back, frame by frame.

Frames of any size are padded on the right and bottom to the model's multiple of 128 by
replicating the last row and column (cheaper to code than zeros), and cropped back after
decoding. Only the reference frame and one input frame are in memory at any time.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from nvc_train.codec.bitstream import (
    EMBEDDED,
    BitstreamWriter,
    Header,
    colour_code,
    frame_record_size,
    iter_frames,
    read_header,
    validate_file,
)
from nvc_train.codec.integer_codec import DecodedFrame
from nvc_train.codec.pixel_decoder import frame_md5, levels_to_unit, to_levels
from nvc_train.errors import UserError, require_file
from nvc_train.eval.metrics import ms_ssim, psnr
from nvc_train.io.video import FrameReader, FrameWriter
from nvc_train.models.ssf import MODEL_MULTIPLE
from nvc_train.quant.export import IntegerCheckpoint

FPS_LIMIT = 2**31 - 1


def pad_frame(rgb: Tensor, multiple: int = MODEL_MULTIPLE) -> Tensor:
    """(3, H, W) → (1, 3, H', W') with H', W' the next multiples, edges replicated."""
    h, w = rgb.shape[-2:]
    pad = (0, -w % multiple, 0, -h % multiple)
    x = rgb.unsqueeze(0)
    return F.pad(x, pad, mode="replicate") if any(pad) else x


@dataclass
class FrameStats:
    """One coded frame: type, bytes in the bitstream (record overhead included), quality."""

    index: int
    frame_type: str
    bytes: int
    psnr: float | None = None
    ms_ssim: float | None = None
    latent_sha256: str = ""
    md5: str = ""


@dataclass
class CodingReport:
    """A whole encode or decode: size, timing and per-frame statistics."""

    width: int
    height: int
    fps: Fraction
    file_bytes: int = 0
    seconds: float = 0.0
    frames: list[FrameStats] = field(default_factory=list)
    pixel_exact: bool = False
    bits: int = 8  # depth of the output frames (and of their MD5s)

    def md5_lines(self) -> list[str]:
        """``<index> <type> <md5>`` per frame, as ``nvc-train compare`` reads them."""
        return [f"{f.index} {f.frame_type} {f.md5}" for f in self.frames]

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole file (header and frame records included)."""
        return 8 * self.file_bytes / (self.width * self.height * max(len(self.frames), 1))

    def mean(self, name: str) -> float | None:
        values = [getattr(f, name) for f in self.frames if getattr(f, name) is not None]
        return sum(values) / len(values) if values else None

    def summary(self, verb: str) -> str:
        n = len(self.frames)
        parts = [f"{verb} {n} frames {self.width}x{self.height}", f"{self.file_bytes} bytes", f"{self.bpp:.4f} bpp",
                 f"{n / self.seconds:.2f} frames/s" if self.seconds else ""]
        if (p := self.mean("psnr")) is not None:
            parts.append(f"PSNR-RGB {p:.2f} dB")
        if (s := self.mean("ms_ssim")) is not None:
            parts.append(f"MS-SSIM {s:.4f}")
        return ", ".join(p for p in parts if p)


def _fps_pair(fps: Fraction) -> tuple[int, int]:
    fps = Fraction(fps).limit_denominator(1001 * 1000)
    if not 0 < fps.numerator <= FPS_LIMIT:
        raise UserError(f"frame rate {fps} out of range")
    return fps.numerator, fps.denominator


def encode_video(reader: FrameReader, out: Path, checkpoint: IntegerCheckpoint, gop: int = 32,
                 device: str = "cpu", max_frames: int | None = None, progress: bool = True,
                 with_ms_ssim: bool = False, on_frame=None, md5: bool = False) -> CodingReport:
    """Encode ``reader``'s frames into ``out`` (.nvc), atomically; ``on_frame("encode")`` is
    called after each frame (for callers with a progress display of their own). With ``md5``,
    each frame's :func:`output_md5` is in the report (only ``--md5``, ``hashes`` and ``eval``
    need it, so the coding loop does not hash otherwise).

    The reported PSNR (and MS-SSIM if asked) compare the encoder's own reconstruction with the input: the
    decoder reproduces the same latents (bit-exact) and, with a pixel-exact checkpoint, the
    same frames (each frame's MD5 is in the report); otherwise the same pixels up to float
    round-off of the synthesis transforms on another machine.
    """
    info = reader.info
    report = CodingReport(info.width, info.height, info.fps, pixel_exact=checkpoint.codec.pixel_exact, bits=info.bits)
    known = [n for n in (info.frames, max_frames) if n]
    total = min(known) if known else None  # for the progress bar
    frames = itertools.islice(reader, max_frames)
    codec = checkpoint.codec
    start = time.perf_counter()
    with BitstreamWriter(out, info.width, info.height, checkpoint.sha256, _fps_pair(info.fps), gop,
                         colour_code(info.colour, info.bits)) as writer, \
            tqdm(total=total, unit=" frames", desc=f"encode {out.name}", disable=not progress, leave=False) as bar:
        sources: list[Tensor] = []

        def padded() -> Iterator[Tensor]:
            for rgb in frames:
                if tuple(rgb.shape[-2:]) != (info.height, info.width):
                    raise UserError(f"input frame {len(report.frames)} is {rgb.shape[-1]}x{rgb.shape[-2]}, "
                                    f"not {info.width}x{info.height}")
                sources.append(rgb)
                yield pad_frame(rgb).to(device)

        for t, (cf, rec) in enumerate(codec.compress_iter(padded(), gop)):
            src = sources.pop()
            report.frames.append(_frame_stats(t, cf.frame_type, writer.write(cf), rec, src, with_ms_ssim,
                                              (info.height, info.width) if md5 else None, info.bits))
            bar.update()
            if on_frame is not None:
                on_frame("encode")
        if not report.frames:
            raise UserError(f"{getattr(reader, 'path', 'input')} has no frames")
    report.seconds = time.perf_counter() - start
    report.file_bytes = out.stat().st_size
    return report


def output_levels(frame: DecodedFrame, height: int, width: int, bits: int = 8) -> Tensor:
    """The output frame (3, height, width) as integer levels at ``bits`` per sample (uint8 at
    8, int32 above). A pixel-exact codec's are rounded from the decoder's integer samples
    (:func:`~nvc_train.codec.pixel_decoder.to_levels`); for float synthesis they are the
    reconstruction rounded, which may differ by machine."""
    if frame.samples is not None:
        levels = frame.levels if bits == 8 and frame.levels is not None else to_levels(frame.samples, bits)
    else:
        x = frame.x_hat.detach().float().clamp(0, 1) * (2**bits - 1)
        levels = x.round().to(torch.uint8 if bits == 8 else torch.int32)
    return levels[0, :, :height, :width]


def output_md5(frame: DecodedFrame, height: int, width: int, bits: int = 8) -> str:
    """MD5 of the output frame (cropped to the video's size) at ``bits``, as ``decode --md5``
    prints it: planes R, G, B, one byte per sample at 8 bits, two (little-endian) above."""
    return frame_md5(output_levels(frame, height, width, bits))


def output_frame(frame: DecodedFrame, height: int, width: int, bits: int = 8) -> Tensor:
    """(3, height, width) float32 in [0, 1] for a writer at ``bits``: a pixel-exact codec's
    levels / (2**bits − 1), which the writer rounds back to the same levels; otherwise the
    float reconstruction."""
    if frame.samples is None:
        return frame.x_hat[0, :, :height, :width]
    return levels_to_unit(output_levels(frame, height, width, bits), bits)


def _frame_stats(t: int, frame_type: str, nbytes: int, frame: DecodedFrame, reference: Tensor | None,
                 with_ms_ssim: bool = True, size: tuple[int, int] | None = None, bits: int = 8) -> FrameStats:
    """One frame's report row; with ``size`` (height, width of the video), its output MD5 at
    ``bits``; with ``reference``, PSNR (and MS-SSIM) of the output at ``bits`` against it."""
    stats = FrameStats(t, frame_type, nbytes, latent_sha256=frame.latent_sha256)
    if size is not None:
        stats.md5 = output_md5(frame, *size, bits)
    if reference is not None:
        h, w = reference.shape[-2:]
        x_hat = output_frame(frame, h, w, bits).float().cpu().unsqueeze(0)  # what is written, at its depth
        ref = reference.unsqueeze(0).float()
        stats.psnr = psnr(x_hat, ref)
        stats.ms_ssim = ms_ssim(x_hat, ref) if with_ms_ssim else None
    return stats


def open_checked(bitstream: Path, checkpoint: IntegerCheckpoint) -> Header:
    """Validate the whole bitstream (every CRC and length) and that it belongs to ``checkpoint``."""
    require_file(bitstream, "bitstream")
    header = validate_file(bitstream)
    if header.checkpoint_sha256 not in (EMBEDDED, bytes.fromhex(checkpoint.sha256)):
        raise UserError(f"{bitstream} was encoded with checkpoint {header.checkpoint_sha256.hex()[:8]}, "
                        f"not {checkpoint.sha256[:8]}: decode it with that checkpoint")
    return header


def decode_video(bitstream: Path, checkpoint: IntegerCheckpoint,
                 make_writer: Callable[[Header], FrameWriter] | None = None, device: str = "cpu",
                 reference: FrameReader | None = None, progress: bool = True, md5: bool = False,
                 bits: int | None = None) -> CodingReport:
    """Decode ``bitstream`` frame by frame into ``make_writer(header)``'s writer, which is
    committed only if every frame decodes (and removed otherwise). With ``md5``, each frame's
    :func:`output_md5` is in the report. Frames are output at ``bits`` per sample (default:
    the source's depth recorded in the header); the writer must be of that depth.

    The bitstream is validated completely before the first frame is decoded. With
    ``reference``, PSNR-RGB and MS-SSIM of each decoded frame against it are reported.
    """
    header = open_checked(bitstream, checkpoint)
    if reference is not None and (reference.info.width, reference.info.height) != (header.width, header.height):
        raise UserError(f"reference is {reference.info.width}x{reference.info.height}, "
                        f"the bitstream {header.width}x{header.height}")
    bits = header.bits if bits is None else bits
    report = CodingReport(header.width, header.height, Fraction(header.fps_num, header.fps_den),
                          file_bytes=bitstream.stat().st_size, pixel_exact=checkpoint.codec.pixel_exact, bits=bits)
    refs = iter(reference) if reference is not None else None
    start = time.perf_counter()
    writer = make_writer(header) if make_writer is not None else contextlib.nullcontext()
    with writer, open(bitstream, "rb") as f, tqdm(total=header.frames, unit=" frames", desc=f"decode {bitstream.name}",
                                                  disable=not progress, leave=False) as bar:
        read_header(f)
        # Both consumers advance in lockstep, so tee buffers at most one coded frame.
        coded, to_decode = itertools.tee(iter_frames(f, header))
        for t, (cf, frame) in enumerate(zip(coded, checkpoint.codec.decompress_iter(to_decode, device))):
            ref = next(refs, None) if refs is not None else None
            if refs is not None and ref is None:
                raise UserError(f"reference has only {t} frames, the bitstream {header.frames}")
            report.frames.append(_frame_stats(t, cf.frame_type, frame_record_size(cf), frame, ref,
                                              size=(header.height, header.width) if md5 else None, bits=bits))
            if make_writer is not None:
                writer.write(output_frame(frame, header.height, header.width, bits))
            bar.update()
    report.seconds = time.perf_counter() - start
    return report

"""The .nvc bitstream container.

All integers big-endian. A file is a header, then one record per frame::

    header  magic "NVCB" (4) | version u16 | colour u16 | checkpoint SHA-256 (32)
            | width u32 | height u32 | fps_num u32 | fps_den u32 | frames u32 | gop u32
            | CRC32 of the preceding header bytes u32
    frame   type u8 (0 = I, 1 = P)
            | per latent (I: keyframe; P: motion, residual): z_h u16 | z_w u16 | y_len u32 | z_len u32
            | CRC32 u32 of the frame header above and the payload
            | payload: per latent, y bytes then z bytes

``colour`` says how the source's Y'CbCr was converted to RGB, so decoding writes Y'CbCr the same
way: bits 0–1 the matrix (0 unspecified, 1 BT.709, 2 BT.601, 3 BT.2020), bit 2 full range.
0 (an RGB source, or unknown) decodes as BT.709 limited range. Bits 3–4 (version 2) are the
source's bit depth: 0 = 8, 1 = 10, 2 = 12, 3 = 16; decoders output that depth by default.
Streams of 8-bit sources are written as version 1 (bits 3–4 zero), so older readers still
read them; deeper sources need version 2, which older readers refuse with "upgrade".

A checkpoint SHA-256 of all zeros marks a conformance bitstream embedded in its own
checkpoint. Every field is checked on read; any inconsistency raises
:class:`BitstreamError` naming it, before the entropy decoder sees a byte.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import BinaryIO, Iterator, NamedTuple

from nvc_train.codec.frames import FRAME_PARTS, CodedFrame, CodedLatent
from nvc_train.errors import UserError
from nvc_train.io.atomic import AtomicOutput
from nvc_train.models.geometry import MODEL_MULTIPLE

MAGIC = b"NVCB"
VERSION = 2
"""Newest version written and read; 8-bit sources are still written as version 1."""
EMBEDDED = bytes(32)
_HEAD = struct.Struct(">4sHH32sIIIIII")
_CRC = struct.Struct(">I")
HEADER_BYTES = _HEAD.size + _CRC.size
_LATENT = struct.Struct(">HHII")
_TYPES = {"I": 0, "P": 1}
MAX_SIDE = 16384


class BitstreamError(UserError):
    """The bitstream is damaged, truncated, or not for this checkpoint."""


COLOUR_MATRICES = (None, "bt709", "bt601", "bt2020")
SOURCE_DEPTHS = (8, 10, 12, 16)
"""Source bit depths by their code in bits 3–4 of the colour field."""


def colour_code(spec, bits: int = 8) -> int:
    """A :class:`~nvc_train.io.colour.ColourSpec` (or None) and the source's bit depth → the
    header's colour field."""
    code = SOURCE_DEPTHS.index(bits) << 3
    if spec is None:
        return code
    return code | COLOUR_MATRICES.index(spec.matrix) | (4 if spec.range == "full" else 0)


class Header(NamedTuple):
    version: int
    checkpoint_sha256: bytes
    width: int
    height: int
    fps_num: int
    fps_den: int
    frames: int
    gop: int
    colour: int = 0

    @property
    def bits(self) -> int:
        """The source's bit depth (8 for version-1 streams)."""
        return SOURCE_DEPTHS[(self.colour >> 3) & 3]

    def colour_name(self) -> str:
        """``matrix/range`` as :class:`~nvc_train.io.colour.ColourSpec` prints it, without importing torch."""
        return f"{COLOUR_MATRICES[self.colour & 3] or 'bt709'}/{'full' if self.colour & 4 else 'limited'}"

    def colour_spec(self):
        """The source's colour conversion, BT.709 limited range when unspecified."""
        from nvc_train.io.colour import ColourSpec

        return ColourSpec(COLOUR_MATRICES[self.colour & 3] or "bt709", "full" if self.colour & 4 else "limited")


def header_bytes(width: int, height: int, checkpoint_sha256: str | None, fps: tuple[int, int],
                 frames: int, gop: int, colour: int = 0) -> bytes:
    """The file header with its CRC. ``checkpoint_sha256`` None marks an embedded conformance stream."""
    sha = EMBEDDED if checkpoint_sha256 is None else bytes.fromhex(checkpoint_sha256)
    version = 1 if colour < 8 else VERSION  # 8-bit sources stay readable by version-1 readers
    head = _HEAD.pack(MAGIC, version, colour, sha, width, height, fps[0], fps[1], frames, gop)
    return head + _CRC.pack(zlib.crc32(head))


def frame_record_bytes(cf: CodedFrame) -> bytes:
    """One frame: type, latent headers, CRC, payload."""
    frame_head = [struct.pack(">B", _TYPES[cf.frame_type])]
    payload = []
    for part in FRAME_PARTS[cf.frame_type]:
        lat = cf.latents[part]
        frame_head.append(_LATENT.pack(*lat.z_shape, len(lat.y_string), len(lat.z_string)))
        payload += [lat.y_string, lat.z_string]
    fh, pl = b"".join(frame_head), b"".join(payload)
    return fh + _CRC.pack(zlib.crc32(fh + pl)) + pl


def frame_record_size(cf: CodedFrame) -> int:
    """Bytes :func:`frame_record_bytes` takes for ``cf``."""
    return 1 + _CRC.size + sum(_LATENT.size + len(lat.y_string) + len(lat.z_string) for lat in cf.latents.values())


def write_bitstream_bytes(coded: list[CodedFrame], width: int, height: int, checkpoint_sha256: str | None,
                          fps: tuple[int, int] = (25, 1), gop: int = 0) -> bytes:
    """Serialise coded frames in memory (short sequences; files stream through :class:`BitstreamWriter`)."""
    return header_bytes(width, height, checkpoint_sha256, fps, len(coded), gop) + b"".join(map(frame_record_bytes, coded))


class BitstreamWriter(AtomicOutput):
    """Stream frames to a .nvc file; the header's frame count is filled in on ``commit``.

    Atomic (:class:`~nvc_train.io.atomic.AtomicOutput`): an interrupted encode never
    leaves a partial bitstream under the user's name.
    """

    def __init__(self, path, width: int, height: int, checkpoint_sha256: str, fps: tuple[int, int], gop: int,
                 colour: int = 0):
        super().__init__(path)
        self.fields = (width, height, checkpoint_sha256, fps)
        self.gop, self.colour = gop, colour
        self.frames = 0
        self.file = open(self.tmp, "wb")
        self.file.write(header_bytes(*self.fields, 0, gop, colour))

    def write(self, cf: CodedFrame) -> int:
        """Append one frame; returns its size in bytes (record overhead included)."""
        record = frame_record_bytes(cf)
        self.file.write(record)
        self.frames += 1
        return len(record)

    def _finish(self) -> None:
        if self.frames == 0:
            self.abort()
            raise BitstreamError("no frames to write")
        self.file.seek(0)
        self.file.write(header_bytes(*self.fields, self.frames, self.gop, self.colour))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def _close(self) -> None:
        self.file.close()


class _Reader:
    """Reads exact byte counts from a binary file object; a short read is a truncation."""

    def __init__(self, file: BinaryIO):
        self.file, self.pos = file, 0

    def take(self, n: int, what: str) -> bytes:
        chunk = self.file.read(n)
        if len(chunk) != n:
            raise BitstreamError(f"bitstream truncated while reading {what} at byte {self.pos + len(chunk)}")
        self.pos += n
        return chunk


def read_header(file: BinaryIO) -> Header:
    """Read and check the header; the file is left at the first frame."""
    r = _Reader(file)
    first = file.read(1)
    if not first:
        raise BitstreamError("bitstream is empty")
    r.pos = 1
    raw = first + r.take(_HEAD.size - 1, "the header")
    magic, version, colour, sha, w, h, fnum, fden, nframes, gop = _HEAD.unpack(raw)
    if magic != MAGIC:
        raise BitstreamError("not an nvc-train bitstream (bad magic)")
    if version > VERSION:
        raise BitstreamError(f"bitstream format version {version} is newer than this nvc-train reads ({VERSION}): upgrade")
    if _CRC.unpack(r.take(_CRC.size, "the header CRC"))[0] != zlib.crc32(raw):
        raise BitstreamError("header CRC mismatch: the bitstream header is corrupted")
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE) or fden == 0 or fnum == 0 or nframes == 0 or colour > (7 if version == 1 else 31):
        raise BitstreamError(f"header has invalid values (size {w}x{h}, fps {fnum}/{fden}, {nframes} frames, colour {colour})")
    return Header(version, sha, w, h, fnum, fden, nframes, gop, colour)


def iter_frames(file: BinaryIO, header: Header) -> Iterator[CodedFrame]:
    """Frames after :func:`read_header`, each checked (type, sizes, CRC) before it is yielded;
    then checks that nothing follows the last frame."""
    r = _Reader(file)
    r.pos = file.tell()
    size = file.seek(0, io.SEEK_END)
    file.seek(r.pos)
    z_expected = (-(-header.height // MODEL_MULTIPLE), -(-header.width // MODEL_MULTIPLE))
    names = {v: k for k, v in _TYPES.items()}
    for t in range(header.frames):
        ftype = r.take(1, f"frame {t} type")
        if ftype[0] not in names:
            raise BitstreamError(f"frame {t} has unknown type {ftype[0]}")
        ftype_s = names[ftype[0]]
        if t == 0 and ftype_s != "I":
            raise BitstreamError("first frame is not a keyframe")
        raw_heads = [r.take(_LATENT.size, f"frame {t} latent header") for _ in FRAME_PARTS[ftype_s]]
        crc = _CRC.unpack(r.take(_CRC.size, f"frame {t} CRC"))[0]
        lat_heads = [_LATENT.unpack(raw) for raw in raw_heads]
        for zh, zw, _, _ in lat_heads:
            if (zh, zw) != z_expected:
                raise BitstreamError(f"frame {t} latent size {zh}x{zw} does not match the {header.width}x{header.height} header")
        # Lengths are not yet CRC-checked: bound them by what is left before reading them.
        need = sum(ylen + zlen for _, _, ylen, zlen in lat_heads)
        if r.pos + need > size:
            raise BitstreamError(f"frame {t} payload ({need} bytes) runs past the end of the bitstream: "
                                 "truncated or corrupted")
        latents, payload = {}, []
        for part, (zh, zw, ylen, zlen) in zip(FRAME_PARTS[ftype_s], lat_heads):
            y = r.take(ylen, f"frame {t} {part} payload")
            z = r.take(zlen, f"frame {t} {part} payload")
            latents[part] = CodedLatent(y, z, (zh, zw))
            payload += [y, z]
        if zlib.crc32(ftype + b"".join(raw_heads) + b"".join(payload)) != crc:
            raise BitstreamError(f"frame {t} CRC mismatch: the bitstream is corrupted")
        yield CodedFrame(ftype_s, latents)
    extra = len(file.read())
    if extra:
        raise BitstreamError(f"{extra} unexpected bytes after the last frame")


def read_bitstream_bytes(data: bytes) -> tuple[Header, list[CodedFrame]]:
    """Parse and check a whole bitstream in memory; raises :class:`BitstreamError` on any inconsistency."""
    file = io.BytesIO(data)
    header = read_header(file)
    return header, list(iter_frames(file, header))


def validate_file(path) -> Header:
    """Check a whole .nvc file (every CRC and size) without keeping its frames."""
    with open(path, "rb") as f:
        header = read_header(f)
        for _ in iter_frames(f, header):
            pass
    return header

"""The .nvc bitstream container.

All integers big-endian. A file is a header, then one record per frame::

    header  magic "NVCB" (4) | version u16 | reserved u16 | checkpoint SHA-256 (32)
            | width u32 | height u32 | fps_num u32 | fps_den u32 | frames u32 | gop u32
            | CRC32 of the preceding header bytes u32
    frame   type u8 (0 = I, 1 = P)
            | per latent (I: keyframe; P: motion, residual): z_h u16 | z_w u16 | y_len u32 | z_len u32
            | CRC32 u32 of the frame header above and the payload
            | payload: per latent, y bytes then z bytes

A checkpoint SHA-256 of all zeros marks a conformance bitstream embedded in its own
checkpoint. Every field is checked on read; any inconsistency raises
:class:`BitstreamError` naming it, before the entropy decoder sees a byte.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from nvc_train.codec.integer_codec import FRAME_PARTS, CodedFrame, CodedLatent
from nvc_train.errors import UserError
from nvc_train.models.ssf import MODEL_MULTIPLE

MAGIC = b"NVCB"
VERSION = 1
EMBEDDED = bytes(32)
_HEAD = struct.Struct(">4sHH32sIIIIII")
_CRC = struct.Struct(">I")
_LATENT = struct.Struct(">HHII")
_TYPES = {"I": 0, "P": 1}
MAX_SIDE = 16384


class BitstreamError(UserError):
    """The bitstream is damaged, truncated, or not for this checkpoint."""


class Header(NamedTuple):
    version: int
    checkpoint_sha256: bytes
    width: int
    height: int
    fps_num: int
    fps_den: int
    frames: int
    gop: int


def write_bitstream_bytes(coded: list[CodedFrame], width: int, height: int, checkpoint_sha256: str | None,
                          fps: tuple[int, int] = (25, 1), gop: int = 0) -> bytes:
    """Serialise coded frames. ``checkpoint_sha256`` None marks an embedded conformance stream."""
    sha = EMBEDDED if checkpoint_sha256 is None else bytes.fromhex(checkpoint_sha256)
    head = _HEAD.pack(MAGIC, VERSION, 0, sha, width, height, fps[0], fps[1], len(coded), gop)
    out = [head, _CRC.pack(zlib.crc32(head))]
    for cf in coded:
        frame_head = [struct.pack(">B", _TYPES[cf.frame_type])]
        payload = []
        for part in FRAME_PARTS[cf.frame_type]:
            lat = cf.latents[part]
            frame_head.append(_LATENT.pack(*lat.z_shape, len(lat.y_string), len(lat.z_string)))
            payload += [lat.y_string, lat.z_string]
        fh, pl = b"".join(frame_head), b"".join(payload)
        out += [fh, _CRC.pack(zlib.crc32(fh + pl)), pl]
    return b"".join(out)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise BitstreamError(f"bitstream truncated while reading {what} at byte {self.pos}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk


def read_bitstream_bytes(data: bytes) -> tuple[Header, list[CodedFrame]]:
    """Parse and check a bitstream; raises :class:`BitstreamError` on any inconsistency."""
    r = _Reader(data)
    if len(data) == 0:
        raise BitstreamError("bitstream is empty")
    raw = r.take(_HEAD.size, "the header")
    magic, version, _, sha, w, h, fnum, fden, nframes, gop = _HEAD.unpack(raw)
    if magic != MAGIC:
        raise BitstreamError("not an nvc-train bitstream (bad magic)")
    if version > VERSION:
        raise BitstreamError(f"bitstream format version {version} is newer than this nvc-train reads ({VERSION}): upgrade")
    if _CRC.unpack(r.take(_CRC.size, "the header CRC"))[0] != zlib.crc32(raw):
        raise BitstreamError("header CRC mismatch: the bitstream header is corrupted")
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE) or fden == 0 or fnum == 0 or nframes == 0:
        raise BitstreamError(f"header has invalid values (size {w}x{h}, fps {fnum}/{fden}, {nframes} frames)")
    z_expected = (-(-h // MODEL_MULTIPLE), -(-w // MODEL_MULTIPLE))
    frames = []
    for t in range(nframes):
        start = r.pos
        ftype = r.take(1, f"frame {t} type")[0]
        names = {v: k for k, v in _TYPES.items()}
        if ftype not in names:
            raise BitstreamError(f"frame {t} has unknown type {ftype}")
        ftype_s = names[ftype]
        if t == 0 and ftype_s != "I":
            raise BitstreamError("first frame is not a keyframe")
        lat_heads = [_LATENT.unpack(r.take(_LATENT.size, f"frame {t} latent header")) for _ in FRAME_PARTS[ftype_s]]
        fh = r.data[start:r.pos]
        crc = _CRC.unpack(r.take(_CRC.size, f"frame {t} CRC"))[0]
        for zh, zw, _, _ in lat_heads:
            if (zh, zw) != z_expected:
                raise BitstreamError(f"frame {t} latent size {zh}x{zw} does not match the {w}x{h} header")
        latents = {}
        payload_start = r.pos
        for part, (zh, zw, ylen, zlen) in zip(FRAME_PARTS[ftype_s], lat_heads):
            y = r.take(ylen, f"frame {t} {part} payload")
            z = r.take(zlen, f"frame {t} {part} payload")
            latents[part] = CodedLatent(y, z, (zh, zw))
        if zlib.crc32(fh + r.data[payload_start:r.pos]) != crc:
            raise BitstreamError(f"frame {t} CRC mismatch: the bitstream is corrupted")
        frames.append(CodedFrame(ftype_s, latents))
    if r.pos != len(data):
        raise BitstreamError(f"{len(data) - r.pos} unexpected bytes after the last frame")
    return Header(version, sha, w, h, fnum, fden, nframes, gop), frames

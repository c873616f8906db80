"""The ``.nvc`` container of one coded image, and images coded from and decoded to files.

All integers big-endian::

    magic "NVCI" (4) | version u16 | checkpoint SHA-256 (32) | width u32 | height u32
    | bits u8 (the source's bit depth, 8..16) | z_h u16 | z_w u16 | y_len u32 | z_len u32
    | CRC32 u32 of everything above | y bytes | z bytes | CRC32 u32 of the y and z bytes

Width and height are the source's; the coded image is padded to multiples of 64 (last row
and column repeated) and decoding crops back. Video streams start with ``NVCB``
(:mod:`nvc_train.codec.bitstream`), so a reader tells the two apart by the first four bytes.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import NamedTuple

from nvc_train.codec.frames import CodedLatent
from nvc_train.errors import UserError
from nvc_train.io.atomic import atomic_write_bytes

MAGIC = b"NVCI"
VERSION = 1
_HEAD = struct.Struct(">4sH32sIIBHHII")
_CRC = struct.Struct(">I")
MAX_SIDE = 65536


class ImageStream(NamedTuple):
    """A parsed image stream."""

    checkpoint_sha256: bytes
    width: int
    height: int
    bits: int
    coded: CodedLatent


def is_image_stream(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def stream_bytes(stream: ImageStream) -> bytes:
    c = stream.coded
    head = _HEAD.pack(MAGIC, VERSION, stream.checkpoint_sha256, stream.width, stream.height, stream.bits,
                      *c.z_shape, len(c.y_string), len(c.z_string))
    payload = c.y_string + c.z_string
    return head + _CRC.pack(zlib.crc32(head)) + payload + _CRC.pack(zlib.crc32(payload))


def write_stream(path: Path, stream: ImageStream) -> int:
    """Write atomically; returns the file's size in bytes."""
    data = stream_bytes(stream)
    atomic_write_bytes(path, data)
    return len(data)


def read_stream(path: Path) -> ImageStream:
    """Parse and check an image stream; any damage is a one-line :class:`UserError`."""
    data = Path(path).read_bytes()
    if len(data) < _HEAD.size + _CRC.size or data[:4] != MAGIC:
        raise UserError(f"{path} is not an nvc-train image stream (no NVCI header)")
    magic, version, sha, width, height, bits, z_h, z_w, y_len, z_len = _HEAD.unpack_from(data)
    if version != VERSION:
        raise UserError(f"{path} is image stream version {version}; this nvc-train reads {VERSION}")
    (crc,) = _CRC.unpack_from(data, _HEAD.size)
    if zlib.crc32(data[:_HEAD.size]) != crc:
        raise UserError(f"{path}: header CRC mismatch (the file is damaged)")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE and 8 <= bits <= 16):
        raise UserError(f"{path}: header holds an impossible image ({width}x{height}, {bits} bits)")
    start = _HEAD.size + _CRC.size
    end = start + y_len + z_len
    if len(data) != end + _CRC.size:
        raise UserError(f"{path} is truncated or padded: {len(data)} bytes, the header says {end + _CRC.size}")
    payload = data[start:end]
    if zlib.crc32(payload) != _CRC.unpack_from(data, end)[0]:
        raise UserError(f"{path}: payload CRC mismatch (the file is damaged)")
    # The hyper-latent of an image padded to multiples of 64: a crafted z shape would make the
    # decoder allocate for another size (or crop the wrong one).
    expected = (-(-height // 64), -(-width // 64))
    if (z_h, z_w) != expected:
        raise UserError(f"{path}: header's hyper-latent {z_h}x{z_w} does not fit a {width}x{height} image "
                        f"(expected {expected[0]}x{expected[1]}): the file is damaged")
    coded = CodedLatent(payload[:y_len], payload[y_len:], (z_h, z_w))
    return ImageStream(sha, width, height, bits, coded)

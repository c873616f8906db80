"""Still images in and out as exact integer levels: PNG (8 and 16 bit), JPEG, PPM/PGM and BMP.

An image codec is judged on exact levels, so nothing here rescales or rounds silently:

* 16-bit PNGs are decoded here (zlib and the PNG row filters, in NumPy), because Pillow
  reduces 48-bit RGB to 8 bits. An ``sBIT`` chunk gives the significant bits (a 10-bit
  picture stored by left bit replication, as :func:`~nvc_train.io.video.write_png16` writes
  it, reads back as ``bits=10`` and the original levels).
* 8-bit PNGs, JPEG, PPM/PGM (maxval 255) and BMP are decoded by Pillow. Every PNG's chunk CRCs
  are checked here first, so a damaged file is refused instead of decoded into wrong pixels.
* Greyscale is replicated to three channels. Alpha (or a PNG ``tRNS`` transparent colour) is
  refused unless the caller asks to drop it: the codecs have no alpha channel, and
  compositing onto some background would change the colours the user gave us.
* Anything else (palette, CMYK, 1-bit, 32-bit integer or float samples, deeper PPMs, other
  formats, damaged files) is a one-line :class:`~nvc_train.errors.UserError` naming the file.

Pixels are taken as stored: an EXIF orientation tag is not applied.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided
from torch import Tensor

from nvc_train.errors import UserError, check_output_file, first_line, require_file
from nvc_train.io.atomic import AtomicOutput
from nvc_train.io.video import write_png16

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PILLOW_FORMATS = ("PNG", "JPEG", "MPO", "PPM", "BMP")
"""Formats read through Pillow (MPO: a camera JPEG with extra pictures; the first is read)."""

_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type → samples per pixel (3, palette, is never 16-bit)
_PILLOW_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
_PILLOW_MODE_PROBLEMS = {
    "P": "is a palette image; convert it to RGB first",
    "PA": "is a palette image; convert it to RGB first",
    "1": "is a 1-bit image; convert it to 8-bit greyscale or RGB first",
    "CMYK": "is a CMYK image; convert it to RGB first",
}


class Image(NamedTuple):
    """A decoded still image."""

    levels: np.ndarray
    """(3, H, W) uint16 RGB levels in [0, 2**bits − 1]; greyscale is replicated to all three."""
    bits: int
    """Bits per sample: 8, or for 16-bit PNGs the sBIT depth (9–16; 16 without sBIT)."""
    alpha_dropped: bool = False
    """The file had alpha or a transparent colour, ignored because ``drop_alpha`` was given."""


def read_image(path: str | Path, drop_alpha: bool = False) -> Image:
    """Read a PNG (8 or 16 bit, RGB or greyscale), JPEG, PPM/PGM or BMP file exactly.

    Args:
        path: the image file.
        drop_alpha: keep the colour channels of an image with alpha (unchanged: alpha is
            ignored, not composited) instead of refusing it.

    Raises:
        UserError: one line naming the file: missing, a directory, empty, not an image, damaged
            (truncated, a CRC mismatch), alpha without ``drop_alpha``, or a kind of image the
            codecs do not take (palette, CMYK, 1-bit, 32-bit integer or float, interlaced 16-bit).
    """
    path = require_file(path, "image")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if not data:
        raise UserError(f"image {path} is empty")
    transparent = False
    if data.startswith(PNG_SIGNATURE):
        chunks = _png_chunks(path, data)
        transparent = b"tRNS" in chunks
        depth = chunks[b"IHDR"][0][8]
        samples, bits = _decode_png16(path, chunks) if depth == 16 else (_decode_pillow(path, data), 8)
    else:
        samples, bits = _decode_pillow(path, data), 8
    has_alpha = samples.shape[2] in (2, 4)
    if (has_alpha or transparent) and not drop_alpha:
        what = "an alpha channel" if has_alpha else "a transparent colour (tRNS chunk)"
        raise UserError(f"{path} has {what}; nvc-train codes RGB only: flatten it first or pass --drop-alpha")
    colour = samples[..., :3] if samples.shape[2] >= 3 else samples[..., :1]
    height, width = colour.shape[:2]
    levels = np.ascontiguousarray(np.broadcast_to(colour.transpose(2, 0, 1), (3, height, width)), dtype=np.uint16)
    return Image(levels, bits, has_alpha or transparent)


def write_image(path: str | Path, levels: np.ndarray, bits: int, overwrite: bool = False) -> None:
    """Write (3, H, W) integer levels in [0, 2**bits − 1] as a PNG.

    8 bits: an 8-bit RGB PNG. 9–16 bits: a 16-bit RGB PNG with an sBIT chunk of ``bits``
    (:func:`~nvc_train.io.video.write_png16`), which :func:`read_image` reads back exactly.
    The file is written beside ``path`` under a hidden name and renamed into place when
    complete, so a failed write leaves neither a partial file nor a damaged old one.

    Raises:
        UserError: ``path`` exists (without ``overwrite``) or is a folder, its folder does not
            exist, or the file cannot be written.
        ValueError: ``levels`` or ``bits`` out of range (a caller's bug, not the user's).
    """
    path = check_output_file(path, overwrite)
    levels = _checked_levels(levels, bits)
    try:
        with AtomicOutput(path) as out:
            if bits == 8:
                from PIL import Image as PILImage

                PILImage.fromarray(np.ascontiguousarray(levels.transpose(1, 2, 0), dtype=np.uint8)).save(
                    out.tmp, format="PNG")
            else:
                write_png16(out.tmp, levels, bits)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def image_md5(levels: np.ndarray, bits: int) -> str:
    """The pixel MD5 that ``hashes`` prints: hex MD5 of the (3, H, W) levels as little-endian
    uint16 in C order (R plane, G plane, B plane, rows top to bottom), followed by nothing else.

    It depends only on the levels, not on how a PNG was compressed or which chunks it has, so
    two files hash alike exactly when they hold the same picture. ``bits`` is checked against
    the levels but not hashed: the same levels at 10 and at 16 bits hash alike.
    """
    levels = _checked_levels(levels, bits)
    return hashlib.md5(np.ascontiguousarray(levels, dtype="<u2").tobytes(), usedforsecurity=False).hexdigest()


def to_unit_float(levels: np.ndarray, bits: int) -> Tensor:
    """(3, H, W) integer levels → float32 tensor levels / (2**bits − 1), in [0, 1]."""
    return torch.from_numpy(np.asarray(levels, dtype=np.float32)) / (2**bits - 1)


def to_levels(x: Tensor, bits: int) -> np.ndarray:
    """Float tensor in [0, 1] (any device) → uint16 levels: round(x · (2**bits − 1)) with halves
    rounded up, clamped to [0, 2**bits − 1]. Computed in float64, where the product of a float32
    and a 16-bit integer is exact, so the rounding is exact and undoes :func:`to_unit_float`."""
    top = 2**bits - 1
    q = torch.floor(x.detach().to("cpu", torch.float64) * top + 0.5).clamp_(0, top)
    return q.to(torch.int32).numpy().astype(np.uint16)


def _checked_levels(levels: np.ndarray, bits: int) -> np.ndarray:
    levels = np.asarray(levels)
    if not 8 <= bits <= 16:
        raise ValueError(f"bits must be 8 to 16, got {bits}")
    if levels.ndim != 3 or levels.shape[0] != 3:
        raise ValueError(f"levels must be (3, H, W), got shape {levels.shape}")
    if not np.issubdtype(levels.dtype, np.integer):
        raise ValueError(f"levels must be integers, got {levels.dtype}")
    if levels.size and (levels.min() < 0 or levels.max() > 2**bits - 1):
        raise ValueError(f"levels must lie in [0, {2**bits - 1}] for {bits} bits, "
                         f"got [{levels.min()}, {levels.max()}]")
    return levels


# --------------------------------------------------------------------------- PNG

def _png_chunks(path: Path, data: bytes) -> dict[bytes, list[bytes]]:
    """The bodies of a PNG's chunks by type, up to IEND, every CRC checked, IHDR checked."""
    chunks: dict[bytes, list[bytes]] = {}
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise UserError(f"cannot read image {path}: truncated PNG (it ends before its IEND chunk)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        name = kind.decode("ascii", "replace")
        end = pos + 12 + length
        if end > len(data):
            raise UserError(f"cannot read image {path}: truncated PNG (its {name} chunk is cut short)")
        body = data[pos + 8:end - 4]
        if zlib.crc32(kind + body) != struct.unpack_from(">I", data, end - 4)[0]:
            raise UserError(f"cannot read image {path}: corrupt PNG (CRC mismatch in its {name} chunk)")
        chunks.setdefault(kind, []).append(body)
        if kind == b"IEND":
            break
        pos = end
    ihdr = chunks.get(b"IHDR", [b""])[0]
    if len(ihdr) != 13 or 0 in struct.unpack(">II", ihdr[:8]):  # a width or height of 0 is invalid
        raise UserError(f"cannot read image {path}: corrupt PNG (no valid IHDR chunk)")
    return chunks


def _decode_png16(path: Path, chunks: dict[bytes, list[bytes]]) -> tuple[np.ndarray, int]:
    """A 16-bit PNG's samples (H, W, C) uint16, shifted down to the sBIT depth, and that depth."""
    width, height, _, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
    channels = _PNG_CHANNELS.get(colour_type)
    if channels is None:
        raise UserError(f"cannot read image {path}: corrupt PNG (colour type {colour_type} at 16 bits)")
    if interlace:
        raise UserError(f"{path} is an interlaced 16-bit PNG, which nvc-train does not read: "
                        "save it without interlacing")
    bpp = 2 * channels  # bytes per pixel: the distance PNG's filters look back
    expected = height * (1 + width * bpp)
    try:
        raw = zlib.decompressobj().decompress(b"".join(chunks.get(b"IDAT", [])), expected)
    except zlib.error as exc:
        raise UserError(f"cannot read image {path}: corrupt PNG image data ({exc})") from None
    if len(raw) != expected:
        raise UserError(f"cannot read image {path}: corrupt PNG (image data for {len(raw) // (1 + width * bpp)} "
                        f"of its {height} rows)")
    try:
        rows = _unfilter(np.frombuffer(raw, np.uint8).reshape(height, 1 + width * bpp), bpp)
    except ValueError as exc:
        raise UserError(f"cannot read image {path}: corrupt PNG ({exc})") from None
    samples = rows.view(">u2").reshape(height, width, channels).astype(np.uint16)
    bits = _significant_bits(chunks.get(b"sBIT", [b""])[0], 3 if channels >= 3 else 1)
    if bits < 16:
        samples >>= 16 - bits
    return samples, bits


def _significant_bits(sbit: bytes, colours: int) -> int:
    """The depth to read a 16-bit PNG at: the largest sBIT of its colour channels (so no channel
    loses a significant bit), at least 8; 16 without a valid sBIT (PNG specification §11.3.3.4:
    each value in 1..16). Shifting right by 16 − bits recovers the original levels whether the
    writer padded them with zeros or with left bit replication."""
    values = sbit[:colours]
    if len(values) != colours or not all(1 <= v <= 16 for v in values):
        return 16
    return max(8, max(values))


def _unfilter(rows: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG's row filters (PNG specification §9.2): (H, 1 + W·bpp) uint8 rows, each a filter
    type byte then the filtered bytes → (H, W·bpp) uint8 reconstructed bytes.

    Sub, Average and Paeth predict a byte from the reconstructed byte ``bpp`` to its left, so a
    row cannot be undone in one vector operation, and a loop over pixels in Python is far too
    slow. Every filter reads only the left, upper and upper-left neighbours, so the pixels of an
    anti-diagonal (row + column = k) depend only on earlier anti-diagonals: the loop runs over
    the H + W − 1 anti-diagonals, each vectorised over rows and bytes. Arrays are stored skewed
    (pixel (r, i) in column r + i, plus an offset) so that an anti-diagonal is a column slice.
    """
    kinds, data = rows[:, 0], rows[:, 1:]
    if not kinds.any():  # every row unfiltered (as write_png16 writes them): nothing to undo
        return data
    if kinds.max() > 4:
        raise ValueError(f"unknown filter type {int(kinds.max())}")
    height, width = data.shape[0], data.shape[1] // bpp
    filtered, filtered_pixels = _skewed(height, width, bpp, np.uint8, top=0, left=0)
    filtered_pixels[...] = data.reshape(height, width, bpp)
    # Pixel (r, i) at [r + 1, r + i + 2]: row 0 and the columns left of each row stay zero, the
    # value PNG gives to neighbours outside the image.
    out, out_pixels = _skewed(height, width, bpp, np.int16, top=1, left=2)
    kind = kinds.astype(np.int16)[:, None]
    for k in range(height + width - 1):
        lo, hi = max(0, k - width + 1), min(height, k + 1)  # rows that have a pixel on this diagonal
        left = out[lo + 1:hi + 1, k + 1]  # pixel (r, i − 1)
        up = out[lo:hi, k + 1]  # pixel (r − 1, i)
        up_left = out[lo:hi, k]  # pixel (r − 1, i − 1)
        pa, pb, pc = np.abs(up - up_left), np.abs(left - up_left), np.abs(left + up - 2 * up_left)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
        prediction = np.choose(kind[lo:hi], (0, left, up, (left + up) >> 1, paeth))
        out[lo + 1:hi + 1, k + 2] = (filtered[lo:hi, k] + prediction) & 0xFF
    return out_pixels.astype(np.uint8).reshape(height, width * bpp)


def _skewed(height: int, width: int, bpp: int, dtype, top: int, left: int) -> tuple[np.ndarray, np.ndarray]:
    """A zero array for skewed storage and its (H, W, bpp) view in which pixel (r, i) is the
    array's element [top + r, left + r + i]."""
    store = np.zeros((top + height, left + height + width, bpp), dtype)
    s_row, s_col, s_byte = store.strides
    return store, as_strided(store[top:, left:], (height, width, bpp), (s_row + s_col, s_col, s_byte))


# --------------------------------------------------------------------------- Pillow

def _decode_pillow(path: Path, data: bytes) -> np.ndarray:
    """An 8-bit image's samples (H, W, C) uint8, C = 1 (grey), 2 (grey, alpha), 3 or 4 (RGBA)."""
    from PIL import Image as PILImage

    try:
        im = PILImage.open(io.BytesIO(data))
    except PILImage.UnidentifiedImageError:
        raise UserError(f"{path} is not an image nvc-train reads (PNG, JPEG, PPM or BMP)") from None
    except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {path}: {first_line(str(exc), type(exc).__name__)}") from None
    with im:
        if im.format not in PILLOW_FORMATS:
            raise UserError(f"{path} is a {im.format} image; nvc-train reads PNG, JPEG, PPM and BMP: convert it to PNG")
        if im.mode in _PILLOW_MODE_PROBLEMS:
            raise UserError(f"{path} {_PILLOW_MODE_PROBLEMS[im.mode]}")
        if im.mode.startswith(("I", "F")):
            raise UserError(f"{path} has {im.mode} (16/32-bit integer or float) samples; nvc-train reads more "
                            "than 8 bits only from 16-bit PNG: convert it to a 16-bit PNG")
        if im.mode not in _PILLOW_CHANNELS:
            raise UserError(f"{path} has pixel mode {im.mode}; convert it to RGB first")
        if im.format == "PPM" and (maxval := _pnm_maxval(data)) != 255:
            raise UserError(f"{path} has maxval {maxval}; nvc-train reads PPM/PGM only with maxval 255 "
                            "(8 bits): convert it to PNG (16-bit for deeper levels)")
        try:
            im.load()
            pixels = np.asarray(im)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise UserError(f"cannot read image {path}: {first_line(str(exc), type(exc).__name__)}") from None
    return pixels.reshape(*pixels.shape[:2], _PILLOW_CHANNELS[im.mode])


def _pnm_maxval(data: bytes) -> int:
    """The maxval of a PGM/PPM header (magic, width, height, maxval; ``#`` comments between).
    Pillow rescales other maxvals to 8 bits, which would not be the file's levels."""
    return int(re.sub(rb"#[^\r\n]*", b" ", data[:4096]).split()[3])

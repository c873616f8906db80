"""The integer checkpoint's fixed header, readable without torch (``nvc-train info``).

Layout (big-endian): magic ``b"NVCTRAIN-INT"`` (12 bytes) | format version u32 | payload
length u64 | SHA-256 of the payload (32 bytes); the payload follows
(:mod:`nvc_train.quant.export`). The SHA-256 is what a ``.nvc`` stream records of the
checkpoint that encoded it, and the version says what the checkpoint decodes.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

from nvc_train.errors import UserError, require_file

MAGIC = b"NVCTRAIN-INT"
FORMAT_VERSION = 4
HYPERPRIOR_FORMAT_VERSION = 2
"""Hyperprior-scope checkpoints are still written as format 2 (older nvc-train reads them);
format 3 adds the integer synthesis decoders (``int.synth.*``), which a format-2 reader
would silently ignore and decode with float pixels: it refuses the version instead.
Format 4 (pixel-exact) adds the synthesis decoders' stress checks to the
stress record, which a format-3 reader cannot run: it refuses the version too. Formats 1–3
still load."""
IMAGE_FORMAT_VERSION = 5
"""Integer image checkpoints (:mod:`nvc_train.quant.image_export`): a CompressAI image model
with an integer hyper-decoder. A distinct version, so that a video reader (and nvc-train
before image support) refuses them by their version instead of misreading them."""
MAX_FORMAT_VERSION = IMAGE_FORMAT_VERSION
HEADER = struct.Struct(">12sIQ32s")


class CheckpointHeader(NamedTuple):
    version: int
    payload_bytes: int
    sha256: bytes

    @property
    def pixel_exact(self) -> bool:
        """Formats 3 and 4 hold the integer synthesis decoders: decoded frames are identical."""
        return self.version in (3, 4)

    @property
    def image(self) -> bool:
        return self.version == IMAGE_FORMAT_VERSION

    @property
    def kind(self) -> str:
        if self.image:
            return ("integer image checkpoint (identical latents on every machine; identical pixels too when "
                    "exported with qat scope decoder: its model card says which)")
        return ("pixel-exact (the whole decoder integer: identical frames on every machine)" if self.pixel_exact
                else "hyperprior-integer (identical latents on every machine; frames from the float synthesis)")


def read_checkpoint_header(path: str | Path) -> CheckpointHeader:
    """The header of an integer checkpoint file; one-line errors for other files."""
    path = require_file(path, "checkpoint")
    with open(path, "rb") as f:
        data = f.read(HEADER.size)
    if len(data) < HEADER.size or not data.startswith(MAGIC):
        raise UserError(f"{path} is not an nvc-train integer checkpoint (`nvc-train export-integer` writes them)")
    _, version, length, digest = HEADER.unpack(data)
    if not 1 <= version <= MAX_FORMAT_VERSION:
        raise UserError(f"{path} has format version {version}; this nvc-train reads 1..{MAX_FORMAT_VERSION}"
                        + (": upgrade nvc-train" if version > MAX_FORMAT_VERSION else ""))
    return CheckpointHeader(version, length, digest)

#!/usr/bin/env python3
"""Decode an nvc-train .nvc file with ONNX Runtime: no PyTorch, no nvc-train.

    python examples/onnx_decode.py STREAM.nvc ONNX_DIR [--png-dir DIR]

``ONNX_DIR`` is what ``nvc-train export-onnx CKPT --out-dir ONNX_DIR`` wrote for the
checkpoint the stream was encoded with. Prints one line per frame, as ``nvc-train hashes``
does: index, type, SHA-256 of the decoded latents and, for a pixel-exact checkpoint, the
MD5 of the frame (R, G, B planes at the source's bit depth). ``--png-dir`` also writes
8-bit PNG frames.

Needs numpy, onnxruntime and CompressAI's rANS decoder, the compiled module
``compressai/ans*.so``: it is loaded from the installed compressai package without running
the package's ``__init__`` (which imports PyTorch). Any other build of CompressAI's
``RansDecoder`` (its C++ source is ``compressai/cpp_exts/rans``) decodes the same.

Everything here follows docs/integer-contract.md and the container layout in
nvc_train/codec/bitstream.py; it shares no code with nvc-train.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import importlib.util
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

SYMBOL_LIMIT = 2**15  # y and z symbols are clamped to ±2**15 (contract, steps 1 and 7)
MEAN_FRAC_BITS = 8  # means and latents on the 2**-8 grid
SOURCE_DEPTHS = (8, 10, 12, 16)
PARTS = {0: ("I", ("keyframe",)), 1: ("P", ("motion", "residual"))}


def rans_decoder():
    """CompressAI's ``ans.RansDecoder``, loaded from its compiled module alone."""
    spec = importlib.util.find_spec("compressai")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("onnx_decode: error: compressai is not installed (pip install compressai --no-deps)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("ans*.so")) + sorted(folder.glob("ans*.pyd"))
    if not found:
        sys.exit(f"onnx_decode: error: no compiled rANS module in {folder}")
    loader = importlib.machinery.ExtensionFileLoader("ans", str(found[0]))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("ans", loader))
    loader.exec_module(module)
    return module.RansDecoder()


def read_nvc(data: bytes):
    """Header fields and frames [(type, {part: (z_shape, y_bytes, z_bytes)})], CRCs checked."""
    head = struct.Struct(">4sHH32sIIIIII")
    magic, version, colour, _sha, width, height, _fn, _fd, count, _gop = head.unpack_from(data)
    if magic != b"NVCB" or version > 2:
        sys.exit("onnx_decode: error: not an .nvc stream this example reads")
    if struct.unpack_from(">I", data, head.size)[0] != zlib.crc32(data[:head.size]):
        sys.exit("onnx_decode: error: header CRC mismatch")
    pos, frames = head.size + 4, []
    for t in range(count):
        frame_type, parts = PARTS[data[pos]]
        heads = [struct.unpack_from(">HHII", data, pos + 1 + 12 * i) for i in range(len(parts))]
        crc_at = pos + 1 + 12 * len(parts)
        payload_at = crc_at + 4
        size = sum(y + z for _, _, y, z in heads)
        if zlib.crc32(data[pos:crc_at] + data[payload_at:payload_at + size]) != struct.unpack_from(">I", data, crc_at)[0]:
            sys.exit(f"onnx_decode: error: frame {t} CRC mismatch")
        latents, at = {}, payload_at
        for part, (zh, zw, ylen, zlen) in zip(parts, heads):
            latents[part] = ((zh, zw), data[at:at + ylen], data[at + ylen:at + ylen + zlen])
            at += ylen + zlen
        frames.append((frame_type, latents))
        pos = at
    return width, height, SOURCE_DEPTHS[(colour >> 3) & 3], frames


class Networks:
    """The folder's graphs as ONNX Runtime sessions."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.manifest = json.loads((folder / "onnx.json").read_text())
        self.sessions = {}

    def __call__(self, name: str, *inputs: np.ndarray) -> np.ndarray:
        if name not in self.sessions:
            file = self.folder / self.manifest["graphs"][name]["file"]
            self.sessions[name] = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        session = self.sessions[name]
        feeds = {meta.name: np.ascontiguousarray(x, dtype=np.int64) for meta, x in zip(session.get_inputs(), inputs)}
        return session.run(None, feeds)[0]


def decode_latent(rans, tables: dict, nets: Networks, part: str, k: int, latent) -> np.ndarray:
    """One latent's strings → y_int (1, C, h, w) int64 = symbol·2**8 + mean (the contract's
    integers; y_hat = y_int · 2**-8 exactly)."""
    (zh, zw), y_bytes, z_bytes = latent
    t = tables[part]
    median_q = np.asarray(t["median_q"], dtype=np.int64)
    channels = median_q.size
    z_index = np.repeat(np.arange(channels), zh * zw).tolist()
    z = np.asarray(rans.decode_with_indexes(z_bytes, z_index, t["z"]["quantized_cdf"], t["z"]["cdf_length"],
                                            t["z"]["offset"]), dtype=np.int64).reshape(1, channels, zh, zw)
    z_int = np.clip(z, -SYMBOL_LIMIT, SYMBOL_LIMIT) * 2**k + median_q.reshape(1, -1, 1, 1)
    means = nets(f"{part}.mean", z_int)
    indexes = nets(f"{part}.scale", z_int)
    y = np.asarray(rans.decode_with_indexes(y_bytes, indexes.reshape(-1).tolist(), t["y"]["quantized_cdf"],
                                            t["y"]["cdf_length"], t["y"]["offset"]), dtype=np.int64)
    return np.clip(y.reshape(means.shape), -SYMBOL_LIMIT, SYMBOL_LIMIT) * 2**MEAN_FRAC_BITS + means


def latent_sha256(latents: list[np.ndarray]) -> str:
    """As nvc-train hashes latents: per latent, its shape, then float32 little-endian y_hat."""
    h = hashlib.sha256()
    for y_int in latents:
        h.update(repr(tuple(y_int.shape)).encode())
        h.update((y_int.astype(np.float32) * np.float32(2.0**-MEAN_FRAC_BITS)).astype("<f4").tobytes())
    return h.hexdigest()


def write_png(path: Path, rgb: np.ndarray) -> None:
    """(3, H, W) uint8 → an 8-bit RGB PNG (zlib and struct only)."""
    _, height, width = rgb.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.transpose(1, 2, 0).reshape(height, -1)], axis=1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows.tobytes())) + chunk(b"IEND", b""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stream", help=".nvc file")
    parser.add_argument("onnx_dir", help="the checkpoint's `nvc-train export-onnx` folder")
    parser.add_argument("--png-dir", help="write 8-bit PNG frames here (pixel-exact checkpoints)")
    args = parser.parse_args()
    nets = Networks(Path(args.onnx_dir))
    tables = json.loads((Path(args.onnx_dir) / nets.manifest["entropy"]["file"]).read_text())
    k = nets.manifest["input_frac_bits"]
    pixel_exact = nets.manifest["pixels"] is not None
    width, height, bits, frames = read_nvc(Path(args.stream).read_bytes())
    if args.png_dir:
        Path(args.png_dir).mkdir(parents=True, exist_ok=True)
    rans = rans_decoder()
    reference = None
    for t, (frame_type, latents) in enumerate(frames):
        y = {part: decode_latent(rans, tables, nets, part, k, latent) for part, latent in latents.items()}
        line = f"{t} {frame_type} {latent_sha256(list(y.values()))}"
        if pixel_exact:
            if frame_type == "I":
                reference = nets("pixels.reference", nets("synth.img", y["keyframe"]))
            else:
                prediction = nets("pixels.predict", reference, nets("synth.motion", y["motion"]))
                residual = nets("synth.res", np.concatenate((y["residual"], y["motion"]), axis=1))
                reference = nets("pixels.reconstruct", prediction, residual)
            levels = nets("pixels.levels", reference, np.array(2**bits - 1))[0, :, :height, :width]
            planes = levels.astype(np.uint8 if bits == 8 else "<u2")
            line += f" {hashlib.md5(np.ascontiguousarray(planes).tobytes()).hexdigest()}"
            if args.png_dir:
                eight = nets("pixels.levels", reference, np.array(255))[0, :, :height, :width].astype(np.uint8)
                write_png(Path(args.png_dir) / f"{t:05d}.png", eight)
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

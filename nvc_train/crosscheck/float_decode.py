"""The float side of a cross-setting check: decode a float ScaleSpaceFlow's streams, print digests.

The integer decoders' claim is that their output does not depend on where they run; the float
model's is the failure they fix (float round-off picks another probability table for a few
latents, the range decoder desynchronises, frames turn to garbage). To show that failure on the
same test set, ``nvc-train reproduce`` encodes each sequence with the float parent once
(:func:`write_stream`) and decodes it here in two settings, each a fresh process as
:mod:`nvc_train.crosscheck.decode`::

    python -m nvc_train.crosscheck.float_decode --checkpoint F.pth.tar --stream seq=S.json \
        --threads 1 --json out.json

Per frame it records ``control_raw`` (SHA-256 of the float32 reconstruction) and
``control_8bit`` (MD5 of it rounded to 8 bits), the fields the integer decoder records for its
float control, so :func:`nvc_train.crosscheck.matrix.compare` reads both.

A stream is JSON: frame types, and per frame and part (keyframe; motion, residual) CompressAI's
two strings in base64 and the hyper-latent shape.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time


def write_stream(frames: list[tuple[str, dict[str, tuple[bytes, bytes, tuple[int, int]]]]], path: str) -> None:
    """``frames``: (type "I"/"P", {part: (y string, z string, z shape)}) per frame."""
    record = [{"type": t, "parts": {k: [base64.b64encode(y).decode(), base64.b64encode(z).decode(), list(shape)]
                                    for k, (y, z, shape) in parts.items()}} for t, parts in frames]
    tmp = str(path) + ".part"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def load_float_model(path: str, device: str):
    """The float model as ``eval`` and CompressAI load it: entropy tables rebuilt here."""
    from nvc_train.models.ssf import read_state_dict, ssf_from_checkpoint

    model = ssf_from_checkpoint(read_state_dict(path), None, str(path)).to(device).eval()
    model.update(force=True)
    return model


def decode_stream(model, path: str) -> dict:
    import torch

    from nvc_train.crosscheck.decode import _md5_8bit, _raw_sha256

    with open(path) as f:
        frames = json.load(f)
    out = {"types": [fr["type"] for fr in frames], "latents": [], "control_raw": [], "control_8bit": []}
    x_ref = None
    with torch.no_grad():
        for fr in frames:
            parts = {k: ([[base64.b64decode(y)], [base64.b64decode(z)]], tuple(shape))
                     for k, (y, z, shape) in fr["parts"].items()}
            if fr["type"] == "I":
                strings, shape = parts["keyframe"]
                x_ref = model.decode_keyframe(strings, shape)
            else:
                x_ref = model.decode_inter(x_ref, {k: s for k, (s, _) in parts.items()},
                                           {k: shape for k, (_, shape) in parts.items()})
            out["control_raw"].append(_raw_sha256(x_ref))
            out["control_8bit"].append(_md5_8bit(x_ref))
    return out


def run(checkpoint: str, streams: dict[str, str], device: str, conformance: bool = False) -> dict:
    """The record :mod:`nvc_train.crosscheck.decode` writes, for a float model (it has no
    conformance records: ``conformance`` is ignored)."""
    from nvc_train.crosscheck.decode import environment
    from nvc_train.io.digest import sha256_file

    start = time.perf_counter()
    model = load_float_model(checkpoint, device)
    record = {"env": environment(device), "checkpoint_sha256": sha256_file(checkpoint), "pixel_exact": False,
              "conformance": {}, "conformance_failures": 0,
              "streams": {name: decode_stream(model, path) for name, path in streams.items()}}
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def main(argv: list[str] | None = None) -> int:
    from nvc_train.crosscheck.decode import worker_main

    return worker_main(argv, "python -m nvc_train.crosscheck.float_decode", __doc__.splitlines()[0], run)


if __name__ == "__main__":
    sys.exit(main())

"""One environment's side of ``nvc-train cross-check``: decode streams, print their digests.

Run by :mod:`nvc_train.crosscheck.run` in every environment of the matrix (this venv with
other CPU kernels, threads or oneDNN; another PyTorch release's venv; an aarch64 userland
under qemu-user; CUDA), always as a fresh process so that ``ATEN_CPU_CAPABILITY`` and the
thread pool are those of the row::

    python -m nvc_train.crosscheck.decode --checkpoint C --stream demo=S.nvc --threads 1 \
        --onednn off --json out.json

It imports only torch, CompressAI and nvc-train's codec (no Lightning, no video I/O), so an
environment needs no more than those to take part. For each stream it records, per frame:

* ``latents``: SHA-256 of the decoded latents (what the integer hyperprior guarantees);
* ``frames``: MD5 of the 8-bit output frame of a pixel-exact checkpoint (its guarantee);
* the **float control**, the same checkpoint decoded with its float decoders (for a
  pixel-exact checkpoint its float twin: integer hyperprior, float synthesis and warp; for a
  hyperprior checkpoint the float synthesis it ships): ``control_raw``, SHA-256 of the
  float32 reconstruction's bytes, and ``control_8bit``, MD5 of it rounded to 8 bits.

and the digest of every conformance check embedded in the checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time


def environment(device: str, runtime: str = "torch") -> dict:
    """What this process runs on: architecture, PyTorch release, CPU kernels, threads, oneDNN
    (and ONNX Runtime's release where it runs the networks)."""
    import torch

    env = {"python": platform.python_version(), "machine": platform.machine(), "torch": torch.__version__,
           "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           "onednn": torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled),
           "device": device}
    if runtime == "onnx":
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _raw_sha256(x) -> str:
    return hashlib.sha256(x.detach().to("cpu", dtype=x.dtype).contiguous().numpy().tobytes()).hexdigest()


def _md5_8bit(x) -> str:
    import torch

    from nvc_train.codec.pixel_decoder import frame_md5

    return frame_md5((x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8))


def decode_stream(codec, data: bytes, device: str) -> dict:
    """Digests of every frame of one ``.nvc`` stream: the integer decode and its float control."""
    from nvc_train.codec.bitstream import read_bitstream_bytes
    from nvc_train.codec.integer_codec import IntegerSSF

    _, coded = read_bitstream_bytes(data)
    out = {"types": [cf.frame_type for cf in coded], "latents": [], "frames": [], "control_raw": [],
           "control_8bit": []}
    for frame in codec.decompress_iter(coded, device):
        out["latents"].append(frame.latent_sha256)
        if codec.pixel_exact:
            out["frames"].append(frame.md5)
        else:  # the hyperprior checkpoint's own synthesis is float: that is its control
            out["control_raw"].append(_raw_sha256(frame.x_hat))
            out["control_8bit"].append(_md5_8bit(frame.x_hat))
    if codec.pixel_exact:
        twin = IntegerSSF(codec.model, dict(codec.hyperpriors)).eval()  # same checkpoint, float decoders
        for frame in twin.decompress_iter(coded, device):
            out["control_raw"].append(_raw_sha256(frame.x_hat))
            out["control_8bit"].append(_md5_8bit(frame.x_hat))
    return out


class _OnnxFloatDecoder:
    """A float synthesis decoder run by ONNX Runtime (called like the module it replaces)."""

    def __init__(self, session):
        self.session = session

    def __call__(self, x):
        import torch

        return torch.from_numpy(self.session.run(None, {"x": x.detach().float().contiguous().numpy()})[0])


def float_synthesis_in_onnx_runtime(model, threads: int) -> None:
    """Run ``model``'s three float synthesis decoders in ONNX Runtime (float32 ``ConvTranspose``
    from the same weights): the float control of an ONNX Runtime row, so that it tests whether
    float arithmetic in this runtime would have differed, as the other rows' controls do."""
    import onnxruntime

    from nvc_train.models.ssf import SYNTHESIS_ATTR
    from nvc_train.portable.networks import float_synthesis_graph

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    for name, attr in SYNTHESIS_ATTR.items():
        graph = float_synthesis_graph(name, getattr(model, attr), {})
        session = onnxruntime.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        object.__setattr__(model, attr, _OnnxFloatDecoder(session))  # not an nn.Module: bypass the registry


def run(checkpoint: str, streams: dict[str, str], device: str, conformance: bool, runtime: str = "torch") -> dict:
    """Load ``checkpoint`` (with its load-time self-test), run its conformance records and
    decode ``streams`` ({name: path}); returns the JSON-able record. ``runtime`` "onnx": the
    integer networks run in ONNX Runtime, from graphs exported here to a temporary folder
    (with the ONNX load-time self-test), and so do the float control's synthesis decoders."""
    import torch

    from nvc_train.quant.conformance import run_checks
    from nvc_train.quant.export import load_integer_checkpoint

    start = time.perf_counter()
    with torch.no_grad():
        ck = load_integer_checkpoint(checkpoint, device=device)
        if runtime == "onnx":
            from nvc_train.portable.runtime import run_in_onnx_runtime

            run_in_onnx_runtime(ck, threads=torch.get_num_threads())
            float_synthesis_in_onnx_runtime(ck.codec.model, torch.get_num_threads())
        codec = ck.codec.eval()
        record = {"env": environment(device, runtime), "checkpoint_sha256": ck.sha256, "pixel_exact": codec.pixel_exact,
                  "conformance": {}, "conformance_failures": 0, "streams": {}}
        if conformance:
            for check in run_checks(codec, ck.conformance, device):
                record["conformance"][f"{check.record} {check.item}"] = check.got
                record["conformance_failures"] += not check.ok
        for name, path in streams.items():
            with open(path, "rb") as f:
                record["streams"][name] = decode_stream(codec, f.read(), device)
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def worker_main(argv: list[str] | None, prog: str, description: str, decode) -> int:
    """The command line every decoding worker shares: ``--checkpoint``, ``--stream NAME=FILE``,
    ``--threads``, ``--onednn``, ``--device``, ``--no-conformance``, ``--json``; sets this
    process's threads and oneDNN, then writes ``decode(checkpoint, streams, device, conformance)``."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--stream", action="append", default=[], metavar="NAME=FILE")
    ap.add_argument("--no-conformance", dest="conformance", action="store_false")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    ap.add_argument("--onednn", choices=("on", "off"), default="on")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="what runs the integer networks")
    ap.add_argument("--json", required=True, metavar="FILE", help="where to write the record")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = args.onednn == "on"
    streams = dict(s.split("=", 1) for s in args.stream)
    record = decode(args.checkpoint, streams, args.device, args.conformance,
                    **({"runtime": args.runtime} if args.runtime != "torch" else {}))
    tmp = args.json + ".part"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    return worker_main(argv, "python -m nvc_train.crosscheck.decode", __doc__.splitlines()[0], run)


if __name__ == "__main__":
    sys.exit(main())

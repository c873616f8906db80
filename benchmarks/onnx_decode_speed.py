"""Decode time in ONNX Runtime vs the PyTorch integer decoder and the float synthesis.

A pixel-exact checkpoint encodes one synthetic clip per size; that stream is decoded by

- ``torch float synthesis``: the checkpoint's integer hyperprior with its float synthesis
  decoders and float warp (what a hyperprior-scope checkpoint runs);
- ``torch pixel-exact``: nvc-train's PyTorch integer decoder (int8 GEMMs);
- ``onnx pixel-exact``: the same networks as `nvc-train export-onnx` graphs in ONNX Runtime
  (CPU provider), asserted to give the same frame MD5s.

Same input bytes, same entropy decoding (CompressAI's rANS), frames kept in memory on every
side; ONNX sessions are opened and the load-time self-test run before timing. One untimed
warm-up decode per job, then ``--rounds`` timed rounds in alternating order; medians, ranges
and per-round ratios are printed. A breakdown of one P-frame per network follows.

    .venv/bin/python benchmarks/onnx_decode_speed.py --checkpoint CKPT --sizes 512p 720p --rounds 3 [--json OUT]

``--checkpoint untrained`` exports a freshly initialised, calibrated pixel-exact SSF first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import onnxruntime
import torch

from nvc_train.codec.files import pad_frame
from nvc_train.codec.integer_codec import IntegerSSF
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.portable.export import export_onnx
from nvc_train.portable.runtime import load_onnx_folder, onnx_codec
from nvc_train.quant.export import load_integer_checkpoint
from nvc_train.quant.synthesis import latent_integers

from decode_speed import timed  # benchmarks/ is on sys.path when run as a script

SIZES = {"1080p": (1080, 1920), "720p": (720, 1280), "512p": (512, 768)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a pixel-exact integer checkpoint, or 'untrained'")
    ap.add_argument("--sizes", nargs="+", default=["512p", "720p"], choices=list(SIZES))
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only-load", action="store_true", help="time export and opening (with the self-test) only")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    if args.checkpoint == "untrained":
        from gpu_check import untrained_checkpoint

        args.checkpoint = untrained_checkpoint(work, pixel_exact=True)
    ck = load_integer_checkpoint(args.checkpoint)
    if not ck.codec.pixel_exact:
        raise SystemExit(f"{args.checkpoint} is not pixel-exact (train with model.qat.scope=decoder)")
    torch_codec = ck.codec.eval()
    float_twin = IntegerSSF(torch_codec.model, dict(torch_codec.hyperpriors)).eval()
    export_onnx(ck, work / "onnx")
    onnx_ck = load_integer_checkpoint(args.checkpoint)
    onnx = onnx_codec(onnx_ck.codec, load_onnx_folder(work / "onnx", ck.sha256), conformance=onnx_ck.conformance)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}")
    rows = []
    for k in range(args.rounds):  # export, then open with the load-time self-test, each on a fresh load
        fresh = load_integer_checkpoint(args.checkpoint)
        export_s = timed(lambda: export_onnx(fresh, work / f"onnx{k}"), "cpu")
        fresh = load_integer_checkpoint(args.checkpoint)
        open_s = timed(lambda: onnx_codec(fresh.codec, load_onnx_folder(work / f"onnx{k}", fresh.sha256),
                                          conformance=fresh.conformance), "cpu")
        rows.append({"job": "export and open", "export_s": round(export_s, 3), "open_with_self_test_s": round(open_s, 3)})
        print(f"export-onnx {export_s:.2f} s, open with self-test {open_s:.2f} s", flush=True)
    if args.only_load:
        args.sizes = []
    for name in args.sizes:
        h, w = SIZES[name]
        clip = [pad_frame(f) for f in synthetic_clip(31337, args.frames, h, w)]
        coded, _ = torch_codec.compress(clip)
        # Sequences the float twin's hyperpriors (the PyTorch ones) before the ONNX codec
        # replaced them: the twin keeps its own references.
        jobs = {"torch float synthesis": lambda: float_twin.decompress(coded),
                "torch pixel-exact": lambda: torch_codec.decompress(coded),
                "onnx pixel-exact": lambda: onnx.decompress(coded)}
        md5s = {k: [f.md5 for f in fn()] for k, fn in jobs.items()}  # warm-up
        assert md5s["onnx pixel-exact"] == md5s["torch pixel-exact"], "ONNX Runtime and PyTorch disagree"
        times = {k: [] for k in jobs}
        order = list(jobs)
        for r in range(args.rounds):
            for k in (order if r % 2 == 0 else order[::-1]):
                times[k].append(timed(jobs[k], "cpu"))
        for k, ts in times.items():
            med = statistics.median(ts)
            rows.append({"size": name, "padded": list(clip[0].shape[-2:]), "job": k, "seconds": round(med, 3),
                         "min_s": round(min(ts), 3), "max_s": round(max(ts), 3), "runs": [round(t, 3) for t in ts]})
            print(f"{name:6} {k:22} median {med:7.2f} s per {args.frames} frames (min {min(ts):.2f}, max {max(ts):.2f})",
                  flush=True)
        for other in ("torch pixel-exact", "torch float synthesis"):
            ratios = [o / t for o, t in zip(times["onnx pixel-exact"], times[other])]
            rows.append({"size": name, "job": f"onnx / {other}", "time_ratio_median": round(statistics.median(ratios), 3),
                         "time_ratio_min": round(min(ratios), 3), "time_ratio_max": round(max(ratios), 3)})
            print(f"{name:6} onnx pixel-exact / {other} ×{statistics.median(ratios):.2f} "
                  f"(per-round {min(ratios):.2f}–{max(ratios):.2f})", flush=True)
        # Where one P-frame's time goes, network by network, on both runtimes.
        hp = torch_codec.hyperpriors
        y_m = latent_integers(hp["motion"].decompress(coded[1].latents["motion"], torch.device("cpu")))
        y_r = latent_integers(hp["residual"].decompress(coded[1].latents["residual"], torch.device("cpu")))
        ref = torch_codec.pixels.keyframe(latent_integers(hp["keyframe"].decompress(coded[0].latents["keyframe"],
                                                                                    torch.device("cpu"))))
        for runtime, px in (("torch", torch_codec.pixels), ("onnx", onnx.pixels)):
            motion = px.decoders["motion"](y_m)
            parts = {"motion decoder": lambda: px.decoders["motion"](y_m),
                     "res decoder": lambda: px.decoders["res"](torch.cat((y_r, y_m), dim=1))}
            if runtime == "torch":
                from nvc_train.quant.integer_warp import COORD_FRAC_BITS, gaussian_volume, warp
                from nvc_train.quant.synthesis import motion_coordinates

                parts["volume + warp"] = lambda: warp(gaussian_volume(ref, px.num_levels, px.sigma0), motion_coordinates(
                    motion, px.num_levels + 1, px.flow_reference, COORD_FRAC_BITS))
            else:
                parts["volume + warp"] = lambda: px.folder.tensor("pixels.predict", ref, motion)
            for k, fn in parts.items():
                med = statistics.median(timed(fn, "cpu") for _ in range(args.rounds))
                rows.append({"size": name, "job": f"part ({runtime}): {k}", "seconds": round(med, 3)})
                print(f"{name:6}   {runtime:5} {k:16} {med:7.3f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                       "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

"""Decode time of the pixel-exact decoder vs the float synthesis, same stream, same machine.

A pixel-exact checkpoint (``qat.scope: decoder``) encodes one synthetic clip per size; that
stream is then decoded by

- ``float synthesis``: the same checkpoint's integer hyperprior with its float synthesis
  decoders and float warp (what a hyperprior-scope checkpoint runs: the "float decoder");
- ``pixel-exact``: integer synthesis, integer volume and warp, integer reconstruction, with
  its exact convolutions on each GEMM path of ``--paths`` (int8 by default; float32 and
  float64 to compare: the frames are asserted identical on every path).

Same input bytes, same entropy decoding, same output (frames in memory) on both sides. Each
job runs once untimed (warm-up), then ``--rounds`` timed rounds in alternating order; the
median, the spread and the per-round ratio range are reported. A breakdown of one P-frame
of the pixel path (each integer decoder, volume + warp) follows, median of the rounds.

    .venv/bin/python benchmarks/pixel_decode_speed.py --checkpoint runs/demo/ssf-pixel.ckpt \\
        --sizes 720p 1080p --rounds 3 [--paths int8 float64] [--device cuda] [--json OUT]

``--checkpoint untrained`` exports a freshly initialised, calibrated pixel-exact SSF first
(same layer shapes and activation formats as a trained one).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from nvc_train.codec.files import pad_frame
from nvc_train.codec.integer_codec import IntegerSSF
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.quant.export import load_integer_checkpoint
from nvc_train.quant.integer_warp import COORD_FRAC_BITS, gaussian_volume, warp
from nvc_train.quant.synthesis import latent_integers, motion_coordinates

from decode_speed import timed  # benchmarks/ is on sys.path when run as a script

SIZES = {"1080p": (1080, 1920), "720p": (720, 1280), "512p": (512, 768)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a pixel-exact integer checkpoint (format 3), or 'untrained'")
    ap.add_argument("--paths", nargs="+", default=["int8"], choices=["int8", "float32", "float64"],
                    help="GEMM paths of the exact convolutions to time")
    ap.add_argument("--sizes", nargs="+", default=["720p", "1080p"], choices=list(SIZES))
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = args.device
    if args.checkpoint == "untrained":
        import tempfile
        from pathlib import Path

        from gpu_check import untrained_checkpoint

        args.checkpoint = untrained_checkpoint(Path(tempfile.mkdtemp()), pixel_exact=True)
    ck = load_integer_checkpoint(args.checkpoint, device=dev)
    codec = ck.codec.eval()
    if not codec.pixel_exact:
        raise SystemExit(f"{args.checkpoint} is not pixel-exact (train with model.qat.scope=decoder)")
    twin = IntegerSSF(codec.model, dict(codec.hyperpriors)).eval()
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}")
    for name in args.sizes:
        h, w = SIZES[name]
        clip = [pad_frame(f).to(dev) for f in synthetic_clip(31337, args.frames, h, w)]
        coded, _ = codec.compress(clip)
        jobs = {"float synthesis": lambda: twin.decompress(coded, dev)}
        for path in args.paths:
            jobs[f"pixel-exact {path}"] = lambda path=path: codec.set_gemm_path(path).decompress(coded, dev)
        md5s = {k: [f.md5 for f in fn()] for k, fn in jobs.items()}  # warm-up
        assert len({tuple(v) for k, v in md5s.items() if k != "float synthesis"}) == 1, "paths disagree"
        times = {k: [] for k in jobs}
        order = list(jobs)
        for r in range(args.rounds):
            for k in (order if r % 2 == 0 else order[::-1]):
                times[k].append(timed(jobs[k], dev))
        for k, ts in times.items():
            med = statistics.median(ts)
            rows.append({"size": name, "padded": list(clip[0].shape[-2:]), "job": k, "seconds": round(med, 3),
                         "min_s": round(min(ts), 3), "max_s": round(max(ts), 3), "runs": [round(t, 3) for t in ts]})
            print(f"{name:6} {k:16} median {med:7.2f} s per {args.frames} frames (min {min(ts):.2f}, max {max(ts):.2f})",
                  flush=True)
        for path in args.paths:
            ratios = [p / f for p, f in zip(times[f"pixel-exact {path}"], times["float synthesis"])]
            rows.append({"size": name, "job": f"pixel-exact {path} / float synthesis",
                         "time_ratio_median": round(statistics.median(ratios), 3),
                         "time_ratio_min": round(min(ratios), 3), "time_ratio_max": round(max(ratios), 3)})
            print(f"{name:6} pixel-exact {path} / float synthesis ×{statistics.median(ratios):.3f} "
                  f"(per-round {min(ratios):.3f}–{max(ratios):.3f})", flush=True)
        codec.set_gemm_path(args.paths[0])

        # Where the pixel path's time goes, on the first P-frame.
        px = codec.pixels
        lat = {part: codec.hyperpriors[part].decompress(c, torch.device(dev)) for part, c in coded[1].latents.items()}
        y_m, y_r = latent_integers(lat["motion"]), latent_integers(lat["residual"])
        ref = px.keyframe(latent_integers(codec.hyperpriors["keyframe"].decompress(coded[0].latents["keyframe"],
                                                                                 torch.device(dev))))
        motion = px.decoders["motion"](y_m)
        parts = {
            "img decoder": lambda: px.decoders["img"](latent_integers(lat["motion"])),
            "motion decoder": lambda: px.decoders["motion"](y_m),
            "res decoder": lambda: px.decoders["res"](torch.cat((y_r, y_m), dim=1)),
            "volume + warp": lambda: warp(gaussian_volume(ref, px.num_levels, px.sigma0),
                                          motion_coordinates(motion, px.num_levels + 1, px.flow_reference,
                                                             COORD_FRAC_BITS)),
        }
        m = codec.model
        x_ref = ref.float() / (255 * 256)
        motion_f = m.motion_decoder(lat["motion"])

        def no_grad(fn):
            def run():
                with torch.no_grad():
                    fn()
            return run

        parts.update({
            "img decoder, float": no_grad(lambda: m.img_decoder(lat["motion"])),
            "motion decoder, float": no_grad(lambda: m.motion_decoder(lat["motion"])),
            "res decoder, float": no_grad(lambda: m.res_decoder(torch.cat((lat["residual"], lat["motion"]), dim=1))),
            "volume + warp, float": no_grad(lambda: m.forward_prediction(x_ref, motion_f)),
        })
        for k, fn in parts.items():
            med = statistics.median(timed(fn, dev) for _ in range(args.rounds))
            rows.append({"size": name, "job": f"part: {k}", "seconds": round(med, 3)})
            print(f"{name:6}   {k:22} {med:7.3f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "device": dev, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()

"""Motion compensation, integer vs float: ``ScaleSpaceFlow.forward_prediction`` (float32) vs
``nvc_train.quant.integer_warp`` (samples, volume, fixed-point positions, warp; int64).

Same frame and motion for both (a synthetic frame, a smooth random flow and scale field),
one untimed warm-up each, then ``--rounds`` rounds in alternating order; reports the median
and the range of each side and of the per-round ratio, and the largest difference between
the two outputs in 8-bit levels.

    .venv/bin/python benchmarks/integer_warp_speed.py [--height 1088 --width 1920 --rounds 5 --device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=1088)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    from compressai.models.video import ScaleSpaceFlow

    from nvc_train.data.synthetic import synthetic_clip
    from nvc_train.quant import integer_warp as iw

    dev = torch.device(args.device)
    x = synthetic_clip(0, 1, args.height, args.width).to(dev)
    g = torch.Generator().manual_seed(1)
    motion = F.interpolate(torch.randn(1, 3, args.height // 64, args.width // 64, generator=g) * 0.02,
                           size=(args.height, args.width), mode="bilinear").to(dev)
    ssf = ScaleSpaceFlow().to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def run_float():
        return ssf.forward_prediction(x, motion)

    @torch.no_grad()
    def run_integer():
        coords = iw.fixed_point_coordinates(motion[:, :2], motion[:, 2:], ssf.num_levels + 1)
        return iw.warp(iw.gaussian_volume(iw.to_samples(x)), coords)

    jobs = {"float": run_float, "integer": run_integer}
    outputs = {name: job() for name, job in jobs.items()}  # warm-up, and the outputs compared
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for r in range(args.rounds):
        for name in (list(jobs) if r % 2 == 0 else list(jobs)[::-1]):
            sync()
            t0 = time.perf_counter()
            jobs[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    diff = (outputs["integer"].double() / 2**iw.SAMPLE_FRAC_BITS - outputs["float"].double() * 255).abs().max()
    ratios = [i / f for i, f in zip(times["integer"], times["float"])]
    print(f"{args.width}x{args.height}, device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.rounds} alternating rounds after a warm-up")
    print("| side | median s | min–max s |\n|---|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.3f} | {min(ts):.3f}–{max(ts):.3f} |")
    print(f"integer / float per round: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}–{max(ratios):.2f}")
    print(f"largest difference integer vs float: {float(diff):.3f} of an 8-bit level")


if __name__ == "__main__":
    main()

"""The exact transposed convolution on the synthesis decoders' frame-sized layers: GEMM + fold
(col2im, in row bands) vs the four output parity classes (polyphase), same inputs.

Shapes are those of one synthesis decoder decoding a 720p frame (padded 768×1280): 192→128
at 48×80, 128→128 at 96×160 and 192×320, 128→3 at 384×640, with 16-bit activations and int8
weights. Each round runs both algorithms on every layer, in alternating order after a
warm-up; both must agree bit for bit. Reported: median and min–max per layer and in total.

    .venv/bin/python benchmarks/synthesis_conv_speed.py [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nvc_train.quant import arith

LAYERS = [(192, 128, 48, 80, 2**23), (128, 128, 96, 160, 2**16), (128, 128, 192, 320, 2**16), (128, 3, 384, 640, 2**16)]
IMPLS = {"GEMM + fold": arith.conv_transpose_col2im, "parity classes": arith.conv_transpose_phases}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    cases = [(torch.randint(0, amax, (1, c_in, h, w), generator=g).to(args.device),
              torch.randint(-127, 128, (c_in, c_out, 5, 5), generator=g).to(args.device))
             for c_in, c_out, h, w, amax in LAYERS]

    def run(impl, x, w):
        t = time.perf_counter()
        out = impl(x, w)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t, out

    for x, w in cases:  # warm-up, and the two must agree
        outs = [run(impl, x, w)[1] for impl in IMPLS.values()]
        assert torch.equal(*outs), "the two algorithms disagree"
    times = {(name, i): [] for name in IMPLS for i in range(len(cases))}
    for r in range(args.rounds):
        for name in (list(IMPLS) if r % 2 == 0 else list(IMPLS)[::-1]):
            for i, (x, w) in enumerate(cases):
                times[name, i].append(run(IMPLS[name], x, w)[0])
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.rounds} alternating rounds; one synthesis decoder at 720p")
    print("| layer (C_in→C_out at H×W) | " + " | ".join(f"{n} median (min–max) ms" for n in IMPLS) + " |")
    print("|---|" + "---|" * len(IMPLS))
    for i, (c_in, c_out, h, w, _) in enumerate(LAYERS):
        cells = [f"{1000 * statistics.median(times[n, i]):.0f} ({1000 * min(times[n, i]):.0f}–"
                 f"{1000 * max(times[n, i]):.0f})" for n in IMPLS]
        print(f"| {c_in}→{c_out} at {h}×{w} | " + " | ".join(cells) + " |")
    totals = {n: [sum(times[n, i][r] for i in range(len(cases))) for r in range(args.rounds)] for n in IMPLS}
    print("| all four | " + " | ".join(f"{1000 * statistics.median(t):.0f} ({1000 * min(t):.0f}–{1000 * max(t):.0f})"
                                       for t in totals.values()) + " |")
    print(f"production choice (conv_transpose_exact): parity classes when H·W ≥ {arith.PHASE_MIN_POSITIONS} "
          f"and C_out ≥ {arith.PHASE_MIN_CHANNELS}, else GEMM + fold")


if __name__ == "__main__":
    main()

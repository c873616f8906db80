"""One synthesis decoder's transposed convolutions: PyTorch's float32 ``conv_transpose2d`` (what
the float decoder runs) vs the exact convolution on each GEMM path (int8 digit planes with
``torch._int_mm``, chunked float32, float64), same inputs.

Shapes are those of one synthesis decoder decoding a frame of ``--size`` (720p: padded
768×1280): 192→128 at H/16×W/16, 128→128 at H/8 and H/4, 128→3 at H/2, with 16-bit
activations (layer 0: latents up to ±2**23) and int8 weights. The exact paths return int64
accumulators (plus bias), the float one float32 outputs: the work each decoder does per
layer before its activation. Each round runs every implementation on every layer, in
alternating order after a warm-up; the exact paths must agree bit for bit. Reported: median
and min–max per layer and in total.

    .venv/bin/python benchmarks/synthesis_conv_speed.py [--size 720p] [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from nvc_train.quant import exact_conv

SIZES = {"720p": (768, 1280), "1080p": (1088, 1920)}


def layers(h: int, w: int) -> list[tuple[int, int, int, int, int, int]]:
    """(C_in, C_out, H_in, W_in, input low, input high) of one synthesis decoder."""
    return [(192, 128, h // 16, w // 16, -2**23, 2**23), (128, 128, h // 8, w // 8, 0, 2**16 - 1),
            (128, 128, h // 4, w // 4, 0, 2**16 - 1), (128, 3, h // 2, w // 2, 0, 2**16 - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="720p", choices=list(SIZES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    shapes = layers(*SIZES[args.size])
    cases = []
    for c_in, c_out, h, w, lo, hi in shapes:
        x = torch.randint(lo, hi, (1, c_in, h, w), generator=g).to(dev)
        wt = torch.randint(-127, 128, (c_in, c_out, 5, 5), generator=g).to(dev)
        b = torch.randint(-2**20, 2**20, (c_out,), generator=g).to(dev)
        cases.append((x, wt, b, x.float(), wt.float(), b.float()))

    def exact(path):
        return lambda x, wt, b, *_: exact_conv.conv_transpose_exact(x, wt, b, path=path)

    impls = {"float32 conv_transpose2d": lambda x, wt, b, xf, wf, bf: F.conv_transpose2d(
        xf, wf, bf, stride=2, padding=2, output_padding=1)}
    impls.update({f"exact {p}": exact(p) for p in exact_conv.PATHS})

    def run(impl, case):
        t = time.perf_counter()
        out = impl(*case)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, out

    for case in cases:  # warm-up, and the exact paths must agree
        outs = [run(impls[f"exact {p}"], case)[1] for p in exact_conv.PATHS]
        assert all(torch.equal(outs[0], o) for o in outs[1:]), "the exact paths disagree"
        run(impls["float32 conv_transpose2d"], case)
    names = list(impls)
    times = {(name, i): [] for name in names for i in range(len(cases))}
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            for i, case in enumerate(cases):
                times[name, i].append(run(impls[name], case)[0])
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, {args.rounds} alternating "
          f"rounds; one synthesis decoder at {args.size}; default exact path here: {exact_conv.default_path(dev)}")
    print("| layer (C_in→C_out at H×W) | " + " | ".join(f"{n} median (min–max) ms" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for i, (c_in, c_out, h, w, _, _) in enumerate(shapes):
        cells = [f"{1000 * statistics.median(times[n, i]):.0f} ({1000 * min(times[n, i]):.0f}–"
                 f"{1000 * max(times[n, i]):.0f})" for n in names]
        print(f"| {c_in}→{c_out} at {h}×{w} | " + " | ".join(cells) + " |")
    totals = {n: [sum(times[n, i][r] for i in range(len(cases))) for r in range(args.rounds)] for n in names}
    print("| all four | " + " | ".join(f"{1000 * statistics.median(t):.0f} ({1000 * min(t):.0f}–{1000 * max(t):.0f})"
                                       for t in totals.values()) + " |")


if __name__ == "__main__":
    main()

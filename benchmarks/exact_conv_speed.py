"""Hyper-decoder time: the exact transposed convolution as GEMM + fold (now) vs PyTorch's
float64 ``conv_transpose2d`` under ``cudnn.flags(enabled=False)`` (before, nvc-train ≤ 0.1).

Both run the same six integer hyper-decoders of one checkpoint on the same z symbols (a
1080p frame's hyper-latent, 17×30, symbols of real magnitude), in the same process, the
implementations alternating each round after a warm-up; reported: median and min–max of the
per-round times of all six decoders together.

    .venv/bin/python benchmarks/exact_conv_speed.py [--checkpoint CKPT] [--rounds 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import untrained_checkpoint  # noqa: E402

from nvc_train.quant import arith  # noqa: E402
from nvc_train.quant.export import load_integer_checkpoint  # noqa: E402
from nvc_train.quant.fake_quant import integer_hyper_input  # noqa: E402

GEMM_FOLD = arith.conv_transpose_exact


def native_float64(x_int, weight_int):
    """The previous implementation, kept here only to measure it."""
    x = x_int.to(torch.float64)
    w = weight_int.to(device=x.device, dtype=torch.float64)
    with torch.backends.cudnn.flags(enabled=False):
        acc = F.conv_transpose2d(x, w, stride=2, padding=2, output_padding=1)
    return torch.round(acc).long()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint or untrained_checkpoint(Path(tmp))
        ck = load_integer_checkpoint(path, args.device)
    g = torch.Generator().manual_seed(0)
    symbols = torch.randint(-12, 13, (1, 192, 17, 30), generator=g).to(args.device)

    def all_decoders():
        outs = []
        for ihp in ck.codec.hyperpriors.values():
            z = integer_hyper_input(symbols, ihp.median_q, ihp.input_frac_bits)
            outs += [ihp.mean_decoder(z), ihp.scale_decoder(z)]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return outs

    times = {"GEMM + fold (now)": [], "native float64 conv (before)": []}
    impls = {"GEMM + fold (now)": GEMM_FOLD, "native float64 conv (before)": native_float64}
    results = {}
    for name, impl in impls.items():  # warm-up, and both must agree
        arith.conv_transpose_exact = impl
        results[name] = all_decoders()
    assert all(torch.equal(a, b) for a, b in zip(*results.values())), "the two implementations disagree"
    for r in range(args.rounds):
        order = list(impls) if r % 2 == 0 else list(impls)[::-1]
        for name in order:
            arith.conv_transpose_exact = impls[name]
            t = time.perf_counter()
            all_decoders()
            times[name].append(time.perf_counter() - t)
    arith.conv_transpose_exact = GEMM_FOLD
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"six hyper-decoders on a 17×30 hyper-latent (1080p), {args.rounds} alternating rounds")
    print("| implementation | median (ms) | min–max (ms) |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {1000 * statistics.median(ts):.0f} | {1000 * min(ts):.0f}–{1000 * max(ts):.0f} |")


if __name__ == "__main__":
    main()

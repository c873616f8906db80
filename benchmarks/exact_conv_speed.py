"""Hyper-decoder time by GEMM path of the exact convolution: int8 digit planes
(``torch._int_mm``), chunked float32, float64, and CompressAI's float32 hyper-decoders.

All run the same six hyper-decoders of one checkpoint on the same z symbols (a 1080p frame's
hyper-latent, 17×30, symbols of real magnitude), in the same process, alternating each round
after a warm-up (the three exact paths checked equal); reported: median and min–max of the
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import untrained_checkpoint  # noqa: E402

from nvc_train.models.ssf import hyperprior  # noqa: E402
from nvc_train.quant import exact_conv  # noqa: E402
from nvc_train.quant.export import load_integer_checkpoint  # noqa: E402
from nvc_train.quant.fake_quant import integer_hyper_input  # noqa: E402

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

    def all_decoders(path):
        ck.codec.set_gemm_path(path)
        outs = []
        for ihp in ck.codec.hyperpriors.values():
            z = integer_hyper_input(symbols, ihp.median_q, ihp.input_frac_bits)
            outs += [ihp.mean_decoder(z), ihp.scale_decoder(z)]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return outs

    @torch.no_grad()
    def float_decoders(_):
        outs = []
        for part, ihp in ck.codec.hyperpriors.items():
            hp = hyperprior(ck.codec.model, part)
            z_hat = integer_hyper_input(symbols, ihp.median_q, ihp.input_frac_bits).float() / 2**ihp.input_frac_bits
            outs += [hp.hyper_decoder_mean(z_hat), hp.hyper_decoder_scale(z_hat)]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return outs

    impls = {f"exact {p}": (all_decoders, p) for p in exact_conv.PATHS}
    impls["float32 (CompressAI)"] = (float_decoders, None)
    results = {name: fn(p) for name, (fn, p) in impls.items()}  # warm-up, and the exact paths agree
    exact = [results[f"exact {p}"] for p in exact_conv.PATHS]
    assert all(torch.equal(a, b) for other in exact[1:] for a, b in zip(exact[0], other)), "paths disagree"
    times = {name: [] for name in impls}
    for r in range(args.rounds):
        for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
            fn, p = impls[name]
            t = time.perf_counter()
            fn(p)
            times[name].append(time.perf_counter() - t)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"six hyper-decoders on a 17×30 hyper-latent (1080p), {args.rounds} alternating rounds")
    print("| implementation | median (ms) | min–max (ms) |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {1000 * statistics.median(ts):.1f} | {1000 * min(ts):.1f}–{1000 * max(ts):.1f} |")

if __name__ == "__main__":
    main()

"""An image model's synthesis ``g_s``: CompressAI's float32 one vs nvc-train's integer one
(pixel-exact: int8 transposed convolutions, integer inverse GDN with exact square roots) on
each GEMM path, decoding the same latents.

The model is a randomly initialised ``bmshj2018-hyperprior`` at the zoo's channels for
``--quality`` (q1–5: N=128, M=192), its fake-quant synthesis calibrated on the latents it is
timed on; weights do not change the work, only the values. The latents are ``round(g_a(x))``
of a generated image of ``--size`` (Kodak: 768×512). Each round runs every implementation
once, in alternating order after a warm-up; the integer paths must agree bit for bit.
Reported: median and min–max seconds per decode, and the ratio to the float synthesis.

    .venv/bin/python benchmarks/image_synthesis_speed.py [--size 768x512] [--quality 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nvc_train.data.synthetic import synthetic_clip
from nvc_train.models.image import ZOO_CHANNELS, build_image_model
from nvc_train.quant.config import QuantConfig
from nvc_train.quant.image_synthesis import FakeQuantImageSynthesis, IntegerImageSynthesis, convert_image_synthesis
from nvc_train.quant.synthesis import latent_integers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="768x512", help="WxH, multiples of 64")
    ap.add_argument("--quality", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    model = build_image_model("bmshj2018-hyperprior", ZOO_CHANNELS["bmshj2018-hyperprior"][args.quality]).eval()
    with torch.no_grad():
        y_hat = torch.round(model.g_a(synthetic_clip(0, 1, h, w)))
        fq = FakeQuantImageSynthesis(3, QuantConfig(scope="decoder"))
        fq(model.g_s, y_hat)
    synthesis = IntegerImageSynthesis(convert_image_synthesis(model.g_s, fq))
    y_int = latent_integers(y_hat)

    def integer(path):
        def run():
            synthesis.gemm_path = path
            return synthesis(y_int)
        return run

    impls = {"float32 g_s (CompressAI)": lambda: model.g_s(y_hat),
             "integer g_s, int8 GEMMs": integer("int8"),
             "integer g_s, float32 GEMMs": integer("float32"),
             "integer g_s, float64 GEMMs": integer("float64")}
    times: dict[str, list[float]] = {name: [] for name in impls}
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, impl in impls.items():  # warm-up (and the outputs to compare)
            outputs[name] = impl()
        integers = [o for n, o in outputs.items() if n.startswith("integer")]
        assert all(torch.equal(integers[0], o) for o in integers), "the integer paths disagree"
        names = list(impls)
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                t = time.perf_counter()
                impls[name]()
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times[names[0]])
    print(f"bmshj2018-hyperprior q{args.quality} synthesis (N, M = {model.N}, {model.M}), {w}x{h}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds (alternating order)")
    print("| implementation | median (s) | min–max (s) | × float |")
    print("|---|---:|---:|---:|")
    for name in names:
        t = times[name]
        print(f"| {name} | {statistics.median(t):.3f} | {min(t):.3f}–{max(t):.3f} | {statistics.median(t) / base:.1f} |")


if __name__ == "__main__":
    main()

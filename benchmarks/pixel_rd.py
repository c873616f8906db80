"""RD cost of pixel-exact decoding: the pixel-exact model vs the hyperprior-integer model and
the float control, the same fine-tuning budget from the same float parent.

For each quality: train a float SSF on synthetic clips (the parent), then fine-tune three
copies of it for the same number of steps with ``train_scope="all"``:
  * ``float_control``: no QAT (what the extra steps alone give);
  * ``hyperprior``: QAT of the six hyper-decoders (``qat.scope: hyperprior``);
  * ``pixel``: QAT of the whole decoder (``qat.scope: decoder``);
and evaluate each by real coding of separate evaluation clips (the integer models through
``IntegerSSF``: the pixel-exact one's PSNR is that of its 8-bit output frames). Reports the
points and, where the curves allow it, BD-rate (PCHIP) of each integer model against the
float control and of the pixel model against the hyperprior one.

    .venv/bin/python benchmarks/pixel_rd.py --qualities 2 4 6 8 --out runs/bench-pixel-rd
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L

from integer_rd import clips, fit  # benchmarks/ is on sys.path when run as a script
from nvc_train.eval.bdrate import bd_psnr, bd_rate
from nvc_train.lit.module import SSFLitModule
from nvc_train.quant import ptq as P
from nvc_train.quant.config import QuantConfig

VARIANTS = {"float_control": None, "hyperprior": QuantConfig(), "pixel": QuantConfig(scope="decoder")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qualities", type=int, nargs="+", default=[2, 4, 6, 8])
    ap.add_argument("--float-steps", type=int, default=300)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--eval-clips", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default="runs/bench-pixel-rd")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    eval_clips = clips(5_000_000, args.eval_clips, args.size)
    results = {"float": [], **{k: [] for k in VARIANTS}, "seconds": {}, "args": vars(args)}
    t0 = time.perf_counter()
    for q in args.qualities:
        L.seed_everything(q)
        parent = SSFLitModule(quality=q, learning_rate=1e-4, real_coding_clips=0)
        fit(parent, args.float_steps, seed=q)
        parent.model.eval().update(force=True)
        results["float"].append(P.evaluate_float(parent.model, eval_clips, parent.lmbda)._asdict())
        for name, config in VARIANTS.items():
            module = SSFLitModule(quality=q, real_coding_clips=0, train_scope="all", qat=config)
            module.load_state_dict(parent.state_dict(), strict=False)
            start = time.perf_counter()
            fit(module, args.finetune_steps, seed=100 + q)
            results["seconds"].setdefault(name, []).append(round(time.perf_counter() - start, 1))
            module.model.eval().update(force=True)
            if config is None:
                point = P.evaluate_float(module.model, eval_clips, parent.lmbda)
            else:
                point = P.evaluate_integer(module.model, module.qat.eval(), eval_clips, parent.lmbda)
            results[name].append(point._asdict())
        print(f"q{q} done after {time.perf_counter() - t0:.0f} s: "
              + json.dumps({k: results[k][-1] for k in ("float", *VARIANTS)}), flush=True)

    def curve(name):
        return [p["bpp"] for p in results[name]], [p["psnr"] for p in results[name]]

    summary = {}
    for test, anchor in (("pixel", "float_control"), ("hyperprior", "float_control"), ("pixel", "hyperprior"),
                         ("pixel", "float")):
        try:
            summary[f"{test} vs {anchor}"] = {"bd_rate_%": bd_rate(*curve(anchor), *curve(test)),
                                              "bd_psnr_dB": bd_psnr(*curve(anchor), *curve(test))}
        except ValueError as exc:
            summary[f"{test} vs {anchor}"] = {"error": str(exc)}
    results["bd"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| model | " + " | ".join(f"q{q} bpp / PSNR" for q in args.qualities) + " |")
    print("|---|" + "---|" * len(args.qualities))
    for name in ("float", *VARIANTS):
        print(f"| {name} | " + " | ".join(f"{p['bpp']:.4f} / {p['psnr']:.2f}" for p in results[name]) + " |")
    print("\n| comparison | BD-rate | BD-PSNR |\n|---|---|---|")
    for k, v in summary.items():
        print(f"| {k} | " + (f"{v['bd_rate_%']:+.2f} % | {v['bd_psnr_dB']:+.3f} dB |" if "error" not in v else f"{v['error']} | |"))
    print(f"\nfine-tuning seconds per variant: {results['seconds']}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

"""RD cost of the integer hyperprior: QAT and the best PTQ candidate vs the float parent.

For each quality: train float SSF on synthetic clips, then
  * QAT fine-tune the hyperpriors (train_scope="hyperpriors": transforms frozen),
  * a float control fine-tuned with the same steps and scope but without QAT (so that the
    extra hyperprior training is not credited to quantization),
  * the PTQ observer × scheme search (best candidate chosen on validation clips),
and evaluate all of them by real encoding/decoding of separate evaluation clips. Reports
BD-rate (PCHIP) of each integer model against the float parent and the float control.

    .venv/bin/python benchmarks/integer_rd.py --qualities 2 4 6 8 --out runs/bench-rd

On 2 CPU cores the defaults take about half an hour; results go to OUT/results.json,
OUT/rd.png and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L

from nvc_train.data.synthetic import synthetic_clip
from nvc_train.eval.bdrate import bd_psnr, bd_rate
from nvc_train.lit.data import SyntheticClipDataModule
from nvc_train.lit.module import SSFLitModule
from nvc_train.quant import ptq as P
from nvc_train.quant.config import QuantConfig


def fit(module, steps: int, seed: int) -> None:
    L.seed_everything(seed)
    data = SyntheticClipDataModule(num_frames=3, crop=128, train_size=192, val_size=128, num_train_clips=100_000,
                                   num_val_clips=1, batch_size=4, num_workers=1, seed=seed)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        enable_progress_bar=True)
    trainer.fit(module, datamodule=data)


def clips(first_seed: int, n: int, size: int):
    return [[f.unsqueeze(0) for f in synthetic_clip(first_seed + i, 3, size, size)] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qualities", type=int, nargs="+", default=[2, 4, 6, 8])
    ap.add_argument("--float-steps", type=int, default=300)
    ap.add_argument("--qat-steps", type=int, default=100)
    ap.add_argument("--eval-clips", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default="runs/bench-rd")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    eval_clips = clips(5_000_000, args.eval_clips, args.size)
    calib, val = clips(8_000_000, 4, args.size), clips(9_000_000, 2, args.size)
    results = {"float": [], "float_control": [], "qat": [], "ptq": [], "ptq_choice": [], "args": vars(args)}
    t0 = time.perf_counter()
    for q in args.qualities:
        # Seed before the parent is built: its initial weights must not depend on what ran
        # before (the first quality's did, and its RD point changed from run to run).
        L.seed_everything(q)
        parent = SSFLitModule(quality=q, learning_rate=1e-4, real_coding_clips=0)
        fit(parent, args.float_steps, seed=q)
        lmbda = parent.lmbda
        parent_model = parent.model.eval()
        parent_model.update(force=True)
        results["float"].append(P.evaluate_float(parent_model, eval_clips, lmbda)._asdict())

        control = SSFLitModule(quality=q, real_coding_clips=0, train_scope="hyperpriors")
        control.load_state_dict(parent.state_dict())
        fit(control, args.qat_steps, seed=100 + q)
        control.model.eval().update(force=True)
        results["float_control"].append(P.evaluate_float(control.model, eval_clips, lmbda)._asdict())

        qat = SSFLitModule(quality=q, real_coding_clips=0, train_scope="hyperpriors", qat=QuantConfig())
        qat.load_state_dict(parent.state_dict(), strict=False)
        fit(qat, args.qat_steps, seed=100 + q)
        qat.model.eval().update(force=True)
        results["qat"].append(P.evaluate_integer(qat.model, qat.qat.eval(), eval_clips, lmbda)._asdict())

        latents = P.hyper_latents(parent_model, calib, 8)
        rows = []
        for choice in P.all_choices():
            try:
                rows.append(P.SearchRow(choice, P.evaluate_integer(parent_model, P.ptq_quantizer(parent_model, choice, latents), val, lmbda)))
            except ValueError as exc:
                rows.append(P.SearchRow(choice, None, str(exc)))
        best = P.search_rows_sorted(rows)[0].choice
        results["ptq_choice"].append(best.name)
        results["ptq"].append(P.evaluate_integer(parent_model, P.ptq_quantizer(parent_model, best, latents), eval_clips, lmbda)._asdict())
        print(f"q{q} done after {time.perf_counter() - t0:.0f} s: " + json.dumps({k: results[k][-1] for k in ("float", "float_control", "qat", "ptq")}))

    def curve(name):
        return [p["bpp"] for p in results[name]], [p["psnr"] for p in results[name]]

    summary = {}
    for test in ("qat", "ptq", "float_control"):
        for anchor in ("float", "float_control"):
            if test == anchor:
                continue
            try:
                summary[f"{test} vs {anchor}"] = {"bd_rate_%": bd_rate(*curve(anchor), *curve(test)),
                                                  "bd_psnr_dB": bd_psnr(*curve(anchor), *curve(test))}
            except ValueError as exc:
                summary[f"{test} vs {anchor}"] = {"error": str(exc)}
    results["bd"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, style in (("float", "o-"), ("float_control", "s--"), ("qat", "^-"), ("ptq", "v:")):
        ax.plot(*curve(name), style, label=name)
    ax.set_xlabel("bpp")
    ax.set_ylabel("PSNR-RGB (dB)")
    ax.set_title("SSF on synthetic clips: integer hyperprior vs float")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "rd.png", dpi=120)

    print("\n| model | " + " | ".join(f"q{q} bpp / PSNR" for q in args.qualities) + " |")
    print("|---|" + "---|" * len(args.qualities))
    for name in ("float", "float_control", "qat", "ptq"):
        print(f"| {name} | " + " | ".join(f"{p['bpp']:.4f} / {p['psnr']:.2f}" for p in results[name]) + " |")
    print("\n| comparison | BD-rate | BD-PSNR |\n|---|---|---|")
    for k, v in summary.items():
        print(f"| {k} | " + (f"{v['bd_rate_%']:+.2f} % | {v['bd_psnr_dB']:+.3f} dB |" if "error" not in v else f"{v['error']} | |"))
    print(f"\nPTQ best candidates: {results['ptq_choice']}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

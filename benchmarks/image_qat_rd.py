"""RD cost of QAT for the image hyperpriors: the integer checkpoint against its float parent
and against a float fine-tune of the same steps (the control).

For each architecture and quality: the demo presets (configs/demo/image_float.yaml, then
configs/demo/image_qat.yaml from the float model: pixel-exact QAT, qat scope and train scope
"decoder"; toy channels [32, 48], generated 128² crops) at that quality, ``export-integer``;
the control runs the same QAT preset with ``--model.qat null`` (the same parameters train for
the same steps, in float). All three code the same unseen generated images: the float
models with CompressAI's own ``compress``/``decompress``, the integer checkpoint with
nvc-train's codec (integer hyper-decoder and synthesis). Real bits of the entropy-coded
strings, PSNR-RGB of the reconstruction. Toy scale: the numbers say what QAT costs a toy
model on generated images, not what it costs CompressAI's zoo models on Kodak.

    WANDB_MODE=offline .venv/bin/python benchmarks/image_qat_rd.py --out-dir runs/bench-image \\
        --qualities 3 6 [--float-steps 1500 --qat-steps 300] [--json benchmarks/image_qat_rd_results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nvc_train.commands.demo import _fit
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.eval.metrics import bits_of, psnr
from nvc_train.lit.checkpoints import export_integer_from_lightning, lit_module_from_checkpoint, save_float_state_dict
from nvc_train.quant.image_export import load_image_checkpoint

EVAL_SEEDS = range(8_000_001, 8_000_007)
EVAL_SIZE = (256, 384)


def one_point(architecture: str, quality: int, out: Path, float_steps: int, qat_steps: int) -> dict:
    run = out / f"{architecture}-q{quality}"
    run.mkdir(parents=True, exist_ok=True)
    common = ["--model.architecture", architecture, "--model.quality", str(quality)]
    float_ckpt = _fit(run, "image_float", float_steps, common, quiet=True)
    module, _ = lit_module_from_checkpoint(float_ckpt)
    pth = run / "float.pth.tar"
    save_float_state_dict(module.model, pth, quality, module.lmbda)
    qat_ckpt = _fit(run, "image_qat", qat_steps, [*common, "--model.init_weights", str(pth)], quiet=True)
    control_ckpt = _fit(run / "control", "image_qat", qat_steps,
                        [*common, "--model.init_weights", str(pth), "--model.qat", "null"], quiet=True)
    ck = load_image_checkpoint(export_integer_from_lightning(qat_ckpt, run, "int"))
    floats = {"float": module.model.eval(), "control": lit_module_from_checkpoint(control_ckpt)[0].model.eval()}
    for model in floats.values():
        model.update(force=True)
    h, w = EVAL_SIZE
    totals = {"float": [0, 0.0], "control": [0, 0.0], "integer": [0, 0.0]}
    with torch.no_grad():
        for seed in EVAL_SEEDS:
            x = synthetic_clip(seed, 1, h, w)
            for key, model in floats.items():
                result = model.compress(x)
                x_float = model.decompress(result["strings"], result["shape"])["x_hat"]
                totals[key][0] += bits_of(result["strings"])
                totals[key][1] += float(psnr(x_float.clamp(0, 1), x))
            coded, decoded = ck.codec.compress(x)
            totals["integer"][0] += 8 * (len(coded.y_string) + len(coded.z_string))
            totals["integer"][1] += float(psnr(decoded.x_hat, x))
    n = len(EVAL_SEEDS)
    point = {"architecture": architecture, "quality": quality, "lmbda": module.lmbda,
             **{f"{k}_bpp": v[0] / (n * h * w) for k, v in totals.items()},
             **{f"{k}_psnr": v[1] / n for k, v in totals.items()}}
    point["bpp_change_percent"] = 100 * (point["integer_bpp"] / point["control_bpp"] - 1)
    point["psnr_change_db"] = point["integer_psnr"] - point["control_psnr"]
    point["pixel_exact"] = ck.codec.pixel_exact
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench-image"))
    parser.add_argument("--architectures", nargs="+", default=["bmshj2018-hyperprior", "mbt2018-mean"])
    parser.add_argument("--qualities", nargs="+", type=int, default=[3, 6])
    parser.add_argument("--float-steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--qat-steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    points = []
    print("| architecture | quality | parent bpp / dB | float fine-tune bpp / dB | integer bpp / dB "
          "| Δ bpp vs fine-tune | Δ PSNR vs fine-tune |")
    print("|---|---:|---|---|---|---:|---:|")
    for architecture in args.architectures:
        for quality in args.qualities:
            start = time.perf_counter()
            p = one_point(architecture, quality, args.out_dir, args.float_steps, args.qat_steps)
            p["seconds"] = round(time.perf_counter() - start, 1)
            points.append(p)
            print(f"| {architecture} | {quality} | {p['float_bpp']:.4f} / {p['float_psnr']:.2f} "
                  f"| {p['control_bpp']:.4f} / {p['control_psnr']:.2f} | {p['integer_bpp']:.4f} / {p['integer_psnr']:.2f} "
                  f"| {p['bpp_change_percent']:+.1f} % | {p['psnr_change_db']:+.2f} dB |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"eval_images": len(EVAL_SEEDS), "eval_size": EVAL_SIZE, "points": points},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()

"""``make demo``: float SSF training → QAT fine-tuning → integer export → conformance → RD.

Everything runs on the built-in synthetic data with the presets in ``configs/demo/``; run
folders go to ``runs/demo/{float,qat}`` (W&B offline files included) and the models to
``checkpoints/demo/``. Re-running resumes finished or interrupted runs from their last
checkpoint instead of starting over.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from nvc_train.cli import run_lightning
from nvc_train.commands import export_integer_from_lightning, lit_module_from_checkpoint, save_float_state_dict
from nvc_train.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
EVAL_SEED = 7_000_001  # a clip neither training nor validation used


def _fit(config: Path, run_dir: Path, max_steps: int | None, extra: list[str]) -> Path:
    last = run_dir / "checkpoints" / "last.ckpt"
    args = ["fit", "--config", str(config), *extra]
    if max_steps is not None:
        args += ["--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", str(max_steps)]
    if last.is_file():
        print(f"[demo] resuming from {last}")
        args += ["--ckpt_path", str(last)]
    run_lightning(args)
    import wandb

    wandb.finish()  # the next stage must start a W&B run of its own
    if not last.is_file():
        raise UserError(f"training finished without writing {last}")
    return last


def _rd_on_clip(encode_decode, frames: list[torch.Tensor]) -> tuple[float, float]:
    """(bpp, PSNR dB) of a codec function frames → (bits, decoded frames)."""
    from nvc_train.eval.metrics import psnr

    bits, decoded = encode_decode(frames)
    h, w = frames[0].shape[-2:]
    return bits / (h * w * len(frames)), sum(psnr(d, x) for d, x in zip(decoded, frames)) / len(frames)


def run_demo(out: Path, checkpoints: Path, float_steps: int | None, qat_steps: int | None) -> int:
    from nvc_train.quant.conformance import run_checks
    from nvc_train.data.synthetic import synthetic_clip
    from nvc_train.eval.metrics import bits_of
    from nvc_train.codec.integer_codec import coded_bits
    from nvc_train.quant.export import load_integer_checkpoint

    start = time.perf_counter()
    checkpoints.mkdir(parents=True, exist_ok=True)
    float_pth = checkpoints / "ssf-float.pth.tar"
    print("[demo] 1/5 float SSF training (configs/demo/float.yaml)")
    float_ckpt = _fit(CONFIGS / "float.yaml", out / "float", float_steps, [])
    float_module, _ = lit_module_from_checkpoint(float_ckpt)
    save_float_state_dict(float_module.model, float_pth)

    print("[demo] 2/5 QAT fine-tuning of the hyper-decoders (configs/demo/qat.yaml)")
    qat_ckpt = _fit(CONFIGS / "qat.yaml", out / "qat", qat_steps, ["--model.init_weights", str(float_pth)])

    print("[demo] 3/5 integer export")
    int_path = export_integer_from_lightning(qat_ckpt, checkpoints, "ssf-int")
    fixed = checkpoints / "ssf-int.ckpt"
    shutil.copyfile(int_path, fixed)
    shutil.copyfile(int_path.with_suffix(".md"), fixed.with_suffix(".md"))

    print("[demo] 4/5 conformance")
    ck = load_integer_checkpoint(fixed)
    checks = list(run_checks(ck.codec, ck.conformance))
    conformance_ok = all(c.ok for c in checks)

    print("[demo] 5/5 encode and decode a generated clip (3 frames, 256x256)")
    frames = [f.unsqueeze(0) for f in synthetic_clip(EVAL_SEED, 3, 256, 256)]
    model = float_module.model.eval()

    def float_codec(fr):
        with torch.no_grad():
            strings, shapes = model.compress(fr)
            return bits_of(strings), model.decompress(strings, shapes)

    def int_codec(fr):
        c, _ = ck.codec.compress(fr)
        return coded_bits(c), [d.x_hat for d in ck.codec.decompress(c)]

    f_bpp, f_psnr = _rd_on_clip(float_codec, frames)
    i_bpp, i_psnr = _rd_on_clip(int_codec, frames)
    print()
    print("| model | bpp | PSNR-RGB (dB) |")
    print("|---|---|---|")
    print(f"| float (CompressAI compress/decompress) | {f_bpp:.4f} | {f_psnr:.2f} |")
    print(f"| integer hyperprior (QAT) | {i_bpp:.4f} | {i_psnr:.2f} |")
    print()
    print(f"float model:        {float_pth}")
    print(f"integer checkpoint: {int_path} (also {fixed}), model card {fixed.with_suffix('.md')}")
    print(f"run folders:        {out / 'float'}, {out / 'qat'} (W&B offline runs in */wandb; `wandb sync` uploads)")
    print(f"conformance:        {'PASS' if conformance_ok else 'FAIL'} ({len(checks)} checks: "
          f"{ck.conformance.describe()})")
    print(f"demo took {time.perf_counter() - start:.0f} s")
    return 0 if conformance_ok else 1

"""``make demo``: float SSF training → QAT fine-tuning → integer export → conformance → RD.

Everything runs on the built-in synthetic data with the presets in ``configs/demo/``; under
``--out-dir`` (default ``runs/demo``) go the run folders ``float/`` and ``qat/`` (W&B offline
files included) and the models. Re-running resumes finished or interrupted runs from their
last checkpoint instead of starting over. With ``--pixel-exact`` the QAT stage covers the whole
decoder (``configs/demo/qat_decoder.yaml``, run folder ``qat_decoder/``, model
``ssf-pixel.ckpt``) and the result lists each decoded frame's MD5.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from nvc_train.commands.common import Deprecated, add_quiet
from nvc_train.errors import UserError
from nvc_train.presets import CONFIGS, preset_in_run_dir

EVAL_SEED = 7_000_001  # a clip neither training nor validation used


def add_parsers(sub) -> None:
    s = sub.add_parser("demo", help="train float SSF → QAT → export → conformance on generated data",
                       description="The whole pipeline on generated clips, a few minutes per stage on a CPU: "
                                   "float training (configs/demo/float.yaml), QAT of the hyper-decoders "
                                   "(configs/demo/qat.yaml), integer export, conformance, and the RD of both "
                                   "models on an unseen clip. Re-running resumes from the last checkpoints.")
    s.add_argument("--out-dir", default="runs/demo", metavar="DIR",
                   help="run folders DIR/float and DIR/qat, and the models (default: %(default)s)")
    s.add_argument("--checkpoints", dest="models_dir", action=Deprecated, new="--out-dir")
    s.add_argument("--float-steps", type=int, default=None, help="override the float preset's max_steps")
    s.add_argument("--qat-steps", type=int, default=None, help="override the QAT preset's max_steps")
    s.add_argument("--pixel-exact", action="store_true",
                   help="QAT of the whole decoder (configs/demo/qat_decoder.yaml): the integer checkpoint "
                        "(ssf-pixel.ckpt) decodes identical frames (MD5) on every machine")
    s.add_argument("--model", default="ssf2020", choices=("ssf2020", "bmshj2018-hyperprior", "mbt2018-mean"),
                   help="the architecture: ssf2020 (video, the default) or a CompressAI image hyperprior, trained "
                        "on generated images (configs/demo/image_*.yaml, run folders DIR/<model>/) into a pixel-exact "
                        "integer checkpoint")
    add_quiet(s, "no steps or progress bars: only the result")
    s.set_defaults(run=demo, models_dir=None)


def demo(args) -> int:
    for flag, steps in (("--float-steps", args.float_steps), ("--qat-steps", args.qat_steps)):
        if steps is not None and steps < 1:
            raise UserError(f"{flag} {steps}: must be ≥ 1")
    out = Path(args.out_dir)
    if args.model != "ssf2020":
        if args.pixel_exact:
            raise UserError(f"--pixel-exact: {args.model} has no integer synthesis yet (its decoder is float after "
                            "the integer hyper-decoder)")
        from nvc_train.commands.image_demo import run_image_demo

        if args.quiet:
            logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        return run_image_demo(args.model, out, args.float_steps, args.qat_steps, quiet=args.quiet)
    return run_demo(out, Path(args.models_dir) if args.models_dir else out, args.float_steps, args.qat_steps,
                    quiet=args.quiet, pixel_exact=args.pixel_exact)


def _preset_in(out: Path, stage: str) -> Path:
    """``configs/demo/<stage>.yaml`` with its run folder moved to ``out/<stage>``, written to
    ``out/<stage>.yaml``."""
    return preset_in_run_dir(CONFIGS / "demo" / f"{stage}.yaml", out / stage, out / f"{stage}.yaml")


def _fit(out: Path, stage: str, max_steps: int | None, extra: list[str], quiet: bool) -> Path:
    from nvc_train.lit.cli import run_lightning

    config = _preset_in(out, stage)
    last = out / stage / "checkpoints" / "last.ckpt"
    args = ["fit", "--config", str(config), *extra]
    if max_steps is not None:
        args += ["--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", str(max_steps)]
    if quiet:
        args += ["--trainer.enable_progress_bar", "false"]
    if last.is_file():
        _say(quiet, f"[demo] resuming from {last}")
        args += ["--ckpt_path", str(last)]
    run_lightning(args)
    import wandb

    wandb.finish()  # the next stage must start a W&B run of its own
    if not last.is_file():
        raise UserError(f"training finished without writing {last}")
    return last


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message)


def _rd_on_clip(encode_decode, frames: list) -> tuple[float, float]:
    """(bpp, PSNR dB) of a codec function frames → (bits, decoded frames)."""
    from nvc_train.eval.metrics import psnr

    bits, decoded = encode_decode(frames)
    h, w = frames[0].shape[-2:]
    return bits / (h * w * len(frames)), sum(psnr(d, x) for d, x in zip(decoded, frames)) / len(frames)


def run_demo(out: Path, checkpoints: Path, float_steps: int | None, qat_steps: int | None,
             quiet: bool = False, pixel_exact: bool = False) -> int:
    """Run folders under ``out``, models in ``checkpoints``; exit status 0 when conformance passes."""
    import torch

    from nvc_train.codec.integer_codec import coded_bits
    from nvc_train.data.synthetic import synthetic_clip
    from nvc_train.eval.metrics import bits_of
    from nvc_train.lit.checkpoints import (
        export_integer_from_lightning,
        lit_module_from_checkpoint,
        save_float_state_dict,
    )
    from nvc_train.quant.conformance import run_checks
    from nvc_train.quant.export import load_integer_checkpoint

    if quiet:  # Lightning's "GPU available …" lines and the like
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    start = time.perf_counter()
    for folder in (out, checkpoints):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create {folder}: {exc.strerror or exc}") from None
    float_pth = checkpoints / "ssf-float.pth.tar"
    _say(quiet, "[demo] 1/6 float SSF training (configs/demo/float.yaml)")
    float_ckpt = _fit(out, "float", float_steps, [], quiet)
    float_module, _ = lit_module_from_checkpoint(float_ckpt)
    save_float_state_dict(float_module.model, float_pth, float_module.hparams.get("quality"), float_module.lmbda)

    stage, name = ("qat_decoder", "ssf-pixel") if pixel_exact else ("qat", "ssf-int")
    what = "the whole decoder" if pixel_exact else "the hyper-decoders"
    _say(quiet, f"[demo] 2/6 QAT fine-tuning of {what} (configs/demo/{stage}.yaml)")
    qat_ckpt = _fit(out, stage, qat_steps, ["--model.init_weights", str(float_pth)], quiet)

    _say(quiet, "[demo] 3/6 integer export")
    int_path = export_integer_from_lightning(qat_ckpt, checkpoints, name)
    fixed = checkpoints / f"{name}.ckpt"
    shutil.copyfile(int_path, fixed)
    shutil.copyfile(int_path.with_suffix(".md"), fixed.with_suffix(".md"))

    _say(quiet, "[demo] 4/6 conformance")
    ck = load_integer_checkpoint(fixed)
    checks = list(run_checks(ck.codec, ck.conformance))
    conformance_ok = all(c.ok for c in checks)

    _say(quiet, "[demo] 5/6 encode and decode a generated clip (3 frames, 256x256)")
    frames = [f.unsqueeze(0) for f in synthetic_clip(EVAL_SEED, 3, 256, 256)]
    model = float_module.model.eval()

    def float_codec(fr):
        with torch.no_grad():
            strings, shapes = model.compress(fr)
            return bits_of(strings), model.decompress(strings, shapes)

    md5s, coded, decoded_torch = [], [], []

    def int_codec(fr):
        c, _ = ck.codec.compress(fr)
        decoded = ck.codec.decompress(c)
        coded.extend(c)
        decoded_torch.extend(decoded)
        md5s.extend(f"{t} {cf.frame_type} {d.md5}" for t, (cf, d) in enumerate(zip(c, decoded)))
        return coded_bits(c), [d.x_hat for d in decoded]

    f_bpp, f_psnr = _rd_on_clip(float_codec, frames)
    i_bpp, i_psnr = _rd_on_clip(int_codec, frames)
    onnx_line = _onnx_step(fixed, checkpoints / f"{name}-onnx", coded, decoded_torch, quiet)
    print()
    print("| model | bpp | PSNR-RGB (dB) |")
    print("|---|---|---|")
    print(f"| float (CompressAI compress/decompress) | {f_bpp:.4f} | {f_psnr:.2f} |")
    label = "integer decoder, pixel-exact (QAT)" if pixel_exact else "integer hyperprior (QAT)"
    print(f"| {label} | {i_bpp:.4f} | {i_psnr:.2f} |")
    print()
    print(f"float model:        {float_pth}")
    print(f"integer checkpoint: {int_path} (also {fixed}), model card {fixed.with_suffix('.md')}")
    print(f"run folders:        {out / 'float'}, {out / stage} (W&B offline runs in */wandb; `wandb sync` uploads)")
    if pixel_exact:
        print("decoded frames (MD5 of the 8-bit R, G, B planes; the same on every machine):")
        print("\n".join(f"  {line}" for line in md5s))
    print(f"conformance:        {'PASS' if conformance_ok else 'FAIL'} ({len(checks)} checks: "
          f"{ck.conformance.describe()})")
    print(f"ONNX Runtime:       {onnx_line}")
    print(f"demo took {time.perf_counter() - start:.0f} s")
    return 0 if conformance_ok and not onnx_line.startswith("DIFFERS") else 1


def _onnx_step(checkpoint: Path, folder: Path, coded: list, decoded_torch: list, quiet: bool) -> str:
    """Step 6: export the checkpoint's integer networks to ONNX, decode the demo clip's stream
    and the conformance records with them in ONNX Runtime; returns the result line."""
    from nvc_train.portable import missing_packages

    if missing_packages():
        return f"not run ({missing_packages()})"
    from nvc_train.portable.export import export_onnx
    from nvc_train.portable.runtime import run_in_onnx_runtime
    from nvc_train.quant.conformance import run_checks
    from nvc_train.quant.export import load_integer_checkpoint

    _say(quiet, f"[demo] 6/6 the same stream in ONNX Runtime (nvc-train export-onnx → {folder})")
    ck = load_integer_checkpoint(checkpoint)
    export_onnx(ck, folder, overwrite=True)
    codec = run_in_onnx_runtime(ck, folder).codec
    decoded = codec.decompress(coded)
    same = sum(a.latent_sha256 == b.latent_sha256 and a.md5 == b.md5 for a, b in zip(decoded, decoded_torch))
    # The conformance records too: their 768×512 stream, and every layer at its stress input.
    checks = list(run_checks(codec, ck.conformance))
    passed = sum(c.ok for c in checks)
    what = "latents and frame MD5s" if codec.pixel_exact else "latents"
    ok = same == len(decoded_torch) == len(decoded) and passed == len(checks)
    return (f"{'identical' if ok else 'DIFFERS'}: the demo clip's {what} ({same} of {len(decoded_torch)} frames) "
            f"and {passed} of {len(checks)} conformance checks as in PyTorch (graphs in {folder})")

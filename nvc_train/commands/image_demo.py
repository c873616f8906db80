"""``nvc-train demo --model bmshj2018-hyperprior|mbt2018-mean``: the image pipeline on generated images.

Float training (``configs/demo/image_float.yaml``) → QAT of the hyper-decoder and the
synthesis (``configs/demo/image_qat.yaml``, qat scope "decoder") → integer export →
conformance → encode and decode three unseen generated images: the RD of the float model
(CompressAI's own compress/decompress) and of the integer checkpoint, and the decoded
latents and image MD5s compared across thread counts, oneDNN on and off, and every exact
GEMM path. Run folders go to ``--out-dir/<architecture>``.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

from nvc_train.commands.demo import _fit, _say
from nvc_train.errors import UserError

EVAL_SEEDS = (7_000_001, 7_000_002, 7_000_003)
EVAL_SIZE = (256, 384)


def run_image_demo(architecture: str, out: Path, float_steps: int | None, qat_steps: int | None,
                   quiet: bool = False) -> int:
    import torch

    from nvc_train.data.synthetic import synthetic_clip
    from nvc_train.eval.metrics import bits_of, psnr
    from nvc_train.io.images import image_md5
    from nvc_train.lit.checkpoints import export_integer_from_lightning, lit_module_from_checkpoint, save_float_state_dict
    from nvc_train.quant.image_export import load_image_checkpoint, run_records, self_test_problems

    start = time.perf_counter()
    run_dir = out / architecture
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {run_dir}: {exc.strerror or exc}") from None
    arch = ["--model.architecture", architecture]
    _say(quiet, f"[demo] 1/5 float {architecture} training (configs/demo/image_float.yaml)")
    float_ckpt = _fit(run_dir, "image_float", float_steps, arch, quiet)
    float_module, _ = lit_module_from_checkpoint(float_ckpt)
    float_pth = run_dir / f"{architecture}-float.pth.tar"
    save_float_state_dict(float_module.model, float_pth, float_module.hparams.get("quality"), float_module.lmbda)

    _say(quiet, "[demo] 2/5 QAT fine-tuning of the hyper-decoder and the synthesis (configs/demo/image_qat.yaml)")
    qat_ckpt = _fit(run_dir, "image_qat", qat_steps, [*arch, "--model.init_weights", str(float_pth)], quiet)

    _say(quiet, "[demo] 3/5 integer export")
    int_path = export_integer_from_lightning(qat_ckpt, run_dir, f"{architecture}-int")
    fixed = run_dir / f"{architecture}-int.ckpt"
    shutil.copyfile(int_path, fixed)
    shutil.copyfile(int_path.with_suffix(".md"), fixed.with_suffix(".md"))

    _say(quiet, "[demo] 4/5 conformance")
    ck = load_image_checkpoint(fixed)
    checks = run_records(ck.codec, ck.records)
    layer_problems = [p for p in self_test_problems(ck.codec, ck.records, "cpu") if not p.startswith("fails the")]
    conformance_ok = all(ok for _, ok in checks) and not layer_problems

    h, w = EVAL_SIZE
    _say(quiet, f"[demo] 5/5 encode and decode {len(EVAL_SEEDS)} unseen generated images ({w}x{h})")
    model = float_module.model.eval()
    model.update(force=True)
    images = [synthetic_clip(seed, 1, h, w) for seed in EVAL_SEEDS]
    rows, latent_hashes, variants = {"float": [], "integer": []}, [], {}
    threads = torch.get_num_threads()
    with torch.no_grad():
        for x in images:
            result = model.compress(x)
            decoded = model.decompress(result["strings"], result["shape"])["x_hat"]
            rows["float"].append((bits_of(result["strings"]), float(psnr(decoded, x))))
            coded, encoded = ck.codec.compress(x)
            rows["integer"].append((8 * (len(coded.y_string) + len(coded.z_string)), float(psnr(encoded.x_hat, x))))
            digest = (encoded.latent_sha256, image_md5(encoded.levels(8, h, w), 8) if ck.codec.pixel_exact else None)
            latent_hashes.append(digest)
            # The decoder under settings that change float arithmetic: the latents must not move.
            settings = [("default GEMMs", None, threads, True), ("1 thread", None, 1, True),
                        ("oneDNN off", None, threads, False), ("float32 GEMMs", "float32", threads, True),
                        ("float64 GEMMs", "float64", threads, True)]
            for name, path, n, onednn in settings:
                torch.set_num_threads(n)
                try:
                    with warnings.catch_warnings():
                        # oneDNN's flags() also sets its TF32 switch and warns that no Intel GPU has one.
                        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
                        with torch.backends.mkldnn.flags(enabled=onednn):
                            decoded = ck.codec.set_gemm_path(path).decompress(coded)
                            got = (decoded.latent_sha256,
                                   image_md5(decoded.levels(8, h, w), 8) if ck.codec.pixel_exact else None)
                finally:
                    torch.set_num_threads(threads)
                    ck.codec.set_gemm_path(None)
                variants.setdefault(name, []).append(got)
    same = {name: sum(a == b for a, b in zip(got, latent_hashes)) for name, got in variants.items()}
    pixels = h * w
    print()
    print("| model | bpp | PSNR-RGB (dB) |")
    print("|---|---|---|")
    integer_label = "integer decoder (QAT, pixel-exact)" if ck.codec.pixel_exact else "integer hyper-decoder (QAT)"
    for label, key in (("float (CompressAI compress/decompress)", "float"), (integer_label, "integer")):
        bpp = sum(b for b, _ in rows[key]) / (pixels * len(images))
        print(f"| {label} | {bpp:.4f} | {sum(p for _, p in rows[key]) / len(images):.2f} |")
    print()
    print(f"float model:        {float_pth}")
    print(f"integer checkpoint: {int_path} (also {fixed}), model card {fixed.with_suffix('.md')}")
    print(f"run folders:        {run_dir / 'image_float'}, {run_dir / 'image_qat'} (W&B offline runs in */wandb)")
    what = "latents (SHA-256) and 8-bit images (MD5)" if ck.codec.pixel_exact else "latents (SHA-256)"
    print(f"decoded {what}, identical under every setting below on this machine:")
    for seed, (latent, md5) in zip(EVAL_SEEDS, latent_hashes):
        print(f"  image {seed}: {latent}" + (f"  MD5 {md5}" if md5 else ""))
    identical = all(n == len(images) for n in same.values())
    print(f"{'latents + MD5s' if ck.codec.pixel_exact else 'latents'}:{' ' * (4 if ck.codec.pixel_exact else 12)}"
          f"{'identical' if identical else 'DIFFER'} under "
          + ", ".join(f"{name} ({n}/{len(images)})" for name, n in same.items()))
    print(f"conformance:        {'PASS' if conformance_ok else 'FAIL'} ({len(checks) + 1} checks: small and stress "
          "records, every layer on every GEMM path)")
    print(f"demo took {time.perf_counter() - start:.0f} s")
    return 0 if conformance_ok and identical else 1

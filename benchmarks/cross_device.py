"""Cross-device check: encode on one device, decode on the other, both directions.

1. Integer checkpoint: encode a clip on the CPU and decode it on ``--device`` (cuDNN
   benchmark off and on, TF32 allowed as a user might), then encode on ``--device`` and
   decode on the CPU; compare per-frame latent SHA-256. On a difference, name the hyperprior
   and count the CDF indexes and means that differ for the same z symbols. Then run every
   conformance record on both devices.
2. Control: stock CompressAI SSF (same float weights): CDF indexes that differ between the
   CPU and ``--device`` for the same z, and whether its decoded latents match.

    python benchmarks/cross_device.py --checkpoint runs/demo/ssf-int.ckpt [--height 1024 --width 1920]

``--device cpu`` compares the CPU with itself (a smoke test of this script, used by CI).
Imports only torch, compressai and nvc-train's codec; exit status 0 only if every integer
check passes. Global flags it changes are restored on exit.
"""

from __future__ import annotations

import argparse
import sys

import torch

from nvc_train.codec.integer_codec import latent_digest
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.models.ssf import PARTS
from nvc_train.quant.conformance import run_checks
from nvc_train.quant.export import load_integer_checkpoint
from nvc_train.quant.fake_quant import hyper_input


def _flags() -> tuple:
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


def _set_flags(values: tuple) -> None:
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = values


@torch.no_grad()
def diagnose(a, b, clip, dev_a: str, dev_b: str) -> list[str]:
    """Per hyperprior, how many CDF indexes and means differ between two devices' integer
    decoders for the z symbols of this clip's first two frames."""
    m = a.codec.model
    frames = [f.to("cpu") for f in clip[:2]]
    latents = {"keyframe": m.img_encoder(frames[0]), "motion": m.motion_encoder(torch.cat(frames[::-1], dim=1)),
               "residual": m.res_encoder(frames[1] - frames[0])}
    lines = []
    for part in PARTS:
        ia, ib = a.codec.hyperpriors[part], b.codec.hyperpriors[part]
        z = ia.hp.hyper_encoder(latents[part])
        symbols, _, _ = hyper_input(z, ia.hp.entropy_bottleneck._get_medians(), ia.input_frac_bits)
        mean_a, index_a = ia._entropy_parameters(symbols.to(dev_a))
        mean_b, index_b = ib._entropy_parameters(symbols.to(dev_b))
        lines.append(f"  {part}: {int((index_a.cpu() != index_b.cpu()).sum())} of {index_a.numel()} CDF indexes and "
                     f"{int((mean_a.cpu() != mean_b.cpu()).sum())} means differ")
    return lines


def run(checkpoint: str, device: str, height: int, width: int, num_frames: int) -> bool:
    cpu = load_integer_checkpoint(checkpoint, "cpu")
    other = load_integer_checkpoint(checkpoint, device)
    clip = [f.unsqueeze(0) for f in synthetic_clip(2024, num_frames, height, width)]
    ok = True
    saved = _flags()
    try:
        for name, enc, dec, enc_dev, dec_dev in (("CPU encode -> %s decode" % device, cpu, other, "cpu", device),
                                                 ("%s encode -> CPU decode" % device, other, cpu, device, "cpu")):
            coded, recon = enc.codec.compress([f.to(enc_dev) for f in clip])
            want = [r.latent_sha256 for r in recon]
            for bench in ((False, True) if dec_dev != "cpu" else (False,)):
                _set_flags((bench, True, True))
                decoded = list(dec.codec.decompress_iter(coded, dec_dev))
                same = [f.latent_sha256 for f in decoded] == want
                ok &= same
                drift = [float(-10 * torch.log10(torch.mean((f.x_hat.cpu() - r.x_hat.cpu()) ** 2) + 1e-20))
                         for f, r in zip(decoded, recon)]
                print(f"integer: {name}, cudnn.benchmark={bench}: latents {'identical' if same else 'DIFFER'}; "
                      f"pixel PSNR encoder vs decoder reconstruction per frame: {[round(d, 1) for d in drift]} dB")
                if not same:
                    print("\n".join(diagnose(enc, dec, clip, enc_dev, dec_dev)))
        for label, ck, dev in (("cpu", cpu, "cpu"), (device, other, device)):
            checks = list(run_checks(ck.codec, ck.conformance, dev))
            bad = [f"{c.record} {c.item}" for c in checks if not c.ok]
            ok &= bool(checks) and not bad
            print(f"conformance on {label}: {'PASS' if checks and not bad else 'FAIL'} ({len(checks)} checks"
                  + (f"; differ: {', '.join(bad)}" if bad else "") + ")")

        # Control: stock float SSF, same weights, default flags.
        _set_flags(saved)
        with torch.no_grad():
            strings, shapes = cpu.codec.model.compress(clip)
            hp_cpu, hp_other = cpu.codec.model.img_hyperprior, other.codec.model.img_hyperprior
            z = hp_cpu.entropy_bottleneck.decompress(strings[0][1], shapes[0])
            idx_cpu = hp_cpu.gaussian_conditional.build_indexes(hp_cpu.hyper_decoder_scale(z))
            idx_other = hp_other.gaussian_conditional.build_indexes(hp_other.hyper_decoder_scale(z.to(device))).cpu()
            mean_same = torch.equal(hp_cpu.hyper_decoder_mean(z), hp_other.hyper_decoder_mean(z.to(device)).cpu())
            print(f"control, stock float SSF keyframe: {int((idx_cpu != idx_other).sum())} of {idx_cpu.numel()} "
                  f"CDF indexes differ; means bit-identical: {mean_same}")
            y_cpu = hp_cpu.decompress(strings[0], shapes[0])
            y_other = hp_other.decompress(strings[0], shapes[0]).cpu()
            print(f"control, stock float SSF keyframe latents CPU vs {device} decode identical: "
                  f"{latent_digest([y_cpu]) == latent_digest([y_other])}")
    finally:
        _set_flags(saved)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="runs/demo/ssf-int.ckpt")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--frames", type=int, default=3)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available: nothing to compare", file=sys.stderr)
        return 2
    ok = run(args.checkpoint, args.device, args.height, args.width, args.frames)
    print("RESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

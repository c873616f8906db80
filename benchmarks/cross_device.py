"""CPU-encode → GPU-decode check, for a machine with CUDA (a few minutes).

1. Integer checkpoint: encode a clip on the CPU, decode on the GPU (cuDNN benchmark off and
   on, TF32 allowed as by default), compare per-frame latent SHA-256; run the conformance
   bitstream on both devices.
2. Control: stock CompressAI SSF (same float weights) — count CDF indexes that differ
   between CPU and GPU for the same z, and whether its decoded latents match.

    python benchmarks/cross_device.py --checkpoint checkpoints/demo/ssf-int.ckpt [--height 1024 --width 1920]

Exit status 0 only if every integer-path hash matches.
"""

from __future__ import annotations

import argparse
import sys

import torch

from nvc_train.codec.bitstream import read_bitstream_bytes
from nvc_train.codec.integer_codec import latent_digest
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.quant.export import load_integer_checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="checkpoints/demo/ssf-int.ckpt")
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--frames", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available: nothing to compare", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cpu = load_integer_checkpoint(args.checkpoint, "cpu")
    gpu = load_integer_checkpoint(args.checkpoint, "cuda")
    clip = [f.unsqueeze(0) for f in synthetic_clip(2024, args.frames, args.height, args.width)]
    coded, recon = cpu.codec.compress(clip)
    want = [r.latent_sha256 for r in recon]
    ok = True
    for bench in (False, True):
        torch.backends.cudnn.benchmark = bench
        got = [f.latent_sha256 for f in gpu.codec.decompress_iter(coded, "cuda")]
        same = got == want
        ok &= same
        drift = [float(-10 * torch.log10(torch.mean((f.x_hat.cpu() - r.x_hat) ** 2) + 1e-20))
                 for f, r in zip(gpu.codec.decompress_iter(coded, "cuda"), recon)]
        print(f"integer: CPU encode -> GPU decode, cudnn.benchmark={bench}: latents {'identical' if same else 'DIFFER'}; "
              f"pixel PSNR CPU vs GPU decode per frame: {[round(d, 1) for d in drift]} dB")
    _, conf = read_bitstream_bytes(cpu.conformance["bitstream"])
    for name, ck, dev in (("cpu", cpu, "cpu"), ("cuda", gpu, "cuda")):
        got = [f.latent_sha256 for f in ck.codec.decompress_iter(conf, dev)]
        passed = got == cpu.conformance["latent_sha256"]
        ok &= passed
        print(f"conformance on {name}: {'PASS' if passed else 'FAIL'}")

    # Control: stock float SSF, same weights.
    model_cpu, model_gpu = cpu.codec.model, gpu.codec.model
    with torch.no_grad():
        strings, shapes = model_cpu.compress(clip)
        for part, hp_cpu, hp_gpu in (("keyframe", model_cpu.img_hyperprior, model_gpu.img_hyperprior),):
            z = hp_cpu.entropy_bottleneck.decompress(strings[0][1], shapes[0])
            idx_cpu = hp_cpu.gaussian_conditional.build_indexes(hp_cpu.hyper_decoder_scale(z))
            idx_gpu = hp_gpu.gaussian_conditional.build_indexes(hp_gpu.hyper_decoder_scale(z.cuda())).cpu()
            mean_same = torch.equal(hp_cpu.hyper_decoder_mean(z), hp_gpu.hyper_decoder_mean(z.cuda()).cpu())
            print(f"stock float SSF {part}: {int((idx_cpu != idx_gpu).sum())} of {idx_cpu.numel()} CDF indexes differ; "
                  f"means bit-identical: {mean_same}")
        y_cpu = model_cpu.img_hyperprior.decompress(strings[0], shapes[0])
        y_gpu = model_gpu.img_hyperprior.decompress(strings[0], shapes[0]).cpu()
        print(f"stock float SSF keyframe latents CPU vs GPU decode identical: {latent_digest([y_cpu]) == latent_digest([y_gpu])}")
    print("RESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Every GPU check and GPU figure in one command (`make gpu-check`): 6.5 minutes on an H100.

Sections, each printing its figures and a verdict:

1. decoder level: the six integer hyper-decoders on random symbols up to ±2**15, z of
   shape (2, 192, 8, 15), on the CPU and on the GPU with cuDNN enabled, benchmark on and TF32
   allowed around it: identical means and CDF indexes. Control: the float32 hyper-decoders
   of the same model, CPU vs GPU, differ.
2. cross-device (``benchmarks/cross_device.py``): CPU encode → GPU decode and GPU encode →
   CPU decode, every conformance record on both devices, and the stock SSF control.
3. ``pytest -m gpu`` over the test modules that hold GPU tests (skipped, with the reason, where
   pytest or Lightning is missing).
4. timings: ``decode_speed.py`` on the GPU, the exact GEMM paths and the pixel-exact decode
   at 1080p, ``train_step.py --device cuda`` fp32 and bf16, and ``qat_step.py`` (the last two
   need Lightning).

Sections 1-2 need only torch, compressai and nvc-train's codec modules (no W&B, datasets,
PyAV or Lightning). Without ``--checkpoint`` it exports an untrained, calibrated model (the
integer arithmetic does not care whether the weights are trained). Every flag it changes is
restored. Exit status 0 only if every exactness verdict is PASS.

    .venv/bin/python benchmarks/gpu_check.py [--checkpoint CKPT] [--skip-timings]
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick     # CPU smoke test of the script
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # cross_device.py beside this file

import cross_device  # noqa: E402

from nvc_train.crosscheck.standin import untrained_checkpoint  # noqa: E402,F401 (also used by the speed scripts)
from nvc_train.models.ssf import PARTS  # noqa: E402
from nvc_train.quant.export import load_integer_checkpoint  # noqa: E402
from nvc_train.quant.fake_quant import ROLES, integer_hyper_input  # noqa: E402


@torch.no_grad()
def decoder_level(checkpoint: Path, device: str) -> bool:
    cpu = load_integer_checkpoint(checkpoint, "cpu")
    other = load_integer_checkpoint(checkpoint, device)
    g = torch.Generator().manual_seed(15)
    symbols = (torch.rand(2, 192, 8, 15, generator=g) * 2 - 1).mul(2**15).round().long()
    symbols[:, :, ::3, ::4] = 2**15
    saved = (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    ok = True
    try:
        torch.backends.cudnn.enabled = torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        for part in PARTS:
            a, b = cpu.codec.hyperpriors[part], other.codec.hyperpriors[part]
            z_a = integer_hyper_input(symbols, a.median_q, a.input_frac_bits)
            z_b = z_a.to(device)
            for role in ROLES:
                dec_a = a.mean_decoder if role == "mean" else a.scale_decoder
                dec_b = b.mean_decoder if role == "mean" else b.scale_decoder
                differ = int((dec_a(z_a) != dec_b(z_b).cpu()).sum())
                # Control: the float32 hyper-decoder of the same model on the same z.
                float_a = getattr(a.hp, f"hyper_decoder_{role}")
                float_b = getattr(b.hp, f"hyper_decoder_{role}")
                z_hat = z_a.float() * 2.0**-a.input_frac_bits
                control = int((float_a(z_hat) != float_b(z_hat.to(device)).cpu()).sum())
                ok &= differ == 0
                print(f"  {part}.{role}: integer {differ} of {2 * 192 * 64 * 120} outputs differ "
                      f"({'PASS' if differ == 0 else 'FAIL'}); control float32: {control} differ")
    finally:
        (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved
    return ok


def gpu_test_files() -> list[str]:
    """The test modules that hold a ``pytest.mark.gpu`` test, relative to the repository root."""
    root = HERE.parent
    return sorted(str(p.relative_to(root)) for p in (root / "tests").rglob("test_*.py")
                  if "mark.gpu" in p.read_text(encoding="utf-8"))


def _run(cmd: list[str], timeout: int) -> int:
    print("  $ " + " ".join(cmd), flush=True)
    try:
        return subprocess.run(cmd, timeout=timeout, cwd=HERE.parent).returncode
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout} s")
        return 124


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="integer checkpoint (default: export an untrained one)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small frames, no pytest, no timings (smoke test)")
    ap.add_argument("--skip-timings", action="store_true")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("nvc-train: error: CUDA is not available here: run this on a machine with a GPU", file=sys.stderr)
        return 2
    start = time.perf_counter()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU (smoke test: CPU against itself)"
    print(f"gpu-check on {name}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else untrained_checkpoint(Path(tmp))
        verdicts = {}
        print("1. decoder level, random symbols up to ±2**15, z (2, 192, 8, 15), cuDNN on:")
        verdicts["decoder level"] = decoder_level(checkpoint, args.device)
        print("2. cross-device:")
        h, w = (256, 384) if args.quick else (1024, 1920)
        verdicts["cross-device"] = cross_device.run(str(checkpoint), args.device, h, w, 3)
        if not args.quick:
            print("3. pytest -m gpu:")
            if importlib.util.find_spec("pytest") and importlib.util.find_spec("lightning"):
                # Only the modules that hold GPU tests are collected, so the check also runs in an
                # image that has torch and CompressAI but not PyAV, W&B or jsonargparse.
                verdicts["pytest -m gpu"] = _run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", *gpu_test_files()],
                                                 900) == 0
            else:
                print("  SKIPPED: pytest and Lightning are needed (pip install -e '.[dev]')")
        if not (args.quick or args.skip_timings):
            print("4. timings:")
            _run([sys.executable, "benchmarks/decode_speed.py", "--checkpoint", str(checkpoint), "--device", args.device,
                  "--height", "1024", "--width", "1920"], 300)
            # Exact convolution by GEMM path (int8 / float32 / float64) against float32 cuDNN,
            # and the pixel-exact decode on each path against the float synthesis, at 1080p.
            _run([sys.executable, "benchmarks/synthesis_conv_speed.py", "--size", "1080p", "--rounds", "3",
                  "--device", args.device], 300)
            _run([sys.executable, "benchmarks/pixel_decode_speed.py", "--checkpoint", "untrained", "--sizes", "1080p",
                  "--rounds", "2", "--paths", "int8", "float32", "float64", "--device", args.device], 600)
            if importlib.util.find_spec("lightning"):
                for extra in ([], ["--bf16"]):
                    _run([sys.executable, "benchmarks/train_step.py", "--device", args.device, "--batch-size", "8",
                          "--crop", "256", "--steps", "20", *extra], 300)
                # QAT step vs float step (hyper-decoders, whole decoder), one process, same batch.
                _run([sys.executable, "benchmarks/qat_step.py", "--device", args.device, "--batch-size", "8",
                      "--crop", "256", "--rounds", "10"], 300)
            else:
                print("  train_step.py SKIPPED: Lightning is not installed")
    print("summary: " + "; ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in verdicts.items())
          + f" ({time.perf_counter() - start:.0f} s)")
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

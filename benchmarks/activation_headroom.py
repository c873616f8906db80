"""Keyframe bits of an integer model vs its float parent as frames grow past the training crop.

QAT activation ranges are calibrated on training crops, whose tiny hyper-latents are all
border; interior positions of large frames reach larger activations and clip. This script
re-exports a QAT Lightning checkpoint with its activation scales multiplied by each
``--headroom`` factor and codes the keyframe of one synthetic frame per size, reporting
real bytes beside the float parent's (CompressAI ``encode_keyframe``) and the fraction of
saturated activations in the scale hyper-decoder.

    .venv/bin/python benchmarks/activation_headroom.py runs/demo/qat/checkpoints/last.ckpt \\
        runs/demo/ssf-float.pth.tar --headroom 1 2 4
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import torch

from nvc_train.lit.checkpoints import lit_module_from_checkpoint
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.models.ssf import load_ssf
from nvc_train.quant.diagnostics import keyframe_saturation
from nvc_train.quant.export import export_integer_checkpoint, load_integer_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("qat_checkpoint", help="Lightning checkpoint of a QAT run")
    ap.add_argument("float_model", help="the float parent (ScaleSpaceFlow .pth.tar)")
    ap.add_argument("--headroom", type=float, nargs="+", default=[1.0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    args = ap.parse_args()
    module, _ = lit_module_from_checkpoint(args.qat_checkpoint)
    parent = load_ssf(args.float_model).eval()
    parent.update(force=True)
    frames = {s: synthetic_clip(123, 1, s, s)[0:1] for s in args.sizes}
    with torch.no_grad():
        float_bytes = {s: sum(len(x[0]) for x in parent.encode_keyframe(f)[1]["strings"]) for s, f in frames.items()}
    print("| headroom | " + " | ".join(f"{s}²: bytes (vs float), saturated" for s in args.sizes) + " |")
    print("|---|" + "---|" * len(args.sizes))
    print("| float parent | " + " | ".join(str(float_bytes[s]) for s in args.sizes) + " |")
    for k in args.headroom:
        m = copy.deepcopy(module)
        with torch.no_grad():
            for dec in m.qat.decoders.values():
                dec.act_scale.mul_(k)
        with tempfile.TemporaryDirectory() as tmp:
            codec = load_integer_checkpoint(export_integer_checkpoint(m.model, m.qat, tmp, "x", {})).codec
            cells = []
            for s, f in frames.items():
                coded, _ = codec.compress([f])
                n = sum(len(lat.y_string) + len(lat.z_string) for lat in coded[0].latents.values())
                cells.append(f"{n} ({100 * (n / float_bytes[s] - 1):+.1f} %), {100 * keyframe_saturation(codec, f):.1f} %")
        print(f"| ×{k:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

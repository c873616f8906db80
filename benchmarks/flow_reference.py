"""Stock vs rescaled flow (CompressAI issue #307) on a model trained on crops, by frame size.

For each size, two frames of a known global pan (the second is the first moved by ``--pan``
pixels, cut from one larger canvas), in two versions: clean synthetic frames, and the same
frames through H.264 (PyAV, CRF 23) as camera-like footage. For the model as trained
(``flow_reference`` unset: CompressAI's units, half the frame) and with the flow rescaled to
the frame (``flow_reference`` = the training crop):

* motion-compensated prediction PSNR (the motion decoder's flow from the quantized motion
  latent, warping the previous original frame; prediction vs the current frame), and the
  previous frame itself as a zero-motion control;
* real coding of the pair (I then P, CompressAI's ``compress``/``decompress``): P-frame bits
  per pixel and PSNR.

    .venv/bin/python benchmarks/flow_reference.py --float-model runs/demo/float/checkpoints/last.ckpt \\
        --reference 128 [--sizes 256x256 512x512 768x1280]
"""

from __future__ import annotations

import argparse
import io
import sys
from fractions import Fraction

import numpy as np
import torch

from nvc_train.data.synthetic import synthetic_clip
from nvc_train.eval.metrics import psnr
from nvc_train.models.ssf import load_ssf


def load_model(path: str):
    if path.endswith(".ckpt"):
        from nvc_train.lit.checkpoints import lit_module_from_checkpoint

        return lit_module_from_checkpoint(path)[0].model
    return load_ssf(path)


def pan_pair(height: int, width: int, dy: int, dx: int, seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (1, 3, H, W) frames: the scene, and the scene moved by (dy, dx) pixels."""
    canvas = synthetic_clip(seed, 1, height + dy, width + dx)
    return canvas[:, :, :height, :width].contiguous(), canvas[:, :, dy:, dx:].contiguous()


def through_h264(frames: list[torch.Tensor]) -> list[torch.Tensor]:
    """Encode and decode with libx264 (yuv420p, CRF 23): compression noise as in camera footage."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height = frames[0].shape[-1], frames[0].shape[-2]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "23", "bf": "0"}
        for f in frames:
            rgb = (f[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        out.mux(stream.encode())
    buf.seek(0)
    with av.open(buf) as inp:
        return [torch.from_numpy(fr.to_ndarray(format="rgb24")).permute(2, 0, 1).float().div(255).unsqueeze(0)
                for fr in inp.decode(video=0)]


@torch.no_grad()
def measure(model, x_ref: torch.Tensor, x_cur: torch.Tensor) -> dict[str, float]:
    y = model.motion_encoder(torch.cat((x_cur, x_ref), dim=1))
    y_hat, _ = model.motion_hyperprior(y)  # eval mode: quantized, as decoded
    pred = model.forward_prediction(x_ref, model.motion_decoder(y_hat))
    strings, shapes = model.compress([x_ref, x_cur])
    decoded = model.decompress(strings, shapes)
    p_bits = sum(len(s[0]) for part in strings[1] for s in part) * 8
    return {"mc": psnr(pred, x_cur), "p_bpp": p_bits / x_cur[0, 0].numel(), "p_psnr": psnr(decoded[1], x_cur)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float-model", required=True, help="Lightning .ckpt or ScaleSpaceFlow .pth.tar")
    ap.add_argument("--reference", type=int, required=True, help="the model's training crop (pixels)")
    ap.add_argument("--sizes", nargs="+", default=["256x256", "512x512", "768x1280"])
    ap.add_argument("--pan", type=int, nargs=2, default=(2, 4), metavar=("DY", "DX"))
    args = ap.parse_args()
    model = load_model(args.float_model).eval()
    model.update(force=True)
    dy, dx = args.pan
    print(f"model {args.float_model}, reference {args.reference} px, pan ({dy}, {dx}) px, torch {torch.__version__}")
    print("| content | size | zero-motion PSNR | MC PSNR stock | MC PSNR rescaled | P bpp stock | P bpp rescaled "
          "| P PSNR stock | P PSNR rescaled |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        clean = pan_pair(h, w, dy, dx)
        for content, (x_ref, x_cur) in (("synthetic pan", clean), ("pan via H.264", tuple(through_h264(list(clean))))):
            row = {}
            for name, ref in (("stock", None), ("rescaled", args.reference)):
                model.flow_reference = ref
                row[name] = measure(model, x_ref, x_cur)
            s, r = row["stock"], row["rescaled"]
            print(f"| {content} | {w}×{h} | {psnr(x_ref, x_cur):.2f} | {s['mc']:.2f} | {r['mc']:.2f} | {s['p_bpp']:.4f} "
                  f"| {r['p_bpp']:.4f} | {s['p_psnr']:.2f} | {r['p_psnr']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Decode time: integer hyper-decoders vs CompressAI's float ones, same clip, same machine.

Decodes one synthetic clip with the stock float ``ScaleSpaceFlow.decompress`` and with the
integer codec (same float synthesis weights, integer hyperprior path), alternating the two
for ``--repeats`` rounds and reporting medians; also times the hyper-decoders alone.

    .venv/bin/python benchmarks/decode_speed.py --checkpoint runs/demo/ssf-int.ckpt \\
        --height 768 --width 1280 --frames 3 [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nvc_train.data.synthetic import synthetic_clip
from nvc_train.models.ssf import hyperprior
from nvc_train.quant.export import load_integer_checkpoint
from nvc_train.quant.fake_quant import integer_hyper_input


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="runs/demo/ssf-int.ckpt")
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = args.device
    ck = load_integer_checkpoint(args.checkpoint, device=dev)
    codec, model = ck.codec.eval(), ck.codec.model.eval()
    clip = [f.unsqueeze(0).to(dev) for f in synthetic_clip(31337, args.frames, args.height, args.width)]
    with torch.no_grad():
        strings, shapes = model.compress(clip)
    coded, _ = codec.compress(clip)

    # Hyper-decoders alone, on this clip's keyframe z.
    hp = hyperprior(model, "keyframe")
    ihp = codec.hyperpriors["keyframe"]
    z_hat = hp.entropy_bottleneck.decompress(strings[0][1], shapes[0])
    symbols = torch.round(z_hat - hp.entropy_bottleneck._get_medians().reshape(1, -1, 1, 1)).long()

    def float_hyper():
        with torch.no_grad():
            hp.gaussian_conditional.build_indexes(hp.hyper_decoder_scale(z_hat))
            hp.hyper_decoder_mean(z_hat)

    def int_hyper():
        z_int = integer_hyper_input(symbols, ihp.median_q, ihp.input_frac_bits)
        ihp.scale_decoder(z_int)
        ihp.mean_decoder(z_int)

    def float_decode():
        with torch.no_grad():
            model.decompress(strings, shapes)

    def int_decode():
        codec.decompress(coded, dev)

    times = {name: [] for name in ("float decode", "integer decode", "float hyper-decoders", "integer hyper-decoders")}
    float_decode(), int_decode()  # warm-up
    for _ in range(args.repeats):
        times["float decode"].append(timed(float_decode, dev))
        times["integer decode"].append(timed(int_decode, dev))
        times["float hyper-decoders"].append(timed(float_hyper, dev))
        times["integer hyper-decoders"].append(timed(int_hyper, dev))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"device {dev}, {args.frames} frames {args.width}x{args.height}, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print("| what | float | integer | integer / float |\n|---|---|---|---|")
    for what in ("decode", "hyper-decoders"):
        f, i = med[f"float {what}"], med[f"integer {what}"]
        unit = "s per clip" if what == "decode" else "ms per keyframe"
        scale = 1 if what == "decode" else 1000
        print(f"| {what} ({unit}) | {f * scale:.3f} | {i * scale:.3f} | {i / f:.3f} |")


if __name__ == "__main__":
    main()

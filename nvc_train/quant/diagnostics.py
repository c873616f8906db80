"""Diagnostics of frozen integer hyper-decoders on real frames."""

from __future__ import annotations

import torch
from torch import Tensor

from nvc_train.quant import arith
from nvc_train.quant.config import SYMBOL_LIMIT
from nvc_train.quant.fake_quant import integer_hyper_input


@torch.no_grad()
def keyframe_saturation(codec, frame: Tensor, role: str = "scale") -> float:
    """Fraction of the keyframe ``role`` hyper-decoder's intermediate activations that sit at
    their integer ceiling when coding ``frame`` (1, 3, H, W): a range calibrated too tightly
    clips, and clipped scales cost bits."""
    ihp = codec.hyperpriors["keyframe"]
    z = ihp.hp.hyper_encoder(codec.model.img_encoder(frame))
    med = ihp.hp.entropy_bottleneck._get_medians().reshape(1, -1, 1, 1)
    x = integer_hyper_input(torch.clamp(torch.round(z - med), -SYMBOL_LIMIT, SYMBOL_LIMIT).long(),
                            ihp.median_q, ihp.input_frac_bits)
    dec = ihp.scale_decoder if role == "scale" else ihp.mean_decoder
    hits = total = 0
    for i in range(2):
        lo, hi = dec.activation_range(i)
        x = arith.requantize(dec.layer_accumulator(i, x), dec._fixed_point(i), lo, hi)
        hits, total = hits + int((x == hi).sum()), total + x.numel()
    return hits / total

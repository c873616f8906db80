"""Independent reference of the pixel path (docs/integer-contract.md, "Pixel path").

It starts from the *float* weights of the three synthesis decoders and their learned
activation scales, not from the exported integers, and shares no code with ``nvc_train``:
the transposed convolutions are the tap loops of :mod:`tests.quant.reference`, the
requantization its unbounded Python integers, the volume and the warp those of
:mod:`tests.quant.warp_reference`, and the sampling positions follow the contract's formula
in Python integers.
"""

from __future__ import annotations

import hashlib

import numpy as np

from tests.quant import reference as ref
from tests.quant import warp_reference as wref

SAMPLE_UNITS = 255 * 256  # samples per unit of pixel value
SAMPLE_BOUND = 2**17 - 1
MOTION_UNITS = 2**16
MOTION_BOUND = 2**22
REFERENCE_LO, REFERENCE_HI = -SAMPLE_UNITS, 2 * SAMPLE_UNITS


def synthesis(weights: list[np.ndarray], biases: list[np.ndarray], act_scales: np.ndarray, qmax: int,
              y_int: np.ndarray, motion: bool) -> np.ndarray:
    """Four transposed convolutions from y_int (2**-8 grid) to the output grid."""
    s_in = np.float32(2.0**-8)
    x = y_int.astype(np.int64)
    for i in range(4):
        w_int, s_w = ref.quantize_weight(weights[i])
        acc_scale = np.float64(s_in) * s_w.astype(np.float64)
        b_int = np.rint(biases[i].astype(np.float64) / acc_scale).astype(np.int64)
        acc = ref.conv_transpose(x, w_int) + b_int.reshape(1, -1, 1, 1)
        if i < 3:
            s_out = np.float32(act_scales[i])
            x = ref.requantize(acc, acc_scale / np.float64(s_out), qmax, 0, qmax)
            s_in = s_out
        else:
            units, bound = (MOTION_UNITS, MOTION_BOUND) if motion else (SAMPLE_UNITS, SAMPLE_BOUND)
            return ref.requantize(acc, acc_scale * units, bound, -bound, bound)
    raise AssertionError("unreachable")


def coordinates(motion: np.ndarray, depth: int, flow_reference: int | None, frac_bits: int = 8) -> np.ndarray:
    """x·2**b + round_half_up(flow·S·2**b / 2), depth ((s + 1)·D − 1)/2 · 2**b, Python integers."""
    n, _, h, w = motion.shape
    sx, sy = (flow_reference, flow_reference) if flow_reference else (w, h)
    out = np.zeros((n, 3, h, w), dtype=np.int64)
    shift = 17 - frac_bits
    for b in range(n):
        for i in range(h):
            for j in range(w):
                fx, fy, s = (int(v) for v in motion[b, :, i, j])
                out[b, 0, i, j] = (j << frac_bits) + ((fx * sx + (1 << (shift - 1))) >> shift)
                out[b, 1, i, j] = (i << frac_bits) + ((fy * sy + (1 << (shift - 1))) >> shift)
                out[b, 2, i, j] = ((s * depth + (1 << (shift - 1))) >> shift) + (depth - 1) * (1 << (frac_bits - 1))
    return out


class Decoders:
    """Float weights, biases and activation scales of the three synthesis decoders."""

    def __init__(self, model, synthesis_qat, qmax: int):
        import torch

        self.qmax = qmax
        self.flow_reference = model.flow_reference
        self.layers = {}
        for name, attr in (("img", "img_decoder"), ("motion", "motion_decoder"), ("res", "res_decoder")):
            convs = [m for m in getattr(model, attr).modules() if isinstance(m, torch.nn.ConvTranspose2d)]
            scales = torch.clamp(synthesis_qat.decoders[name].act_range.detach(), min=1e-3) / qmax
            self.layers[name] = ([c.weight.detach().numpy() for c in convs], [c.bias.detach().numpy() for c in convs],
                                 scales.numpy())

    def run(self, name: str, y_int: np.ndarray) -> np.ndarray:
        weights, biases, scales = self.layers[name]
        return synthesis(weights, biases, scales, self.qmax, y_int, motion=name == "motion")


def decode(decoders: Decoders, frames: list[dict[str, np.ndarray]], num_levels: int = 5) -> list[np.ndarray]:
    """Per frame {"keyframe": y} or {"motion": y, "residual": y} (int64 on the 2**-8 grid) →
    (3, H, W) uint8 frames."""
    out, reference = [], None
    for latents in frames:
        if "keyframe" in latents:
            reference = np.clip(decoders.run("img", latents["keyframe"]), REFERENCE_LO, REFERENCE_HI)
        else:
            motion = decoders.run("motion", latents["motion"])
            coords = coordinates(motion, num_levels + 1, decoders.flow_reference)
            pred = wref.warp(wref.volume(reference, num_levels), coords)
            res = decoders.run("res", np.concatenate((latents["residual"], latents["motion"]), axis=1))
            reference = np.clip(pred + res, REFERENCE_LO, REFERENCE_HI)
        out.append(np.clip((reference + 128) >> 8, 0, 255).astype(np.uint8)[0])
    return out


def md5(frame: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(frame).tobytes()).hexdigest()

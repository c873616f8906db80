"""Frozen integer hyper-decoders: conversion from QAT/PTQ state, and their inference.

:func:`convert_decoder` turns a float hyper-decoder plus its fake-quant state into plain
integer tensors (weights int8, biases, fixed-point multipliers and shifts, saturation
bounds, scale-index thresholds) and proves at export time that every accumulator stays
exact. :class:`IntegerHyperDecoder` runs those tensors with :mod:`nvc_train.quant.arith`
only: nothing on this path is a float computation whose result could differ by machine.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nvc_train.quant import arith
from nvc_train.quant.config import MEAN_BOUND, MEAN_FRAC_BITS
from nvc_train.quant.fake_quant import FakeQuantHyperDecoder, hyper_decoder_layers
from nvc_train.quant.frozen import FrozenLayers


class ExportError(Exception):
    """The model cannot be frozen into exact integers (e.g. an accumulator bound fails)."""


def convert_decoder(
    decoder: nn.Module, fq: FakeQuantHyperDecoder, in_bound: int, scale_table: Tensor | None = None
) -> dict[str, Tensor]:
    """Integer tensors of one hyper-decoder.

    Args:
        decoder: float HyperDecoder (role "mean") or HyperDecoderWithQReLU (role "scale").
        fq: its calibrated fake-quant state.
        in_bound: largest |z_int| of the integer input (see ``fake_quant.input_bound``).
        scale_table: (L,) GaussianConditional scale table, required for role "scale".

    Returns:
        Flat dict: ``layer{i}.weight`` int8 (C_in, C_out, 5, 5), ``layer{i}.bias`` int64,
        ``layer{i}.multiplier/shift/saturation`` int64 (C,), ``layer{i}.act_lo/act_hi``
        int64 scalars (integer activation range), ``layer{i}.acc_bound`` int64 scalar
        (proven worst |accumulator|), and ``scale_thresholds`` int64 (C, L-1) for role "scale".
    """
    if not bool(fq.calibrated):
        raise ExportError(f"{fq.role} hyper-decoder was never calibrated: run QAT or PTQ calibration first")
    s_in: Tensor = torch.tensor(2.0**-fq.config.input_frac_bits)
    bound = int(in_bound)
    out: dict[str, Tensor] = {}
    layers = hyper_decoder_layers(decoder)
    for i, conv in enumerate(layers):
        w_int, s_w = fq.weight_quant(i, conv.weight)
        acc_scale = arith.accumulator_scale(s_in, s_w)
        b_int = arith.quantize_bias(conv.bias, acc_scale)
        acc_bound = arith.accumulator_bound(w_int, b_int, bound)
        if acc_bound >= arith.EXACT_FLOAT64:
            raise ExportError(
                f"{fq.role} layer {i}: accumulators may reach {acc_bound:.3g} >= 2**53, float64 would round"
            )
        # int8 for symmetric weights; affine ones (PTQ) span w_q - zero_point in [-255, 255].
        out[f"layer{i}.weight"] = w_int.to(torch.int8 if w_int.abs().max() <= 127 else torch.int16)
        out[f"layer{i}.bias"] = b_int
        out[f"layer{i}.acc_bound"] = torch.tensor(acc_bound, dtype=torch.int64)
        if i < len(layers) - 1:
            s_out, lo, hi = fq.act_spec(i)
            s_out = s_out.detach()
            fp = arith.fixed_point(arith.requantization_multiplier(acc_scale, s_out), max(abs(lo), abs(hi)))
            out[f"layer{i}.act_lo"], out[f"layer{i}.act_hi"] = torch.tensor(lo), torch.tensor(hi)
            s_in, bound = s_out, max(abs(lo), abs(hi))
        elif fq.role == "mean":
            fp = arith.fixed_point(acc_scale * 2.0**MEAN_FRAC_BITS, MEAN_BOUND)
        else:
            if scale_table is None:
                raise ValueError("scale_table is required for the scale hyper-decoder")
            out["scale_thresholds"] = arith.scale_index_thresholds(scale_table, acc_scale)
            break
        try:
            arith.check_fixed_point(fp)
        except ValueError as exc:
            raise ExportError(f"{fq.role} layer {i}: {exc}") from None
        out[f"layer{i}.multiplier"], out[f"layer{i}.shift"], out[f"layer{i}.saturation"] = fp
    return out


class IntegerHyperDecoder(FrozenLayers):
    """Inference of one frozen integer hyper-decoder from :func:`convert_decoder` tensors."""

    num_layers = 3

    def __init__(self, role: str, tensors: dict[str, Tensor]):
        super().__init__(tensors)
        self.role = role

    def activation_range(self, i: int) -> tuple[int, int]:
        """Integer range [lo, hi] of the activation after intermediate layer ``i`` (0 or 1)."""
        return int(self._t(f"layer{i}.act_lo")), int(self._t(f"layer{i}.act_hi"))

    @torch.compiler.disable
    def forward(self, z_int: Tensor) -> Tensor:
        """(N, 192, h, w) int64 → means on the 2**-8 grid (int64) or CDF indexes (int32),
        (N, 192, 8h, 8w)."""
        if self.role == "mean":
            fp = self._fixed_point(2)
            return self.run_layers(z_int, lambda acc: arith.requantize(acc, fp, -MEAN_BOUND, MEAN_BOUND, inplace=True))
        return arith.scale_indexes(self.run_layers(z_int, None), self._t("scale_thresholds"))

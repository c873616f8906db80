"""QAT fake-quantization of SSF's six hyper-decoders.

Neither torch.ao nor torchao offers QAT for ConvTranspose2d, so this module implements it.
The forward value of every fake-quant layer is *computed by the integer arithmetic itself*
(:mod:`nvc_train.quant.arith`, :mod:`nvc_train.quant.qat_conv`): the hyper-decoders see
during training exactly the means and scales the frozen integer model produces at
inference, and no float forward convolution runs beside it. Gradients are those of the
float32 computation the integers stand for, through straight-through estimators:
per-channel weight fake quant (STE), bias at the accumulator scale (STE), and LSQ
activation scales (Esser et al., ICLR 2020) with their gradient scaling.

The fake-quant modules hold only quantization state (activation scales, calibration flag)
in parameters and buffers, so it survives checkpoints and DDP; the float weights stay in
the stock ScaleSpaceFlow and are passed in at call time.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import torch
from compressai.layers.layers import QReLU
from compressai.ops import quantize_ste
from torch import Tensor, nn

from nvc_train.models.ssf import PARTS
from nvc_train.quant import arith
from nvc_train.quant.config import MEAN_BOUND, MEAN_FRAC_BITS, QRELU_MAX, SYMBOL_LIMIT, QuantConfig
from nvc_train.quant.qat_conv import LayerCache, conv_transpose_qat, fake_quant_lsq, observed_quantile
from nvc_train.quant.synthesis import SynthesisQAT

ROLES = ("mean", "scale")


def hyper_decoder_layers(decoder: nn.Module) -> list[nn.ConvTranspose2d]:
    """The three ConvTranspose2d layers of an SSF HyperDecoder or HyperDecoderWithQReLU."""
    layers = [m for m in decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    if len(layers) != 3:
        raise ValueError(f"expected 3 transposed convolutions in a hyper-decoder, found {len(layers)}")
    return layers


def hyper_decoder(hp: nn.Module, role: str) -> nn.Module:
    return hp.hyper_decoder_mean if role == "mean" else hp.hyper_decoder_scale


def quantize_medians(medians: Tensor, frac_bits: int) -> Tensor:
    """round_half_up(median·2**k) per channel, (C,) int64; exact (float32 → float64)."""
    return torch.floor(medians.detach().double().reshape(-1) * 2.0**frac_bits + 0.5).long()


def hyper_input(z: Tensor, medians: Tensor, frac_bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Hard-rounded hyper-latent in the integer domain, as the decoder will see it.

    Args:
        z: (N, C, h, w) float hyper-encoder output.
        medians: EntropyBottleneck medians, any shape with C elements.

    Returns:
        ``(symbols, z_int, z_hat)``: symbols (N, C, h, w) int64 as entropy-coded (clamped
        to ±SYMBOL_LIMIT), ``z_int = symbols·2**k + median_q`` int64, and
        ``z_hat = z_int·2**-k`` float32 whose gradient flows straight through to z.
    """
    med = medians.detach().reshape(1, -1, 1, 1).to(z.dtype)
    symbols = torch.clamp(torch.round(z.detach() - med), -SYMBOL_LIMIT, SYMBOL_LIMIT).long()
    z_int = integer_hyper_input(symbols, quantize_medians(medians, frac_bits), frac_bits)
    z_value = z_int.float() * 2.0**-frac_bits
    return symbols, z_int, z + (z_value - z).detach()


def integer_hyper_input(symbols: Tensor, median_q: Tensor, frac_bits: int) -> Tensor:
    """``clamp(symbols)·2**k + median_q`` (N, C, h, w) int64: the integer decoders' input."""
    symbols = torch.clamp(symbols.long(), -SYMBOL_LIMIT, SYMBOL_LIMIT)
    return symbols * 2**frac_bits + median_q.to(symbols.device).view(1, -1, 1, 1)


def input_bound(median_q: Tensor, frac_bits: int) -> int:
    """Largest |z_int| any bitstream can produce (Python int)."""
    return SYMBOL_LIMIT * 2**frac_bits + int(median_q.abs().max().item())


ACT_SCALE_FORMAT = 2
"""Version of ``FakeQuantHyperDecoder.act_scale``'s meaning: 2 = range / 255 (1 = the step)."""


class DecoderOutput(NamedTuple):
    """What one hyper-decoder hands to the Gaussian conditional.

    Attributes:
        value: (N, C, H, W) float32 means or scales in latent units (STE gradients).
        integer: (N, C, H, W) int64: means on the 2**-8 grid (role "mean") or scale
            accumulators (role "scale").
        acc_scale: (C,) float64 latent units per scale accumulator (role "scale"), else None.
    """

    value: Tensor
    integer: Tensor
    acc_scale: Tensor | None


class FakeQuantHyperDecoder(nn.Module):
    """QAT twin of one hyper-decoder; simulates int8 weights and integer activations exactly.

    State: ``act_scale`` (2,), the learned parameter of the two intermediate activations'
    steps, and ``calibrated``, set once they were initialised from data. ``act_scale`` is
    each activation's range / 255, which is its step at 8 bits and 257 × its step at 16 bits
    (:meth:`effective_act_scales` gives the steps): an Adam update moves a parameter by about
    the learning rate whatever its gradient, and a 16-bit step (~1e-4) learned directly is
    pushed past zero within a few updates (the first pixel-exact demo collapsed that way).
    Checkpoints written before this parametrisation (no ``act_scale_format``) stored the
    16-bit step itself; loading converts them.
    """

    def __init__(self, role: str, config: QuantConfig):
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.role = role
        self.config = config
        self.act_scale = nn.Parameter(torch.ones(2), requires_grad=config.act_range == "learned")
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.register_buffer("act_scale_format", torch.tensor(ACT_SCALE_FORMAT))
        self._layers = LayerCache()  # quantized weights per optimizer step, not state

    @property
    def step_per_parameter(self) -> float:
        """The activation step per unit of ``act_scale``: 255 / qmax (1 at 8 bits)."""
        return (2**8 - 1) / self.config.activation_qmax

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "act_scale" in state_dict and prefix + "act_scale_format" not in state_dict:
            # Written before ACT_SCALE_FORMAT 2: act_scale was the step itself.
            state_dict[prefix + "act_scale"] = state_dict[prefix + "act_scale"] / self.step_per_parameter
            state_dict[prefix + "act_scale_format"] = torch.tensor(ACT_SCALE_FORMAT)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"role={self.role}, activation_bits={self.config.activation_bits}"

    @property
    def activation_ceiling(self) -> float:
        """Largest real activation: QReLU clamps at 255 in the scale path."""
        return QRELU_MAX if self.role == "scale" else math.inf

    def effective_act_scales(self) -> Tensor:
        """(2,) float32 scales used by the integer arithmetic (positive; 255/qmax cap for QReLU)."""
        qmax = self.config.activation_qmax
        hi = self.activation_ceiling / qmax
        return torch.clamp(self.act_scale * self.step_per_parameter, min=1e-8, max=hi)

    def weight_quant(self, layer: int, weight: Tensor) -> tuple[Tensor, Tensor]:
        """Integer weights and per-output-channel scales of ``layer`` (QAT: symmetric int8
        per channel, recomputed from the live float weights)."""
        return arith.quantize_weight_per_channel(weight)

    def act_spec(self, layer: int) -> tuple[Tensor, int, int]:
        """Scale (scalar tensor, carries the LSQ gradient) and integer range [lo, hi] of the
        activation after intermediate ``layer``."""
        return self.effective_act_scales()[layer], 0, self.config.activation_qmax

    @torch.no_grad()
    def _calibrate(self, layer: int, pre_activation: Tensor) -> None:
        x = torch.clamp(pre_activation.detach().float(), 0, self.activation_ceiling)
        value = observed_quantile(x, self.config.observe_quantile)  # same scales on every rank
        value = torch.clamp(value * self.config.range_headroom, max=self.activation_ceiling)
        self.act_scale[layer] = torch.clamp(value, min=1e-3) / self.config.activation_qmax / self.step_per_parameter

    def forward(self, decoder: nn.Module, z_int: Tensor, z_hat: Tensor) -> DecoderOutput:
        """Run ``decoder``'s weights through the integer arithmetic.

        The first call (training or not) initialises the activation scales from its batch
        (one extra pass without gradients), layer by layer, each on the quantized output of
        the previous one; uncalibrated scales are never used.

        Args:
            decoder: the float hyper-decoder whose ConvTranspose2d weights are used.
            z_int: (N, 192, h, w) int64 integer input (see :func:`hyper_input`).
            z_hat: (N, 192, h, w) float32 ``z_int·2**-k`` carrying the gradient.
        """
        if not bool(self.calibrated):
            with torch.no_grad():
                self._run(decoder, z_int, z_hat, calibrate=True)
            self.calibrated.fill_(True)
        return self._run(decoder, z_int, z_hat, calibrate=False)

    def _run(self, decoder: nn.Module, z_int: Tensor, z_hat: Tensor, calibrate: bool) -> DecoderOutput:
        layers = hyper_decoder_layers(decoder)
        x, x_int = z_hat, z_int
        s_in: Tensor = torch.tensor(2.0**-self.config.input_frac_bits)
        for i, conv in enumerate(layers):
            layer = self._layers.get(i, conv.weight, partial(self.weight_quant, i))
            acc_scale = arith.accumulator_scale(s_in, layer.weight_scale)
            b_int = arith.quantize_bias(conv.bias, acc_scale)
            # One exact integer convolution gives the value (acc) and, through y = acc·S,
            # the float convolution's gradients: no second, float forward.
            y, acc = conv_transpose_qat(x, x_int, conv.weight, conv.bias, layer, b_int, acc_scale)

            if i < len(layers) - 1:
                if calibrate:
                    self._calibrate(i, y)
                s_out, lo, hi = self.act_spec(i)
                fp = arith.fixed_point(arith.requantization_multiplier(acc_scale, s_out), max(abs(lo), abs(hi)))
                a_int = arith.requantize(acc, fp, lo, hi)
                s_lsq = arith.lsq_grad_scale(s_out, 1.0 / math.sqrt(y[0].numel() * (hi - lo)))
                a_float = fake_quant_lsq(y, s_lsq, lo, hi)
                x = a_float + (a_int.float() * s_out - a_float).detach()
                x_int, s_in = a_int, s_out.detach()
            elif self.role == "mean":
                fp = arith.fixed_point(acc_scale * 2.0**MEAN_FRAC_BITS, MEAN_BOUND)
                mean_q = arith.requantize(acc, fp, -MEAN_BOUND, MEAN_BOUND)
                means = mean_q.float() * 2.0**-MEAN_FRAC_BITS
                return DecoderOutput(y + (means - y).detach(), mean_q, None)
            else:
                scales = torch.clamp(acc.double() * acc_scale.view(1, -1, 1, 1), 0, QRELU_MAX).float()
                y_q = QReLU.apply(y, 8, 100)
                return DecoderOutput(y_q + (scales - y_q).detach(), acc, acc_scale)
        raise AssertionError("unreachable")


class HyperpriorQAT(nn.Module):
    """Fake-quant state of all six hyper-decoders, keyed ``"<part>_<role>"``, and with scope
    "decoder" of the three synthesis decoders (``synthesis``)."""

    def __init__(self, config: QuantConfig | None = None):
        super().__init__()
        self.config = config or QuantConfig()
        self.decoders = nn.ModuleDict(
            {f"{part}_{role}": FakeQuantHyperDecoder(role, self.config) for part in PARTS for role in ROLES}
        )
        # Scope "decoder": the synthesis decoders too (their state only exists then, so
        # hyperprior-scope checkpoints keep their keys).
        self.synthesis = SynthesisQAT(self.config) if self.config.pixel_exact else None

    def decoder(self, part: str, role: str) -> FakeQuantHyperDecoder:
        return self.decoders[f"{part}_{role}"]

    def hyperprior_forward(self, part: str, hp: nn.Module, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Training forward of one Hyperprior with integer-exact hyper-decoders.

        The hyper-decoders see the hard-rounded ``z_hat`` (as at inference), while the rate
        of z is still estimated on CompressAI's noisy proxy.
        """
        z = hp.hyper_encoder(y)
        _, z_likelihoods = hp.entropy_bottleneck(z)
        _, z_int, z_hat = hyper_input(z, hp.entropy_bottleneck._get_medians(), self.config.input_frac_bits)
        means = self.decoder(part, "mean")(hyper_decoder(hp, "mean"), z_int, z_hat).value
        scales = self.decoder(part, "scale")(hyper_decoder(hp, "scale"), z_int, z_hat).value
        _, y_likelihoods = hp.gaussian_conditional(y, scales, means)
        y_hat = quantize_ste(y - means) + means
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}


def fake_quant_scale_indexes(out: DecoderOutput, scale_table: Tensor) -> Tensor:
    """CDF indexes implied by fake-quant scales, the way CompressAI's build_indexes counts.

    Uses the float64 scales ``acc·S`` and float comparisons against the table: the integer
    model must reproduce this element for element with integer thresholds only.
    """
    scales = out.integer.double() * out.acc_scale.view(1, -1, 1, 1)
    table = scale_table.double().to(scales.device)
    index = torch.zeros_like(out.integer, dtype=torch.int32)
    for t in table[:-1]:
        index += (scales > t).int()
    return index


"""Integer synthesis decoders: QAT, export and exact inference of SSF's three pixel-side decoders.

SSF's ``img_decoder``, ``motion_decoder`` and ``res_decoder`` are each four stride-2 5×5
transposed convolutions with ReLUs between them, the hyper-decoders' layer geometry, so
they reuse the same exact arithmetic (:mod:`nvc_train.quant.arith`): int8 per-channel
weights, integer activations (16-bit by default), accumulators proven below 2**53 at export,
int64 fixed-point requantization with round half up. What differs is the output grid:

* ``img`` and ``res``: samples, 8-bit levels with ``SAMPLE_FRAC_BITS`` fractional bits
  (value × 255 × 2**8), the grid of :mod:`nvc_train.quant.integer_warp`;
* ``motion``: flow x, flow y and scale field in CompressAI's normalised units with
  ``MOTION_FRAC_BITS`` fractional bits; :func:`motion_coordinates` turns them into the warp's
  fixed-point pixel positions with integer operations only.

Training (:class:`FakeQuantSynthesis`) simulates the integer model in float32 with
straight-through estimators (per-channel weight fake quant, bias at the accumulator scale,
LSQ activation scales): these decoders decide pixels, not which probability table the range
decoder reads, so a float32 simulation that rounds differently in rare ties costs nothing
in decodability (the hyper-decoders' training runs the exact integers instead). Running the
exact integers here too was built and measured: at training sizes an int8 layer costs about
what PyTorch's float convolution does and the int64 requantization comes on top, so a QAT
step took 1.50× a float step at 128² crops and 1.81× at 256², where this simulation takes
1.20× and 1.17× (BENCHMARKS.md, "QAT step").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from compressai.ops import quantize_ste
from torch import Tensor, nn

from nvc_train.models.ssf import SYNTHESIS_ATTR
from nvc_train.quant import arith
from nvc_train.quant.config import MEAN_BOUND, MEAN_FRAC_BITS, SYMBOL_LIMIT, QuantConfig
from nvc_train.quant.frozen import FrozenLayers
from nvc_train.quant.integer_warp import SAMPLE_FRAC_BITS, round_shift
from nvc_train.quant.qat_conv import LayerCache, fake_quant_lsq, observed_quantile

DECODERS = SYNTHESIS_ATTR
"""Synthesis decoders by short name → ScaleSpaceFlow attribute."""

NUM_LAYERS = 4

SAMPLE_UNITS = 255 * 2**SAMPLE_FRAC_BITS
"""Integer samples per unit of pixel value (1.0 = full scale)."""

SAMPLE_BOUND = 2**17 - 1
"""|sample| of decoder outputs and references: keeps the warp's sums below 2**41."""

MOTION_FRAC_BITS = 16
MOTION_BOUND = 2**22
"""|flow| and |scale field| up to 64 normalised units (32 frame widths): far beyond any motion."""

INPUT_BOUND = SYMBOL_LIMIT * 2**MEAN_FRAC_BITS + MEAN_BOUND
"""Largest |y_int| a bitstream can give: symbols ±2**15 on the 2**-8 grid plus the mean."""


def output_format(name: str) -> tuple[int, int]:
    """(integer units per unit of value, bound on |output|) of decoder ``name``'s last layer."""
    if name == "motion":
        return 2**MOTION_FRAC_BITS, MOTION_BOUND
    return SAMPLE_UNITS, SAMPLE_BOUND


def synthesis_layers(decoder: nn.Module) -> list[nn.ConvTranspose2d]:
    """The four ConvTranspose2d layers of an SSF synthesis decoder."""
    layers = [m for m in decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    if len(layers) != NUM_LAYERS:
        raise ValueError(f"expected {NUM_LAYERS} transposed convolutions in a synthesis decoder, found {len(layers)}")
    return layers


def latent_integers(y_hat: Tensor) -> Tensor:
    """Decoded latents ``symbol + mean`` (float32 on the 2**-8 grid, exact) → int64 y_int.

    Scaling by a power of two is exact in float32 and the product is an integer below 2**24,
    so no float64 is needed (backends such as MPS have none)."""
    return torch.round(y_hat.float() * 2**MEAN_FRAC_BITS).long()


class FakeQuantSynthesis(nn.Module):
    """QAT twin of one synthesis decoder: int8 weights, integer activations, integer output grid.

    State: ``act_range`` (3,), the real value of the largest integer (``qmax``) of each
    intermediate activation, and ``calibrated``. The input is the decoded latent on the 2**-8
    grid (hyperprior QAT puts it there).

    The learned parameter is the range, not the step ``range / qmax``: with 16-bit
    activations a step is ~1e-4, the size of one Adam update at a typical learning rate, so
    a step parameter would jump by 100 % per update and collapse (the first demo run went
    from 17 dB to 5 dB in 100 steps); ranges are O(1), and LSQ's gradient reaches them
    through the same division.
    """

    def __init__(self, name: str, config: QuantConfig):
        super().__init__()
        if name not in DECODERS:
            raise ValueError(f"name must be one of {tuple(DECODERS)}, got {name!r}")
        self.name = name
        self.config = config
        self.act_range = nn.Parameter(torch.ones(NUM_LAYERS - 1), requires_grad=config.act_range == "learned")
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self._layers = LayerCache()  # quantized weights per optimizer step, not state

    def extra_repr(self) -> str:
        return f"name={self.name}, activation_bits={self.config.decoder_activation_bits}"

    @property
    def qmax(self) -> int:
        return 2**self.config.decoder_activation_bits - 1

    def act_spec(self, layer: int) -> tuple[Tensor, int, int]:
        """Scale (scalar, LSQ gradient) and integer range of the activation after ``layer``."""
        return torch.clamp(self.act_range[layer], min=1e-3) / self.qmax, 0, self.qmax

    @torch.no_grad()
    def _calibrate(self, layer: int, pre_activation: Tensor) -> None:
        value = observed_quantile(pre_activation.detach().float().clamp(min=0), self.config.observe_quantile)
        self.act_range[layer] = torch.clamp(value * self.config.range_headroom, min=1e-3)

    def forward(self, decoder: nn.Module, x: Tensor) -> Tensor:
        """``decoder``'s weights through the simulated integer model.

        Args:
            decoder: the float synthesis decoder (its ConvTranspose2d weights are used).
            x: (N, C_in, h, w) float32 latents on the 2**-8 grid.

        Returns:
            (N, C_out, 16h, 16w) float32 on the output grid (samples/255/2**8 for img and
            res, 2**-16 for motion), gradients straight through.
        """
        if not bool(self.calibrated):
            with torch.no_grad():
                self._run(decoder, x, calibrate=True)
            self.calibrated.fill_(True)
        return self._run(decoder, x, calibrate=False)

    def _run(self, decoder: nn.Module, x: Tensor, calibrate: bool) -> Tensor:
        s_in: Tensor = torch.tensor(2.0**-MEAN_FRAC_BITS)
        layers = synthesis_layers(decoder)
        for i, conv in enumerate(layers):
            layer = self._layers.get(i, conv.weight, arith.quantize_weight_per_channel, prepare=False)
            w_fq = conv.weight + (layer.weight_value - conv.weight).detach()
            acc_scale = arith.accumulator_scale(s_in, layer.weight_scale)
            b_int = arith.quantize_bias(conv.bias, acc_scale)
            b_fq = conv.bias + ((b_int.double() * acc_scale).float() - conv.bias).detach()
            y = F.conv_transpose2d(x, w_fq, b_fq, stride=2, padding=2, output_padding=1)
            if i == len(layers) - 1:
                units, bound = output_format(self.name)
                return torch.clamp(quantize_ste(y * units), -bound, bound) / units
            if calibrate:
                self._calibrate(i, y)
            s_out, lo, hi = self.act_spec(i)
            s_lsq = arith.lsq_grad_scale(s_out, 1.0 / math.sqrt(y[0].numel() * (hi - lo)))
            x = fake_quant_lsq(y, s_lsq, lo, hi)
            s_in = s_out.detach()
        raise AssertionError("unreachable")


class SynthesisQAT(nn.Module):
    """Fake-quant state of the three synthesis decoders, keyed by short name."""

    def __init__(self, config: QuantConfig):
        super().__init__()
        self.decoders = nn.ModuleDict({name: FakeQuantSynthesis(name, config) for name in DECODERS})

    def decoder_forward(self, name: str, decoder: nn.Module, x: Tensor) -> Tensor:
        """Run synthesis decoder ``name`` (``"img"``, ``"motion"``, ``"res"``) fake-quantized."""
        return self.decoders[name](decoder, x)


def integer_layer(conv: nn.ConvTranspose2d, s_in: Tensor, bound: int, where: str, out: dict[str, Tensor],
                  i: int) -> Tensor:
    """Quantize one transposed layer for input step ``s_in`` and |input| <= ``bound``: store
    ``layer{i}.weight`` (int8), ``.bias`` (int64 at the accumulator scale) and ``.acc_bound``
    in ``out`` once the bound is proven below 2**53; return the (C_out,) float64 accumulator scale."""
    from nvc_train.quant.integer import ExportError

    w_int, s_w = arith.quantize_weight_per_channel(conv.weight)
    acc_scale = arith.accumulator_scale(s_in, s_w)
    b_int = arith.quantize_bias(conv.bias, acc_scale)
    acc_bound = arith.accumulator_bound(w_int, b_int, bound)
    if acc_bound >= arith.EXACT_FLOAT64:
        raise ExportError(f"{where} layer {i}: accumulators may reach {acc_bound:.3g} >= 2**53")
    out[f"layer{i}.weight"] = w_int.to(torch.int8)
    out[f"layer{i}.bias"] = b_int
    out[f"layer{i}.acc_bound"] = torch.tensor(acc_bound, dtype=torch.int64)
    return acc_scale


def convert_synthesis(decoder: nn.Module, fq: FakeQuantSynthesis) -> dict[str, Tensor]:
    """Integer tensors of one synthesis decoder, each accumulator bound proven exact.

    Returns:
        ``layer{i}.weight`` int8 (C_in, C_out, 5, 5), ``layer{i}.bias`` int64 (C_out,),
        ``layer{i}.multiplier/shift/saturation`` int64 (C_out,), ``layer{i}.acc_bound`` int64
        scalar, and ``layer{i}.act_hi`` (intermediate layers: activations are [0, act_hi]).
    """
    from nvc_train.quant.integer import ExportError

    if not bool(fq.calibrated):
        raise ExportError(f"{fq.name} decoder was never calibrated: train with model.qat.scope=decoder first")
    s_in: Tensor = torch.tensor(2.0**-MEAN_FRAC_BITS)
    bound = INPUT_BOUND
    out: dict[str, Tensor] = {}
    layers = synthesis_layers(decoder)
    for i, conv in enumerate(layers):
        acc_scale = integer_layer(conv, s_in, bound, f"{fq.name} decoder", out, i)
        if i < len(layers) - 1:
            s_out, _, hi = fq.act_spec(i)
            fp = arith.fixed_point(arith.requantization_multiplier(acc_scale, s_out.detach()), hi)
            out[f"layer{i}.act_hi"] = torch.tensor(hi, dtype=torch.int64)
            s_in, bound = s_out.detach(), hi
        else:
            units, out_bound = output_format(fq.name)
            fp = arith.fixed_point(acc_scale * units, out_bound)
        try:
            arith.check_fixed_point(fp)
        except ValueError as exc:
            raise ExportError(f"{fq.name} decoder layer {i}: {exc}") from None
        out[f"layer{i}.multiplier"], out[f"layer{i}.shift"], out[f"layer{i}.saturation"] = fp
    return out


class IntegerSynthesis(FrozenLayers):
    """Exact inference of one frozen synthesis decoder from :func:`convert_synthesis` tensors."""

    num_layers = NUM_LAYERS

    def __init__(self, name: str, tensors: dict[str, Tensor]):
        super().__init__(tensors)
        self.name = name

    def activation_range(self, i: int) -> tuple[int, int]:
        """Activations after intermediate layer ``i`` are [0, act_hi] (ReLU)."""
        return 0, int(self._t(f"layer{i}.act_hi"))

    @torch.compiler.disable
    def forward(self, y_int: Tensor) -> Tensor:
        """(N, C_in, h, w) int64 latents on the 2**-8 grid → (N, C_out, 16h, 16w) int64 on
        the output grid (see :func:`output_format`)."""
        _, bound = output_format(self.name)
        fp = self._fixed_point(NUM_LAYERS - 1)
        return self.run_layers(y_int, lambda acc: arith.requantize(acc, fp, -bound, bound, inplace=True))


def motion_coordinates(motion_q: Tensor, depth: int, flow_reference: int | None, coord_frac_bits: int) -> Tensor:
    """Integer motion-decoder output → the warp's fixed-point sampling positions (N, 3, H, W).

    ``warp_volume`` samples at x + flow·S/2 pixels, where S is the flow reference R (flow
    units defined on R-pixel crops, :func:`nvc_train.models.ssf.rescale_flow`) or, for
    CompressAI's stock units, the frame's width (height for y); and at depth index
    ((s + 1)·D − 1)/2 for scale field s over D levels. With flow on the 2**-16 grid, each is
    an integer product and one rounding shift: ``x·2**b + round(flow_q·S / 2**(17 − b))``.

    Args:
        motion_q: (N, 3, H, W) int64 flow x, flow y, scale field, 2**-MOTION_FRAC_BITS units.
        depth: D, the number of volume levels.
        flow_reference: R in pixels, or None for CompressAI's frame-relative units.
        coord_frac_bits: b, fractional bits of the positions.
    """
    n, _, h, w = motion_q.shape
    shift = MOTION_FRAC_BITS + 1 - coord_frac_bits
    sx, sy = (flow_reference, flow_reference) if flow_reference is not None else (w, h)
    xs = (torch.arange(w, device=motion_q.device, dtype=torch.int64) << coord_frac_bits).view(1, 1, w)
    ys = (torch.arange(h, device=motion_q.device, dtype=torch.int64) << coord_frac_bits).view(1, h, 1)
    x = xs + round_shift(motion_q[:, 0] * sx, shift)
    y = ys + round_shift(motion_q[:, 1] * sy, shift)
    z = round_shift(motion_q[:, 2] * depth, shift) + ((depth - 1) << (coord_frac_bits - 1))
    return torch.stack((x, y, z), dim=1)

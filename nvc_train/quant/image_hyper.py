"""Integer hyper-decoders of CompressAI's image hyperpriors: QAT twin, conversion, inference.

An image model has one hyper-decoder ``h_s`` (an ``nn.Sequential``) where SSF has a mean and
a scale decoder per hyperprior:

* bmshj2018-hyperprior: ``deconv(N, N), ReLU, deconv(N, N), ReLU, conv3(N, M), ReLU`` →
  the M scales (no means);
* mbt2018-mean: ``deconv(N, M), LeakyReLU, deconv(M, 3M/2), LeakyReLU, conv3(3M/2, 2M)`` →
  scales (channels 0..M−1) and means (M..2M−1), CompressAI's ``chunk(2, 1)`` order.

The integer function (docs/integer-contract.md, "Image architectures") extends SSF's:
transposed layers as in SSF, 3×3 layers by :mod:`nvc_train.quant.exact_conv2d`, ReLU as a
requantization into [0, qmax], LeakyReLU as two fixed-point multipliers (``acc ≥ 0``: the
requantization multiplier; ``acc < 0``: that times the slope) into [−qmax/8, qmax], means
requantized onto the 2**-8 grid and scales turned into CDF indexes by integer thresholds,
exactly as SSF's. :class:`FakeQuantImageHyperDecoder` trains through that arithmetic (the
forward value is the integers', the gradients the float convolutions'), and
:class:`IntegerImageHyperDecoder` runs the exported tensors with nothing else.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from compressai.ops import quantize_ste
from torch import Tensor, nn

from nvc_train.quant import arith, exact_conv, exact_conv2d
from nvc_train.quant.config import MEAN_BOUND, MEAN_FRAC_BITS, QuantConfig
from nvc_train.quant.fake_quant import hyper_input, input_bound, quantize_medians
from nvc_train.quant.frozen import FrozenLayers
from nvc_train.quant.image_synthesis import FakeQuantImageSynthesis, image_synthesis_tensors
from nvc_train.quant.integer import ExportError
from nvc_train.quant.qat_conv import fake_quant_lsq, observed_quantile, value_of_accumulators

KINDS = ("transposed", "conv3")
"""Layer kinds: ConvTranspose2d(k=5, stride 2, padding 2, output padding 1), Conv2d(k=3, padding 1)."""

ACTIVATIONS = ("none", "relu", "leaky_relu")

LEAKY_SLOPE = 0.01
"""``nn.LeakyReLU``'s default negative slope, which mbt2018-mean's hyper-decoder uses."""

LEAKY_NEGATIVE_SHARE = 8
"""A LeakyReLU activation's integer range is [−qmax/8, qmax]: its negative side is 1/100 of
the pre-activation, so an eighth of the positive range is ample and the codes stay narrow."""


class DecoderLayer(NamedTuple):
    """One convolution of an image hyper-decoder and the activation after it."""

    conv: nn.Module
    kind: str
    activation: str


class Head(NamedTuple):
    """Which output channels of the last layer are scales and which means (``mean_stop`` =
    ``mean_start`` when the model has no means)."""

    scale_start: int
    scale_stop: int
    mean_start: int
    mean_stop: int

    @property
    def has_means(self) -> bool:
        return self.mean_stop > self.mean_start

    @staticmethod
    def of(channels: int, has_means: bool) -> "Head":
        """Scales only (all ``channels``), or scales then means in two halves (``chunk(2, 1)``)."""
        if not has_means:
            return Head(0, channels, 0, 0)
        return Head(0, channels // 2, channels // 2, channels)


def decoder_layers(h_s: nn.Module) -> list[DecoderLayer]:
    """The convolutions of ``h_s`` in order, each with the activation that follows it.

    Raises ValueError for any module this integer arithmetic does not define (a GDN, a
    stride or kernel other than the two kinds, a LeakyReLU of another slope).
    """
    layers: list[DecoderLayer] = []
    for module in h_s.children():
        if isinstance(module, nn.ConvTranspose2d):
            if (module.kernel_size, module.stride, module.padding, module.output_padding) != ((5, 5), (2, 2), (2, 2), (1, 1)):
                raise ValueError(f"unsupported transposed convolution {module}")
            layers.append(DecoderLayer(module, "transposed", "none"))
        elif isinstance(module, nn.Conv2d):
            if (module.kernel_size, module.stride, module.padding) != ((3, 3), (1, 1), (1, 1)):
                raise ValueError(f"unsupported convolution {module}")
            layers.append(DecoderLayer(module, "conv3", "none"))
        elif isinstance(module, (nn.ReLU, nn.LeakyReLU)) and layers and layers[-1].activation == "none":
            if isinstance(module, nn.LeakyReLU) and module.negative_slope != LEAKY_SLOPE:
                raise ValueError(f"LeakyReLU slope {module.negative_slope} (only {LEAKY_SLOPE} is defined)")
            layers[-1] = layers[-1]._replace(activation="relu" if isinstance(module, nn.ReLU) else "leaky_relu")
        else:
            raise ValueError(f"unsupported hyper-decoder module {module}")
    if not layers or any(layer.activation == "none" for layer in layers[:-1]):
        raise ValueError("every hyper-decoder layer but the last needs an activation")
    return layers


def activation_range(activation: str, qmax: int) -> tuple[int, int]:
    """Integer range [lo, hi] of an intermediate activation."""
    return (-(qmax // LEAKY_NEGATIVE_SHARE), qmax) if activation == "leaky_relu" else (0, qmax)


def quantize_weight(layer: DecoderLayer) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per-output-channel weights (float32, integer-valued, the module's own
    layout) and (C_out,) float32 scales: SSF's rule, applied along the output dimension."""
    w = layer.conv.weight
    if layer.kind == "transposed":
        return arith.quantize_weight_per_channel(w)
    w_int, scale = arith.quantize_weight_per_channel(w.transpose(0, 1))
    return w_int.transpose(0, 1), scale


def weight_value(layer: DecoderLayer, w_int: Tensor, scale: Tensor) -> Tensor:
    view = (1, -1, 1, 1) if layer.kind == "transposed" else (-1, 1, 1, 1)
    return (w_int * scale.view(view)).detach()


def layer_accumulators(kind: str, x_int: Tensor, w_int: Tensor, b_int: Tensor, path: str | None = None) -> Tensor:
    """Exact int64 accumulators (bias included) of one layer of ``kind``."""
    path = path or exact_conv.default_path(x_int.device)
    if kind == "transposed":
        return exact_conv.accumulators(x_int, exact_conv.prepare_weights(w_int, path, x_int.device), path, b_int)
    return exact_conv2d.conv_accumulators(x_int, exact_conv2d.prepare_conv_weights(w_int, path, x_int.device),
                                          path, b_int)


def layer_bound(kind: str, w_int: Tensor, b_int: Tensor, in_bound: int) -> int:
    """Worst |accumulator| of one layer over inputs with |x| <= in_bound."""
    if kind == "transposed":
        return arith.accumulator_bound(w_int, b_int, in_bound)
    return exact_conv2d.accumulator_bound(w_int, b_int, in_bound)


class Requantization(NamedTuple):
    """An intermediate activation's integer step: ``positive`` for acc ≥ 0 and, for
    LeakyReLU, ``negative`` (the multiplier times the slope) for acc < 0."""

    positive: arith.FixedPoint
    negative: arith.FixedPoint | None
    lo: int
    hi: int


def requantization(activation: str, acc_scale: Tensor, s_out: Tensor, qmax: int) -> Requantization:
    lo, hi = activation_range(activation, qmax)
    real = arith.requantization_multiplier(acc_scale, s_out)
    bound = max(abs(lo), abs(hi))
    negative = arith.fixed_point(real * LEAKY_SLOPE, bound) if activation == "leaky_relu" else None
    return Requantization(arith.fixed_point(real, bound), negative, lo, hi)


def requantize_activation(acc: Tensor, step: Requantization) -> Tensor:
    """(N, C, H, W) int64 accumulators → activations in [lo, hi] (int64)."""
    out = arith.requantize(acc, step.positive, step.lo, step.hi)
    if step.negative is None:
        return out
    return torch.where(acc < 0, arith.requantize(acc, step.negative, step.lo, step.hi), out)


class ImageDecoderOutput(NamedTuple):
    """What an image hyper-decoder hands to the Gaussian conditional.

    Attributes:
        scales: (N, S, H, W) float32 scales in latent units (STE gradients).
        means: (N, S, H, W) float32 means on the 2**-8 grid, or None (scale-only model).
        scale_acc: (N, S, H, W) int64 scale accumulators; ``scale_acc_scale`` (S,) float64
            latent units per accumulator.
        mean_q: (N, S, H, W) int64 means·2**8, or None.
    """

    scales: Tensor
    means: Tensor | None
    scale_acc: Tensor
    scale_acc_scale: Tensor
    mean_q: Tensor | None


class FakeQuantImageHyperDecoder(nn.Module):
    """QAT twin of an image hyper-decoder: its forward value is the integer model's.

    State: ``act_log_range`` (L − 1,), the natural log of each intermediate activation's
    range (its step times qmax), learned, and ``calibrated``. The logarithm makes every
    optimizer update a relative change of the step: a toy model's activations span a few
    tenths, where SSF's linear parametrisation (range / 255) is moved past zero by the first
    Adam updates. The step is computed in float64 and rounded to float32 once, the same way
    in training and at export.
    """

    def __init__(self, num_layers: int, head: Head, config: QuantConfig):
        super().__init__()
        self.head = head
        self.config = config
        self.act_log_range = nn.Parameter(torch.zeros(num_layers - 1), requires_grad=config.act_range == "learned")
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    def act_step(self, i: int) -> Tensor:
        """Scale of activation ``i`` (0-dim float32, positive; carries the LSQ gradient)."""
        return (torch.exp(self.act_log_range[i].double()) / self.config.activation_qmax).float()

    @torch.no_grad()
    def _calibrate(self, i: int, pre_activation: Tensor) -> None:
        value = observed_quantile(torch.clamp(pre_activation.detach().float(), min=0), self.config.observe_quantile)
        self.act_log_range[i] = torch.log(torch.clamp(value * self.config.range_headroom, min=1e-3))

    def forward(self, h_s: nn.Module, z_int: Tensor, z_hat: Tensor) -> ImageDecoderOutput:
        """Run ``h_s``'s weights through the integer arithmetic.

        Args:
            h_s: the float hyper-decoder (its weights are used, its modules are not run).
            z_int: (N, N_z, h, w) int64 ``symbols·2**k + median_q``.
            z_hat: (N, N_z, h, w) float32 ``z_int·2**-k`` carrying the gradient.
        """
        if not bool(self.calibrated):
            with torch.no_grad():
                self._run(h_s, z_int, z_hat, calibrate=True)
            self.calibrated.fill_(True)
        return self._run(h_s, z_int, z_hat, calibrate=False)

    def _run(self, h_s: nn.Module, z_int: Tensor, z_hat: Tensor, calibrate: bool) -> ImageDecoderOutput:
        layers = decoder_layers(h_s)
        x, x_int = z_hat, z_int
        s_in: Tensor = torch.tensor(2.0**-self.config.input_frac_bits)
        qmax = self.config.activation_qmax
        for i, layer in enumerate(layers):
            w_int, s_w = quantize_weight(layer)
            acc_scale = arith.accumulator_scale(s_in, s_w)
            b_int = arith.quantize_bias(layer.conv.bias, acc_scale)
            acc = layer_accumulators(layer.kind, x_int, w_int, b_int)
            y = value_of_accumulators(x, layer.conv.weight, layer.conv.bias, acc, acc_scale,
                                      weight_value(layer, w_int, s_w), layer.kind == "transposed")
            if i == len(layers) - 1:
                return self._head(layer, y, acc, acc_scale)
            if calibrate:
                self._calibrate(i, y)
            s_out = self.act_step(i)
            step = requantization(layer.activation, acc_scale, s_out, qmax)
            a_int = requantize_activation(acc, step)
            activated = F.leaky_relu(y, LEAKY_SLOPE) if layer.activation == "leaky_relu" else y
            s_lsq = arith.lsq_grad_scale(s_out, 1.0 / math.sqrt(y[0].numel() * (step.hi - step.lo)))
            a_float = fake_quant_lsq(activated, s_lsq, step.lo, step.hi)
            x = a_float + (a_int.float() * s_out - a_float).detach()
            x_int, s_in = a_int, s_out.detach()
        raise AssertionError("unreachable")

    def _head(self, layer: DecoderLayer, y: Tensor, acc: Tensor, acc_scale: Tensor) -> ImageDecoderOutput:
        h = self.head
        y_s, acc_s, scale_s = y[:, h.scale_start:h.scale_stop], acc[:, h.scale_start:h.scale_stop], \
            acc_scale[h.scale_start:h.scale_stop]
        scales = (acc_s.double() * scale_s.view(1, -1, 1, 1)).float()
        if layer.activation == "relu":
            scales, y_s = scales.clamp(min=0), F.relu(y_s)
        scales = y_s + (scales - y_s).detach()
        if not h.has_means:
            return ImageDecoderOutput(scales, None, acc_s, scale_s, None)
        fp = arith.fixed_point(acc_scale[h.mean_start:h.mean_stop] * 2.0**MEAN_FRAC_BITS, MEAN_BOUND)
        mean_q = arith.requantize(acc[:, h.mean_start:h.mean_stop], fp, -MEAN_BOUND, MEAN_BOUND)
        y_m = y[:, h.mean_start:h.mean_stop]
        means = y_m + (mean_q.float() * 2.0**-MEAN_FRAC_BITS - y_m).detach()
        return ImageDecoderOutput(scales, means, acc_s, scale_s, mean_q)


LAYOUT_CODES = {"transposed": 0, "conv3": 1}
ACTIVATION_CODES = {name: i for i, name in enumerate(ACTIVATIONS)}


def convert_image_decoder(h_s: nn.Module, fq: FakeQuantImageHyperDecoder, in_bound: int,
                          scale_table: Tensor) -> dict[str, Tensor]:
    """Integer tensors of an image hyper-decoder, every accumulator proven exact.

    Args:
        h_s: the float hyper-decoder; fq: its calibrated fake-quant state.
        in_bound: largest |z_int| (see ``fake_quant.input_bound``).
        scale_table: (L,) GaussianConditional scale table.

    Returns:
        ``layout`` int64 (L, 2) (kind code, activation code per layer), ``head_channels`` int64 (4,),
        per layer ``layer{i}.weight`` int8 (module layout), ``.bias`` int64, ``.acc_bound``,
        intermediate layers ``.multiplier/.shift/.saturation`` (and ``.neg_*`` for
        LeakyReLU) and ``.act_lo/.act_hi``; ``scale_thresholds`` (S, L−1) int64; with means,
        ``mean.multiplier/shift/saturation`` (S,).
    """
    if not bool(fq.calibrated):
        raise ExportError("the image hyper-decoder was never calibrated: run QAT first")
    layers = decoder_layers(h_s)
    s_in: Tensor = torch.tensor(2.0**-fq.config.input_frac_bits)
    bound = int(in_bound)
    qmax = fq.config.activation_qmax
    out: dict[str, Tensor] = {
        "layout": torch.tensor([[LAYOUT_CODES[ly.kind], ACTIVATION_CODES[ly.activation]] for ly in layers]),
        "head_channels": torch.tensor(list(fq.head), dtype=torch.int64),
    }
    for i, layer in enumerate(layers):
        w_int, s_w = quantize_weight(layer)
        acc_scale = arith.accumulator_scale(s_in, s_w)
        b_int = arith.quantize_bias(layer.conv.bias, acc_scale)
        acc_bound = layer_bound(layer.kind, w_int, b_int, bound)
        if acc_bound >= arith.EXACT_FLOAT64:
            raise ExportError(f"hyper-decoder layer {i}: accumulators may reach {acc_bound:.3g} >= 2**53")
        out[f"layer{i}.weight"] = w_int.to(torch.int8)
        out[f"layer{i}.bias"] = b_int
        out[f"layer{i}.acc_bound"] = torch.tensor(acc_bound, dtype=torch.int64)
        if i < len(layers) - 1:
            step = requantization(layer.activation, acc_scale, fq.act_step(i).detach(), qmax)
            fixed = {"": step.positive, "neg_": step.negative}
            out[f"layer{i}.act_lo"], out[f"layer{i}.act_hi"] = torch.tensor(step.lo), torch.tensor(step.hi)
            s_in, bound = fq.act_step(i).detach(), max(abs(step.lo), abs(step.hi))
        else:
            h = fq.head
            out["scale_thresholds"] = arith.scale_index_thresholds(scale_table, acc_scale[h.scale_start:h.scale_stop])
            fixed = {}
            if h.has_means:
                fixed["mean."] = arith.fixed_point(acc_scale[h.mean_start:h.mean_stop] * 2.0**MEAN_FRAC_BITS, MEAN_BOUND)
        for prefix, fp in fixed.items():
            if fp is None:
                continue
            try:
                arith.check_fixed_point(fp)
            except ValueError as exc:
                raise ExportError(f"hyper-decoder layer {i}: {exc}") from None
            key = f"layer{i}.{prefix}" if prefix != "mean." else "mean."
            out[key + "multiplier"], out[key + "shift"], out[key + "saturation"] = fp
    return out


class IntegerImageHyperDecoder(FrozenLayers):
    """Inference of a frozen image hyper-decoder from :func:`convert_image_decoder` tensors,
    held as buffers by :class:`~nvc_train.quant.frozen.FrozenLayers` (``gemm_path``: "int8",
    "float32" or "float64", or None for the device's default). Its layers run one by one with
    int64 activations: the hyper-latent is 1/64 of the image, where SSF's banded digit-plane
    pipeline would buy nothing."""

    @property
    def head(self) -> Head:
        return Head(*self._t("head_channels").tolist())

    @torch.compiler.disable
    def forward(self, z_int: Tensor) -> tuple[Tensor | None, Tensor]:
        """(N, N_z, h, w) int64 → (means·2**8 int64 or None, CDF indexes int32), each
        (N, S, 4h, 4w)."""
        return self.run(z_int)

    def accumulators(self, z_int: Tensor) -> list[Tensor]:
        """Every layer's int64 accumulators (bias included) on ``z_int``: what the stress
        conformance record hashes, so that a change of any one weight shows."""
        trace: list[Tensor] = []
        self.run(z_int, trace)
        return trace

    def run(self, z_int: Tensor, trace: list[Tensor] | None = None) -> tuple[Tensor | None, Tensor]:
        path = self.gemm_path or exact_conv.default_path(z_int.device)
        x = z_int
        layout = self._t("layout").tolist()
        for i, (kind, activation) in enumerate(layout):
            kind, activation = KINDS[kind], ACTIVATIONS[activation]
            acc = layer_accumulators(kind, x, self._t(f"layer{i}.weight"), self._t(f"layer{i}.bias"), path)
            if trace is not None:
                trace.append(acc)
            if i < len(layout) - 1:
                negative = self._fp(f"layer{i}.neg_") if activation == "leaky_relu" else None
                step = Requantization(self._fp(f"layer{i}."), negative, int(self._t(f"layer{i}.act_lo")),
                                      int(self._t(f"layer{i}.act_hi")))
                x = requantize_activation(acc, step)
        h = self.head
        indexes = arith.scale_indexes(acc[:, h.scale_start:h.scale_stop].contiguous(), self._t("scale_thresholds"))
        if not h.has_means:
            return None, indexes
        return arith.requantize(acc[:, h.mean_start:h.mean_stop], self._fp("mean."), -MEAN_BOUND, MEAN_BOUND), indexes


class ImageHyperpriorQAT(nn.Module):
    """Fake-quant state of an image model's hyper-decoder (``decoder``) and its training
    forward, the image counterpart of :class:`~nvc_train.quant.fake_quant.HyperpriorQAT`."""

    def __init__(self, num_layers: int, head: Head, config: QuantConfig | None = None, synthesis_gdns: int = 3):
        super().__init__()
        self.config = config or QuantConfig()
        self.decoder = FakeQuantImageHyperDecoder(num_layers, head, self.config)
        # scope "decoder": the synthesis g_s too (pixel-exact images)
        self.synthesis = FakeQuantImageSynthesis(synthesis_gdns, self.config) if self.config.pixel_exact else None

    def synthesis_forward(self, g_s: nn.Module, y_hat: Tensor) -> Tensor:
        """``g_s`` on the latents (on the 2**-8 grid): through the simulated integer synthesis
        with scope "decoder", CompressAI's float one otherwise."""
        return g_s(y_hat) if self.synthesis is None else self.synthesis(g_s, y_hat)

    def hyperprior_forward(self, hp, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Training forward of an :class:`~nvc_train.models.image.ImageHyperprior` whose
        hyper-decoder is integer-exact: it sees the hard-rounded ``z_hat`` (as at inference),
        while the rate of z is still estimated on CompressAI's noisy proxy."""
        z = hp.hyper_encoder(y)
        _, z_likelihoods = hp.entropy_bottleneck(z)
        _, z_int, z_hat = hyper_input(z, hp.entropy_bottleneck._get_medians(), self.config.input_frac_bits)
        out = self.decoder(hp.hyper_decoder, z_int, z_hat)
        _, y_likelihoods = hp.gaussian_conditional(y, out.scales, means=out.means)
        y_hat = quantize_ste(y - out.means) + out.means if out.means is not None else quantize_ste(y)
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}


def image_integer_tensors(model: nn.Module, qat: ImageHyperpriorQAT) -> dict[str, Tensor]:
    """``median_q``, the converted hyper-decoder (``decoder.*``) and, with scope "decoder",
    the converted synthesis (``synthesis.*``) of an image model whose entropy tables are
    computed (``model.update(force=True)``)."""
    k = qat.config.input_frac_bits
    median_q = quantize_medians(model.entropy_bottleneck._get_medians(), k)
    tensors = convert_image_decoder(model.h_s, qat.decoder, input_bound(median_q, k),
                                    model.gaussian_conditional.scale_table)
    out = {"median_q": median_q, **{f"decoder.{name}": t for name, t in tensors.items()}}
    if qat.synthesis is not None:
        out.update(image_synthesis_tensors(model, qat.synthesis))
    return out

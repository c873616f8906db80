"""Post-training quantization: the published baseline and its observer × scheme search.

Conceição et al. (2024) make SSF's hyperprior decoding path deterministic with static PTQ,
searching PyTorch observers and quantization schemes; this module reproduces that search
inside nvc-train's integer contract, so each candidate is scored by the *real* integer
codec (entropy-coded bits, decoded PSNR) on validation clips.

Candidates: weights use any of MinMax, MovingAverageMinMax, Histogram (per-tensor) or
PerChannelMinMax, MovingAveragePerChannelMinMax (per-channel), affine or symmetric (qint8);
activations use MinMax, MovingAverageMinMax or Histogram (quint8), affine or symmetric.
Per-channel activation observers are not applicable: one integer accumulator sums over
input channels, which must therefore share a single scale. That gives 10 × 6 = 60
candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.ao.quantization import observer as ao

from nvc_train.codec.integer_codec import build_integer_ssf, coded_bits
from nvc_train.models.ssf import PARTS, hyperprior, ssf_forward
from nvc_train.quant.config import QRELU_MAX, QuantConfig
from nvc_train.quant.fake_quant import ROLES, FakeQuantHyperDecoder, HyperpriorQAT, hyper_decoder, hyper_decoder_layers, hyper_input

WEIGHT_OBSERVERS = {
    "MinMax": (ao.MinMaxObserver, False),
    "MovingAverageMinMax": (ao.MovingAverageMinMaxObserver, False),
    "Histogram": (ao.HistogramObserver, False),
    "PerChannelMinMax": (ao.PerChannelMinMaxObserver, True),
    "MovingAveragePerChannelMinMax": (ao.MovingAveragePerChannelMinMaxObserver, True),
}
"""name → (observer class, per-channel)."""

ACT_OBSERVERS = {name: WEIGHT_OBSERVERS[name] for name in ("MinMax", "MovingAverageMinMax", "Histogram")}
SCHEMES = ("affine", "symmetric")


@dataclass(frozen=True)
class PTQChoice:
    """One candidate of the search."""

    weight_observer: str = "PerChannelMinMax"
    weight_scheme: str = "symmetric"
    act_observer: str = "MinMax"
    act_scheme: str = "affine"

    def __post_init__(self):
        if self.weight_observer not in WEIGHT_OBSERVERS:
            raise ValueError(f"weight observer must be one of {sorted(WEIGHT_OBSERVERS)}, got {self.weight_observer!r}")
        if self.act_observer not in ACT_OBSERVERS:
            raise ValueError(f"activation observer must be one of {sorted(ACT_OBSERVERS)} (per-tensor), got {self.act_observer!r}")
        if self.weight_scheme not in SCHEMES or self.act_scheme not in SCHEMES:
            raise ValueError(f"schemes must be one of {SCHEMES}")

    @property
    def name(self) -> str:
        return f"w={self.weight_observer}/{self.weight_scheme} a={self.act_observer}/{self.act_scheme}"


def all_choices() -> list[PTQChoice]:
    return [PTQChoice(wo, ws, ao_, as_) for wo in WEIGHT_OBSERVERS for ws in SCHEMES for ao_ in ACT_OBSERVERS for as_ in SCHEMES]


def _qscheme(per_channel: bool, scheme: str):
    if per_channel:
        return torch.per_channel_affine if scheme == "affine" else torch.per_channel_symmetric
    return torch.per_tensor_affine if scheme == "affine" else torch.per_tensor_symmetric


class ObservedHyperDecoder(FakeQuantHyperDecoder):
    """A hyper-decoder quantized from observer statistics (no training).

    Runs through the same exact integer arithmetic and conversion as QAT; only where the
    weight integers and activation ranges come from differs.
    """

    def __init__(self, role: str, config: QuantConfig, choice: PTQChoice):
        super().__init__(role, config)
        self.choice = choice
        self.act_scale.requires_grad_(False)
        self._weights: dict[int, tuple[Tensor, Tensor]] = {}
        self._acts: dict[int, tuple[Tensor, int, int]] = {}

    def weight_quant(self, layer: int, weight: Tensor) -> tuple[Tensor, Tensor]:
        return self._weights[layer]

    def act_spec(self, layer: int) -> tuple[Tensor, int, int]:
        return self._acts[layer]

    @torch.no_grad()
    def calibrate(self, decoder: nn.Module, inputs: list[Tensor]) -> None:
        """Observe weights, then the float activations on ``inputs`` (z_hat tensors)."""
        layers = hyper_decoder_layers(decoder)
        self._layers.clear()  # weight_quant's answer changes here
        cls, per_channel = WEIGHT_OBSERVERS[self.choice.weight_observer]
        for i, conv in enumerate(layers):
            kwargs = {"ch_axis": 1} if per_channel else {}
            obs = cls(dtype=torch.qint8, qscheme=_qscheme(per_channel, self.choice.weight_scheme), **kwargs)
            obs(conv.weight.detach())
            scale, zero_point = obs.calculate_qparams()
            c_out = conv.weight.shape[1]
            scale = scale.float().expand(c_out).contiguous() if scale.numel() == 1 else scale.float()
            zero_point = zero_point.expand(c_out) if zero_point.numel() == 1 else zero_point
            w_q = torch.clamp(torch.round(conv.weight.detach() / scale.view(1, -1, 1, 1)) + zero_point.view(1, -1, 1, 1),
                              obs.quant_min, obs.quant_max)
            self._weights[i] = (w_q - zero_point.view(1, -1, 1, 1), scale)
        act_cls, _ = ACT_OBSERVERS[self.choice.act_observer]
        observers = [act_cls(dtype=torch.quint8, qscheme=_qscheme(False, self.choice.act_scheme)) for _ in range(2)]
        for x in inputs:
            for i, conv in enumerate(layers[:2]):
                x = conv(x)
                x = torch.clamp(x, 0, QRELU_MAX) if self.role == "scale" else torch.relu(x)
                observers[i](x)
        for i, obs in enumerate(observers):
            scale, zero_point = obs.calculate_qparams()
            scale, zp = scale.float().reshape(()), int(zero_point.reshape(()))
            hi = obs.quant_max - zp  # x_int = a_q - zp; ReLU keeps it >= 0
            if self.role == "scale":  # QReLU's 255 ceiling, in this layer's integer units
                hi = min(hi, math.floor(QRELU_MAX / float(scale)))
            self._acts[i] = (scale, 0, hi)
        self.calibrated.fill_(True)


def hyper_latents(model: nn.Module, clips: list[list[Tensor]], frac_bits: int) -> dict[str, list[Tensor]]:
    """z_hat (as the integer decoders see it) of every hyperprior over ``clips``."""
    captured: dict[str, list[Tensor]] = {p: [] for p in PARTS}
    hooks = []
    for part in PARTS:
        hp = hyperprior(model, part)

        def hook(module, args, z, part=part, hp=hp):
            captured[part].append(hyper_input(z, hp.entropy_bottleneck._get_medians(), frac_bits)[2].detach())

        hooks.append(hp.hyper_encoder.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for frames in clips:
                ssf_forward(model, frames)
    finally:
        for h in hooks:
            h.remove()
    return captured


def ptq_quantizer(model: nn.Module, choice: PTQChoice, latents: dict[str, list[Tensor]],
                  config: QuantConfig | None = None) -> HyperpriorQAT:
    """Calibrated quantization state for all six hyper-decoders (usable by ``integer_tensors``)."""
    container = HyperpriorQAT(config or QuantConfig())
    for part in PARTS:
        for role in ROLES:
            dec = ObservedHyperDecoder(role, container.config, choice)
            dec.calibrate(hyper_decoder(hyperprior(model, part), role), latents[part])
            container.decoders[f"{part}_{role}"] = dec
    return container.eval()


class RDPoint(NamedTuple):
    bpp: float
    psnr: float
    cost: float  # λ·255²·MSE + bpp


def rd_point(bits: float, mse_sum: float, pixels: int, frames: int, lmbda: float) -> RDPoint:
    bpp = bits / pixels
    mse = mse_sum / frames
    return RDPoint(bpp, -10 * math.log10(max(mse, 1e-12)), lmbda * 255**2 * mse + bpp)


@torch.no_grad()
def evaluate_float(model: nn.Module, clips: list[list[Tensor]], lmbda: float) -> RDPoint:
    """CompressAI's own float compress/decompress on ``clips`` (``update()`` must have run)."""
    from nvc_train.eval.metrics import bits_of

    bits = mse = 0.0
    pixels = frames = 0
    for clip in clips:
        strings, shapes = model.compress(clip)
        decoded = model.decompress(strings, shapes)
        bits += bits_of(strings)
        mse += sum(torch.mean((d.clamp(0, 1) - x) ** 2).item() for d, x in zip(decoded, clip))
        pixels += clip[0].shape[-1] * clip[0].shape[-2] * len(clip)
        frames += len(clip)
    return rd_point(bits, mse, pixels, frames, lmbda)


@torch.no_grad()
def evaluate_integer(model: nn.Module, quantizer: HyperpriorQAT, clips: list[list[Tensor]], lmbda: float) -> RDPoint:
    """Real integer-codec bits and reconstruction PSNR (the encoder's reconstruction equals the
    decoder's on one machine, tested in tests/codec)."""
    from nvc_train.quant.export import integer_tensors

    codec = build_integer_ssf(model, integer_tensors(model, quantizer), quantizer.config.input_frac_bits).eval()
    bits = mse = 0.0
    pixels = frames = 0
    for clip in clips:
        coded, recon = codec.compress(clip)
        bits += coded_bits(coded)
        mse += sum(torch.mean((r.x_hat.clamp(0, 1) - x) ** 2).item() for r, x in zip(recon, clip))
        pixels += clip[0].shape[-1] * clip[0].shape[-2] * len(clip)
        frames += len(clip)
    return rd_point(bits, mse, pixels, frames, lmbda)



class SearchRow(NamedTuple):
    choice: PTQChoice
    point: RDPoint | None  # None when the candidate could not be frozen exactly
    error: str = ""


def search_rows_sorted(rows: list[SearchRow]) -> list[SearchRow]:
    return sorted(rows, key=lambda r: (r.point is None, r.point.cost if r.point else 0.0))


def report_markdown(float_point: RDPoint, rows: list[SearchRow], lmbda: float) -> str:
    """The search as a markdown table, best RD cost first, relative to the float model."""
    lines = [
        f"# PTQ search (λ = {lmbda})",
        "",
        f"Float model (CompressAI compress/decompress): {float_point.bpp:.4f} bpp, {float_point.psnr:.2f} dB, "
        f"RD cost {float_point.cost:.4f}.",
        "",
        "| rank | weights | activations | bpp | PSNR (dB) | Δbpp | ΔPSNR (dB) | RD cost | ΔRD cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rank, row in enumerate(search_rows_sorted(rows), 1):
        c = row.choice
        w, a = f"{c.weight_observer}/{c.weight_scheme}", f"{c.act_observer}/{c.act_scheme}"
        if row.point is None:
            lines.append(f"| {rank} | {w} | {a} | – | – | – | – | – | failed: {row.error} |")
            continue
        p = row.point
        lines.append(
            f"| {rank} | {w} | {a} | {p.bpp:.4f} | {p.psnr:.2f} | {100 * (p.bpp / float_point.bpp - 1):+.2f} % | "
            f"{p.psnr - float_point.psnr:+.3f} | {p.cost:.4f} | {100 * (p.cost / float_point.cost - 1):+.2f} % |"
        )
    return "\n".join(lines) + "\n"

"""Quantization settings of the integer hyperprior, validated once, shared by QAT and export."""

from __future__ import annotations

from dataclasses import dataclass

SYMBOL_LIMIT = 2**15
"""Hyper-latent symbols are clamped to ±this before the integer hyper-decoders (both sides
clamp, so decoding stays identical); it bounds the first layer's accumulators."""

MEAN_FRAC_BITS = 8
"""Means live on the grid k·2**-8, so ``symbol + mean`` is an exact float32."""

MEAN_BOUND = 2**23 - 1
"""|mean| <= MEAN_BOUND·2**-8 ≈ 32768; keeps symbol·256 + mean inside float32's 2**24."""

QRELU_MAX = 255.0
"""SSF's scale hyper-decoder clamps activations to [0, 255] (QReLU, bit_depth=8)."""


SCOPES = ("hyperprior", "decoder")


@dataclass(frozen=True)
class QuantConfig:
    """How the six hyper-decoders are quantized.

    Attributes:
        activation_bits: 8 (default) or 16; activations after ReLU/QReLU are unsigned.
        input_frac_bits: k in ``z_int = symbol·2**k + round(median·2**k)``; medians keep
            k fractional bits.
        act_range: "learned" (LSQ scales, initialised from the first batch, trained) or
            "observed" (initialised from the first batch, then frozen).
        observe_quantile: quantile of each activation used to initialise its range;
            below 1 so that a few outliers do not waste the 8-bit range.
        range_headroom: the initial range is ``observe_quantile`` × this. Training crops are
            small (a 256² crop gives a 2×2 hyper-latent), so nearly every hyper-decoder
            output sits at a border, where transposed convolutions sum fewer taps; interior
            positions of real frames reach larger activations. Without headroom, the demo
            model clipped 33 % of the scale decoder's activations at 512² (16 % at its
            128² training size) and its keyframes cost 27 % more bits than the float
            parent's; with 4× they cost 4 % less (BENCHMARKS.md, "Activation headroom").
        scope: "hyperprior" (the six hyper-decoders are integer: bit-identical latents) or
            "decoder" (also the three synthesis decoders, the scale-space warp and the
            reconstruction: bit-identical frames, docs/integer-contract.md "Pixel path").
        decoder_activation_bits: 16 (default) or 8, the activations of the synthesis
            decoders (scope "decoder" only); their weights are int8 like the hyper-decoders'.
    """

    activation_bits: int = 8
    input_frac_bits: int = 8
    act_range: str = "learned"
    observe_quantile: float = 0.9999
    range_headroom: float = 4.0
    scope: str = "hyperprior"
    decoder_activation_bits: int = 16

    def __post_init__(self):
        if self.activation_bits not in (8, 16):
            raise ValueError(f"activation_bits must be 8 or 16, got {self.activation_bits}")
        if not 0 <= self.input_frac_bits <= 12:
            raise ValueError(f"input_frac_bits must be in [0, 12], got {self.input_frac_bits}")
        if self.act_range not in ("learned", "observed"):
            raise ValueError(f"act_range must be 'learned' or 'observed', got {self.act_range!r}")
        if not 0.5 < self.observe_quantile <= 1.0:
            raise ValueError(f"observe_quantile must be in (0.5, 1], got {self.observe_quantile}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.decoder_activation_bits not in (8, 16):
            raise ValueError(f"decoder_activation_bits must be 8 or 16, got {self.decoder_activation_bits}")
        if not 1.0 <= self.range_headroom <= 256.0:
            raise ValueError(f"range_headroom must be in [1, 256], got {self.range_headroom}")

    @property
    def activation_qmax(self) -> int:
        return 2**self.activation_bits - 1

    @property
    def pixel_exact(self) -> bool:
        """Whether the synthesis decoders are integer too (scope "decoder")."""
        return self.scope == "decoder"

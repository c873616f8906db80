"""The integer image codec: CompressAI's image hyperpriors with an exact integer hyper-decoder.

Everything that decides what the range decoder reads — z symbols, CDF indexes and, for
mbt2018-mean, the means — comes from integer arithmetic
(:mod:`nvc_train.quant.image_hyper`), so the decoded latent is bit-identical on every
machine. The synthesis ``g_s`` is the integer one of :mod:`nvc_train.quant.image_synthesis`
when the checkpoint has it (pixel-exact: the same levels and MD5s everywhere), else
CompressAI's float one (pixels may differ in the last level between machines,
docs/integer-contract.md). Strings are coded with CompressAI's own
rANS coder and the entropy tables the model stores, by SSF's
:class:`~nvc_train.codec.integer_codec.IntegerHyperprior`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import numpy as np

from nvc_train.codec.frames import CodedLatent
from nvc_train.codec.integer_codec import IntegerHyperprior, latent_digest, require_little_endian
from nvc_train.codec.pixel_decoder import to_levels
from nvc_train.models.image import IMAGE_MULTIPLE, ImageHyperprior, image_hyperprior
from nvc_train.quant.fake_quant import integer_hyper_input
from nvc_train.quant.image_hyper import IntegerImageHyperDecoder
from nvc_train.quant.image_synthesis import IntegerImageSynthesis
from nvc_train.quant.synthesis import SAMPLE_UNITS, latent_integers


class IntegerImageHyperprior(IntegerHyperprior):
    """:class:`IntegerHyperprior` whose means and CDF indexes come from one image hyper-decoder
    (a scale-only model's means are zero)."""

    def __init__(self, hp: ImageHyperprior, median_q: Tensor, decoder: IntegerImageHyperDecoder, input_frac_bits: int):
        super().__init__(hp, median_q, None, decoder, input_frac_bits)

    def _entropy_parameters(self, z_symbols: Tensor) -> tuple[Tensor, Tensor]:
        z_int = integer_hyper_input(z_symbols, self.median_q, self.input_frac_bits)
        mean_q, indexes = self.scale_decoder(z_int)
        return (torch.zeros(indexes.shape, dtype=torch.int64, device=indexes.device) if mean_q is None else mean_q), indexes


class DecodedImage(NamedTuple):
    """A decoded image at the coded (padded) size.

    Attributes:
        x_hat: (1, 3, H, W) float32 in [0, 1].
        latent_sha256: SHA-256 of the decoded latent y_hat.
        samples: (1, 3, H, W) int64 integer samples (255·2**8 per unit) of a pixel-exact
            checkpoint, None with the float synthesis.
    """

    x_hat: Tensor
    latent_sha256: str
    samples: Tensor | None = None

    def levels(self, bits: int, height: int, width: int) -> np.ndarray:
        """(3, height, width) uint16 levels at ``bits`` of the top-left of the image: the
        integer rounding of :func:`nvc_train.codec.pixel_decoder.to_levels` when pixel-exact,
        else ``round(x_hat · (2**bits − 1))``."""
        if self.samples is None:
            from nvc_train.io.images import to_levels as float_levels

            return float_levels(self.x_hat[0, :, :height, :width].cpu(), bits)
        return to_levels(self.samples[0, :, :height, :width].cpu(), bits).numpy().astype(np.uint16)


def padding_for(height: int, width: int) -> tuple[int, int]:
    """(rows, columns) added at the bottom and right to reach multiples of 64."""
    return -height % IMAGE_MULTIPLE, -width % IMAGE_MULTIPLE


def pad_image(x: Tensor) -> Tensor:
    """(1, 3, H, W) → (1, 3, H', W') with H', W' multiples of 64, the last row and column
    repeated (replicate padding keeps the border cheap to code)."""
    rows, cols = padding_for(*x.shape[-2:])
    return F.pad(x, (0, cols, 0, rows), mode="replicate") if rows or cols else x


class IntegerImageCodec(nn.Module):
    """An image model whose hyper-decoder runs in exact integer arithmetic."""

    def __init__(self, model: nn.Module, median_q: Tensor, decoder: IntegerImageHyperDecoder, input_frac_bits: int,
                 synthesis: IntegerImageSynthesis | None = None):
        super().__init__()
        self.model = model
        self.hyperprior = IntegerImageHyperprior(image_hyperprior(model), median_q, decoder, input_frac_bits)
        self.synthesis = synthesis

    @property
    def pixel_exact(self) -> bool:
        """Whether the synthesis is integer too (identical pixels everywhere)."""
        return self.synthesis is not None

    def set_gemm_path(self, path: str | None) -> "IntegerImageCodec":
        """Run every exact convolution on GEMM ``path`` (same integers on each)."""
        self.hyperprior.scale_decoder.gemm_path = path
        if self.synthesis is not None:
            self.synthesis.gemm_path = path
        return self

    def reconstruct(self, y_hat: Tensor) -> DecodedImage:
        """The image of decoded latents (1, M, h, w) on the 2**-8 grid."""
        digest = latent_digest([y_hat])
        if self.synthesis is None:
            return DecodedImage(self.model.g_s(y_hat).clamp_(0, 1), digest)
        samples = self.synthesis(latent_integers(y_hat))
        return DecodedImage(samples.clamp(0, SAMPLE_UNITS).float() / SAMPLE_UNITS, digest, samples)

    @torch.no_grad()
    def compress(self, x: Tensor) -> tuple[CodedLatent, DecodedImage]:
        """(1, 3, H, W) float32 in [0, 1], H and W multiples of 64 → the strings and the
        encoder-side reconstruction (what a decoder must reproduce)."""
        require_little_endian()
        if x.shape[0] != 1 or x.shape[-2] % IMAGE_MULTIPLE or x.shape[-1] % IMAGE_MULTIPLE:
            raise ValueError(f"the image codec codes one (1, 3, H, W) image with H and W multiples of "
                             f"{IMAGE_MULTIPLE}, got {tuple(x.shape)}")
        y_hat, coded = self.hyperprior.compress(self.model.g_a(x), "image")
        return coded, self.reconstruct(y_hat)

    @torch.no_grad()
    def decompress(self, coded: CodedLatent, device: torch.device | str = "cpu") -> DecodedImage:
        require_little_endian()
        return self.reconstruct(self.hyperprior.decompress(coded, torch.device(device)))


def build_integer_image_codec(model: nn.Module, int_tensors: dict[str, Tensor], input_frac_bits: int) -> IntegerImageCodec:
    """An :class:`IntegerImageCodec` from a float image model with stored entropy tables and
    the tensors of :func:`nvc_train.quant.image_hyper.image_integer_tensors` (pixel-exact
    when they hold ``synthesis.*``)."""
    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in int_tensors.items() if k.startswith(prefix)}

    synthesis = part("synthesis.")
    return IntegerImageCodec(model, int_tensors["median_q"], IntegerImageHyperDecoder(part("decoder.")), input_frac_bits,
                             IntegerImageSynthesis(synthesis) if synthesis else None)

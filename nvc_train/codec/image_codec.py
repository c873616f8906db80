"""The integer image codec: CompressAI's image hyperpriors with an exact integer hyper-decoder.

Everything that decides what the range decoder reads — z symbols, CDF indexes and, for
mbt2018-mean, the means — comes from integer arithmetic
(:mod:`nvc_train.quant.image_hyper`), so the decoded latent is bit-identical on every
machine; the synthesis ``g_s`` is CompressAI's float one (pixels may differ in the last
level between machines, docs/integer-contract.md). Strings are coded with CompressAI's own
rANS coder and the entropy tables the model stores, by SSF's
:class:`~nvc_train.codec.integer_codec.IntegerHyperprior`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nvc_train.codec.frames import CodedLatent
from nvc_train.codec.integer_codec import IntegerHyperprior, latent_digest, require_little_endian
from nvc_train.models.image import IMAGE_MULTIPLE, ImageHyperprior, image_hyperprior
from nvc_train.quant.fake_quant import integer_hyper_input
from nvc_train.quant.image_hyper import IntegerImageHyperDecoder


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
    """x_hat (1, 3, H, W) float32 in [0, 1] at the coded (padded) size and the SHA-256 of the
    decoded latent y_hat."""

    x_hat: Tensor
    latent_sha256: str


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

    def __init__(self, model: nn.Module, median_q: Tensor, decoder: IntegerImageHyperDecoder, input_frac_bits: int):
        super().__init__()
        self.model = model
        self.hyperprior = IntegerImageHyperprior(image_hyperprior(model), median_q, decoder, input_frac_bits)

    def set_gemm_path(self, path: str | None) -> "IntegerImageCodec":
        """Run the hyper-decoder's exact convolutions on GEMM ``path`` (same integers on each)."""
        self.hyperprior.scale_decoder.gemm_path = path
        return self

    @torch.no_grad()
    def compress(self, x: Tensor) -> tuple[CodedLatent, DecodedImage]:
        """(1, 3, H, W) float32 in [0, 1], H and W multiples of 64 → the strings and the
        encoder-side reconstruction (what a decoder must reproduce)."""
        require_little_endian()
        if x.shape[0] != 1 or x.shape[-2] % IMAGE_MULTIPLE or x.shape[-1] % IMAGE_MULTIPLE:
            raise ValueError(f"the image codec codes one (1, 3, H, W) image with H and W multiples of "
                             f"{IMAGE_MULTIPLE}, got {tuple(x.shape)}")
        y_hat, coded = self.hyperprior.compress(self.model.g_a(x), "image")
        return coded, DecodedImage(self.model.g_s(y_hat).clamp_(0, 1), latent_digest([y_hat]))

    @torch.no_grad()
    def decompress(self, coded: CodedLatent, device: torch.device | str = "cpu") -> DecodedImage:
        require_little_endian()
        y_hat = self.hyperprior.decompress(coded, torch.device(device))
        return DecodedImage(self.model.g_s(y_hat).clamp_(0, 1), latent_digest([y_hat]))


def build_integer_image_codec(model: nn.Module, int_tensors: dict[str, Tensor], input_frac_bits: int) -> IntegerImageCodec:
    """An :class:`IntegerImageCodec` from a float image model with stored entropy tables and
    the tensors of :func:`nvc_train.quant.image_hyper.image_integer_tensors`."""
    decoder = IntegerImageHyperDecoder({k[len("decoder."):]: v for k, v in int_tensors.items()
                                        if k.startswith("decoder.")})
    return IntegerImageCodec(model, int_tensors["median_q"], decoder, input_frac_bits)

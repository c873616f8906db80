"""The integer SSF codec: a keyframe then P-frames, with integer hyper-decoders on both sides.

Everything that decides what the range decoder reads — z symbols, CDF indexes, means — is
integer, so the decoded latents are bit-identical on every machine. The synthesis side
comes in two kinds: float (hyperprior-integer checkpoints; pixels may drift slightly between
machines, docs/integer-contract.md) or, with an :class:`IntegerPixelDecoder` (checkpoints
of ``qat.scope: decoder``), integer: identical frames (MD5) on every machine, and the encoder
predicts from exactly the references the decoder will hold (closed loop). Strings are coded with CompressAI's own rANS coder and the
entropy tables stored in the checkpoint.

Byte order: CompressAI's rANS coder writes its 32-bit words in the host's byte order, so
the entropy-coded strings (and therefore .nvc files and conformance records) are
little-endian; a big-endian machine is refused rather than allowed to write or misread them.
"""

from __future__ import annotations

import hashlib
import sys
from typing import NamedTuple

import torch
from compressai.entropy_models.entropy_models import EntropyModel
from compressai.models.video import ScaleSpaceFlow
from torch import Tensor, nn

from nvc_train.codec.frames import FRAME_PARTS, CodedFrame, CodedLatent  # noqa: F401 (re-exported)
from nvc_train.codec.pixel_decoder import IntegerPixelDecoder, frame_md5, to_levels
from nvc_train.errors import UserError
from nvc_train.models.ssf import PARTS, hyperprior
from nvc_train.quant.config import MEAN_FRAC_BITS, SYMBOL_LIMIT
from nvc_train.quant.fake_quant import integer_hyper_input
from nvc_train.quant.integer import IntegerHyperDecoder
from nvc_train.quant.integer_warp import from_samples
from nvc_train.quant.synthesis import DECODERS, IntegerSynthesis, latent_integers

"""Which hyperpriors a frame of each type codes, in bitstream order."""


class DecodedFrame(NamedTuple):
    """One decoded frame.

    Attributes:
        x_hat: (1, 3, H, W) float32 reconstruction (pixel-exact codecs: the 8-bit output
            levels / 255).
        latent_sha256: SHA-256 of the frame's decoded latents.
        part_sha256: SHA-256 of each part's latent alone (``{"keyframe": …}`` or
            ``{"motion": …, "residual": …}``).
        levels: (1, 3, H, W) uint8 output frame of a pixel-exact codec, else None.
        md5: MD5 of ``levels`` (see :func:`frame_md5`), else "".
        samples: (1, 3, H, W) int64 reference samples of a pixel-exact codec (255·2**8 per
            full scale), from which outputs of any depth are rounded (:func:`to_levels`).
    """

    x_hat: Tensor
    latent_sha256: str
    part_sha256: dict[str, str]
    levels: Tensor | None = None
    md5: str = ""
    samples: Tensor | None = None


def _frame(x_hat: Tensor, latents: dict[str, Tensor], samples: Tensor | None = None) -> DecodedFrame:
    digests = (latent_digest(list(latents.values())), {part: latent_digest([y]) for part, y in latents.items()})
    if samples is None:
        return DecodedFrame(x_hat, *digests)
    levels = to_levels(samples)
    return DecodedFrame(levels.float() / 255, *digests, levels, frame_md5(levels), samples)


def require_little_endian() -> None:
    """Refuse a big-endian host: rANS strings are written in host byte order (see module doc)."""
    if sys.byteorder != "little":
        raise UserError("this machine is big-endian; .nvc streams are little-endian (CompressAI's rANS "
                        "coder writes host-order words), so it can neither encode nor decode them")


def coded_bits(coded_frames: list[CodedFrame]) -> int:
    """Entropy-coded payload bits of a sequence (container overhead excluded)."""
    return sum(8 * (len(lat.y_string) + len(lat.z_string)) for cf in coded_frames for lat in cf.latents.values())


def latent_digest(latents: list[Tensor]) -> str:
    """SHA-256 (hex) of decoded latents: shapes and float32 little-endian bytes, in order."""
    h = hashlib.sha256()
    for t in latents:
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()


class IntegerHyperprior(nn.Module):
    """Entropy coding of one SSF latent with frozen integer hyper-decoders.

    Args:
        hp: the float Hyperprior (hyper-encoder for encoding; its EntropyBottleneck and
            GaussianConditional must carry their stored CDF tables).
        median_q: (C,) int64 ``round_half_up(median·2**k)``.
        mean_decoder, scale_decoder: the integer hyper-decoders.
        input_frac_bits: k.
    """

    def __init__(self, hp: nn.Module, median_q: Tensor, mean_decoder: IntegerHyperDecoder,
                 scale_decoder: IntegerHyperDecoder, input_frac_bits: int):
        super().__init__()
        self.hp = hp
        self.register_buffer("median_q", median_q.clone())
        self.mean_decoder = mean_decoder
        self.scale_decoder = scale_decoder
        self.input_frac_bits = int(input_frac_bits)

    def _entropy_parameters(self, z_symbols: Tensor) -> tuple[Tensor, Tensor]:
        """Means on the 2**-8 grid (int64) and CDF indexes (int32) from z symbols."""
        z_int = integer_hyper_input(z_symbols, self.median_q, self.input_frac_bits)
        return self.mean_decoder(z_int), self.scale_decoder(z_int)

    @staticmethod
    def _y_hat(y_symbols: Tensor, mean_q: Tensor) -> Tensor:
        # symbol·256 + mean is an integer; its float32 conversion is correctly rounded on
        # every device, and the power-of-two scaling is exact.
        return (y_symbols.long() * 2**MEAN_FRAC_BITS + mean_q).float() * 2.0**-MEAN_FRAC_BITS

    def compress(self, y: Tensor, part: str = "latent") -> tuple[Tensor, CodedLatent]:
        """y (1, C, H, W) float → (y_hat, strings). y_hat equals what the decoder will get.

        Symbols of y and z are clamped to ±SYMBOL_LIMIT (2**15): then ``symbol·256 + mean``
        stays below 2**24 and y_hat = symbol + mean is exact in float32. Non-finite latents
        (a model with NaN weights, a broken input) are refused: NaN has no symbol.
        """
        eb, gc = self.hp.entropy_bottleneck, self.hp.gaussian_conditional
        z = self.hp.hyper_encoder(y)
        for name, t in (("y", y), ("z", z)):
            if not bool(torch.isfinite(t).all()):
                raise UserError(f"the {part} latent {name} contains NaN or infinity (non-finite model weights "
                                "or input frame?): nothing can be encoded")
        med = eb._get_medians().detach().reshape(1, -1, 1, 1)
        z_symbols = torch.clamp(torch.round(z - med), -SYMBOL_LIMIT, SYMBOL_LIMIT)
        z_string = EntropyModel.compress(eb, z_symbols, eb._build_indexes(z.size()))[0]
        mean_q, indexes = self._entropy_parameters(z_symbols.long())
        means = mean_q.float() * 2.0**-MEAN_FRAC_BITS
        y_symbols = torch.clamp(torch.round(y - means), -SYMBOL_LIMIT, SYMBOL_LIMIT)
        y_string = EntropyModel.compress(gc, y_symbols, indexes)[0]
        return self._y_hat(y_symbols, mean_q), CodedLatent(y_string, z_string, tuple(z.shape[-2:]))

    def decompress(self, coded: CodedLatent, device: torch.device) -> Tensor:
        """Strings → y_hat (1, C, H, W) float32, bit-identical to the encoder's."""
        eb, gc = self.hp.entropy_bottleneck, self.hp.gaussian_conditional
        size = (1, self.median_q.numel(), *coded.z_shape)
        z_indexes = eb._build_indexes(size).to(device)
        z_symbols = EntropyModel.decompress(eb, [coded.z_string], z_indexes, torch.float32)
        mean_q, indexes = self._entropy_parameters(z_symbols.long())
        y_symbols = EntropyModel.decompress(gc, [coded.y_string], indexes, torch.float32)
        # rANS carries out-of-range symbols through its bypass mode, so a crafted stream can
        # hold any 32-bit value; clamped like the encoder's, every synthesis input stays
        # within the bound its accumulators were proven for (|y_int| ≤ 2**15·2**8 + 2**23).
        y_symbols = torch.clamp(y_symbols, -SYMBOL_LIMIT, SYMBOL_LIMIT)
        return self._y_hat(y_symbols, mean_q)


class IntegerSSF(nn.Module):
    """ScaleSpaceFlow whose three hyperpriors decode through exact integer arithmetic, and,
    with ``pixels``, whose synthesis, warp and reconstruction do too."""

    def __init__(self, model: ScaleSpaceFlow, hyperpriors: dict[str, IntegerHyperprior],
                 pixels: IntegerPixelDecoder | None = None):
        super().__init__()
        self.model = model
        self.hyperpriors = nn.ModuleDict(hyperpriors)
        self.pixels = pixels

    @property
    def pixel_exact(self) -> bool:
        return self.pixels is not None

    def set_gemm_path(self, path: str | None) -> "IntegerSSF":
        """Run every exact convolution on GEMM path ``path`` ("int8", "float32", "float64"; None:
        the device's default, see :func:`nvc_train.quant.exact_conv.default_path`). The
        decoded integers are the same on every path; only the speed differs."""
        from nvc_train.quant.exact_conv import PATHS
        from nvc_train.quant.frozen import FrozenLayers

        if path is not None and path not in PATHS:
            raise ValueError(f"GEMM path must be one of {', '.join(PATHS)}, got {path!r}")
        for module in self.modules():
            if isinstance(module, FrozenLayers):
                module.gemm_path = path
        return self

    def compress(self, frames: list[Tensor], gop: int | None = None) -> tuple[list[CodedFrame], list[DecodedFrame]]:
        """Encode frames (each (1, 3, H, W), H and W multiples of 128) as I P P … (a keyframe
        every ``gop`` frames). Returns the coded frames and the encoder-side reconstructions
        with their latent hashes (what a decoder must reproduce)."""
        pairs = list(self.compress_iter(frames, gop))
        return [c for c, _ in pairs], [r for _, r in pairs]

    @torch.no_grad()
    def compress_iter(self, frames, gop: int | None = None):
        """Encode frame by frame (a generator of (CodedFrame, DecodedFrame)); only the
        reference frame is kept, so memory does not grow with the sequence."""
        require_little_endian()
        m, px = self.model, self.pixels
        x_ref = ref = None
        for t, x in enumerate(frames):
            if x.shape[0] != 1:
                raise ValueError("the integer codec encodes one sequence at a time (batch size 1)")
            if x_ref is None or (gop and t % gop == 0):
                y_hat, c = self.hyperpriors["keyframe"].compress(m.img_encoder(x), "keyframe")
                if px is not None:
                    ref = px.keyframe(latent_integers(y_hat))
                    x_ref = from_samples(ref)
                else:
                    x_ref = m.img_decoder(y_hat)
                cf = CodedFrame("I", {"keyframe": c})
                latents = {"keyframe": y_hat}
            else:
                y_motion_hat, c_motion = self.hyperpriors["motion"].compress(
                    m.motion_encoder(torch.cat((x, x_ref), dim=1)), "motion")
                if px is not None:
                    pred = px.predict(ref, latent_integers(y_motion_hat))
                    x_pred = from_samples(pred)
                else:
                    x_pred = m.forward_prediction(x_ref, m.motion_decoder(y_motion_hat))
                y_res_hat, c_res = self.hyperpriors["residual"].compress(m.res_encoder(x - x_pred), "residual")
                if px is not None:
                    ref = px.reconstruct(pred, latent_integers(y_res_hat), latent_integers(y_motion_hat))
                    x_ref = from_samples(ref)
                else:
                    x_ref = x_pred + m.res_decoder(torch.cat((y_res_hat, y_motion_hat), dim=1))
                cf = CodedFrame("P", {"motion": c_motion, "residual": c_res})
                latents = {"motion": y_motion_hat, "residual": y_res_hat}
            yield cf, _frame(x_ref, latents, ref)

    @torch.no_grad()
    def decompress_iter(self, coded_frames, device: torch.device | str = "cpu"):
        """Decode frame by frame (a generator: memory does not grow with the sequence)."""
        require_little_endian()
        m, px = self.model, self.pixels
        device = torch.device(device)
        x_ref = ref = None
        for cf in coded_frames:
            if cf.frame_type == "I":
                y_hat = self.hyperpriors["keyframe"].decompress(cf.latents["keyframe"], device)
                if px is not None:
                    ref = px.keyframe(latent_integers(y_hat))
                else:
                    x_ref = m.img_decoder(y_hat)
                latents = {"keyframe": y_hat}
            else:
                if x_ref is None and ref is None:
                    raise ValueError("bitstream starts with a P-frame: no reference to predict from")
                y_motion_hat = self.hyperpriors["motion"].decompress(cf.latents["motion"], device)
                y_res_hat = self.hyperpriors["residual"].decompress(cf.latents["residual"], device)
                if px is not None:
                    y_motion_int = latent_integers(y_motion_hat)
                    ref = px.reconstruct(px.predict(ref, y_motion_int), latent_integers(y_res_hat), y_motion_int)
                else:
                    x_pred = m.forward_prediction(x_ref, m.motion_decoder(y_motion_hat))
                    x_ref = x_pred + m.res_decoder(torch.cat((y_res_hat, y_motion_hat), dim=1))
                latents = {"motion": y_motion_hat, "residual": y_res_hat}
            yield _frame(x_ref, latents, ref)

    def decompress(self, coded_frames, device: torch.device | str = "cpu") -> list[DecodedFrame]:
        return list(self.decompress_iter(coded_frames, device))


def build_integer_ssf(model: ScaleSpaceFlow, int_tensors: dict[str, Tensor], input_frac_bits: int) -> IntegerSSF:
    """Assemble an :class:`IntegerSSF` from a float model with stored entropy tables and the
    integer tensors ``"<part>.median_q"``, ``"<part>.<role>.<name>"`` and, for a pixel-exact
    codec, ``"synth.<decoder>.<name>"``."""
    hps = {}
    for part in PARTS:
        dec = {}
        for role in ("mean", "scale"):
            prefix = f"{part}.{role}."
            tensors = {k[len(prefix):]: v for k, v in int_tensors.items() if k.startswith(prefix)}
            dec[role] = IntegerHyperDecoder(role, tensors)
        hps[part] = IntegerHyperprior(hyperprior(model, part), int_tensors[f"{part}.median_q"],
                                      dec["mean"], dec["scale"], input_frac_bits)
    pixels = None
    if any(k.startswith("synth.") for k in int_tensors):
        synth = {}
        for name in DECODERS:
            prefix = f"synth.{name}."
            synth[name] = IntegerSynthesis(name, {k[len(prefix):]: v for k, v in int_tensors.items()
                                                  if k.startswith(prefix)})
        pixels = IntegerPixelDecoder(synth, getattr(model, "flow_reference", None), model.num_levels, model.sigma0)
    return IntegerSSF(model, hps, pixels)

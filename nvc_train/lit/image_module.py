"""The image LightningModule: trains CompressAI's image hyperpriors, optionally with QAT.

``bmshj2018-hyperprior`` and ``mbt2018-mean`` (:mod:`nvc_train.models.image`), with the
objective of CompressAI's ``examples/train.py`` (λ·255²·MSE + bpp, the zoo's λ per
quality) and the shared optimisation of :class:`~nvc_train.lit.base.CodecLitModule`. With
``qat`` set, the hyper-decoder trains through its exact integer arithmetic
(:mod:`nvc_train.quant.image_hyper`) and validation codes real images with the integer
codec as export will freeze it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from nvc_train.eval.metrics import bits_of, ms_ssim, psnr
from nvc_train.lit.base import CodecLitModule
from nvc_train.models.image import (
    ZOO_CHANNELS,
    build_image_model,
    image_forward,
    image_hyperprior,
    load_image_state_dict,
    read_image_state_dict,
)
from nvc_train.models.loss import quality_to_lambda, rd_loss
from nvc_train.models.zoo_files import zoo_entry
from nvc_train.models.ssf import FrameOutput
from nvc_train.quant.config import QuantConfig
from nvc_train.quant.image_hyper import Head, ImageHyperpriorQAT, decoder_layers
from nvc_train.quant.image_synthesis import synthesis_stages

IMAGE_QUALITIES = range(1, 9)


def _channels(architecture: str, quality: int | None, channels: list[int] | None) -> tuple[int, int]:
    if channels is not None:
        if len(channels) != 2 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be [N, M], two positive numbers, got {channels}")
        return int(channels[0]), int(channels[1])
    return ZOO_CHANNELS[architecture][quality if quality in IMAGE_QUALITIES else 3]


class ImageLitModule(CodecLitModule):
    """Image codec training.

    Args:
        architecture: "bmshj2018-hyperprior" (scale hyperprior) or "mbt2018-mean" (mean-scale).
        quality: preset 1–8 mapped to λ as CompressAI's zoo trained its MSE models.
        lmbda: explicit λ, overrides ``quality``.
        channels: [N, M]; default the zoo's for ``quality`` ([128, 192] or [192, 320]).
            Smaller values make toy models (the demo and tests use [32, 48]).
        learning_rate, aux_learning_rate, clip_max_norm, lr_milestones, lr_gamma: as for
            :class:`~nvc_train.lit.module.SSFLitModule`.
        init_weights: a CompressAI state dict of the same architecture to start from (a zoo
            file such as ``bmshj2018-hyperprior-3-6d87be32.pth.tar``, or ``export-float``'s),
            loaded strictly; its channels win over ``channels``. Wins over ``pretrained``.
        pretrained: start from CompressAI's pretrained weights of ``architecture``: ``true``
            for the MSE model of ``quality``, or a zoo name such as
            ``"mbt2018-mean-ms-ssim-3"``; fetched by ``torch.hub`` into its cache and
            hash-checked (:mod:`nvc_train.models.zoo`), loaded when a run starts from scratch
            (never on a resume). The zoo's channels for that quality.
        qat: quantization settings; the hyper-decoder then trains through the exact integer
            arithmetic from ``qat_start_step`` on (scope "hyperprior": identical latents
            everywhere), and with scope "decoder" the synthesis ``g_s`` through its simulated
            integer model too (identical pixels everywhere).
        qat_start_step: global step at which QAT begins.
        real_coding_images: validation images that are also really compressed and decoded.
        train_scope: "all" trains every parameter; "hyperprior" freezes the analysis and
            synthesis transforms and trains only the hyperprior (``h_a``, ``h_s``, the entropy
            bottleneck) and the QAT scales, so that a QAT fine-tuning changes nothing but the
            entropy model and its RD compares directly with the float parent's; "decoder"
            freezes only the analysis (what a decoder runs trains: the hyperprior and ``g_s``,
            whose weights adapt to int8 under qat scope "decoder").
    """

    def __init__(
        self,
        architecture: Literal["bmshj2018-hyperprior", "mbt2018-mean"] = "bmshj2018-hyperprior",
        quality: int | None = None,
        lmbda: float | None = None,
        channels: list[int] | None = None,
        learning_rate: float = 1e-4,
        aux_learning_rate: float = 1e-3,
        clip_max_norm: float = 1.0,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        init_weights: str | None = None,
        qat: QuantConfig | None = None,
        qat_start_step: int = 0,
        real_coding_images: int = 1,
        train_scope: Literal["all", "hyperprior", "decoder"] = "all",
        pretrained: bool | str = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        if quality is not None and quality not in IMAGE_QUALITIES:
            raise ValueError(f"quality must be one of 1..8 for image models, got {quality}")
        state_dict = None
        if init_weights:
            state_dict = read_image_state_dict(init_weights)
            channels = [state_dict["g_a.0.weight"].shape[0], state_dict["g_a.6.weight"].shape[0]]
        # Resolved now (a bad name fails before any training starts), loaded at the start.
        self.zoo = None if init_weights else zoo_entry(pretrained, quality if quality is not None else 3, architecture)
        if self.zoo is not None:
            quality = quality if quality is not None or lmbda is not None else self.zoo.quality
            channels = list(ZOO_CHANNELS[architecture][self.zoo.quality])
        self._zoo_pending = self.zoo is not None
        self.hparams.pretrained = self.zoo.name if self.zoo is not None else False
        self.model = build_image_model(architecture, _channels(architecture, quality, channels))
        if state_dict is not None:
            load_image_state_dict(self.model, state_dict, str(init_weights))
        self.hparams.channels = [self.model.N, self.model.M]
        quality = quality if quality is not None or lmbda is not None else 3
        self.lmbda = float(lmbda) if lmbda is not None else quality_to_lambda(quality)
        self.hparams.quality, self.hparams.lmbda = quality, self.lmbda
        self.start_note = ((f"quality {quality} (λ={self.lmbda})" if lmbda is None else f"λ={self.lmbda}")
                           + f": {architecture} (N={self.model.N}, M={self.model.M})"
                           + (f", from {init_weights}" if init_weights else "")
                           + (f", from CompressAI's {self.zoo.name}" if self.zoo is not None else ""))
        if isinstance(qat, dict):  # as stored in checkpoint hyper-parameters
            qat = QuantConfig(**qat)
        self.qat = None
        if qat is not None:
            hp = image_hyperprior(self.model)
            layers = decoder_layers(hp.hyper_decoder)
            self.qat = ImageHyperpriorQAT(len(layers), Head.of(layers[-1].conv.out_channels, hp.has_means), qat,
                                          len(synthesis_stages(self.model.g_s)) - 1)
        if train_scope != "all":
            trained = ("h_a.", "h_s.", "entropy_bottleneck.") + (("g_s.",) if train_scope == "decoder" else ())
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.startswith(trained))

    def load_parent_weights(self, state_dict: dict[str, Tensor], source: str) -> None:
        load_image_state_dict(self.model, state_dict, source)

    def describe_qat(self) -> str:
        if self.qat is None:
            return "off (float training)"
        start = f", from step {self.hparams.qat_start_step}" if self.hparams.qat_start_step else ""
        if self.qat.config.pixel_exact:
            return (f"qat.scope=decoder{start}: the hyper-decoder and the synthesis integer; export-integer "
                    "writes a pixel-exact image checkpoint (identical images everywhere)")
        return (f"qat.scope=hyperprior{start}: the hyper-decoder integer; export-integer writes an integer "
                "image checkpoint (identical latents everywhere, float synthesis)")

    @property
    def qat_active(self) -> bool:
        return self.qat is not None and self.global_step >= self.hparams.qat_start_step

    def forward(self, x: Tensor) -> dict:
        if not self.qat_active:
            return image_forward(self.model, x)
        return image_forward(self.model, x, self.qat.hyperprior_forward, self.qat.synthesis_forward)

    def _step(self, batch: Tensor, stage: str):
        out = self(batch)
        rd = rd_loss([FrameOutput(out["x_hat"], {"image": out["likelihoods"]})], [batch], self.lmbda)
        n, on_step = batch.shape[0], stage == "train"
        self.log_dict({f"{stage}/loss": rd.loss, f"{stage}/bpp": rd.bpp, f"{stage}/psnr": rd.psnr,
                       f"{stage}/mse": rd.mse}, prog_bar=on_step, on_step=on_step, on_epoch=not on_step,
                      batch_size=n, sync_dist=not on_step)
        if not on_step or self._logs_this_step():
            self.log_dict({f"{stage}/bpp.{k}": v for k, v in rd.bpp_parts.items()}, on_step=on_step,
                          on_epoch=not on_step, batch_size=n, sync_dist=not on_step)
        return out, rd

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        _, rd = self._step(batch, "train")
        aux = self.model.aux_loss()
        if self._logs_this_step():
            self.log("train/aux_loss", aux, on_step=True, batch_size=batch.shape[0])
            self.log("train/qat", aux.new_full((), float(self.qat_active)), on_step=True, batch_size=batch.shape[0])
        return rd.loss + aux

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        out, _ = self._step(batch, "val")
        value = ms_ssim(out["x_hat"], batch)
        if value is not None:
            self.log("val/ms_ssim", value, on_epoch=True, batch_size=batch.shape[0], sync_dist=True)
        if batch_idx < self.hparams.real_coding_images:
            self._real_coding(batch[:1])

    def integer_codec(self):
        """The integer codec as export would freeze it (in memory, on this module's device)."""
        from nvc_train.codec.image_codec import build_integer_image_codec
        from nvc_train.quant.image_hyper import image_integer_tensors

        self.model.update(force=True)
        return build_integer_image_codec(self.model, image_integer_tensors(self.model, self.qat),
                                         self.qat.config.input_frac_bits)

    @torch.no_grad()
    def _real_coding(self, x: Tensor) -> None:
        """Compress and decompress one image; log real bits beside the estimate."""
        if self.qat is not None and bool(self.qat.decoder.calibrated):
            codec = self.integer_codec()
            coded, _ = codec.compress(x)
            decoded = codec.decompress(coded, x.device).x_hat
            bits = 8 * (len(coded.y_string) + len(coded.z_string))
        else:
            self.model.update(force=True)
            result = self.model.compress(x)
            decoded = self.model.decompress(result["strings"], result["shape"])["x_hat"]
            bits = bits_of(result["strings"])
        self.log_dict({"val/real_bpp": bits / x[0, 0].numel(), "val/real_psnr": psnr(decoded, x)},
                      on_epoch=True, batch_size=1)
        self._log_images(x, decoded)

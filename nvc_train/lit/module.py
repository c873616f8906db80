"""The video LightningModule: trains a stock ScaleSpaceFlow, optionally with QAT hyperpriors.

Optimisation, the checkpointed random state and the loggers' cadence are the shared ones of
:class:`~nvc_train.lit.base.CodecLitModule` (CompressAI's ``examples/train_video.py``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from nvc_train.codec.integer_codec import IntegerSSF, coded_bits
from nvc_train.eval.metrics import bits_of, ms_ssim, psnr
from nvc_train.lit.base import CodecLitModule, is_aux_parameter  # noqa: F401 (re-exported)
from nvc_train.models.loss import quality_to_lambda, rd_loss
from nvc_train.models.ssf import (
    HYPERPRIOR_ATTR,
    FloatCheckpoint,
    build_ssf,
    float_hyperprior_forward,
    read_state_dict,
    ssf_forward,
    ssf_from_checkpoint,
)
from nvc_train.models.zoo import ZOO_FLOW_REFERENCE
from nvc_train.models.zoo_files import DEFAULT_QUALITY, zoo_entry
from nvc_train.quant.config import QuantConfig
from nvc_train.quant.fake_quant import HyperpriorQAT


def _rate_point(quality: int | None, lmbda: float | None, parent: FloatCheckpoint | None,
                parent_name: str | None) -> tuple[int | None, float, str]:
    """(quality, λ, description) of a run: what was set, else the parent's record, else the
    default quality; a set value that differs from the parent's record is warned about."""
    if lmbda is not None or quality is not None:
        value = float(lmbda) if lmbda is not None else quality_to_lambda(quality)
        said = f"quality {quality} (λ={value})" if lmbda is None else f"λ={value}"
        known = parent.lmbda if parent is not None and parent.lmbda is not None else (
            quality_to_lambda(parent.quality) if parent is not None and parent.quality is not None else None)
        if known is not None and known != value:
            was = f"quality {parent.quality} (λ={known})" if parent.quality is not None else f"λ={known}"
            keep = "--model.quality null" + (" --model.lmbda null" if lmbda is not None else "")
            warnings.warn(f"training at {said} as set, but the parent {parent_name} was trained at {was}; "
                          f"{keep} keeps the parent's", stacklevel=3)
            return quality, value, f"{said}, as set (the parent: {was})"
        return quality, value, f"{said}" + (f", the parent's ({parent_name})" if known is not None else "")
    if parent is not None and parent.lmbda is not None:
        said = f"quality {parent.quality} (λ={parent.lmbda})" if parent.quality is not None else f"λ={parent.lmbda}"
        return parent.quality, parent.lmbda, f"{said}, the parent's ({parent_name})"
    if parent is not None and parent.quality is not None:
        value = quality_to_lambda(parent.quality)
        return parent.quality, value, f"quality {parent.quality} (λ={value}), the parent's ({parent_name})"
    value = quality_to_lambda(DEFAULT_QUALITY)
    why = f"{parent_name} records none" if parent is not None else "no quality set"
    return DEFAULT_QUALITY, value, f"quality {DEFAULT_QUALITY} (λ={value}), the default: {why}; --model.quality sets it"


class SSFLitModule(CodecLitModule):
    """Scale-Space Flow training.

    Args:
        architecture: "ssf2020", the one video architecture (``nvc-train fit`` picks the
            LightningModule by this argument; see :mod:`nvc_train.models.architectures`).
        quality: preset 1–9 mapped to λ (see ``models.loss.QUALITY_LAMBDAS``). ``None``
            (the fine-tuning presets): the parent's — the λ and quality that ``init_weights``
            records, or the zoo model's quality — else 3. A value that differs from the
            parent's record is stated in one warning.
        lmbda: explicit λ, overrides ``quality``.
        learning_rate: Adam learning rate of the network (and QAT scales).
        aux_learning_rate: Adam learning rate of the entropy-bottleneck quantiles.
        clip_max_norm: gradient-norm clipping of the network parameters (0 disables).
        lr_milestones: global steps at which the network learning rate is multiplied by
            ``lr_gamma``.
        lr_gamma: learning-rate decay factor.
        init_weights: ScaleSpaceFlow state dict to start from (fine-tuning; distinct from
            resuming with ``--ckpt_path``), a file or ``hf://OWNER/NAME[@REV]/FILE``; loaded
            strictly. Wins over ``pretrained``.
        pretrained: start from CompressAI's pretrained ``ssf2020`` weights: ``true`` for the
            MSE model of ``quality``, or a zoo name such as ``"ssf2020-mse-3"``. Fetched by
            ``torch.hub`` into ``$TORCH_HOME/hub/checkpoints`` and hash-checked
            (:mod:`nvc_train.models.zoo`). Loaded when a run starts from scratch (fit,
            validate or test without a checkpoint to restore), so resuming a run never reads
            or downloads the zoo file.
        qat: quantization settings; when set, the hyper-decoders train through the exact
            integer arithmetic from ``qat_start_step`` on.
        qat_start_step: global step at which QAT begins (0: QAT from the first step).
        autocast: "bf16" runs analysis/synthesis transforms under bfloat16 autocast; the
            hyperpriors (entropy parameters) always run in float32.
        real_coding_clips: validation clips that are also really compressed and decoded.
        flow_reference: crop size (pixels) at which the model's flow units are defined; the
            decoded flow is rescaled to every frame so a vector means the same pixel motion
            at any size (CompressAI issue #307). ``None``: the parent's — the value recorded
            in ``init_weights``, :data:`~nvc_train.models.zoo.ZOO_FLOW_REFERENCE` for a zoo
            start — else CompressAI's behaviour. Frames of this size are unaffected, so set it
            to the training crop (CompressAI's video training example crops 256²).
        train_scope: "all" trains every parameter; "hyperpriors" freezes the analysis and
            synthesis transforms and trains only the three hyperpriors (hyper-encoders,
            hyper-decoders, entropy bottlenecks) and the QAT scales — QAT fine-tuning then
            changes nothing but the entropy model, so the integer model's RD is directly
            comparable with its float parent's.
    """

    def __init__(
        self,
        architecture: Literal["ssf2020"] = "ssf2020",
        quality: int | None = None,
        lmbda: float | None = None,
        learning_rate: float = 1e-4,
        aux_learning_rate: float = 1e-3,
        clip_max_norm: float = 1.0,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        init_weights: str | None = None,
        qat: QuantConfig | None = None,
        qat_start_step: int = 0,
        autocast: Literal["none", "bf16"] = "none",
        real_coding_clips: int = 1,
        train_scope: Literal["all", "hyperpriors"] = "all",
        flow_reference: int | None = None,
        pretrained: bool | str = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        # The parent (init_weights, else the zoo model) decides what is left unset (None).
        parent = None
        if init_weights:
            from nvc_train.hf.refs import resolve_checkpoint  # a file, or hf://OWNER/NAME/FILE

            weights = resolve_checkpoint(init_weights)
            parent = read_state_dict(weights)
            self.model = ssf_from_checkpoint(parent, flow_reference, str(init_weights))
            if not str(init_weights).startswith("hf://"):  # a relative path means nothing in a model card
                from nvc_train.io.digest import sha256_file

                self.hparams["_init_weights_resolved"] = str(Path(weights).resolve())
                self.hparams["_init_weights_sha256"] = sha256_file(weights)
        # Resolved now (a bad name fails before any training starts), loaded at the start.
        self.zoo = None if init_weights else zoo_entry(pretrained, quality if quality is not None else DEFAULT_QUALITY)
        if self.zoo is not None:
            parent = FloatCheckpoint({}, ZOO_FLOW_REFERENCE, self.zoo.quality, None)
            self.model = build_ssf(flow_reference if flow_reference is not None else ZOO_FLOW_REFERENCE)
        elif parent is None:
            self.model = build_ssf(flow_reference)
        parent_name = str(init_weights) if init_weights else (self.zoo.name if self.zoo else None)
        quality, self.lmbda, self.start_note = _rate_point(quality, lmbda, parent, parent_name)
        self.hparams.quality, self.hparams.lmbda = quality, self.lmbda
        # What the run started from, recorded by name (an exported card names it as base model).
        self.hparams.pretrained = self.zoo.name if self.zoo is not None else False
        self._zoo_pending = self.zoo is not None
        # The value in effect (possibly read from init_weights) is what checkpoints record.
        self.hparams.flow_reference = self.model.flow_reference
        if parent is not None and flow_reference is None:
            ref = self.model.flow_reference
            self.start_note += (f"; flow_reference {ref}, the parent's" if ref is not None
                                else "; CompressAI's flow units (the parent records no flow_reference)")
        if isinstance(qat, dict):  # as stored in checkpoint hyper-parameters
            qat = QuantConfig(**qat)
        self.qat = HyperpriorQAT(qat) if qat is not None else None
        if train_scope == "hyperpriors":
            trainable = tuple(f"{attr}." for attr in HYPERPRIOR_ATTR.values())
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.startswith(trainable))

    # --- initial weights from CompressAI's zoo ------------------------------------------
    def load_parent_weights(self, state_dict: dict[str, Tensor], source: str) -> None:
        from nvc_train.models.ssf import load_ssf_state_dict

        load_ssf_state_dict(self.model, state_dict, source=source)

    def describe_qat(self) -> str:
        """One line: which decoders train through their integer arithmetic, and what
        ``export-integer`` will make of this run."""
        if self.qat is None:
            return "off (float training; export-float writes the model, `nvc-train ptq` quantizes it)"
        start = f", from step {self.hparams.qat_start_step}" if self.hparams.qat_start_step else ""
        if self.qat.config.pixel_exact:
            return (f"qat.scope=decoder{start}: hyper-decoders and image/motion/residual decoders integer; "
                    "export-integer writes a pixel-exact checkpoint (identical frames everywhere)")
        return (f"qat.scope=hyperprior{start}: the six hyper-decoders integer; export-integer writes an integer "
                "hyperprior checkpoint (identical latents everywhere, float synthesis)")

    # --- forward -------------------------------------------------------------------------
    @property
    def qat_active(self) -> bool:
        return self.qat is not None and self.global_step >= self.hparams.qat_start_step

    def forward(self, frames: list[Tensor]):
        hp_forward = self.qat.hyperprior_forward if self.qat_active else float_hyperprior_forward
        dec_forward = self.qat.synthesis.decoder_forward if self.qat_active and self.qat.synthesis else None
        dtype = torch.bfloat16 if self.hparams.autocast == "bf16" else None
        return ssf_forward(self.model, frames, hp_forward, autocast_dtype=dtype, decoder_forward=dec_forward)

    def _step(self, batch: Tensor, stage: str):
        # (N, T, 3, H, W) → T × (N, 3, H, W); unbind(1) gives strided views, and convolutions
        # on non-contiguous inputs take slower paths.
        frames = [f.contiguous() for f in batch.unbind(1)]
        outputs = self(frames)
        rd = rd_loss(outputs, frames, self.lmbda)
        n = batch.shape[0]
        on_step = stage == "train"
        self.log_dict({f"{stage}/loss": rd.loss, f"{stage}/bpp": rd.bpp, f"{stage}/psnr": rd.psnr,
                       f"{stage}/mse": rd.mse}, prog_bar=stage == "train", on_step=on_step, on_epoch=not on_step,
                      batch_size=n, sync_dist=not on_step)
        if not on_step or self._logs_this_step():
            self.log_dict({f"{stage}/bpp.{k}": v for k, v in rd.bpp_parts.items()}, on_step=on_step,
                          on_epoch=not on_step, batch_size=n, sync_dist=not on_step)
        return outputs, frames, rd

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        _, _, rd = self._step(batch, "train")
        aux = torch.stack(self.model.aux_loss()).sum()
        if self._logs_this_step():
            self.log("train/aux_loss", aux, on_step=True, batch_size=batch.shape[0])
            # Made on the device (a fill, no copy): Lightning turns a Python number into a
            # tensor with a blocking host-to-device copy, which stalls the GPU's queue.
            self.log("train/qat", aux.new_full((), float(self.qat_active)), on_step=True, batch_size=batch.shape[0])
        return rd.loss + aux

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        outputs, frames, _ = self._step(batch, "val")
        value = ms_ssim(torch.cat([o.x_hat for o in outputs]), torch.cat(frames))
        if value is not None:
            self.log("val/ms_ssim", value, on_epoch=True, batch_size=batch.shape[0], sync_dist=True)
        if batch_idx < self.hparams.real_coding_clips:
            self._real_coding(frames)

    # --- real coding during validation ---------------------------------------------------
    def integer_codec(self) -> IntegerSSF:
        """The integer codec as export would freeze it (in memory, on this module's device)."""
        from nvc_train.codec.integer_codec import build_integer_ssf
        from nvc_train.quant.export import integer_tensors

        self.model.update(force=True)
        tensors = integer_tensors(self.model, self.qat)
        return build_integer_ssf(self.model, tensors, self.qat.config.input_frac_bits)

    @torch.no_grad()
    def _real_coding(self, frames: list[Tensor]) -> None:
        """Compress and decompress the first sample; log real bits beside the estimate."""
        frames = [f[:1] for f in frames]
        h, w = frames[0].shape[-2:]
        if self.qat is not None and bool(self.qat.decoder("keyframe", "mean").calibrated):
            codec = self.integer_codec()
            coded, _ = codec.compress(frames)
            decoded = [d.x_hat for d in codec.decompress(coded, frames[0].device)]
            bits = coded_bits(coded)
        else:
            self.model.update(force=True)
            strings, shapes = self.model.compress(frames)
            decoded = self.model.decompress(strings, shapes)
            bits = bits_of(strings)
        real_bpp = bits / (h * w * len(frames))
        real_psnr = sum(psnr(d, x) for d, x in zip(decoded, frames)) / len(frames)
        self.log_dict({"val/real_bpp": real_bpp, "val/real_psnr": real_psnr}, on_epoch=True, batch_size=1)
        self._log_images(frames[-1], decoded[-1])

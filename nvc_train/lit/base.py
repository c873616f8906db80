"""What every nvc-train LightningModule shares: the optimisation, the checkpointed random
state, the loggers' cadence and the run's one-line summaries.

Optimisation follows CompressAI's ``examples/train_video.py`` and ``examples/train.py``: Adam
on the network, a separate Adam learning rate for the entropy bottlenecks' quantiles
(auxiliary loss), gradient clipping on the network only. Because the auxiliary loss only
reaches the quantiles and the RD loss never does, one Adam with two parameter groups on the
summed loss computes exactly the same updates as two optimizers, and keeps Lightning's
automatic optimisation (global step, accumulation, precision plugins, checkpoints) intact.
Subclasses set ``self.lmbda`` and ``self.start_note`` and save the hyper-parameters
``learning_rate``, ``aux_learning_rate``, ``clip_max_norm``, ``lr_milestones``, ``lr_gamma``.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor


def is_aux_parameter(name: str) -> bool:
    """EntropyBottleneck quantiles are trained by the auxiliary loss only."""
    return name.endswith("quantiles")


class CodecLitModule(L.LightningModule):
    """The shared part of :class:`~nvc_train.lit.module.SSFLitModule` and
    :class:`~nvc_train.lit.image_module.ImageLitModule`."""

    _zoo_pending = False
    """Set by a subclass whose run starts from CompressAI's zoo: the weights are loaded once,
    at the start of a run from scratch (never on a resume, whose checkpoint brings its own)."""

    def load_zoo_weights(self, resuming: bool, progress: bool = True) -> None:
        """Load the zoo weights (``self.zoo``) now: once, and not on a resume, whose checkpoint
        brings its own. ``nvc-train fit`` calls this before Lightning starts the run, so a zoo
        file that is neither cached nor downloadable is one line before any banner, summary or
        W&B run."""
        if not self._zoo_pending:
            return
        self._zoo_pending = False
        if resuming:
            return
        from nvc_train.models.zoo import zoo_weights

        device = next(self.model.parameters()).device
        self.load_parent_weights(zoo_weights(self.zoo, progress=progress), f"CompressAI's {self.zoo.name}")
        self.model.to(device)

    def load_parent_weights(self, state_dict: dict[str, Tensor], source: str) -> None:
        """Strictly load a parent's state dict into ``self.model`` (one line naming the keys
        that do not match)."""
        raise NotImplementedError

    def on_fit_start(self) -> None:
        from lightning.pytorch.utilities import rank_zero_info

        self._start_from_zoo()
        # The model summary names only the module types; say what the run trains at and what
        # the exported checkpoint will be.
        rank_zero_info(f"training at {self.describe_start()}")
        rank_zero_info(f"QAT: {self.describe_qat()}")

    def describe_qat(self) -> str:
        raise NotImplementedError

    def _start_from_zoo(self) -> None:
        """Load the zoo weights once, unless the trainer restored a checkpoint (a resume)."""
        if not self._zoo_pending:
            return
        self.load_zoo_weights(resuming=self.trainer.ckpt_path is not None, progress=self.trainer.is_global_zero)

    def on_validation_start(self) -> None:
        self._start_from_zoo()

    def on_test_start(self) -> None:
        self._start_from_zoo()

    def on_fit_end(self) -> None:
        # The run's result in one line, where the progress bar ended: the last validation RD.
        from lightning.pytorch.utilities import rank_zero_info

        metrics = self.trainer.callback_metrics
        if all(f"val/{k}" in metrics for k in ("bpp", "psnr", "loss")):
            rank_zero_info(f"validation after step {self.global_step}: {float(metrics['val/bpp']):.4f} bpp, "
                           f"PSNR {float(metrics['val/psnr']):.2f} dB, RD loss {float(metrics['val/loss']):.4f} "
                           f"(λ={self.lmbda})")

    def describe_start(self) -> str:
        """One line: the rate point (quality, λ) and flow reference the run trains at, and
        whether they are the parent's."""
        return self.start_note

    # --- checkpoints carry the random state (nvc_train/lit/rng.py) ----------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from nvc_train.lit.rng import KEY, collect_rng_states

        checkpoint[KEY] = collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        from nvc_train.lit.rng import KEY, restore_rng_states

        if KEY in checkpoint and self._trainer is not None:  # a resume, not a plain load of the weights
            restore_rng_states(checkpoint[KEY], self.trainer.global_rank)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        from nvc_train.models.entropy import resize_entropy_buffers

        resize_entropy_buffers(self.model, state_dict, prefix="model.")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _logs_this_step(self) -> bool:
        """Whether the loggers receive this training step's metrics (Lightning's rule: every
        ``trainer.log_every_n_steps`` steps, or when the trainer is stopping).

        Each ``self.log`` costs about a millisecond of Python; on a GPU, where a step of batch
        8 at 256² takes ~90 ms, ten of them were a tenth of the step. The metrics that only the
        loggers read are therefore logged on the steps that are written; the progress-bar ones
        (loss, bpp, PSNR, MSE) every step.
        """
        trainer = self._trainer
        if trainer is None:
            return True
        return trainer._logger_connector.should_update_logs  # Lightning's own rule, checked before the step

    def _log_images(self, original: Tensor, decoded: Tensor) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                pair = torch.cat([original[0], decoded[0]], dim=-1).clamp(0, 1)
                # uint8 HWC: W&B's float-tensor path does not assume the [0, 1] range.
                image = (pair * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                logger.log_image("val/reconstruction", [image], step=self.global_step,
                                 caption=["original | decoded (last frame)"])

    # --- optimisation --------------------------------------------------------------------
    def configure_optimizers(self):
        named = list(self.named_parameters())
        main = [p for n, p in named if not is_aux_parameter(n) and p.requires_grad]
        aux = [p for n, p in named if is_aux_parameter(n) and p.requires_grad]
        optimizer = torch.optim.Adam([
            {"params": main, "lr": self.hparams.learning_rate, "name": "net"},
            {"params": aux, "lr": self.hparams.aux_learning_rate, "name": "aux"},
        ])
        milestones = sorted(self.hparams.lr_milestones or [])
        gamma = self.hparams.lr_gamma

        def net_factor(step: int) -> float:
            return gamma ** sum(step >= m for m in milestones)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [net_factor, lambda step: 1.0])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Lightning clears gradients only before the next backward; freeing them here keeps
        # the previous step's 34 M gradients (130 MB fp32) out of the next forward's peak.
        optimizer.zero_grad(set_to_none=True)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip the network's gradient norm only, as CompressAI does (quantiles excluded)."""
        if self.hparams.clip_max_norm > 0:
            params = [p for n, p in self.named_parameters() if not is_aux_parameter(n)]
            torch.nn.utils.clip_grad_norm_(params, self.hparams.clip_max_norm)

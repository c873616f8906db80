"""On a GPU, nvc-train's training step makes the host wait for the GPU no more often than
CompressAI's own training loop does.

Every host-device synchronisation inside a step stalls the GPU's queue while Python catches
up; CompressAI's entropy bottleneck already makes a few per forward (``torch.tensor(...,
device=...)``), so the bare loop sets the bar. Counted with ``torch.cuda.set_sync_debug_mode``,
which warns at each synchronising call.
"""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch

from nvc_train.lit.module import SSFLitModule, is_aux_parameter
from nvc_train.models.loss import rd_loss
from nvc_train.models.ssf import ssf_forward

STEPS = 3  # the last is counted: the first ones allocate optimizer state and tune cuDNN


def clips(n: int) -> torch.Tensor:
    """(n, 1, 3, 3, 128, 128): n batches of one 3-frame clip, in host memory."""
    return torch.rand(n, 1, 3, 3, 128, 128, generator=torch.Generator().manual_seed(0))


class CountSyncs:
    """Context manager: the code sites of synchronising CUDA calls made inside it."""

    def __enter__(self):
        self._catch = warnings.catch_warnings(record=True)
        self.caught = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)

    @property
    def sites(self) -> list[str]:
        return [f"{w.filename}:{w.lineno}" for w in self.caught if "synchroniz" in str(w.message)]


def bare_step_syncs() -> list[str]:
    """CompressAI's train_one_epoch step (batch already on the device), last of STEPS."""
    torch.manual_seed(0)
    module = SSFLitModule(quality=3, real_coding_clips=0).cuda()
    model = module.model.train()
    named = list(model.named_parameters())
    net = torch.optim.Adam([p for n, p in named if not is_aux_parameter(n)], lr=1e-4)
    aux_opt = torch.optim.Adam([p for n, p in named if is_aux_parameter(n)], lr=1e-3)
    sites = []
    for batch in clips(STEPS):
        frames = [f.contiguous() for f in batch.cuda().unbind(1)]
        with CountSyncs() as counter:
            net.zero_grad()
            aux_opt.zero_grad()
            loss = rd_loss(ssf_forward(model, frames), frames, module.lmbda).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for n, p in named if not is_aux_parameter(n)], 1.0)
            net.step()
            aux = torch.stack(model.aux_loss()).sum()
            aux.backward()
            aux_opt.step()
        sites = counter.sites
    return sites


class StepSyncs(L.Callback):
    """Counts synchronisations from on_train_batch_start (batch on the device) to
    on_train_batch_end (optimizer steps done)."""

    def __init__(self):
        self.per_step: list[list[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._counter = CountSyncs().__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._counter.__exit__(None, None, None)
        self.per_step.append(self._counter.sites)


def lightning_step_syncs(module: SSFLitModule) -> list[str]:
    counter = StepSyncs()
    trainer = L.Trainer(accelerator="cuda", devices=1, max_steps=STEPS, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[counter])
    loader = torch.utils.data.DataLoader(list(clips(STEPS)), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return counter.per_step[-1]


class LogsAPythonNumber(SSFLitModule):
    """The control: logs a Python float every step, as the module did before."""

    def training_step(self, batch, batch_idx):
        self.log("train/flag", 1.0, on_step=True, batch_size=batch.shape[0])
        return super().training_step(batch, batch_idx)


@pytest.mark.gpu
def test_training_step_synchronises_no_more_than_compressai_loop(cuda_flags_restored):
    bare = bare_step_syncs()
    torch.manual_seed(0)
    ours = lightning_step_syncs(SSFLitModule(quality=3, real_coding_clips=0))
    torch.manual_seed(0)
    control = lightning_step_syncs(LogsAPythonNumber(quality=3, real_coding_clips=0))
    print(f"synchronisations per step: bare {len(bare)}, nvc-train {len(ours)}, control {len(control)}")
    assert len(ours) <= len(bare), f"bare: {bare}\nours: {ours}"
    assert len(control) > len(ours), "the control's Python float must add a synchronisation"

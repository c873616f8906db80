"""SlurmRequeue: the signal handler only flags; the checkpoint is saved after the step."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch

from nvc_train.lit.requeue import SlurmRequeue, requeue_job_id


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=2)


class _SignalAt(L.Callback):
    """Sends the requeue signal to this process inside training step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_signal_saves_hpc_checkpoint_after_the_step_and_stops(tmp_path, monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)  # no job to requeue: only the checkpoint and the stop
    before = signal.getsignal(signal.SIGUSR1)
    trainer = L.Trainer(accelerator="cpu", max_steps=20, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                        callbacks=[_SignalAt(5), SlurmRequeue()])
    trainer.fit(_Tiny())
    assert trainer.global_step == 6  # step 5 completed, then stopped
    ckpt = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6
    assert signal.getsignal(signal.SIGUSR1) == before  # handler restored after fit


def test_requeue_job_id_for_jobs_and_array_tasks(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert requeue_job_id() == "77"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert requeue_job_id() == "70_3"

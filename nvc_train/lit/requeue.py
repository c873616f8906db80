"""SLURM requeue on the requeue signal, done at a safe point instead of in a signal handler.

Lightning's own auto-requeue (``SLURMEnvironment(auto_requeue=True)``) saves the HPC
checkpoint inside the signal handler. Under DDP that handler runs at an arbitrary bytecode
on each rank, so one rank can enter ``save_checkpoint``'s barrier while another is inside a
gradient all-reduce: the collectives mismatch and the job hangs until Slurm kills it
(Lightning-AI/pytorch-lightning#21406; it hung one of our CI runs). Here the handler only sets
a flag. After each training batch the ranks agree on it (one scalar all-reduce, so a signal
seen by any rank counts for all), save ``hpc_ckpt_<n>.ckpt`` where Lightning's resume looks
for it, rank 0 runs ``scontrol requeue``, and training stops.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

import lightning as L
import torch

log = logging.getLogger(__name__)

requeued = False
"""Set once this process has saved an HPC checkpoint and stopped training for a requeue: a caller
that does more after ``fit`` (``nvc-train reproduce``) must stop too, not use the unfinished model."""


def requeue_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for array tasks, else the job id."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


class SlurmRequeue(L.Callback):
    """Save an HPC checkpoint and requeue the job when ``signum`` arrives (default SIGUSR1,
    what the templates' ``--signal=SIGUSR1@90`` sends)."""

    def __init__(self, signum: int = signal.SIGUSR1):
        self.signum = signum
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        self.requested = True  # nothing else here: see the module docstring

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._previous = signal.signal(self.signum, self._handler)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        flag = torch.tensor(float(self.requested), device=pl_module.device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag, reduce_op="sum")
        if flag.item() == 0:
            return
        for logger in trainer.loggers:  # as Lightning's handler: flush metrics before Slurm stops us
            logger.finalize("finished")
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        job = requeue_job_id()
        if trainer.is_global_zero and job:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode == 0:
                log.warning("saved %s at step %d and requeued SLURM job %s", path, trainer.global_step, job)
            else:
                log.error("saved %s but `scontrol requeue %s` failed: %s", path, job, result.stderr.strip())
        trainer.should_stop = True
        self.requested = False
        global requeued
        requeued = True

"""The shipped sbatch template on a real Slurm: DDP over 2 tasks, SIGUSR1, requeue, resume.

The real ``slurm/train.sbatch`` is submitted unchanged; only sbatch's own command-line options
(which override ``#SBATCH`` lines: no GPUs, 1 CPU per task, 2 tasks) and the template's
environment variables adapt it to this machine, and the demo preset is shrunk to CPU size
with ``nvc-train fit`` arguments, as a user would.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

from tests.slurm.jobs import DEMO_CONFIG, ROOT, provenance_record, tail, tiny_fit_args, wait_for

MAX_STEPS = 30
# Training starts ~10 s after submission; the signal comes this long after the first step
# starts, so the HPC checkpoint falls mid-run (≈ 1 step/s with 2 tasks on 2 cores).
SIGNAL_AFTER_S = 8
TIMEOUT_S = 480
TINY = tiny_fit_args(MAX_STEPS)

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def test_sigusr1_saves_hpc_checkpoint_requeues_and_resumes_at_its_step(slurm_cluster, tmp_path):
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.skip(f"the template activates a virtualenv; {venv} is not one")
    runs = tmp_path / "runs"
    slurm_cluster.env.update(PYTHONPATH=str(ROOT), NVC_VENV=str(venv), NVC_RUN_ROOT=str(runs),
                             NVC_CONFIG=DEMO_CONFIG, WANDB_MODE="offline")
    t0 = time.monotonic()
    deadline = t0 + TIMEOUT_S
    submitted = slurm_cluster.run(
        "sbatch", "--parsable", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
        f"--output={tmp_path}/%x-%j.out", "slurm/train.sbatch", *TINY, cwd=ROOT)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    job_dir = runs / f"nvc-train-{job_id}"
    run = job_dir / "runs" / "demo" / "float"  # the preset's default_root_dir, inside the job's folder

    try:
        # Lightning registers its SIGUSR1 handler before training starts; the provenance
        # record is written when it does.
        wait_for(slurm_cluster, job_id, lambda: (run / "provenance" / "start-0" / "provenance.json").exists(),
                 "training started", deadline)
        time.sleep(SIGNAL_AFTER_S)
        # Without --batch/--full the signal goes to the job steps only: the srun-launched ranks.
        signalled = slurm_cluster.run("scancel", "--signal=USR1", job_id)
        assert signalled.returncode == 0, signalled.stderr
        wait_for(slurm_cluster, job_id, lambda: slurm_cluster.job(job_id).get("JobState") == "COMPLETED",
                 "COMPLETED", deadline)
        print(f"submit → COMPLETED with one requeue: {time.monotonic() - t0:.0f} s")
        _check_requeued_run(slurm_cluster.job(job_id), job_id, job_dir, run)
    except BaseException:
        print(tail(job_dir / "slurm.log"), slurm_cluster.logs(), sep="\n")
        raise


def _check_requeued_run(job: dict, job_id: str, job_dir: Path, run: Path) -> None:
    assert job["Restarts"] == "1", job
    assert job["ExitCode"] == "0:0", job

    hpc = sorted(run.glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in hpc] == ["hpc_ckpt_1.ckpt"]
    hpc_step = torch.load(hpc[0], map_location="cpu", weights_only=False)["global_step"]
    assert 0 < hpc_step < MAX_STEPS, f"signal landed outside training (step {hpc_step})"

    first, second = provenance_record(run, 0), provenance_record(run, 1)
    assert not (run / "provenance" / "start-2").exists()
    assert first["resumed_from"] is None and first["start_step"] == 0
    assert first["slurm"]["SLURM_RESTART_COUNT"] in (None, "0")
    assert second["slurm"]["SLURM_RESTART_COUNT"] == "1"
    assert second["slurm"]["SLURM_JOB_ID"] == first["slurm"]["SLURM_JOB_ID"] == job_id
    assert Path(second["resumed_from"]) == hpc[0].resolve()
    assert second["start_step"] == hpc_step
    assert first["world_size"] == second["world_size"] == 2

    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == MAX_STEPS

    wandb_id = (job_dir / "wandb-run-id").read_text().strip()
    assert first["loggers"]["WandbLogger"] == second["loggers"]["WandbLogger"] == wandb_id
    assert len(list(run.glob(f"wandb/offline-run-*-{wandb_id}"))) == 2  # one per start, one W&B run

    text = (job_dir / "slurm.log").read_text(errors="replace")
    assert "restart 0 on" in text and "restart 1 on" in text  # both starts log to the run folder
    assert "requeued SLURM job" in text  # nvc_train.lit.requeue.SlurmRequeue, not Lightning's handler


@pytest.mark.parametrize("template", ["train", "multinode", "sweep", "finetune", "reproduce"])
def test_sbatch_accepts_every_template(slurm_cluster, template, tmp_path):
    """Real sbatch parses each template's #SBATCH header (--test-only: checked, not queued);
    the command-line options shrink it to this one CPU node, as a user adapts it."""
    result = slurm_cluster.run("sbatch", "--test-only", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                               "--gpus-per-node=0", f"--output={tmp_path}/%x-%j.out", f"slurm/{template}.sbatch",
                               cwd=ROOT)
    assert result.returncode == 0 and "to start at" in result.stderr, result.stderr

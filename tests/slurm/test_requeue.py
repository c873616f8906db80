"""The shipped sbatch template on a real Slurm: DDP over 2 tasks, SIGUSR1, requeue, resume.

The real ``slurm/train.sbatch`` is submitted unchanged; only sbatch's own command-line options
(which override ``#SBATCH`` lines: no GPUs, 1 CPU per task, 2 tasks) and the template's
environment variables adapt it to this machine, and the demo preset is shrunk to CPU size
with ``nvc-train fit`` arguments, as a user would. It trains from clip shards cut from real
video files, and every rank logs a digest of every batch it was fed: the requeued run's
sequence must be the one an uninterrupted run is fed.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from tests.slurm.jobs import DEMO_CONFIG, ROOT, provenance_record, tail, tiny_fit_args, wait_for

MAX_STEPS = 30
# Training starts ~10 s after submission; the signal comes this long after the first step
# starts, so the HPC checkpoint falls mid-run (≈ 1 step/s with 2 tasks on 2 cores).
SIGNAL_AFTER_S = 8
TIMEOUT_S = 480
SHARD_DATA = ["--data.num_frames", "2", "--data.crop", "128", "--data.batch_size", "1", "--data.num_workers", "0",
              "--data.val_crop_limit", "128", "--data.max_val_clips", "1"]
SEED = 0  # the demo preset's seed_everything


def _shard_fit_args(root: Path, log: Path) -> list[str]:
    """The tiny demo run, its data swapped for clip shards (the synthetic options dropped) and a batch log added."""
    args, synthetic = [], tiny_fit_args(MAX_STEPS)
    for flag, value in zip(synthetic[::2], synthetic[1::2]):
        if not flag.startswith("--data."):
            args += [flag, value]
    return [*args, "--data", "nvc_train.lit.data.ShardDataModule", "--data.root", str(root), *SHARD_DATA,
            "--trainer.callbacks+=nvc_train.lit.batch_log.BatchDigestLog", "--trainer.callbacks.dirpath", str(log)]


def _uninterrupted_batches(root: Path, rank: int, world: int, steps: int) -> list[str]:
    """The digests of the first ``steps`` batches ``rank`` is fed when nothing interrupts the run,
    epoch after epoch from the loader alone (no Lightning, no checkpoint, no Slurm)."""
    from nvc_train.data.clips import to_unit_float
    from nvc_train.data.order import ResumableLoader, ResumableSampler
    from nvc_train.lit.batch_log import batch_digest
    from nvc_train.lit.data import ShardDataModule

    data = ShardDataModule(str(root), **{k[7:]: int(v) for k, v in zip(SHARD_DATA[::2], SHARD_DATA[1::2])})
    data.setup("fit")
    sampler = ResumableSampler(len(data.train_set), 1, SEED, world, rank, data.train_blocks())
    loader = ResumableLoader(data.train_set, sampler, lambda: (0, 0, 0))
    digests, epoch = [], 0
    while len(digests) < steps:
        sampler.set_epoch(epoch)
        digests += [batch_digest(to_unit_float(batch)) for batch in loader]
        epoch += 1
    return digests[:steps]

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def test_sigusr1_saves_hpc_checkpoint_requeues_and_resumes_at_its_step(slurm_cluster, tmp_path):
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.skip(f"the template activates a virtualenv; {venv} is not one")
    from nvc_train.data.shards import ShardOptions, prepare_shards
    from tests.data.footage_fixtures import write_footage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's broken files are skipped
        prepare_shards(write_footage(tmp_path / "footage"), tmp_path / "shards",
                       ShardOptions(window=(160, 128), windows_per_minute=200, val_fraction=0.34), progress=False)
    runs = tmp_path / "runs"
    slurm_cluster.env.update(PYTHONPATH=str(ROOT), NVC_VENV=str(venv), NVC_RUN_ROOT=str(runs),
                             NVC_CONFIG=DEMO_CONFIG, WANDB_MODE="offline")
    t0 = time.monotonic()
    deadline = t0 + TIMEOUT_S
    submitted = slurm_cluster.run(
        "sbatch", "--parsable", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
        f"--output={tmp_path}/%x-%j.out", "slurm/train.sbatch", *_shard_fit_args(tmp_path / "shards", tmp_path / "log"),
        cwd=ROOT)
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
        _check_batch_order(tmp_path / "shards", tmp_path / "log", run)
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


def _check_batch_order(shards: Path, log: Path, run: Path) -> None:
    """Each rank was fed, across the interruption, the batches of an uninterrupted run: the
    first start's steps and the resumed start's steps, in order, nothing repeated or skipped."""
    from nvc_train.lit.batch_log import read_batch_log

    hpc_step = torch.load(next(run.glob("hpc_ckpt_*.ckpt")), map_location="cpu", weights_only=False)["global_step"]
    for rank in range(2):
        lines = (log / f"batches-rank{rank}.tsv").read_text().splitlines()
        steps = [int(line.split("\t")[0]) for line in lines]
        assert steps == list(range(MAX_STEPS)), steps  # each step fed once: the resume starts at hpc_step
        fed = read_batch_log(log / f"batches-rank{rank}.tsv")
        expected = _uninterrupted_batches(shards, rank, 2, MAX_STEPS)
        assert len(set(expected)) > MAX_STEPS // 2  # batches differ: a shifted or restarted order would show
        assert [fed[s] for s in range(hpc_step)] == expected[:hpc_step]
        assert [fed[s] for s in range(hpc_step, MAX_STEPS)] == expected[hpc_step:], f"rank {rank} after the requeue"


@pytest.mark.parametrize("template", ["train", "multinode", "sweep", "finetune", "reproduce"])
def test_sbatch_accepts_every_template(slurm_cluster, template, tmp_path):
    """Real sbatch parses each template's #SBATCH header (--test-only: checked, not queued);
    the command-line options shrink it to this one CPU node, as a user adapts it."""
    result = slurm_cluster.run("sbatch", "--test-only", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                               "--gpus-per-node=0", f"--output={tmp_path}/%x-%j.out", f"slurm/{template}.sbatch",
                               cwd=ROOT)
    assert result.returncode == 0 and "to start at" in result.stderr, result.stderr

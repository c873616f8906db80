"""What the real-Slurm training tests share: the demo preset at CPU size, waiting on a job,
reading its run folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = "configs/demo/float.yaml"
FAILED_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def tiny_fit_args(max_steps: int) -> list[str]:
    """``nvc-train fit`` arguments that shrink the demo preset to CPU size, as a user would:
    2 frames of 128 px, batch 1, no loader workers, no real coding, and validation (one clip,
    which also writes ``last.ckpt``) only at ``max_steps``."""
    return ["--trainer.accelerator", "cpu", "--trainer.max_steps", str(max_steps),
            "--trainer.val_check_interval", str(max_steps), "--trainer.limit_val_batches", "1",
            "--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1",
            "--data.init_args.num_frames", "2", "--data.init_args.crop", "128", "--data.init_args.train_size", "128",
            "--data.init_args.val_size", "128", "--data.init_args.num_val_clips", "1",
            "--data.init_args.batch_size", "1", "--data.init_args.num_workers", "0", "--model.real_coding_clips", "0"]


def wait_for(cluster, job_id: str, ready, what: str, deadline: float, poll_s: float = 1) -> None:
    """Poll ``ready()`` until it holds; fail at ``deadline`` (monotonic) or as soon as the job failed."""
    while time.monotonic() < deadline:
        if ready():
            return
        state = cluster.job(job_id).get("JobState")
        if state in FAILED_STATES:
            break
        time.sleep(poll_s)
    pytest.fail(f"job {job_id} never reached '{what}' (state {cluster.job(job_id).get('JobState')})")


def provenance_record(run: Path, k: int) -> dict:
    """The provenance.json of the run's k-th start (nvc_train/lit/provenance.py)."""
    return json.loads((run / "provenance" / f"start-{k}" / "provenance.json").read_text())


def tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path.name} missing)"

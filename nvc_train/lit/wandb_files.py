"""Where W&B writes: offline by default, every file inside the run folder."""

from __future__ import annotations

import os
from pathlib import Path


def configure_wandb_env(run_dir: str | Path) -> None:
    """Offline W&B by default (``WANDB_MODE=online`` to sync live), all files in the run folder."""
    run_dir = Path(run_dir).resolve()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", ".wandb-cache"), ("WANDB_CONFIG_DIR", ".wandb-config"),
                     ("WANDB_DATA_DIR", ".wandb-data"), ("WANDB_ARTIFACT_DIR", ".wandb-artifacts")):
        path = run_dir / sub
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)


def finish_wandb(run) -> None:
    """Finish the run and stop W&B's service: wandb.init exports WANDB_SERVICE, and child
    processes started later (Lightning fits, srun jobs) would otherwise attach to this
    process's service instead of their own."""
    import wandb

    run.finish()
    wandb.teardown()

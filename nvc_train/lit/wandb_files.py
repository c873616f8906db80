"""Where W&B writes: offline by default, every file inside the run folder."""

from __future__ import annotations

import os
from pathlib import Path


def configure_wandb_env(run_dir: str | Path) -> list[Path]:
    """Offline W&B by default (``WANDB_MODE=online`` to sync live), all files in the run folder.

    Returns the folders it created (outermost first), so that a run refused before it starts
    can remove them again (:func:`remove_if_empty`)."""
    run_dir = Path(run_dir).resolve()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    created = [p for p in (*reversed(run_dir.parents), run_dir) if not p.exists()]
    for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", ".wandb-cache"), ("WANDB_CONFIG_DIR", ".wandb-config"),
                     ("WANDB_DATA_DIR", ".wandb-data"), ("WANDB_ARTIFACT_DIR", ".wandb-artifacts")):
        path = run_dir / sub
        if not path.exists() and path != run_dir:
            created.append(path)
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)
    return created


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the given folders, innermost first, each only if it is (now) empty: what a
    refused run created and left unused, never a file a run wrote."""
    for path in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()
        except OSError:  # not empty (or already gone): keep it
            pass


def finish_wandb(run) -> None:
    """Finish the run and stop W&B's service: wandb.init exports WANDB_SERVICE, and child
    processes started later (Lightning fits, srun jobs) would otherwise attach to this
    process's service instead of their own."""
    import wandb

    run.finish()
    wandb.teardown()

"""Where a run came from, recorded in its run folder once per (re)start (issue #7).

``RUN/provenance/start-<k>/`` holds, for the k-th start of a run (0 = first, then one per
SLURM requeue or ``--ckpt_path`` resume):

- ``provenance.json``: git commit and dirty flag, host, SLURM job / array / restart ids,
  command line, Python and package versions, world size, the checkpoint the start resumed
  from and its global step, the logger run ids (W&B);
- ``git.diff``: uncommitted changes of the nvc-train checkout (``git diff HEAD``);
- ``pip-freeze.txt``: the installed packages;
- ``config.yaml``: a copy of the resolved config LightningCLI saved, which a later start
  overwrites in place.

Earlier records are never overwritten, so a run requeued three times keeps four.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import lightning as L

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_NAME",
              "SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_CLUSTER_NAME",
              "SLURM_JOB_PARTITION", "SLURM_JOB_ACCOUNT", "SLURM_SUBMIT_DIR")
PACKAGES = ("nvc-train", "torch", "torchvision", "lightning", "compressai", "numpy", "wandb")
SOURCE_DIR = Path(__file__).resolve().parents[2]  # the checkout nvc_train is imported from


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(SOURCE_DIR), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def git_state() -> tuple[dict, str]:
    """(``{"commit", "dirty", "untracked"}``, ``git diff HEAD``) of the checkout; nulls outside git."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:  # installed from a wheel, or no git on the machine
        return {"commit": None, "dirty": None, "untracked": [], "source_dir": str(SOURCE_DIR)}, ""
    status = _git("status", "--porcelain") or ""
    untracked = [line[3:] for line in status.splitlines() if line.startswith("??")]
    return ({"commit": commit.strip(), "dirty": bool(status.strip()), "untracked": untracked,
             "source_dir": str(SOURCE_DIR)}, _git("diff", "HEAD") or "")


def pip_freeze() -> str:
    """``pip freeze`` of this interpreter; virtualenvs made by uv have no pip, so fall back to the
    installed distributions' metadata (same ``name==version`` lines, editable installs unmarked)."""
    try:
        result = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, timeout=120)
        if result.returncode == 0:
            return result.stdout
    except (OSError, subprocess.TimeoutExpired):
        pass
    lines = {f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]}
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _absolute(path) -> str:
    """Local paths made absolute (the record outlives the working directory); URLs unchanged."""
    return str(path) if "://" in str(path) else os.path.abspath(path)


def collect(trainer: L.Trainer, git: dict) -> dict:
    """The JSON record of this start (call after the checkpoint is restored, for ``start_step``)."""
    loggers = {}
    for logger in trainer.loggers:
        # WandbLogger.version is the W&B run id; kept equal across requeues by slurm/common.sh.
        loggers[type(logger).__name__] = None if logger.version is None else str(logger.version)
    return {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "command": sys.argv,
        "cwd": os.getcwd(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "git": git,
        "slurm": {var: os.environ.get(var) for var in SLURM_VARS},
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "resumed_from": _absolute(trainer.ckpt_path) if trainer.ckpt_path else None,
        "start_step": trainer.global_step,
        "loggers": loggers,
    }


def write_provenance(trainer: L.Trainer, config_dir: str | Path | None = None) -> Path:
    """Write the next ``start-<k>`` record into ``trainer.default_root_dir``.

    ``config_dir`` is where LightningCLI saved ``config.yaml`` (``trainer.log_dir``); the caller
    reads it on every rank because that property is a collective (a broadcast) under DDP.
    """
    root = Path(trainer.default_root_dir) / "provenance"
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    while (root / f"start-{k}").exists():
        k += 1
    out = root / f"start-{k}"
    out.mkdir()
    git, diff = git_state()
    (out / "git.diff").write_text(diff)
    (out / "pip-freeze.txt").write_text(pip_freeze())
    config = Path(config_dir or trainer.default_root_dir) / "config.yaml"
    if config.is_file():
        shutil.copy2(config, out / "config.yaml")
    (out / "provenance.json").write_text(json.dumps(collect(trainer, git), indent=2) + "\n")
    return out


class RunProvenance(L.Callback):
    """Writes :func:`write_provenance` on global rank 0 when training starts.

    ``on_train_start`` rather than ``setup``: only then has Lightning restored the checkpoint,
    so the record can say which one and at what step this start resumed.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        config_dir = trainer.log_dir  # on every rank: a broadcast under DDP
        if trainer.is_global_zero:
            write_provenance(trainer, config_dir)

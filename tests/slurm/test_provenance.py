"""Run provenance: one record per start in the run folder, earlier ones kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from nvc_train.lit import provenance
from nvc_train.lit.provenance import RunProvenance

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


def _fit(run_dir: Path, max_steps: int, ckpt_path=None) -> L.Trainer:
    # A stand-in LightningModule: provenance depends on the Trainer, not on the model.
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, default_root_dir=run_dir, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[RunProvenance()])
    trainer.fit(BoringModel(), ckpt_path=ckpt_path)
    return trainer


@pytest.fixture
def slurm_array_task(monkeypatch):
    """Task 2 of array job 40 (job id 42), second start; no SLURM_NTASKS, so Lightning runs locally."""
    for var in provenance.SLURM_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")


def test_one_record_per_start_with_git_slurm_ids_and_resume_step(tmp_path, slurm_array_task, monkeypatch):
    (tmp_path / "config.yaml").write_text("model:\n  quality: 3\n")  # as LightningCLI saves it
    trainer = _fit(tmp_path, max_steps=2)
    trainer.save_checkpoint(tmp_path / "interrupted.ckpt")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _fit(tmp_path, max_steps=3, ckpt_path=tmp_path / "interrupted.ckpt")

    first_dir, second_dir = tmp_path / "provenance" / "start-0", tmp_path / "provenance" / "start-1"
    first = json.loads((first_dir / "provenance.json").read_text())
    second = json.loads((second_dir / "provenance.json").read_text())

    assert first["slurm"]["SLURM_JOB_ID"] == "42"
    assert (first["slurm"]["SLURM_ARRAY_JOB_ID"], first["slurm"]["SLURM_ARRAY_TASK_ID"]) == ("40", "2")
    assert first["slurm"]["SLURM_RESTART_COUNT"] is None and second["slurm"]["SLURM_RESTART_COUNT"] == "1"
    assert (first["resumed_from"], first["start_step"]) == (None, 0)
    assert (second["resumed_from"], second["start_step"]) == (str(tmp_path / "interrupted.ckpt"), 2)
    assert first["host"] and first["command"] == sys.argv
    assert first["packages"]["lightning"] == L.__version__

    # The checkout nvc_train runs from: the same commit, dirty flag and diff as git reports.
    assert first["git"]["commit"] == _git("rev-parse", "HEAD").strip()
    assert first["git"]["dirty"] == bool(_git("status", "--porcelain").strip())
    assert (first_dir / "git.diff").read_text() == _git("diff", "HEAD")

    freeze = (first_dir / "pip-freeze.txt").read_text().lower().splitlines()
    assert f"lightning=={L.__version__}" in freeze
    assert (first_dir / "config.yaml").read_text() == "model:\n  quality: 3\n"


def test_freeze_without_pip_lists_installed_distributions(monkeypatch):
    """Virtualenvs made by uv have no pip; the metadata gives the same name==version lines."""
    monkeypatch.setattr(provenance.sys, "executable", "/nonexistent/python")
    lines = provenance.pip_freeze().lower().splitlines()
    assert f"lightning=={L.__version__}" in lines

"""The sbatch templates: valid bash, the #SBATCH lines requeue depends on, presets that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((ROOT / "slurm").glob("*.sbatch"))
REQUIRED = ("--signal=SIGUSR1@90", "--requeue", "--open-mode=append")


def sbatch_options(path: Path) -> dict[str, str]:
    """``#SBATCH --key=value`` lines (``##SBATCH`` is a comment for sbatch, and here)."""
    options = {}
    for line in path.read_text().splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
        if m:
            options[m.group(1)] = m.group(2) or ""
    return options


TRAINING = [p for p in TEMPLATES if p.name != "reproduce.sbatch"]  # `nvc-train fit` through common.sh


def test_all_five_templates_ship():
    assert {p.name for p in TEMPLATES} == {"train.sbatch", "multinode.sbatch", "sweep.sbatch", "finetune.sbatch",
                                           "reproduce.sbatch"}


@pytest.mark.parametrize("path", [*TEMPLATES, ROOT / "slurm" / "common.sh", ROOT / "slurm" / "reproduce.sh"],
                         ids=lambda p: p.name)
def test_bash_syntax(path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_requeue_options_and_one_task_per_gpu(path):
    text = path.read_text()
    options = sbatch_options(path)
    for line in REQUIRED:
        assert f"#SBATCH {line}" in text, f"{path.name} lacks #SBATCH {line}"
    assert options["ntasks-per-node"] == options["gpus-per-node"]  # Lightning: devices = tasks per node
    if path.name == "reproduce.sbatch":  # one `nvc-train reproduce` task per array index, or the table
        assert 'srun --kill-on-bad-exit=1 nvc-train reproduce "$@" --task "$SLURM_ARRAY_TASK_ID"' in text
        assert 'nvc-train reproduce "$@" --table' in text
        return
    assert "source \"${NVC_TRAIN_ROOT:-$SLURM_SUBMIT_DIR}/slurm/common.sh\"" in text
    preset = re.search(r'NVC_CONFIG:=([^}]+)}', text).group(1)
    assert (ROOT / preset).is_file(), f"{path.name}: default preset {preset} missing"


def test_template_specifics():
    assert int(sbatch_options(ROOT / "slurm" / "multinode.sbatch")["nodes"]) >= 2
    sweep = ROOT / "slurm" / "sweep.sbatch"
    assert sbatch_options(sweep)["array"] == "1-9"
    assert '--model.quality "$SLURM_ARRAY_TASK_ID"' in sweep.read_text()
    finetune = (ROOT / "slurm" / "finetune.sbatch").read_text()
    assert '-n "${NVC_INIT_WEIGHTS:-}"' in finetune and "--model.init_weights" in finetune


def test_common_launches_every_rank_with_srun():
    """Lightning's SLURMEnvironment (ranks, HPC resume, SIGUSR1 requeue) needs srun-started tasks."""
    text = (ROOT / "slurm" / "common.sh").read_text()
    assert re.search(r"^\s*srun .*nvc-train fit", text, re.M)
    for arg in ('--trainer.num_nodes "$SLURM_NNODES"', '--trainer.devices "$SLURM_NTASKS_PER_NODE"',
                "--trainer.strategy ddp"):
        assert arg in text

"""`slurm/reproduce.sh` on a real Slurm: the toy reproduction as an array (one job per quality ×
method, one for the anchors) and the table as a job that waits for all of them.

The shipped script and template are used unchanged; sbatch options (no GPU, one CPU per task,
the output files) come through ``NVC_SBATCH_ARGS`` as a user adapts them. The array tasks and
the table job run the same ``nvc-train reproduce`` code path as one machine does; the table is
checked against the eval JSONs the tasks wrote.
"""

from __future__ import annotations

import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from tests.slurm.jobs import ROOT, tail, wait_for

TIMEOUT_S = 900
pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def _inputs(tmp: Path) -> tuple[Path, Path]:
    from compressai.models.video import ScaleSpaceFlow

    from nvc_train.io.video import open_writer
    from nvc_train.lit.checkpoints import save_float_state_dict
    from nvc_train.models.loss import quality_to_lambda
    from tests.codec.video_fixtures import clip

    parents, data = tmp / "parents", tmp / "uvg"
    parents.mkdir()
    data.mkdir()
    for q in (1, 2):
        torch.manual_seed(q)
        model = ScaleSpaceFlow()
        model.update(force=True)
        save_float_state_dict(model, parents / f"ssf-q{q}.pth.tar", q, quality_to_lambda(q))
    for i, name in enumerate(("Beauty_192x128_30fps", "Jockey_192x128_30fps")):
        with open_writer(data / f"{name}.y4m", 192, 128, Fraction(30)) as w:
            for frame in clip(60 + i, 3, 128, 192):
                w.write(frame)
    return parents, data


def test_the_array_runs_every_task_survives_a_requeue_and_the_dependent_job_writes_the_table(slurm_cluster,
                                                                                               tmp_path):
    """``slurm/reproduce.sh`` submits 5 array tasks and the table job. Task 1 (QAT at q1) gets
    SIGUSR1 (what ``--signal=SIGUSR1@90`` sends before the time limit) during its training: the
    HPC checkpoint is saved, the task does not export the unfinished model, the job is requeued,
    and the next start resumes the training from that checkpoint and finishes the task; the
    table job waits for every task."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.skip(f"the template activates a virtualenv; {venv} is not one")
    parents, data = _inputs(tmp_path)
    out = tmp_path / "out"
    logs = tmp_path / "logs"
    logs.mkdir()
    steps = 24
    slurm_cluster.env.update(PYTHONPATH=str(ROOT), NVC_VENV=str(venv), WANDB_MODE="offline",
                             PATH=f"{venv / 'bin'}:{slurm_cluster.env['PATH']}",
                             NVC_SBATCH_ARGS=f"--gpus-per-node=0 --cpus-per-task=1 --output={logs}/%x-%A_%a.out")
    args = ["--preset", "toy", "--steps", str(steps), "--parents", str(parents), "--data", f"UVG={data}",
            "--out-dir", str(out)]
    t0 = time.monotonic()
    submitted = slurm_cluster.run("bash", "slurm/reproduce.sh", *args, cwd=ROOT)
    assert submitted.returncode == 0, submitted.stderr
    words = submitted.stdout.split()
    assert words[:2] == ["submitted", "5"], submitted.stdout  # float, qat × q1, q2 and the anchors
    array, table_job = words[words.index("array") + 2], words[words.index("job", words.index("table")) + 1]
    assert slurm_cluster.job(table_job).get("Dependency", "").startswith(f"afterok:{array}")
    run = out / "q1" / "qat" / "run"
    try:
        wait_for(slurm_cluster, f"{array}_1", lambda: (run / "provenance" / "start-0" / "provenance.json").exists(),
                 "task 1 training", t0 + TIMEOUT_S)
        time.sleep(2)
        # An array task's steps get the signal at once, but slurmctld answers scancel with "Job can
        # not be altered now, try again later", and scancel retries every 5 s until it succeeds:
        # on the requeued start, before any handler is installed. Stopped after its first try
        # (what Slurm's own --signal=USR1@90 does: one signal).
        signalled = slurm_cluster.run("timeout", "3", "scancel", "--signal=USR1", f"{array}_1")
        assert signalled.returncode in (0, 124), signalled.stderr
        wait_for(slurm_cluster, table_job, lambda: slurm_cluster.job(table_job).get("JobState") == "COMPLETED",
                 "COMPLETED", t0 + TIMEOUT_S, poll_s=2)
    except BaseException:
        for log in sorted(logs.glob("*.out")):
            print(f"--- {log.name}\n{tail(log, 3000)}")
        print(slurm_cluster.logs())
        raise
    print(f"submit → table: {time.monotonic() - t0:.0f} s")
    task_logs = sorted(logs.glob(f"nvc-reproduce-{array}_*.out"))
    assert len(task_logs) == 5 and all("restart 0" in p.read_text() for p in task_logs)

    assert slurm_cluster.job(f"{array}_1")["Restarts"] == "1"
    first_start, second_start = (logs / f"nvc-reproduce-{array}_1.out").read_text(errors="replace").split("restart 1")
    assert "requeued SLURM job" in first_start  # nvc_train.lit.requeue saved the HPC checkpoint and requeued
    assert "q1 qat: export" not in first_start  # the unfinished model was not exported
    assert "resuming the training from" in second_start and "hpc_ckpt_1.ckpt" in second_start
    (hpc,) = run.glob("hpc_ckpt_*.ckpt")
    assert 0 < torch.load(hpc, map_location="cpu", weights_only=False)["global_step"] < steps
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == steps

    table = json.loads((out / "table.json").read_text())["datasets"]["UVG"]
    assert set(table["curves"]) == {"float", "qat", "x264"}
    for i, q in enumerate((1, 2)):  # the tasks' eval results, not numbers of the table job's own
        evaluated = json.loads((out / f"q{q}" / "qat" / "eval" / "UVG" / "qat.json").read_text())["results"]
        assert table["curves"]["qat"]["results"]["bpp"][i] == evaluated["bpp"][0]
        assert json.loads((out / f"q{q}" / "qat" / "verify.json").read_text())["latents"] == [6, 6]
    assert table["verified"]["qat"].startswith("identical: latents 12/12")
    assert "| qat | 2 | qat-q2 |" in (out / "table.md").read_text()

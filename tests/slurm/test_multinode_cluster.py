"""``slurm/multinode.sbatch`` on a real Slurm with several nodes: 2 nodes x 1 task, DDP over
gloo on CPU, stopped by its time limit's warning signal, requeued onto another pair of nodes.

The cluster (``slurm_nodes``, tests/slurm/cluster.py) has three nodes, each slurmd in its own
network namespace with its own address and hostname; the filesystem is shared, as on a
cluster. The template is submitted unchanged. sbatch's command line overrides these of its
``#SBATCH`` lines: ``--ntasks-per-node=1 --cpus-per-task=1 --gpus-per-node=0`` (CPU nodes)
and ``--time=2 --signal=SIGUSR1@45`` (instead of 24 h and 90 s: Slurm's warning comes 45-75 s
into the job, as its timer ticks every 30 s; training starts about 20 s in, and a warning
before that would kill the ranks, whose handler is not installed yet). The demo preset is
shrunk to CPU size with ``nvc-train fit`` arguments, and a test-side callback
(tests/slurm/rank_probe.py) records what each rank saw.

One job answers everything below, as starting it costs most of the time: the first start runs
on node1 + node2, is held at step ``HOLD_AT`` until the time-limit warning arrives, saves its
HPC checkpoint and requeues itself; meanwhile the test drains node1 (as an operator would),
so the second start runs on node2 + node3, rank 0 and the rendezvous address on another node,
resumes from the checkpoint on the shared filesystem and finishes.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests.slurm.jobs import DEMO_CONFIG, ROOT, provenance_record, tail, tiny_fit_args, wait_for

MAX_STEPS = 6
HOLD_AT = 3  # the first start waits here for the signal: the HPC checkpoint's step is known
TIME_LIMIT = "2"  # minutes; every start of the job gets the warning 45-75 s in ...
LONGER_LIMIT = "10"  # ... so the test gives the requeued start this, as a real job's 24 h would
TIMEOUT_S = 360  # measured: about 2 minutes on 2 CPU cores
PROBE = "tests.slurm.rank_probe.RankProbe"

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@dataclass
class Job:
    """The finished job: its Slurm record and what it left on the shared filesystem."""

    id: str
    runs: Path  # NVC_RUN_ROOT
    probes: Path  # what tests/slurm/rank_probe.py wrote, start<k>-rank<r>.json
    drained: str = ""  # the node the test drained while the first start ran
    info: dict = field(default_factory=dict)  # scontrol show job, at the end

    @property
    def dir(self) -> Path:  # the job's folder (slurm/common.sh): slurm.log, wandb-run-id
        return self.runs / f"nvc-multinode-{self.id}"

    @property
    def run(self) -> Path:  # the demo preset's default_root_dir, inside the job's folder
        return self.dir / "runs" / "demo" / "float"

    @property
    def saved_step(self) -> int:
        """The step the first start stopped at: ``HOLD_AT``, unless the warning came earlier."""
        return self.ranks(0)[0]["signal"]["step"]

    def ranks(self, start: int) -> list[dict]:
        """What each rank of the start recorded, in rank order (missing ranks are missing)."""
        records = []
        for rank in range(2):
            path = self.probes / f"start{start}-rank{rank}.json"
            if path.exists():
                records.append(json.loads(path.read_text()))
        return records


@pytest.fixture(scope="module")
def job(slurm_nodes, tmp_path_factory) -> Job:
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.skip(f"the template activates a virtualenv; {venv} is not one")
    tmp = tmp_path_factory.mktemp("multinode")
    job = Job(id="", runs=tmp / "runs", probes=tmp / "probes")
    job.probes.mkdir()
    # PYTHONPATH: the ranks import the probe from this checkout's tests/.
    slurm_nodes.env.update(PYTHONPATH=str(ROOT), NVC_VENV=str(venv), NVC_RUN_ROOT=str(job.runs),
                           NVC_CONFIG=DEMO_CONFIG, WANDB_MODE="offline", NVC_TEST_PROBE_DIR=str(job.probes),
                           NVC_TEST_HOLD_AT_STEP=str(HOLD_AT))
    t0 = time.monotonic()
    deadline = t0 + TIMEOUT_S
    # One loader worker per rank, as the presets have: Slurm signals every process of the step,
    # and the warning must not kill the workers (they inherit the rank's handler).
    submitted = slurm_nodes.run(
        "sbatch", "--parsable", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0",
        f"--time={TIME_LIMIT}", "--signal=SIGUSR1@45", f"--output={tmp}/%x-%j.out", "slurm/multinode.sbatch",
        *tiny_fit_args(MAX_STEPS), "--data.init_args.num_workers", "1", f"--trainer.callbacks+={PROBE}",
        cwd=ROOT)
    assert submitted.returncode == 0, submitted.stderr
    job.id = submitted.stdout.strip()
    try:
        wait_for(slurm_nodes, job.id, lambda: len(job.ranks(0)) == 2 and "world_size" in job.ranks(0)[1],
                 "both ranks training", deadline)
        # Out of service from now on: the running job goes on, its requeued start must avoid it.
        job.drained = job.ranks(0)[0]["host"]
        drained = slurm_nodes.scontrol("update", f"NodeName={job.drained}", "State=DRAIN", "Reason=nvc-test")
        assert drained.returncode == 0, drained.stderr
        wait_for(slurm_nodes, job.id, lambda: all(r["signal"] for r in job.ranks(0)),
                 "the time-limit warning on every rank", deadline, poll_s=0.5)
        longer = slurm_nodes.scontrol("update", f"JobId={job.id}", f"TimeLimit={LONGER_LIMIT}")
        assert longer.returncode == 0, longer.stderr
        wait_for(slurm_nodes, job.id, lambda: slurm_nodes.job(job.id).get("JobState") == "COMPLETED",
                 "COMPLETED", deadline)
        print(f"submit → COMPLETED on two pairs of nodes: {time.monotonic() - t0:.0f} s")
    except BaseException:
        print(tail(job.dir / "slurm.log"), slurm_nodes.logs(), sep="\n")
        raise
    job.info = slurm_nodes.job(job.id)
    return job


def test_each_node_runs_one_rank_and_all_agree_on_world_and_rendezvous(job, slurm_nodes):
    for start in (0, 1):
        ranks = job.ranks(start)
        assert [r["global_rank"] for r in ranks] == [0, 1], ranks
        hosts = [r["host"] for r in ranks]
        assert len(set(hosts)) == 2 and set(hosts) <= set(slurm_nodes.node_names), hosts
        for node_rank, r in enumerate(ranks):
            # The process runs on the node Slurm says it does, with the node rank srun gave it.
            assert r["slurm"]["SLURMD_NODENAME"] == r["host"]
            assert r["node_rank"] == int(r["slurm"]["SLURM_NODEID"]) == node_rank
            assert r["local_rank"] == 0
            assert r["world_size"] == r["dist_world_size"] == 2
            assert r["dist_rank"] == r["global_rank"]
            # One rendezvous for all: rank 0's node (first of the allocation), a port from the job id.
            assert r["master_addr"] == hosts[0]
            assert r["master_port"] == str(15000 + int(job.id[-4:]))
    text = (job.dir / "slurm.log").read_text(errors="replace")
    first, second = (job.ranks(k)[0]["host"] for k in (0, 1))
    assert f"restart 0 on {first}: 2 node(s) x 1 task(s)" in text
    assert f"restart 1 on {second}: 2 node(s) x 1 task(s)" in text


def test_gradients_are_averaged_across_the_nodes(job):
    saved = job.saved_step
    for start, steps in ((0, range(1, saved + 1)), (1, range(saved + 1, MAX_STEPS + 1))):
        rank0, rank1 = ({s["step"]: s for s in r["steps"]} for r in job.ranks(start))
        assert list(rank0) == list(rank1) == list(steps)
        for step in steps:
            # Different data on each rank (DistributedSampler), yet the same weights after the step.
            assert rank0[step]["batch"] != rank1[step]["batch"], step
            assert rank0[step]["params"] == rank1[step]["params"], step
        params = [rank0[step]["params"] for step in steps]
        assert len(set(params)) == len(params)  # every step changed them: equal is not "untouched"
    # The resumed start's weights are the ones the first start saved.
    held = job.ranks(0)[0]["steps"][-1]["params"]
    assert [r["params_at_start"] for r in job.ranks(1)] == [held, held]


def test_rank_zero_alone_writes_checkpoints_and_the_wandb_run(job):
    wandb_id = (job.dir / "wandb-run-id").read_text().strip()
    written, wandb_folders = [], []
    for start in (0, 1):
        rank0, rank1 = job.ranks(start)
        assert rank1["checkpoints"] == [] and rank1["wandb_run"] is None
        assert rank0["wandb_run"]["id"] == wandb_id
        written += [c["path"] for c in rank0["checkpoints"]]
        wandb_folders.append(rank0["wandb_run"]["folder"])
    # Each file written once, and nothing on disk that rank 0 did not write.
    assert len(written) == len(set(written)), written
    assert {str(p.resolve()) for p in job.dir.rglob("*.ckpt")} == set(written)
    assert [Path(p).name for p in written] == ["hpc_ckpt_1.ckpt", "last.ckpt"]
    # One W&B run: one offline folder per start, both of the run's id, both made by rank 0.
    on_disk = sorted(str(p.resolve()) for p in job.run.glob("wandb/offline-run-*"))
    assert on_disk == sorted(wandb_folders) and len(set(wandb_folders)) == 2
    assert all(folder.endswith(f"-{wandb_id}") for folder in on_disk)


def test_time_limit_warning_requeues_onto_other_nodes_and_resumes_at_the_saved_step(job):
    assert (job.info["JobState"], job.info["Restarts"], job.info["ExitCode"]) == ("COMPLETED", "1", "0:0"), job.info
    # --signal reached every node, and both ranks of the first start stopped at the same step.
    saved = job.saved_step
    assert [r["signal"]["step"] for r in job.ranks(0)] == [saved, saved] and 1 <= saved <= HOLD_AT
    hpc = sorted(job.run.glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in hpc] == ["hpc_ckpt_1.ckpt"]
    assert torch.load(hpc[0], map_location="cpu", weights_only=False)["global_step"] == saved

    # Another pair of nodes, so another rank-0 node and rendezvous address.
    first, second = ([r["host"] for r in job.ranks(k)] for k in (0, 1))
    assert first[0] == job.drained and job.drained not in second
    assert job.ranks(1)[0]["master_addr"] != job.ranks(0)[0]["master_addr"]
    assert [r["start_step"] for r in job.ranks(1)] == [saved, saved]
    assert [r.get("finished_step") for r in job.ranks(1)] == [MAX_STEPS, MAX_STEPS]

    # One run folder and one W&B run across the restart.
    assert [p.name for p in job.runs.iterdir()] == [job.dir.name]
    records = [provenance_record(job.run, k) for k in (0, 1)]
    assert not (job.run / "provenance" / "start-2").exists()
    assert [r["host"] for r in records] == [first[0], second[0]]
    assert records[0]["resumed_from"] is None
    assert (Path(records[1]["resumed_from"]), records[1]["start_step"]) == (hpc[0].resolve(), saved)
    assert records[1]["slurm"]["SLURM_RESTART_COUNT"] == "1"
    assert records[0]["world_size"] == records[1]["world_size"] == 2
    assert records[0]["num_nodes"] == records[1]["num_nodes"] == 2
    wandb_id = (job.dir / "wandb-run-id").read_text().strip()
    assert records[0]["loggers"]["WandbLogger"] == records[1]["loggers"]["WandbLogger"] == wandb_id
    last = torch.load(job.run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == MAX_STEPS
    assert "requeued SLURM job" in (job.dir / "slurm.log").read_text(errors="replace")

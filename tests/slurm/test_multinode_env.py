"""Multi-node on paper: what Lightning derives from the environment srun gives a task.

The environment is that of global rank 3 in ``sbatch --nodes=2 --ntasks-per-node=2``: the
second task on the second node. Real Lightning reads it; nothing is mocked.
"""

from __future__ import annotations

import lightning as L
import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

# As srun sets them for task 3 of job 123456 on node2 of node[1-2] (slurm/README.md, table).
SRUN_NODE2_TASK1 = {
    "SLURM_JOB_ID": "123456", "SLURM_JOB_NAME": "nvc-multinode", "SLURM_NODELIST": "node[1-2]",
    "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
    "SLURMD_NODENAME": "node2",
}


@pytest.fixture
def node2_task1(monkeypatch):
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(var, "unset")  # recorded, so undo removes what Lightning sets
        monkeypatch.delenv(var)
    for var, value in SRUN_NODE2_TASK1.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # else the launcher sets it for the whole session
    # A Trainer here sets Lightning's process-wide rank to 3; later tests in this process are rank 0.
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)


def test_slurm_environment_ranks_address_and_port(node2_task1):
    assert SLURMEnvironment.detect()
    env = SLURMEnvironment()
    assert env.world_size() == 4
    assert env.global_rank() == 3
    assert env.local_rank() == 1
    assert env.node_rank() == 1
    assert env.main_address == "node1"  # first host of the allocation, on every node
    assert env.main_port == 15000 + 3456  # last four digits of the job id: same port on every node
    assert env.auto_requeue and env.requeue_signal.name == "SIGUSR1"


def test_master_addr_and_port_override_the_derivation(node2_task1, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.7")
    monkeypatch.setenv("MASTER_PORT", "29500")
    env = SLURMEnvironment()
    assert (env.main_address, env.main_port) == ("10.0.0.7", 29500)


def _trainer(devices: int) -> L.Trainer:
    return L.Trainer(accelerator="cpu", strategy="ddp", num_nodes=2, devices=devices, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False)


def test_trainer_as_the_template_configures_it(node2_task1):
    """common.sh passes num_nodes=$SLURM_NNODES, devices=$SLURM_NTASKS_PER_NODE, strategy=ddp."""
    trainer = _trainer(devices=2)
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (4, 3, 1, 1)
    assert not trainer.is_global_zero
    # The launcher fit() goes through: checks the settings against SLURM, starts no processes
    # (srun did), then runs the function in this one.
    assert trainer.strategy.launcher.launch(lambda: "ran here") == "ran here"


def test_devices_that_disagree_with_ntasks_per_node_are_refused(node2_task1):
    with pytest.raises(ValueError, match="ntasks-per-node=2"):
        _trainer(devices=4).strategy.launcher.launch(lambda: None)

"""The ``slurm_cluster`` fixture: a real one-node Slurm cluster for the module's tests."""

from __future__ import annotations

import pytest

from tests.slurm.cluster import LocalSlurm, ensure_installed


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """munged + slurmctld + slurmd on this machine (CPUs as ``slurmd -C`` finds them).

    Installs Debian's packages when missing and possible (root with apt-get, as in CI);
    skips with the reason otherwise. The daemons stop after the module, also on failure.
    """
    reason = ensure_installed()
    if reason:
        pytest.skip(f"no Slurm: {reason}")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()

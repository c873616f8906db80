"""Real Slurm clusters for the modules' tests: ``slurm_cluster`` (this machine as its one node)
and ``slurm_nodes`` (three nodes emulated in network namespaces)."""

from __future__ import annotations

import pytest

from tests.slurm.cluster import LocalSlurm, ensure_installed, namespace_support


def _cluster(tmp_path_factory, nodes: int, *checks):
    """Start a cluster (skip with the first check's reason), yield it, stop it also on failure."""
    for check in (ensure_installed, *checks):
        reason = check()
        if reason:
            pytest.skip(f"no {nodes}-node Slurm: {reason}")
    cluster = LocalSlurm(tmp_path_factory.mktemp(f"slurm{nodes}"), nodes=nodes)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """munged + slurmctld + slurmd on this machine (CPUs as ``slurmd -C`` finds them).

    Installs Debian's packages when missing and possible (root with apt-get, as in CI);
    skips with the reason otherwise. The daemons stop after the module, also on failure.
    """
    yield from _cluster(tmp_path_factory, 1)


@pytest.fixture(scope="module")
def slurm_nodes(tmp_path_factory):
    """munged + slurmctld + three slurmd, ``node1``..``node3``, each in its own network namespace
    with its own address and hostname (tests/slurm/cluster.py). Three, so that a two-node job
    can be requeued onto a different pair. Skips where namespaces are refused (not root, a
    container without CAP_SYS_ADMIN / CAP_NET_ADMIN)."""
    yield from _cluster(tmp_path_factory, 3, namespace_support)

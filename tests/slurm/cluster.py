"""A real one-node Slurm cluster (munged, slurmctld, slurmd) in a temporary folder.

Debian's packages (``slurmctld slurmd slurm-client munge``) provide the binaries; every
file the daemons use (slurm.conf, munge key and socket, state, spool, logs, pid files)
lives under one folder, so the test touches nothing in /etc or /run and several clusters
could run side by side. The daemons run in the foreground as children of the test and are
stopped by :meth:`LocalSlurm.stop`, also when the test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "srun")
APT_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if _which(name) is None]


def ensure_installed() -> str | None:
    """Install the Slurm packages with apt-get if they are missing; returns why not, or None.

    Needs root (the daemons run as root, SlurmUser=root) and, to install, apt (Debian/Ubuntu),
    as in CI; anywhere else the caller skips with the returned reason.
    """
    if os.geteuid() != 0:
        return "the test cluster's daemons run as root; run the Slurm tests as root (CI does)"
    if not missing_binaries():
        return None
    if shutil.which("apt-get") is None:
        return f"Slurm binaries {missing_binaries()} missing and no apt-get to install {' '.join(APT_PACKAGES)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *APT_PACKAGES]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {result.stderr.strip().splitlines()[-1:]}"
    missing = missing_binaries()
    return f"Slurm binaries {missing} still missing after apt-get install" if missing else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _node_config() -> str:
    """``NodeName=<host> CPUs=...`` exactly as slurmd detects this machine (``slurmd -C``)."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0]


class LocalSlurm:
    """Start with :meth:`start`, submit with :meth:`run`, stop with :meth:`stop` (idempotent)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        # A test run inside a Slurm job must not leak that job's variables into the new cluster.
        for var in list(self.env):
            if var.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and var != "SLURM_CONF":
                del self.env[var]

    def _write_config(self) -> None:
        node = _node_config()
        self.hostname = node.split()[0].removeprefix("NodeName=")
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(f"""\
ClusterName=nvctest
SlurmctldHost={self.hostname}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued batch job waits before it may start again
# (default 120 s); 10 s keeps the requeue test short.
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers and CI runners: track processes by their parent pid.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=3600
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes={self.hostname} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "w")
        self.procs.append(subprocess.Popen([_which(name), *args], stdout=log, stderr=subprocess.STDOUT,
                                           env=self.env, start_new_session=True))

    def start(self, timeout: float = 60) -> None:
        self._write_config()
        key = self.root / "munge" / "munge.key"
        subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o400)
        m = self.root / "munge"
        self._spawn("munged", "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                    f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed")
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged socket")
        self._spawn("slurmctld", "-D", "-c", "-f", str(self.conf))
        self._wait(lambda: self.scontrol("ping").returncode == 0, timeout, "slurmctld")
        self._spawn("slurmd", "-D", "-f", str(self.conf))
        self._wait(lambda: "State=IDLE" in self.scontrol("show", "node", self.hostname).stdout, timeout,
                   "node to become IDLE")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{Path(p.args[0]).name} exited ({p.returncode}) while waiting for {what}:\n"
                                       + self.logs())
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"timed out waiting for {what}:\n" + self.logs())

    def run(self, *cmd: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sbatch, scontrol, scancel) against this cluster."""
        return subprocess.run([_which(cmd[0]), *cmd[1:]], capture_output=True, text=True, env=self.env,
                              check=check, timeout=60, **kwargs)

    def scontrol(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("scontrol", *args)

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = self.scontrol("show", "job", "--oneliner", job_id).stdout
        return dict(field.split("=", 1) for field in out.split() if "=" in field)

    def logs(self, tail: int = 40) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if path.is_file():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        # Jobs first (their processes are children of slurmd's slurmstepd), then the daemons.
        if any(p.poll() is None for p in self.procs):
            self.run("scancel", "--full", "--user=root")
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        self.procs.clear()

"""A real Slurm cluster (munged, slurmctld, one slurmd per node) in a temporary folder.

Debian's packages (``slurmctld slurmd slurm-client munge``) provide the binaries; every
file the daemons use (slurm.conf, munge key and socket, state, spool, logs, pid files)
lives under one folder, so the test touches nothing in /etc or /run and several clusters
could run side by side. The daemons run in the foreground as children of the test and are
stopped by :meth:`LocalSlurm.stop`, also when the test fails.

One node is this machine as ``slurmd -C`` describes it, on 127.0.0.1. Several nodes
(``LocalSlurm(root, nodes=3)``) are emulated with Linux namespaces rather than as several
slurmd on one address (``slurmd -N``, which needs a Slurm built with --enable-multiple-slurmd):
each slurmd runs in its own network, hostname and mount namespace (:class:`NodeNetwork`), so
every node has its own address, its own hostname (what ``hostname``, Python and srun report)
and an ``/etc/hosts`` that names all nodes, as on a real cluster, where multi-node jobs break
on exactly these; the filesystem stays shared, as a cluster's shared filesystem would be.
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
# Several nodes: util-linux (unshare, nsenter, mount; essential in Debian) and iproute2.
NAMESPACE_BINARIES = ("unshare", "nsenter", "mount", "ip")
# The cluster's private network; it exists only inside the cluster's own network namespaces,
# so it cannot collide with the machine's networks or with a second test cluster.
SUBNET = "10.77.0"


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
    reason = _apt_install(*APT_PACKAGES)
    if reason:
        return f"Slurm binaries {missing_binaries()} missing: {reason}"
    missing = missing_binaries()
    return f"Slurm binaries {missing} still missing after apt-get install" if missing else None


def _apt_install(*packages: str) -> str | None:
    """``apt-get install`` (after an update); returns why it failed, or None."""
    if shutil.which("apt-get") is None:
        return f"no apt-get to install {' '.join(packages)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {result.stderr.strip().splitlines()[-1:]}"
    return None


def namespace_support() -> str | None:
    """Why several nodes cannot be emulated here, or None.

    Installs iproute2 when ``ip`` is missing, then tries what :class:`NodeNetwork` does (new
    network, hostname and mount namespaces; a bridge and a veth pair inside them): containers
    without CAP_SYS_ADMIN / CAP_NET_ADMIN refuse it, and the caller skips with the reason.
    """
    if os.geteuid() != 0:
        return "emulated nodes need network namespaces, which need root"
    if _which("ip") is None:
        reason = _apt_install("iproute2")
        if reason:
            return reason
    missing = [name for name in NAMESPACE_BINARIES if _which(name) is None]
    if missing:
        return f"{missing} missing (util-linux, iproute2)"
    trial = subprocess.run(
        [_which("unshare"), "--net", "--uts", "--mount", "--propagation", "private", "sh", "-ec",
         "ip link add t0 type bridge; ip link add t1 type veth peer name t2; echo t > /proc/sys/kernel/hostname"],
        check=False, capture_output=True, text=True, timeout=60)
    if trial.returncode != 0:
        return f"no network namespaces here (unshare --net --uts --mount: {trial.stderr.strip()[-200:]})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _node_config() -> str:
    """``NodeName=<host> CPUs=...`` exactly as slurmd detects this machine (``slurmd -C``)."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0]


def _netns(pid: int) -> str:
    """The network namespace of a process, as the kernel names it (``net:[4026532...]``)."""
    return os.readlink(f"/proc/{pid}/ns/net")


class NodeNetwork:
    """The emulated nodes' network: a hub namespace with a bridge at ``SUBNET.1`` (slurmctld
    and the test's client commands run there) and, per node, network + hostname + mount
    namespaces with one end of a veth pair on that bridge (address ``SUBNET.2``, ``.3``, ...),
    the node's name as hostname and ``/etc/hosts`` bind-mounted from the cluster folder, so
    node names resolve to node addresses as a cluster's DNS would make them (Lightning's
    rendezvous address is the first node's *name*; gloo binds to the address of the hostname).

    Each namespace is held open by a ``sleep`` that ``unshare`` started; the daemons join with
    ``nsenter``. Nothing is created outside these namespaces (not even the bridge), so they and
    their links vanish with the last process inside: :meth:`stop` kills exactly those.
    """

    def __init__(self, root: Path, names: list[str]):
        self.root = Path(root)
        self.hub_address = f"{SUBNET}.1"
        self.addresses = {name: f"{SUBNET}.{i + 2}" for i, name in enumerate(names)}
        self.holders: dict[str, subprocess.Popen] = {}  # "hub" and the node names
        self.namespaces: dict[str, str] = {}

    def _hold(self, key: str, *flags: str, timeout: float = 30) -> int:
        p = subprocess.Popen([_which("unshare"), *flags, "sleep", "infinity"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.holders[key] = p
        # Joining before unshare has switched namespaces would join this process's own; once
        # the holder runs `sleep`, unshare has made (and set up) all of them.
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{p.pid}/comm").read_text().strip() != "sleep":
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`unshare {' '.join(flags)}` failed ({p.poll()})")
            time.sleep(0.05)
        self.namespaces[key] = _netns(p.pid)
        return p.pid

    def _sh(self, key: str, script: str) -> None:
        result = subprocess.run([*self.prefix(key), "sh", "-ec", script], check=False, capture_output=True,
                                text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"setting up {key} failed: `{script}`: {result.stderr.strip()}")

    def prefix(self, key: str) -> list[str]:
        """The command prefix that runs a program on node ``key`` (or ``"hub"``: the controller's side)."""
        pid = str(self.holders[key].pid)
        if key == "hub":  # the network only: a client command keeps its working directory
            return [_which("nsenter"), "-t", pid, "--net"]
        return [_which("nsenter"), "-t", pid, "--net", "--uts", "--mount"]

    def start(self) -> None:
        hosts = self.root / "hosts"
        hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in self.addresses.items()))
        self._hold("hub", "--net")
        self._sh("hub", f"ip link set lo up; ip link add br0 type bridge; ip addr add {self.hub_address}/24 dev br0;"
                        " ip link set br0 up")
        for i, (name, address) in enumerate(self.addresses.items()):
            pid = self._hold(name, "--net", "--uts", "--mount", "--propagation", "private")
            self._sh("hub", f"ip link add v{i} type veth peer name eth0 netns {pid}; ip link set v{i} master br0 up")
            self._sh(name, f"ip link set lo up; ip addr add {address}/24 dev eth0; ip link set eth0 up;"
                           f" echo {name} > /proc/sys/kernel/hostname; mount --bind {hosts} /etc/hosts")

    def stop(self) -> None:
        """Kill every process left in the nodes' and hub's namespaces (job steps slurmd did not
        reap, the holders); the namespaces and their links go with them."""
        own = _netns(os.getpid())
        ours = {ns for ns in self.namespaces.values() if ns != own}
        for pid in (int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()):
            try:
                if _netns(pid) in ours:
                    os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass  # exited meanwhile
        for p in self.holders.values():  # also one whose namespaces were never recorded
            if p.poll() is None:
                p.kill()
            p.wait(timeout=15)
        self.holders.clear()
        self.namespaces.clear()


class LocalSlurm:
    """Start with :meth:`start`, submit with :meth:`run`, stop with :meth:`stop` (idempotent).

    ``nodes=1``: this machine is the node. ``nodes>1``: nodes ``node1``..``nodeN`` emulated in
    namespaces (:class:`NodeNetwork`; check :func:`namespace_support` first), each declaring
    this machine's CPUs and memory, so they oversubscribe it: fine for tiny jobs.
    """

    def __init__(self, root: Path, nodes: int = 1):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: list[subprocess.Popen] = []
        self.labels: dict[int, str] = {}  # pid -> daemon (and node), for error messages
        self.node_names = [f"node{i}" for i in range(1, nodes + 1)] if nodes > 1 else []
        self.network = NodeNetwork(self.root, self.node_names) if nodes > 1 else None
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        # A test run inside a Slurm job must not leak that job's variables into the new cluster.
        for var in list(self.env):
            if var.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and var != "SLURM_CONF":
                del self.env[var]

    def _node_lines(self, node: str) -> tuple[str, str]:
        """(NodeName lines, partition's Nodes=): this machine on 127.0.0.1, or the emulated nodes."""
        if self.network is None:
            return f"{node} NodeAddr=127.0.0.1 State=UNKNOWN", self.hostname
        hardware = node.split(None, 1)[1]  # CPUs=... RealMemory=... without this machine's NodeName
        lines = "\n".join(f"NodeName={name} NodeAddr={address} {hardware} State=UNKNOWN"
                          for name, address in self.network.addresses.items())
        return lines, ",".join(self.node_names)

    def _write_config(self) -> None:
        node = _node_config()
        self.hostname = node.split()[0].removeprefix("NodeName=")
        r = self.root
        nodes, partition = self._node_lines(node)
        if self.network is None:
            self.node_names = [self.hostname]
            controller, spool, slurmd_files = "127.0.0.1", f"{r}/spool", "slurmd"
        else:
            # Several slurmd share this folder: %n (the node name) keeps their files apart.
            controller, spool, slurmd_files = self.network.hub_address, f"{r}/spool/%n", "slurmd-%n"
            for name in self.node_names:
                (r / "spool" / name).mkdir(parents=True, exist_ok=True)
        for sub in ("munge", "state", "spool", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""\
ClusterName=nvctest
SlurmctldHost={self.hostname}({controller})
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
SlurmdSpoolDir={spool}
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/{slurmd_files}.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/{slurmd_files}.log
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
# The main scheduling loop is what starts a requeued job once it may start again; every 60 s
# by default, which would idle a requeue test for up to a minute.
SchedulerParameters=sched_interval=2
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=3600
{nodes}
PartitionName=debug Nodes={partition} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, *args: str, node: str | None = None) -> None:
        """Start daemon ``name`` in the foreground; on emulated node ``node`` (or the hub) if given."""
        label = f"{name}-{node}" if node and node != "hub" else name
        prefix = self.network.prefix(node) if node else []
        log = open(self.root / "log" / f"{label}.stdout", "w")
        p = subprocess.Popen([*prefix, _which(name), *args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                             start_new_session=True)
        self.procs.append(p)
        self.labels[p.pid] = label

    def start(self, timeout: float = 60) -> None:
        self._write_config()
        if self.network is not None:
            self.network.start()
        key = self.root / "munge" / "munge.key"
        subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o400)
        m = self.root / "munge"
        # One munged for all nodes: its socket is a file, which every namespace sees.
        self._spawn("munged", "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                    f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed")
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged socket")
        hub = None if self.network is None else "hub"
        self._spawn("slurmctld", "-D", "-c", "-f", str(self.conf), node=hub)
        self._wait(lambda: self.scontrol("ping").returncode == 0, timeout, "slurmctld")
        for name in self.node_names if self.network else [None]:  # None: this machine, no namespaces
            self._spawn("slurmd", "-D", "-f", str(self.conf), node=name)
        self._wait(lambda: self.idle_nodes() == set(self.node_names), timeout, "nodes to become IDLE")

    def idle_nodes(self) -> set[str]:
        """Nodes ready for jobs (``IDLE`` exactly: not ``IDLE+DRAIN``, not ``DOWN``)."""
        out = self.scontrol("show", "node", "--oneliner").stdout
        return {line.split()[0].removeprefix("NodeName=") for line in out.splitlines() if "State=IDLE " in line}

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{self.labels[p.pid]} exited ({p.returncode}) while waiting for {what}:\n"
                                       + self.logs())
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"timed out waiting for {what}:\n" + self.logs())

    def run(self, *cmd: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sbatch, scontrol, scancel) against this cluster (from the
        hub's network when the nodes are emulated: the controller's address is only there)."""
        prefix = self.network.prefix("hub") if self.network else []
        return subprocess.run([*prefix, _which(cmd[0]), *cmd[1:]], capture_output=True, text=True, env=self.env,
                              check=check, timeout=60, **kwargs)

    def scontrol(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("scontrol", *args)

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, NodeList, ...)."""
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
        try:
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
        finally:
            if self.network is not None:
                self.network.stop()  # also what slurmd left running on the nodes

"""Real, throw-away SLURM clusters for the tests: `Cluster`, one node on localhost (munged, slurmctld, slurmd), and
`NodesCluster`, K nodes n1..nK on this machine, each slurmd in its own network, UTS and IPC namespace.

Everything lives in one temporary folder: a fresh munge key and socket, a minimal slurm.conf, state, spool, logs
and pid files; the daemons use ports that were free when it started, so it never talks to a system munge or SLURM.
Daemons are stopped by the PIDs they were started with, after the jobs still queued are cancelled.

One thing goes outside the folder: SLURM's default configuration path, /etc/slurm/slurm.conf. Snakemake's
slurm-jobstep executor strips every SLURM_* variable (SLURM_CONF included) before it calls srun inside a job, so
srun there only finds a configuration at the default path. The cluster writes it only where none exists, and
removes it when it stops, if it is still its own. `NodesCluster` also creates a bridge, one veth pair and one
network namespace per node, with names carrying a random token, and deletes exactly those. Its links can be shaped
to a rate (`cluster.network.shape(1e9)`, tc's token bucket on both ends of every node's veth); the shaping goes
with the links.

Run by hand to poke at it:  python tests/slurm_cluster.py [K]   (starts, prints sinfo, waits for Enter, stops).
"""

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
NODE_TOOLS = ("ip", "nsenter", "unshare")
# Link shaping: a token bucket of BURST_BYTES (a real NIC sends every frame at line rate; a bucket lets `burst`
# bytes through at once, then releases the rest from a timer), and segmentation-offload packets capped at GSO_BYTES
# (the bucket must split larger ones). A 4 MiB Allreduce between two nodes at 1 Gbit/s on a quiet machine
# (benchmarks/network.py --phase calibrate): 35.2-35.5 ms with these, the line rate's 35.6; 38.3-38.5 ms with a
# 16 KB bucket, whose timer must fire four times as often (on busy cores it fires late, and a small bucket falls
# further behind); 37.7-42.0 ms with 64 KB offload packets.
BURST_BYTES = 65536
GSO_BYTES = 16384
DEFAULT_GSO_BYTES = 65536
# Preamble, start delimiter, frame check sequence and inter-frame gap: what each Ethernet frame costs on the wire
# beyond the bytes the kernel counts, so the rate set is the line rate.
WIRE_OVERHEAD = 24
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
INSTALL_HINT = "install them as root with: apt-get install -y slurm-wlm munge"
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
CONF_HEADER = "# Written by the project's tests (tests/slurm_cluster.py)"
# Seconds a job step's credential lives, and so how long SLURM holds a requeued job back before it may start again
# (120 by default); a launch on this machine uses its credential within seconds.
CRED_EXPIRE = 30


def unavailable_reason(nodes=False):
    """Why this machine cannot run the test cluster (with `nodes`, the multi-node one), or None when it can."""
    if os.geteuid() != 0:
        return "the test SLURM cluster needs root (slurmd starts jobs as their owner, munged reads a root-only key)"
    missing = [name for name in DAEMONS + CLIENTS if not find(name)]
    if missing:
        return f"SLURM/munge programs not found: {', '.join(missing)}; {INSTALL_HINT}"
    missing = [name for name in NODE_TOOLS if nodes and not find(name)]
    if missing:
        return f"{', '.join(missing)} not found (the nodes' namespaces); apt-get install -y iproute2 util-linux"
    if SYSTEM_CONF.exists():
        if SYSTEM_CONF.read_text(errors="replace").startswith(CONF_HEADER):
            return (f"{SYSTEM_CONF} was left by a test cluster that did not stop (killed test run, or one running "
                    "now); once no such run is left, delete it")
        return (f"{SYSTEM_CONF} exists (a SLURM installation of this machine); the test cluster will not replace "
                "it. Run the SLURM tests on a machine or container without one.")
    return None


def find(name):
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


@contextlib.contextmanager
def running(cluster):
    """The cluster started, then stopped whatever happens (a failed start included: it may have left daemons)."""
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_conf(root, ctld_port, slurmd_port, munge_socket, ctld_host, nodes, slurmd_timeout=30):
    """Minimal configuration: no cgroups (task/none), no accounting, CPUs and memory as consumable resources, so
    that a job asking for more than the nodes have is refused, never squeezed in. Processes are tracked by process
    group, which a job's processes keep when their parent dies: linuxproc follows parent links, and the snakemake of
    a requeued job's batch script, left to init when its shell died of the SIGTERM, escaped the SIGKILL that follows
    and outlived the job. `nodes` are NodeName lines; `%n` (the node's name) keeps each slurmd's spool, pid and log
    files apart."""
    names = ",".join(line.split()[0].split("=", 1)[1] for line in nodes)
    node_lines = "\n".join(nodes)
    return f"""\
{CONF_HEADER} for a throw-away cluster in {root}.
ClusterName=testcluster
SlurmctldHost={ctld_host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire={CRED_EXPIRE}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
# A job that can never fit is refused at submission (the test fails at once instead of waiting forever).
EnforcePartLimits=ALL
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout={slurmd_timeout}
InactiveLimit=0
KillWait=5
MinJobAge=600
{node_lines}
PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """One node, `localhost`, in this machine's own namespaces."""

    def __init__(self, root, cpus=2, memory_mb=8000):
        self.root = Path(root)
        # The daemons see the folder through a short link: a Unix socket's path (munged's, and slurmstepd's in the
        # spool) must stay under 108 bytes, and a test's temporary folder can be longer than that allows.
        self.link = Path(tempfile.mkdtemp(prefix="slurm-")) / "c"
        self.link.symlink_to(self.root, target_is_directory=True)
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.procs = {}
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.link / "munge" / "munge.socket"
        self.conf_text = None

    @property
    def env(self):
        """Environment for SLURM clients (sbatch, squeue, Snakemake and its plugin) talking to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    @property
    def node_names(self):
        return ["localhost"]

    def configuration(self, ctld_port, slurmd_port):
        node = f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN"
        return slurm_conf(self.link, ctld_port, slurmd_port, self.munge_socket, "localhost", [node])

    def log(self, name):
        text = ""
        for path in (self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.stdout"):
            if path.exists():
                text += f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:]
        return text or "(no log)"

    def start(self, timeout=60):
        for sub in ("munge", "state", "run", "log", *(f"spool/{name}" for name in self.node_names)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        if SYSTEM_CONF.exists():
            raise RuntimeError(f"{SYSTEM_CONF} exists; refusing to replace a system SLURM configuration")
        self.conf_text = self.configuration(free_port(), free_port())
        self.conf.write_text(self.conf_text)
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.write_text(self.conf_text)
        # Foreground daemons (-F / -D) stay our children, so their PIDs are exactly what stop() ends.
        self.spawn(
            "munged",
            [find("munged"), "-F", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--pid-file={self.link}/run/munged.pid", f"--seed-file={self.link}/munge/munged.seed",
             f"--log-file={self.link}/log/munged.log"],
        )
        self.wait_for(self.munge_socket.exists, "munged's socket", timeout)
        self.spawn("slurmctld", [find("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self.wait_for(lambda: "UP" in self.run_client("scontrol", "ping").stdout, "slurmctld", timeout)
        for name in self.node_names:
            self.start_slurmd(name)
        self.wait_for(self.nodes_ready, "slurmd (every node idle)", timeout)
        return self

    def start_slurmd(self, name):
        self.spawn(f"slurmd-{name}", [find("slurmd"), "-D", "-N", name, "-f", str(self.conf)])

    def spawn(self, name, argv):
        with open(self.root / "log" / f"{name}.stdout", "wb") as out:
            self.procs[name] = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )

    def run_client(self, name, *args, timeout=30):
        return subprocess.run([find(name), *args], capture_output=True, text=True, env=self.env, timeout=timeout)

    def node_states(self):
        """Node name -> SLURM state (idle, alloc, down*, ...)."""
        out = self.run_client("sinfo", "-h", "-N", "-o", "%N %t").stdout.split()
        return dict(zip(out[::2], out[1::2]))

    def nodes_ready(self, names=None):
        states = self.node_states()
        return all(states.get(n) in ("idle", "mix", "alloc") for n in names or self.node_names)

    def wait_for(self, ready, what, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n{self.log(name)}")
            try:
                if ready():
                    return
            except (subprocess.TimeoutExpired, OSError):
                pass
            time.sleep(0.5)
        logs = "\n".join(self.log(f"slurmd-{n}") for n in self.node_names)
        raise RuntimeError(f"{what} not ready after {timeout} s:\n{self.log('slurmctld')}\n{logs}")

    def leftover_pids(self):
        """Processes that carry this cluster's SLURM_CONF: step daemons and job tasks that outlived their job
        (slurmstepd detaches from slurmd), and any client we started. Not this process."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
        return pids

    def stop(self):
        """Cancel queued and running jobs, stop the daemons by PID (slurmd, slurmctld, munged), end leftovers."""
        try:
            if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
                self.run_client("scancel", "--user", "root", timeout=15)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and self.run_client("squeue", "-h", timeout=15).stdout.strip():
                    time.sleep(0.5)
        except (subprocess.TimeoutExpired, OSError):
            pass
        for name in reversed(list(self.procs)):
            stop_process(self.procs.pop(name))
        kill_all(self.leftover_pids())
        if SYSTEM_CONF.exists() and self.conf_text is not None and SYSTEM_CONF.read_text() == self.conf_text:
            SYSTEM_CONF.unlink()
        shutil.rmtree(self.link.parent, ignore_errors=True)  # the link only: rmtree does not follow it


def stop_process(proc):
    """SIGTERM, then SIGKILL, to the process group of a daemon we started (the daemon and its helpers)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


def describe(pid):
    """A leftover process as a failure message needs it: its parent, state, age, the SLURM job, step and restart
    whose environment it carries, and its whole command line ('' if it is gone)."""
    proc = Path(f"/proc/{pid}")
    try:
        status = dict(line.split(":\t", 1) for line in (proc / "status").read_text().splitlines() if ":\t" in line)
        env = dict(item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item)
        args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        started = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        age = float(Path("/proc/uptime").read_text().split()[0]) - started
    except OSError:
        return ""
    job = {key: env.get(key.encode(), b"-").decode() for key in
           ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT")}
    return f"pid {pid} ppid {status['PPid'].strip()} {status['State'].strip()}, ~{age:.0f} s old, {job}: {args}"


def descendants(pid):
    """The processes below `pid`: the children a leftover waits on need not carry SLURM_CONF themselves (the
    jobstep executor drops SLURM_* from its children's environment)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_all(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ip(*args):
    """Run `ip ARGS`; a failure is an error naming the command and what it said."""
    out = subprocess.run([find("ip"), *args], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def tc(*args):
    """Run `tc ARGS`; a failure is an error naming the command and what it said."""
    tool = find("tc")
    if tool is None:
        raise RuntimeError("tc not found (link shaping); apt-get install -y iproute2")
    out = subprocess.run([tool, *args], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def token_bucket(rate_bit, burst=BURST_BYTES):
    """tc arguments of a token bucket filter at `rate_bit` bits/s of Ethernet line rate (tbf: this kernel has tbf
    and htb, not netem, so rate can be shaped and delay cannot)."""
    return ["tbf", "rate", f"{int(rate_bit)}bit", "burst", str(burst), "latency", "50ms",
            "overhead", str(WIRE_OVERHEAD)]


def shaping_unavailable():
    """Why links cannot be shaped here (no tc, or a kernel without tbf), or None when they can: tried on a veth
    pair in a throwaway namespace."""
    if not find("tc"):
        return "tc not found (link shaping); apt-get install -y iproute2"
    ns = f"slurmtest-tbf-{os.urandom(3).hex()}"
    try:
        ip("netns", "add", ns)
        ip("-n", ns, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
        tc("-n", ns, "qdisc", "add", "dev", "probe0", "root", *token_bucket(1e9))
    except RuntimeError as err:
        return f"cannot shape a link with tc's token bucket filter (tbf): {err}"
    finally:
        subprocess.run([find("ip"), "netns", "del", ns], capture_output=True, timeout=30)
    return None


def free_subnet():
    """A 10.x.y.0/24 that no address or route of this machine uses (the nodes' private network)."""
    used = ip("-4", "route", "show", "table", "all") + ip("-4", "-o", "addr", "show")
    for _ in range(100):
        prefix = f"10.{random.randint(100, 254)}.{random.randint(0, 254)}"
        if f"{prefix}." not in used:
            return prefix
    raise RuntimeError("no free 10.x.y.0/24 subnet found for the test nodes")


class NodeNetwork:
    """A bridge on this machine (address .1) and per node a network namespace joined to it by a veth pair
    (address .10+k). Everything carries a random token; delete() removes exactly what create() made."""

    def __init__(self, count):
        self.token = os.urandom(3).hex()
        self.count = count
        self.prefix = None
        self.bridge = f"stbr{self.token}"
        self.made = []  # ("netns" | "link", name), in creation order
        self.rate_bit = None  # the shaped rate of every node's link, None when unshaped

    @property
    def host_address(self):
        return f"{self.prefix}.1"

    def address(self, k):
        return f"{self.prefix}.{10 + k}"

    def netns(self, k):
        return f"slurmtest-{self.token}-n{k}"

    def netns_path(self, k):
        return Path("/run/netns") / self.netns(k)

    def veth(self, k):
        """Node k's link on this machine's side: a port of the bridge."""
        return f"stv{k}{self.token}"

    def create(self):
        self.prefix = free_subnet()
        ip("link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for k in range(1, self.count + 1):
            ns, veth = self.netns(k), self.veth(k)
            ip("netns", "add", ns)
            self.made.append(("netns", ns))
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.made.append(("link", veth))
            ip("link", "set", veth, "master", self.bridge, "up")
            ip("-n", ns, "addr", "add", f"{self.address(k)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        return self

    def shape(self, rate_bit, burst=BURST_BYTES, gso=GSO_BYTES):
        """Every node's link limited to `rate_bit` bits/s in each direction, like a full-duplex NIC on a switch: a
        token bucket on node k's eth0, inside its namespace, limits what it sends; one on the bridge's side of its
        veth limits what it receives. Replaces any shaping in force. `burst` and `gso` as calibrated (above)."""
        for k in range(1, self.count + 1):
            self.offload_size(k, gso)
            tc("-n", self.netns(k), "qdisc", "replace", "dev", "eth0", "root", *token_bucket(rate_bit, burst))
            tc("qdisc", "replace", "dev", self.veth(k), "root", *token_bucket(rate_bit, burst))
        self.rate_bit = rate_bit

    def offload_size(self, k, size):
        ip("-n", self.netns(k), "link", "set", "dev", "eth0", "gso_max_size", str(size))
        ip("link", "set", "dev", self.veth(k), "gso_max_size", str(size))

    def unshape(self):
        """Every link back to its default (no queueing discipline: as fast as the machine moves the bytes)."""
        for k in range(1, self.count + 1):
            for args in (("-n", self.netns(k), "qdisc", "del", "dev", "eth0", "root"),
                         ("qdisc", "del", "dev", self.veth(k), "root")):
                try:
                    tc(*args)
                except RuntimeError as err:  # nothing to delete: the link had no shaping
                    if "handle of zero" not in str(err) and "No such" not in str(err):
                        raise
            self.offload_size(k, DEFAULT_GSO_BYTES)
        self.rate_bit = None

    def qdiscs(self, k):
        """The queueing disciplines on node k's link, (inside, bridge side), with their counters: tc's JSON."""
        inside = json.loads(tc("-j", "-s", "-n", self.netns(k), "qdisc", "show", "dev", "eth0") or "[]")
        outside = json.loads(tc("-j", "-s", "qdisc", "show", "dev", self.veth(k)) or "[]")
        return inside, outside

    def counters(self, k):
        """Bytes node k's eth0 has sent and received (its statistics in its namespace)."""
        link = json.loads(ip("-j", "-s", "-n", self.netns(k), "link", "show", "dev", "eth0"))[0]
        return {"tx_bytes": link["stats64"]["tx"]["bytes"], "rx_bytes": link["stats64"]["rx"]["bytes"]}

    def pids(self, k):
        """Every process whose network namespace is node k's: its slurmd, step daemons and job tasks."""
        try:
            inode = os.stat(self.netns_path(k)).st_ino
        except FileNotFoundError:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and os.stat(entry / "ns" / "net").st_ino == inode:
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def delete(self):
        for k in range(1, self.count + 1):
            kill_all(self.pids(k))
        for kind, name in reversed(self.made):
            args = ("netns", "del", name) if kind == "netns" else ("link", "del", name)
            try:
                ip(*args)
            except RuntimeError as err:
                if "Cannot find" not in str(err) and "No such" not in str(err):  # a veth goes with its netns
                    raise
        self.made.clear()


class NodesCluster(Cluster):
    """K nodes n1..nK of `cpus` CPUs each. slurmctld runs on this machine under its real host name, reached at
    the bridge's address; each slurmd runs in node k's network namespace (its own address), with its own UTS
    namespace (host name nk) and IPC namespace. munged's socket is a path, which every namespace reaches."""

    def __init__(self, root, nodes=3, cpus=1, memory_mb=4000, slurmd_timeout=10):
        super().__init__(root, cpus=cpus, memory_mb=memory_mb)
        self.network = NodeNetwork(nodes)
        self.slurmd_timeout = slurmd_timeout

    @property
    def node_names(self):
        return [f"n{k}" for k in range(1, self.network.count + 1)]

    def configuration(self, ctld_port, slurmd_port):
        nodes = [
            f"NodeName=n{k} NodeAddr={self.network.address(k)} CPUs={self.cpus} RealMemory={self.memory_mb} "
            "State=UNKNOWN"
            for k in range(1, self.network.count + 1)
        ]
        ctld = f"{socket.gethostname()}({self.network.host_address})"
        return slurm_conf(self.link, ctld_port, slurmd_port, self.munge_socket, ctld, nodes, self.slurmd_timeout)

    def start(self, timeout=60):
        self.network.create()
        return super().start(timeout)

    def node_conf(self, name):
        """Node `name`'s configuration folder: the cluster's slurm.conf, and an mpi.conf giving SLURM's PMIx
        plugin a temporary folder of the node's own (it would use /tmp, which the nodes here share)."""
        folder = self.root / "nodes" / name
        (folder / "tmp").mkdir(parents=True, exist_ok=True)
        (folder / "slurm.conf").write_text(self.conf_text)
        (folder / "mpi.conf").write_text(f"PMIxCliTmpDirBase={folder / 'tmp'}\n")
        return folder / "slurm.conf"

    def start_slurmd(self, name):
        k = int(name[1:])
        # `ip netns exec` would remount /sys, where slurmd then finds no cgroup file system: enter the network
        # namespace alone, then new UTS and IPC namespaces. exec keeps slurmd the PID we started.
        inner = f"hostname {name} && exec {find('slurmd')} -D -N {name} -f {self.node_conf(name)}"
        self.spawn(f"slurmd-{name}", [find("nsenter"), f"--net={self.network.netns_path(k)}",
                                      find("unshare"), "--uts", "--ipc", "sh", "-c", inner])

    def lose_node(self, name):
        """The node dies: SIGKILL every process in its network namespace (slurmd, step daemons, ranks)."""
        pids = self.network.pids(int(name[1:]))
        kill_all(pids)
        self.procs.pop(f"slurmd-{name}").wait(timeout=15)
        return pids

    def revive_node(self, name, timeout=60):
        """Start the node's slurmd again; ReturnToService=2 makes the node usable once it registers."""
        self.start_slurmd(name)
        self.wait_for(lambda: self.nodes_ready([name]), f"node {name} back", timeout)

    def stop(self):
        try:
            super().stop()
        finally:
            self.network.delete()


if __name__ == "__main__":
    import sys
    import tempfile

    reason = unavailable_reason(nodes=len(sys.argv) > 1)
    if reason:
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory(prefix="slurm-") as tmp:
        cluster = NodesCluster(tmp, nodes=int(sys.argv[1])) if len(sys.argv) > 1 else Cluster(tmp)
        try:
            cluster.start()
            print(cluster.run_client("sinfo").stdout)
            print(f"export SLURM_CONF={cluster.conf}")
            input("cluster up; press Enter to stop it ")
        finally:
            cluster.stop()

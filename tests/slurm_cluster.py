"""A real, throw-away single-node SLURM cluster (munged, slurmctld, slurmd on localhost) for the tests.

Everything lives in one temporary folder: a fresh munge key and socket, a minimal slurm.conf, state, spool, logs
and pid files; the daemons use ports that were free when it started, so it never talks to a system munge or SLURM.
Daemons are stopped by the PIDs they were started with, after the jobs still queued are cancelled.

One thing goes outside the folder: SLURM's default configuration path, /etc/slurm/slurm.conf. Snakemake's
slurm-jobstep executor strips every SLURM_* variable (SLURM_CONF included) before it calls srun inside a job, so
srun there only finds a configuration at the default path. The cluster writes it only where none exists, and
removes it when it stops, if it is still its own.

Run by hand to poke at it:  python tests/slurm_cluster.py   (starts, prints sinfo, waits for Enter, stops).
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
INSTALL_HINT = "install them as root with: apt-get install -y slurm-wlm munge"
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
CONF_HEADER = "# Written by the project's tests (tests/slurm_cluster.py)"


def unavailable_reason():
    """Why this machine cannot run the test cluster, or None when it can."""
    if os.geteuid() != 0:
        return "the test SLURM cluster needs root (slurmd starts jobs as their owner, munged reads a root-only key)"
    missing = [name for name in DAEMONS + CLIENTS if not find(name)]
    if missing:
        return f"SLURM/munge programs not found: {', '.join(missing)}; {INSTALL_HINT}"
    if SYSTEM_CONF.exists():
        if SYSTEM_CONF.read_text(errors="replace").startswith(CONF_HEADER):
            return (f"{SYSTEM_CONF} was left by a test cluster that did not stop (killed test run, or one running "
                    "now); once no such run is left, delete it")
        return (f"{SYSTEM_CONF} exists (a SLURM installation of this machine); the test cluster will not replace "
                "it. Run the SLURM tests on a machine or container without one.")
    return None


def find(name):
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_conf(root, ctld_port, slurmd_port, cpus, memory_mb, munge_socket):
    """Minimal single-node configuration: no cgroups (linuxproc, task/none), no accounting, CPUs and memory as
    consumable resources, so that a job asking for more than the node has is refused, never squeezed in."""
    return f"""\
{CONF_HEADER} for a throw-away cluster in {root}.
ClusterName=testcluster
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
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
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    def __init__(self, root, cpus=2, memory_mb=8000):
        self.root = Path(root)
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.procs = {}
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.conf_text = None

    @property
    def env(self):
        """Environment for SLURM clients (sbatch, squeue, Snakemake and its plugin) talking to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def log(self, name):
        text = ""
        for path in (self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.stdout"):
            if path.exists():
                text += f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:]
        return text or "(no log)"

    def start(self, timeout=60):
        for sub in ("munge", "state", "spool", "run", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.conf_text = slurm_conf(self.root, free_port(), free_port(), self.cpus, self.memory_mb, self.munge_socket)
        self.conf.write_text(self.conf_text)
        if SYSTEM_CONF.exists():
            raise RuntimeError(f"{SYSTEM_CONF} exists; refusing to replace a system SLURM configuration")
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.write_text(self.conf_text)
        # Foreground daemons (-F / -D) stay our children, so their PIDs are exactly what stop() ends.
        self.spawn(
            "munged",
            [find("munged"), "-F", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--pid-file={self.root}/run/munged.pid", f"--seed-file={self.root}/munge/munged.seed",
             f"--log-file={self.root}/log/munged.log"],
        )
        self.wait_for(self.munge_socket.exists, "munged's socket", timeout)
        self.spawn("slurmctld", [find("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self.wait_for(lambda: "UP" in self.run_client("scontrol", "ping").stdout, "slurmctld", timeout)
        self.spawn("slurmd", [find("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)])
        self.wait_for(self.node_ready, "slurmd (node idle)", timeout)
        return self

    def spawn(self, name, argv):
        with open(self.root / "log" / f"{name}.stdout", "wb") as out:
            self.procs[name] = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )

    def run_client(self, name, *args, timeout=30):
        return subprocess.run([find(name), *args], capture_output=True, text=True, env=self.env, timeout=timeout)

    def node_ready(self):
        return self.run_client("sinfo", "-h", "-N", "-o", "%t").stdout.strip() in ("idle", "mix", "alloc")

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
        raise RuntimeError(f"{what} not ready after {timeout} s:\n{self.log('slurmctld')}\n{self.log('slurmd')}")

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
            proc = self.procs.pop(name)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.poll() is not None:
                    break
                try:
                    os.killpg(proc.pid, sig)  # its own session: the daemon and its helpers (slurmscriptd)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    continue
        for pid in self.leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if SYSTEM_CONF.exists() and self.conf_text is not None and SYSTEM_CONF.read_text() == self.conf_text:
            SYSTEM_CONF.unlink()


if __name__ == "__main__":
    import tempfile

    reason = unavailable_reason()
    if reason:
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory(prefix="slurm-") as tmp:
        cluster = Cluster(tmp)
        try:
            cluster.start()
            print(cluster.run_client("sinfo").stdout)
            print(f"export SLURM_CONF={cluster.conf}")
            input("cluster up; press Enter to stop it ")
        finally:
            cluster.stop()

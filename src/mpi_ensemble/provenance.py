"""What produced a number: versions, CPU, threads, binding, host, scheduler."""

import os
import platform
import resource
import socket
import subprocess
import sys
from importlib import metadata

PACKAGES = ("tensorflow-cpu", "tensorflow", "keras", "numpy", "mpi4py", "mpich", "snakemake", "pandas", "matplotlib")
# Which SLURM job, step and task a number came from (sacct may be off, so the record keeps them).
SCHEDULER_ENV = (
    "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_NTASKS", "SLURM_CPUS_PER_TASK", "SLURM_PROCID", "SLURM_NODELIST"
)


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_versions():
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def mpi_library():
    try:
        from mpi4py import MPI

        return MPI.Get_library_version().splitlines()[0].strip()
    except Exception:  # MPI absent is a fact to record, not a failure here
        return None


def git_commit(cwd=None):
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=cwd, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def peak_rss_mb():
    """Peak resident set of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def host_facts():
    return {
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "versions": package_versions(),
        "scheduler": {key: os.environ[key] for key in SCHEDULER_ENV if key in os.environ},
    }

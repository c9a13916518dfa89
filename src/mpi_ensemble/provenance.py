"""Where and with what a number was made: the host, CPU, instruction set, package versions and SLURM job, the git
commit, and the SHA-256 of the files a figure or table was drawn from. Plain Python, for every stage."""

import hashlib
import json
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from . import runtime

PACKAGES = ("tensorflow-cpu", "tensorflow", "keras", "numpy", "mpi4py", "mpich", "snakemake", "pandas", "matplotlib")
# Which SLURM job, step and task a number came from (sacct may be off, so the record keeps them).
SCHEDULER_ENV = (
    "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_NTASKS", "SLURM_CPUS_PER_TASK", "SLURM_PROCID", "SLURM_NODELIST"
)
# The instruction-set flags that decide which kernels TensorFlow and oneDNN run.
ISA_PREFIXES = ("sse4", "avx", "fma", "amx")
HOST_KEYS = ("host", "cpu_model", "cpu_count", "isa_flags", "versions", "scheduler")
# Where a figure (PNG text chunk) or a report table (HTML meta tag) keeps the SHA-256 of the files it was made from.
INPUTS_KEY = "mpi_ensemble:inputs"


def file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def inputs_note(paths):
    """What a figure or table was made from: {file name: SHA-256}, as JSON."""
    return json.dumps({Path(p).name: file_sha256(p) for p in paths}, sort_keys=True)


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def isa_flags(flags=None):
    """The CPU's vector-ISA flags (AVX2, AVX-512, AMX, ...), sorted."""
    flags = runtime.cpu_flags() if flags is None else flags
    return sorted(f for f in flags if f.startswith(ISA_PREFIXES))


def package_versions():
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(cwd=None):
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=cwd, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def host_facts():
    return {
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "isa_flags": isa_flags(),
        "versions": package_versions(),
        "scheduler": {key: os.environ[key] for key in SCHEDULER_ENV if key in os.environ},
    }

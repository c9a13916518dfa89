"""What a training process runs on, settled before TensorFlow starts and recorded: the CPU's flags and the kernel
settings they call for, the precision, threads, cores, core binding and the MPI launcher. Plain Python: the
Snakefile and every rule read it; TensorFlow itself is started by startup.py."""

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

PRECISIONS = ("float32", "mixed_bfloat16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
THREAD_ENV = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
CPU_TUNINGS = ("auto", "tensorflow")
# How the workflow's `cpu_tuning` reaches every training process (the CLI sets it; mpiexec and srun pass it on).
CPU_TUNING_ENV = "MPI_ENSEMBLE_CPU_TUNING"
# TensorFlow turns oneDNN on by itself only on CPUs with AVX512_VNNI, AVX512_BF16 or AMX; on an AVX2-only CPU
# (AMD Zen 2/3, Intel before Ice Lake) it runs its generic Eigen kernels, compiled for AVX without FMA, at half
# the speed of oneDNN's AVX2 kernels. Measured in docs/performance.md.
CPU_KIND_SETTINGS = {
    "avx512": {"TF_ENABLE_ONEDNN_OPTS": "1"},
    "avx2": {"TF_ENABLE_ONEDNN_OPTS": "1"},
    "other": {},
}
# Every variable that decides which kernels run, recorded with each result whoever set it.
KERNEL_ENV = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "ONEDNN_PRIMITIVE_CACHE_CAPACITY",
              "TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE", "TF_CPU_ALLOCATOR_USE_BFC", "ONEDNN_DEFAULT_FPMATH_MODE",
              "MALLOC_ARENA_MAX", "LD_PRELOAD", CPU_TUNING_ENV)
INSTALL_HINT = (
    "Install an MPI launcher: `make venv` puts MPICH's mpiexec into .venv/bin (pip package `mpich`), "
    "or load your site's MPI module and rebuild mpi4py against it."
)


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags (empty when /proc/cpuinfo is unreadable, e.g. not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_kind(flags):
    """'avx512' (AVX-512 foundation), 'avx2' (AVX2 with FMA, no AVX-512) or 'other', from the CPU's flags."""
    if "avx512f" in flags:
        return "avx512"
    if {"avx2", "fma"} <= set(flags):
        return "avx2"
    return "other"


def cpu_settings(flags, tuning="auto"):
    """The environment that selects the fastest kernels for this CPU, to be set before TensorFlow is imported:
    `auto` chooses by the CPU's flags, `tensorflow` sets nothing (TensorFlow's own defaults)."""
    if tuning not in CPU_TUNINGS:
        raise ValueError(f"cpu_tuning must be one of {', '.join(CPU_TUNINGS)}, not {tuning!r}")
    if tuning == "tensorflow":
        return {}
    return dict(CPU_KIND_SETTINGS[cpu_kind(flags)])


def apply_cpu_settings(tuning=None, flags=None, environ=None):
    """Set `cpu_settings` in the environment, leaving any variable the user set alone (theirs wins); `tuning`
    None reads MPI_ENSEMBLE_CPU_TUNING (default auto). Returns what was set."""
    environ = os.environ if environ is None else environ
    tuning = tuning or environ.get(CPU_TUNING_ENV) or "auto"
    chosen = cpu_settings(cpu_flags() if flags is None else flags, tuning)
    applied = {key: value for key, value in chosen.items() if key not in environ}
    environ.update(applied)
    environ[CPU_TUNING_ENV] = tuning
    return applied


def check_precision(precision, flags):
    """Refuse a precision the config cannot mean, and bfloat16 on a CPU that would emulate it (slower, not faster)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "mixed_bfloat16" and not flags & set(BF16_FLAGS):
        raise ValueError(
            "precision mixed_bfloat16 needs a CPU with native bfloat16 arithmetic (flag avx512_bf16 or amx_bf16 "
            "in /proc/cpuinfo); this CPU has neither, so bfloat16 would be emulated and slower than float32. "
            "Set precision: float32."
        )
    return precision


def available_cores():
    """Cores this process may run on (respects taskset, cgroups cpusets and SLURM allocations)."""
    return len(os.sched_getaffinity(0))


def slurm_cpus_on_node(environ=None):
    """CPUs this SLURM job holds on this node (SLURM_CPUS_ON_NODE); None outside a SLURM job."""
    value = (os.environ if environ is None else environ).get("SLURM_CPUS_ON_NODE", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def slurm_job_cpus(environ=None):
    """CPUs this SLURM job holds on all its nodes together, from SLURM_JOB_CPUS_PER_NODE ("2(x3),1" is 2 CPUs
    on each of 3 nodes and 1 on a fourth); else SLURM_CPUS_ON_NODE; None outside a SLURM job."""
    environ = os.environ if environ is None else environ
    spec = environ.get("SLURM_JOB_CPUS_PER_NODE", "")
    parts = re.fullmatch(r"\d+(\(x\d+\))?(,\d+(\(x\d+\))?)*", spec) and spec.split(",")
    if not parts:
        return slurm_cpus_on_node(environ)
    total = 0
    for part in parts:
        cpus, _, times = part.partition("(x")
        total += int(cpus) * int(times.rstrip(")") or 1)
    return total or None


def job_cores(requested=None, environ=None):
    """Cores a job may claim: those it was given (--cores), never more than its SLURM allocation holds (a site
    without task confinement lets the batch step see the whole node); else this process's cores. A job spread
    over nodes holds the CPUs of all of them: its N ranks and k threads each fit there, not on the first node."""
    limits = [c for c in (requested, slurm_job_cpus(environ)) if c]
    return min(limits) if limits else available_cores()


# The executors under which a job runs inside a SLURM allocation: the submitting one and the one inside the job.
SLURM_EXECUTORS = ("slurm", "slurm-jobstep")
# Starts a job's N ranks as one job step through SLURM's PMI-2, which the pip MPICH speaks.
SLURM_LAUNCHER = "srun --mpi=pmi2"


def choose_launcher(configured, executor):
    """(launcher, where it came from, a warning or None) for the MPI jobs: the config's `mpi_launcher` if set,
    else srun under a SLURM executor and mpiexec under any other. A configured launcher other than srun under
    SLURM is kept, with a warning: mpiexec started in a SLURM job knows nothing of the allocation's other nodes."""
    slurm = executor in SLURM_EXECUTORS
    if configured:
        first = os.path.basename(str(configured).split()[0])
        warning = None
        if slurm and first != "srun":
            warning = (f"mpi_launcher {configured!r} under the {executor} executor: its ranks may all start on the "
                       "first node of the job's allocation. Set mpi_launcher: null (srun) unless your site's MPI "
                       "reads the allocation itself.")
        return str(configured), "config key mpi_launcher", warning
    if slurm:
        return SLURM_LAUNCHER, f"the {executor} executor", None
    return "mpiexec", f"the {executor or 'local'} executor", None


def rank_launcher(launcher, ranks):
    """The `mpi` resource of an N-rank job: the launcher, except that a 1-rank job under a scheduler's launcher
    (srun, ...) gets none and runs as an MPI singleton (the SLURM plugin refuses MPI jobs of one task)."""
    first = str(launcher).split()[0] if str(launcher).split() else ""
    if ranks == 1 and os.path.basename(first) not in ("mpiexec", "mpirun"):
        return ""
    return launcher


def placement(ranks, ranks_per_node):
    """The task resources of an N-rank job: N tasks where the scheduler chooses (k = 0); N tasks on N nodes, one
    each (k = 1); k tasks on each of ceil(N / k) nodes (k > 1; SLURM then holds k·ceil(N / k) task slots, and the
    launcher starts N ranks in them, k to a node)."""
    if ranks_per_node < 0:
        raise ValueError(f"ranks_per_node must be 0 (the scheduler's choice) or more, not {ranks_per_node}")
    if ranks_per_node <= 1 or ranks <= 1:
        return {"tasks": ranks, **({"nodes": ranks} if ranks_per_node == 1 else {})}
    return {"tasks_per_node": min(ranks_per_node, ranks), "nodes": -(-ranks // ranks_per_node)}


def threads_per_rank(cores, ranks):
    """Split the job's cores evenly; never below one thread, so N > cores oversubscribes by whole ranks."""
    return max(1, cores // ranks)


def is_oversubscribed(ranks, threads, cores):
    return ranks * threads > cores


def oversubscribed_ranks(ranks, threads_of, cores):
    """The world sizes among `ranks` whose ranks x threads (threads_of(n)) exceed the cores."""
    return [n for n in ranks if is_oversubscribed(n, threads_of(n), cores)]


def thread_env(threads):
    """Environment that pins TensorFlow's and OpenMP's pools; `None` keeps TensorFlow's defaults (all cores)."""
    if threads is None:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1"}


def apply_threads(threads):
    """Set the thread pools; must run before TensorFlow is imported, and again right after for the API."""
    os.environ.update(thread_env(threads))


def thread_settings(threads):
    return {
        "threads": "all" if threads is None else threads,
        "env": {key: os.environ.get(key) for key in THREAD_ENV},
        "affinity": sorted(os.sched_getaffinity(0)),
    }


def parse_threads(value):
    """'all' -> None (TensorFlow decides, as the paper ran), else a positive int."""
    if str(value) == "all":
        return None
    threads = int(value)
    if threads < 1:
        raise ValueError(f"threads must be 'all' or a positive integer, not {value!r}")
    return threads


def find_launcher(name="mpiexec", search_path=None):
    path = shutil.which(name, path=search_path)
    if path is None:
        raise FileNotFoundError(f"MPI launcher {name!r} is not on PATH. {INSTALL_HINT}")
    return path


def launcher_flavour(path):
    """'mpich', 'openmpi' or 'unknown', from the launcher's --version text."""
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return flavour_from_version(text)


def flavour_from_version(text):
    if re.search(r"Open MPI|OpenRTE|open-mpi", text, re.I):
        return "openmpi"
    if re.search(r"HYDRA|MPICH", text, re.I):
        return "mpich"
    return "unknown"


def binding_args(flavour, threads, bind):
    """Launcher flags that bind each rank to `threads` cores of its own (none when oversubscribed)."""
    if not bind:
        return {"openmpi": ["--bind-to", "none", "--oversubscribe"], "mpich": ["-bind-to", "none"]}.get(flavour, [])
    if flavour == "openmpi":
        return ["--map-by", f"slot:PE={threads}", "--bind-to", "core", "--report-bindings"]
    if flavour == "mpich":
        return ["-bind-to", f"core:{threads}"]
    return []


def launch_command(launcher, flavour, ranks, threads, bind):
    """The full `mpiexec -n N ...` prefix; rank processes follow it."""
    return [launcher, "-n", str(ranks), *binding_args(flavour, threads, bind)]


def launch_prefix(mpi, ranks, threads, bind, search_path=None, flavour=None):
    """The command that starts `ranks` processes of `threads` threads each, from the rule's `mpi` resource.

    `mpiexec`/`mpirun` (MPICH or Open MPI) get `-n N` and binding flags (none when `bind` is false); any other
    launcher (`srun --mpi=pmi2`, ...) binds by its own options; an empty one runs a single rank as an MPI singleton.
    With `flavour` ('mpich', 'openmpi') the launcher stays a bare name for the job's shell to find on the job's
    PATH (a conda env that does not exist yet); else it is resolved on `search_path` and asked its flavour.
    Raises FileNotFoundError (with an install hint) for a launcher that is not on the path.
    """
    parts = str(mpi).split()
    if not parts or os.path.basename(parts[0]) not in ("mpiexec", "mpirun"):
        return scheduler_launch_command(parts, ranks, threads)
    if flavour is not None:
        return launch_command(parts[0], flavour, ranks, threads, bind) + parts[1:]
    launcher = find_launcher(parts[0], search_path=search_path)
    return launch_command(launcher, launcher_flavour(launcher), ranks, threads, bind) + parts[1:]


def env_file_mpi(env):
    """'mpich' or 'openmpi': the MPI a conda env file (parsed YAML) installs, from its conda dependencies."""
    names = [str(dep).split("=")[0].split()[0] for dep in env.get("dependencies", []) if isinstance(dep, str)]
    found = [name for name in names if name in ("mpich", "openmpi")]
    if len(found) != 1:
        raise ValueError(f"the conda env must install exactly one MPI (mpich or openmpi), found {found or 'none'}")
    return found[0]


def scheduler_launch_command(parts, ranks, threads):
    """A scheduler's launcher (`srun --mpi=pmi2`, ...) plus the world size; srun also gets each rank's CPUs, as
    since SLURM 22.05 a step no longer inherits the job's --cpus-per-task, and --kill-on-bad-exit=1: a rank that
    fails (at start-up, say) ends the step, where srun would otherwise leave the others waiting for it in MPI_Init
    or a collective until the time limit. mpiexec and mpirun end the world on a failed rank by themselves. An empty
    launcher runs the single rank as an MPI singleton."""
    if not parts:
        if ranks != 1:
            raise ValueError(f"an empty MPI launcher can only run 1 rank, not {ranks}; set the rule's `mpi` resource")
        return []
    extra = []
    if os.path.basename(parts[0]) == "srun":
        extra.append(f"--cpus-per-task={threads}")
        if not any(p == "-K" or p.startswith(("--kill-on-bad-exit", "-K")) for p in parts[1:]):
            extra.append("--kill-on-bad-exit=1")
    return [*parts, "-n", str(ranks), *extra]


def bind_self(threads):
    """Bind this (non-MPI) process to its first `threads` allowed cores; 'all' (None) leaves it free."""
    if threads is None:
        return
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:threads])


# MPICH names a node's shared-memory segments after a hash of the job's PMI name, which under srun is
# "<job id>.<step id>". A preempted job that SLURM requeues keeps its job id and starts again at step 0, so its
# ranks find the segments its killed ranks left behind, attach to them as if a live rank had made them, and MPI_Init
# fails ("UCX ERROR failed to unpack address"). Removing the ones no process maps before the launch avoids that.
MPICH_SEGMENTS = ("mpich_shm_", "mpich_vci_")


def mapped_files(proc="/proc"):
    """Paths that any process we may inspect has mapped (an open segment is mapped by the rank that uses it)."""
    mapped = set()
    for entry in Path(proc).iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "maps").read_bytes()
        except OSError:  # gone, or another user's
            continue
        # File names are bytes, not always UTF-8: decoded as Path.iterdir decodes them, so that the two compare.
        fields = (line.split(None, 5) for line in raw.splitlines())
        mapped.update(os.fsdecode(f[5].strip()) for f in fields if len(f) == 6)
    return mapped


def stale_mpich_segments(shm_dir="/dev/shm", mapped=None):
    """This user's MPICH shared-memory segments in `shm_dir` that no process maps: left by killed ranks."""
    folder = Path(shm_dir)
    if not folder.is_dir():
        return []
    mapped = mapped_files() if mapped is None else mapped
    return sorted(p for p in folder.iterdir() if p.name.startswith(MPICH_SEGMENTS) and owned_file(p)
                  and str(p) not in mapped)


def owned_file(path):
    """A plain file of this user's; False also when it went away meanwhile (other jobs' ranks end at any time)."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid()


def remove_stale_mpich_segments(shm_dir="/dev/shm"):
    removed = []
    for path in stale_mpich_segments(shm_dir):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed

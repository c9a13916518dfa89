"""The two record formats, each with one builder: what one training process measured (`rank_record`), and one
method's result (`result_record`), which every method writes and the summary reads. Both carry what produced the
numbers: versions, CPU, threads, binding, the kernel settings, host, scheduler."""

import os
import resource
import time

from . import provenance, runtime, startup

# What a result keeps of each rank record: its timing, memory and placement.
RANK_TIMING_KEYS = ("rank", "fit_seconds", "epoch_seconds", "warm_up_seconds", "fit_cpu_seconds", "cpu_seconds",
                    "wall_seconds",
                    "peak_rss_mib", "train_images", "validation_images", "host", "resumed_from_epoch",
                    "resumed_exactly", "checkpoint_seconds", "allreduce_count", "allreduce_seconds",
                    "allreduce_bytes", "allreduce_wire_bytes", "weights_sha256", "slurm_step", "history")


def mpi_library():
    try:
        from mpi4py import MPI

        return MPI.Get_library_version().splitlines()[0].strip()
    except Exception:  # MPI absent is a fact to record, not a failure here
        return None


def peak_rss_mib():
    """Peak resident set of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds():
    """User + system CPU time of this process so far, all its threads together."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rank_record(method, rank, ranks, seed, settings, threads, job_cores, started, facts, **extra):
    """What one training process (a rank, or the sequential run as rank 0 of 1) measured, and on what.

    `started` is the process's perf_counter at start, `facts` what training.fit returned; `threads` None means
    TensorFlow's default (every core of the job). `resumed_from_epoch` is the epochs a checkpoint supplied (0: this
    process trained every epoch), so the times of a resumed process cover only the epochs after it."""
    return {
        "resumed_from_epoch": 0,
        "method": method, "rank": rank, "ranks": ranks, "seed": seed, "settings": settings,
        "precision": settings["precision"], "job_cores": job_cores,
        "oversubscribed": threads is not None and runtime.is_oversubscribed(ranks, threads, job_cores),
        **facts,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mib": peak_rss_mib(),
        "cpu_seconds": cpu_seconds(),
        "thread_settings": runtime.thread_settings(threads),
        "kernel_settings": startup.kernel_settings(),
        # The SLURM job step this process ran in (srun sets it; a batch script's own processes have none).
        "slurm_step": os.environ.get("SLURM_STEP_ID"),
        **provenance.host_facts(),
        **extra,
    }


def cores_used(members, threads, job_cores, affinity=None):
    """Cores the training could use: threads per rank times ranks, at most the job's; 'all' is the cores the
    process was bound to (`affinity`; the job's when unknown)."""
    per_rank = (len(affinity) if affinity else job_cores) if threads == "all" else int(threads)
    return min(members * per_rank, job_cores)


def resumed_exactly(members):
    """None when no member resumed; else whether every resumed member did so in its own environment."""
    resumed = [m for m in members if m.get("resumed_from_epoch")]
    return None if not resumed else all(m.get("resumed_exactly") is not False for m in resumed)


def result_record(method, members, metrics, ties=0, member_accuracy=None, **extra):
    """One method's result on the test set, from the rank records of the processes that trained its model(s).

    Every method uses it (sequential, ensemble votes, single_shard, data_parallel), so every result has the
    same fields; `ranks` is the world size of the training job, `rank_timing` one entry per member process;
    `resumed_from_epoch` the most epochs any member took from a checkpoint (0: a clean, uninterrupted timing),
    `resumed_exactly` False when a member resumed in another environment (its model is not bitwise the uncut
    one's), None when none resumed."""
    first = members[0]
    threads = first["thread_settings"]["threads"]
    return {
        "method": method, "ranks": first["ranks"], "seed": first["seed"], "threads": threads,
        "precision": first["precision"], "epochs": first["settings"]["epochs"],
        "batch_size": first["settings"]["batch_size"], "job_cores": first["job_cores"],
        "cores_used": cores_used(len(members), threads, first["job_cores"], first["thread_settings"].get("affinity")),
        "oversubscribed": first["oversubscribed"],
        "metrics": metrics, "ties": int(ties),
        "resumed_from_epoch": max(int(m.get("resumed_from_epoch") or 0) for m in members),
        "resumed_exactly": resumed_exactly(members),
        "member_accuracy": [float(a) for a in (member_accuracy or [metrics["accuracy"]])],
        "rank_timing": [
            {**{k: m.get(k) for k in RANK_TIMING_KEYS}, "affinity": m["thread_settings"]["affinity"]}
            for m in members
        ],
        "thread_settings": first["thread_settings"],
        "kernel_settings": first.get("kernel_settings"),
        **{k: first[k] for k in provenance.HOST_KEYS},
        "mpi_library": first.get("mpi_library"),
        **extra,
    }

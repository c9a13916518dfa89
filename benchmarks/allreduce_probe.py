"""One rank of the Allreduce micro-benchmark; benchmarks/network.py starts N of them on the test cluster's nodes
(`srun --mpi=pmi2`, one rank per node). Needs only mpi4py and NumPy.

    allreduce_probe.py OUT.json --sizes 8 373288 --calls 50 20

For each message size (bytes of float32): a few untimed calls, then `calls` timed ones, each after a Barrier so
every call starts from idle links (as a training step's Allreduce does after its compute). Around the timed calls
each rank reads the bytes its node's eth0 has sent; a loop of Barriers alone, as many, gives the bytes to subtract.
Rank 0 writes one JSON: per size, each call's slowest rank, and each rank's bytes sent.
"""

import argparse
import json
import os
import socket
import time

import numpy as np
from mpi4py import MPI

# Untimed calls first: TCP's congestion window grows to its steady size, as over a training loop's many steps.
WARMUP = 10


def tx_bytes(interface="eth0"):
    """Bytes `interface` has sent. /proc/net/dev shows the reading process's network namespace: the node's own."""
    with open("/proc/net/dev") as dev:
        for line in dev:
            name, _, counters = line.partition(":")
            if name.strip() == interface:
                return int(counters.split()[8])
    raise RuntimeError(f"no interface {interface} in this rank's network namespace: run it on the test cluster's "
                       "nodes (benchmarks/network.py does)")


def barrier_bytes(comm, calls):
    """Bytes this rank sends for `calls` Barriers: what the timed loop sends beyond its Allreduces."""
    comm.Barrier()
    before = tx_bytes()
    for _ in range(calls + 1):
        comm.Barrier()
    return tx_bytes() - before


def timed_calls(comm, nbytes, calls):
    """(seconds of each call on this rank, bytes this rank sent during the loop)."""
    buffer = np.zeros(max(1, nbytes // 4), dtype=np.float32)
    for _ in range(WARMUP):
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
    comm.Barrier()
    before = tx_bytes()
    seconds = []
    for _ in range(calls):
        comm.Barrier()
        start = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        seconds.append(time.perf_counter() - start)
    comm.Barrier()  # every rank's sends have left: its peers received them
    return seconds, tx_bytes() - before


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--sizes", type=int, nargs="+", required=True, help="message sizes in bytes")
    p.add_argument("--calls", type=int, nargs="+", required=True,
                   help="timed calls per size: one number, or one per size")
    args = p.parse_args()
    calls = args.calls * len(args.sizes) if len(args.calls) == 1 else args.calls
    comm = MPI.COMM_WORLD
    rows, load_before = [], loadavg()
    for nbytes, count in zip(args.sizes, calls):
        seconds, sent = timed_calls(comm, nbytes, count)
        barrier = barrier_bytes(comm, count)
        every = comm.gather({"seconds": seconds, "tx_bytes": sent, "barrier_tx_bytes": barrier}, root=0)
        if comm.Get_rank() == 0:
            rows.append({"bytes": max(4, nbytes // 4 * 4), "calls": count,
                         "seconds": np.max([r["seconds"] for r in every], axis=0).tolist(),
                         "tx_bytes": [r["tx_bytes"] for r in every],
                         "barrier_tx_bytes": [r["barrier_tx_bytes"] for r in every]})
    hosts = comm.gather(socket.gethostname(), root=0)
    if comm.Get_rank() == 0:
        facts = {"ranks": comm.Get_size(), "hosts": hosts, "mpi": MPI.Get_library_version().splitlines()[0],
                 "algorithm": os.environ.get("MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM", "auto"),
                 "loadavg_before": load_before, "loadavg_after": loadavg(), "sizes": rows}
        with open(args.out, "w") as out:
            json.dump(facts, out)


if __name__ == "__main__":
    main()

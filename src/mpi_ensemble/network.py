"""What an Allreduce costs on a cluster network: the α–β model of MPICH's algorithms, T(m, N) = steps · α + bytes on
the critical path · β, fitted to Allreduces on shaped links in benchmarks/results/network-*/ (benchmarks/network.py,
docs/network.md), and the bytes each rank puts on the wire. The cost figure and the summary's wire bytes read it."""

import math

ALGORITHMS = ("recursive_doubling", "reduce_scatter_allgather", "ring")


def pof2(n):
    """The largest power of two ≤ n."""
    return 1 << (int(n).bit_length() - 1)


def mpich_algorithm(n, nbytes, itemsize=4):
    """The algorithm MPICH 5.0.2 runs between nodes for a built-in commutative operation, from the selection table
    compiled into its libmpi: recursive doubling for at most 8 bytes or fewer elements than pof2(n), otherwise
    reduce-scatter + allgather. (MPIR_CVAR_ALLREDUCE_SHORT_MSG_SIZE no longer enters that table.)"""
    if nbytes <= 8 or nbytes // itemsize < pof2(n):
        return "recursive_doubling"
    return "reduce_scatter_allgather"


def terms(algorithm, n, nbytes):
    """(latency steps, bytes on the critical path) of one Allreduce of `nbytes` over n ranks."""
    if n <= 1:
        return 0, 0.0
    if algorithm == "ring":
        return 2 * (n - 1), 2 * (n - 1) / n * nbytes
    p = pof2(n)
    fold = 2 if n > p else 0  # non-power-of-two: fold in before, unfold after, m bytes each
    levels = int(math.log2(p))
    if algorithm == "recursive_doubling":
        return levels + fold, (levels + fold) * nbytes
    if algorithm == "reduce_scatter_allgather":
        return 2 * levels + fold, (2 * (p - 1) / p + fold) * nbytes
    raise ValueError(f"unknown Allreduce algorithm {algorithm!r}; use one of {ALGORITHMS}")


def allreduce_seconds(alpha, beta, n, nbytes, algorithm=None):
    """Modelled seconds of one Allreduce; `algorithm` None: the one MPICH picks."""
    steps, critical = terms(algorithm or mpich_algorithm(n, nbytes), n, nbytes)
    return steps * alpha + critical * beta


def bytes_sent(algorithm, n, nbytes):
    """Payload bytes each rank sends in one Allreduce, averaged over the n ranks (what the links carry, before
    TCP/IP headers). The ranks that fold in a non-power-of-two world send m once; their partners also send the
    result back."""
    if n <= 1:
        return 0.0
    if algorithm == "ring":
        return 2 * (n - 1) / n * nbytes
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown Allreduce algorithm {algorithm!r}; use one of {ALGORITHMS}")
    p = pof2(n)
    rem = n - p
    levels = int(math.log2(p))
    core = levels * nbytes if algorithm == "recursive_doubling" else 2 * (p - 1) / p * nbytes
    return (p * core + 2 * rem * nbytes) / n


def wire_bytes(n, nbytes, itemsize=4):
    """The bytes one rank sends, on average, in an Allreduce of `nbytes` over n ranks between nodes, by the
    algorithm MPICH picks for it (1.75 × the payload at N = 8 for reduce-scatter + allgather)."""
    return bytes_sent(mpich_algorithm(n, nbytes, itemsize), n, nbytes)

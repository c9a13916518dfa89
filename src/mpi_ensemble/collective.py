"""What the ranks send each other, with mpi4py: one Allreduce of a flat buffer, counted (calls, seconds, payload
bytes and the bytes on the wire), and the flattening, broadcasting and replica check that data-parallel training
(data_parallel.py) and local SGD (local_sgd.py) share."""

import time

import numpy as np

from . import network


class Traffic:
    """What one rank sent through Allreduce: calls, seconds inside them, payload bytes, and the bytes it put on
    the wire by the algorithm MPICH runs between nodes (network.wire_bytes: a model, not a capture)."""

    def __init__(self, comm):
        self.comm, self.count, self.seconds, self.bytes, self.wire_bytes = comm, 0, 0.0, 0, 0.0

    def allreduce(self, buffer):
        """Sum `buffer` over the ranks, in place."""
        from mpi4py import MPI

        began = time.perf_counter()
        self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        self.seconds += time.perf_counter() - began
        self.count += 1
        self.bytes += buffer.nbytes
        self.wire_bytes += network.wire_bytes(self.comm.Get_size(), buffer.nbytes, buffer.itemsize)
        return buffer

    def facts(self):
        return {"allreduce_count": self.count, "allreduce_seconds": self.seconds, "allreduce_bytes": self.bytes,
                "allreduce_wire_bytes": self.wire_bytes}


def flatten(arrays, dtype=np.float32):
    return np.concatenate([np.asarray(a, dtype=dtype).ravel() for a in arrays]) if arrays else np.zeros(0, dtype)


def unflatten(buffer, shapes):
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(buffer[start:start + size].reshape(shape))
        start += size
    if start != len(buffer):
        raise ValueError(f"buffer holds {len(buffer)} values, the shapes need {start}")
    return out


def broadcast_weights(comm, net, root=0):
    weights = net.get_weights()
    flat = flatten(weights)
    comm.Bcast(flat, root=root)
    net.set_weights(unflatten(flat, [w.shape for w in weights]))


def check_identical(checksums):
    """Raise naming the ranks whose weights differ from rank 0's."""
    bad = [r for r, c in enumerate(checksums) if c != checksums[0]]
    if bad:
        raise RuntimeError(
            f"ranks diverged: the weights of rank(s) {bad} differ from rank 0's after training "
            f"(SHA-256 {checksums}); the allreduce did not keep the replicas identical"
        )

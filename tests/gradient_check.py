"""Run under `mpiexec -n N python tests/gradient_check.py OUT`: the data-parallel gradient of one global batch,
against one process's gradient on the same batch (what the allreduce must reproduce).

Rank 0 writes OUT (JSON): the largest absolute difference, the largest gradient value, the ratio of the two
gradients' norms, whether every rank received the same reduced gradient, and whether the two are bitwise equal.
`--local-scale` divides each rank's loss by its own part of the batch instead of the global batch: the mistake
this check exists to catch (the gradient comes out N times too large).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mpi_ensemble import collective, data_parallel, startup, training  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--local-scale", action="store_true")
    args = parser.parse_args()
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    keras = startup.import_keras(1)
    rng = np.random.default_rng(1)
    x = rng.random((64, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 64).astype(np.int64)
    settings = {"epochs": 1, "batch_size": 64, "validation_split": 0.0, "precision": "float32"}
    net = training.initial_model(keras, 0, 0, x.shape[1:], settings)
    trainer = data_parallel.DataParallelEpochs(keras, net, comm, x, y, settings, seed=0)
    collective.broadcast_weights(comm, net)
    part = data_parallel.local_part(np.arange(64), size, rank)
    count = len(part) if args.local_scale else 64
    reduced = trainer.global_gradient(x[part], y[part], count)[:-2]
    same_everywhere = len(set(comm.allgather(training.weights_sha256([reduced])))) == 1
    if rank == 0:
        _, _, grads = trainer._gradients(x, y, np.float32(1 / 64))
        single = collective.flatten([g.numpy() for g in grads])
        Path(args.out).write_text(json.dumps({
            "max_abs_difference": float(np.abs(reduced - single).max()),
            "max_abs_gradient": float(np.abs(single).max()),
            "norm_ratio": float(np.linalg.norm(reduced) / np.linalg.norm(single)),
            "bitwise_equal": bool(np.array_equal(reduced, single)),
            "same_on_every_rank": same_everywhere,
        }))


if __name__ == "__main__":
    main()

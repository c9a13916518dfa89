"""Run under `mpiexec -n N python tests/local_sgd_check.py OUT`: local SGD with plain SGD (no momentum) and an
averaging after every step, against one process that, at every step, averages the N ranks' gradients on the same
batches and takes that step. The two are the same computation up to float32 summation order.

Each rank trains its shard of a small random set through the product's own epoch loop (training.run_epochs with
training.KerasEpochs and local_sgd.WeightAveraging); rank 0 then computes the reference and writes OUT (JSON): the
largest absolute weight difference and the largest weight, for averaging every step (k = 1) and, as the control
that the comparison can fail, every 2 steps.
"""

import json
import sys
from pathlib import Path

import numpy as np

from mpi_ensemble import data, local_sgd, startup, training

LEARNING_RATE = 0.05
SETTINGS = {"epochs": 2, "batch_size": 8, "validation_split": 0.0, "precision": "float32", "steps_per_execution": 1}


def sgd_model(keras):
    return training.initial_model(keras, 0, 0, (28, 28, 1), SETTINGS,
                                  optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE))


def averaged_every(keras, comm, x, y, every):
    net = sgd_model(keras)
    common = local_sgd.common_steps(len(x), comm.Get_size(), SETTINGS)
    start, stop = data.shard_range(len(x), comm.Get_size(), comm.Get_rank())
    averaging = local_sgd.WeightAveraging(comm, every, common, every)
    step = training.KerasEpochs(keras, net, x[start:stop], y[start:stop], SETTINGS, 0, comm.Get_rank(), averaging)
    training.run_epochs(step, SETTINGS, label=f"local_sgd k={every}", rank=comm.Get_rank())
    return net.get_weights()


def averaged_gradients(keras, ranks, x, y):
    """One process: every step, the mean over the ranks of each rank's mean-loss gradient on its batch."""
    import tensorflow as tf

    net = sgd_model(keras)
    loss = keras.losses.SparseCategoricalCrossentropy()
    shards = [data.shard_range(len(x), ranks, r) for r in range(ranks)]
    for epoch in range(SETTINGS["epochs"]):
        orders = [start + training.epoch_order(stop - start, 0, r, epoch) for r, (start, stop) in enumerate(shards)]
        for i in range(0, len(orders[0]), SETTINGS["batch_size"]):
            grads = []
            for order in orders:
                batch = order[i:i + SETTINGS["batch_size"]]
                with tf.GradientTape() as tape:
                    value = loss(y[batch], net(x[batch], training=True))
                grads.append(tape.gradient(value, net.trainable_variables))
            mean = [tf.add_n(list(g)) / len(grads) for g in zip(*grads)]
            net.optimizer.apply_gradients(zip(mean, net.trainable_variables))
    return net.get_weights()


def main():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    keras = startup.import_keras(1)
    rng = np.random.default_rng(3)
    x = rng.random((comm.Get_size() * 40, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, len(x)).astype(np.int64)
    every_step, every_other = averaged_every(keras, comm, x, y, 1), averaged_every(keras, comm, x, y, 2)
    if comm.Get_rank() == 0:
        reference = averaged_gradients(keras, comm.Get_size(), x, y)
        diff = lambda a: max(float(np.abs(u - v).max()) for u, v in zip(a, reference))  # noqa: E731
        Path(sys.argv[1]).write_text(json.dumps({
            "max_abs_difference": diff(every_step), "every_other_step_difference": diff(every_other),
            "max_abs_weight": max(float(np.abs(w).max()) for w in reference)}))


if __name__ == "__main__":
    main()

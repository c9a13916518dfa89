"""Run under `mpiexec -n N python tests/local_sgd_check.py K OUT`: local SGD with plain SGD (no momentum), the
ranks' weights averaged every K local steps, against one process that simulates the N ranks step by step: each
model steps on its own batches, and at the same points the weights become their mean. The two are the same
computation up to float32 summation order.

The set is small and random, its shards uneven (the last rank takes the remainder, so it takes one local step more
per epoch than the others, after the last common one), each epoch ends with a partial batch, a validation part is
held out, and Keras runs several steps per call into the graph when K allows (steps_per_execution = gcd(K, 16)):
the averaging points fall where the product's callback puts them, counted across epochs. Each rank trains through
the product's own epoch loop (training.run_epochs with training.KerasEpochs and local_sgd.WeightAveraging); rank 0
then simulates and writes OUT (JSON): the largest absolute weight difference and the largest weight, for K and, as
the control that the comparison can fail, for the simulation averaging every K + 1 steps instead.
"""

import json
import sys
from pathlib import Path

import numpy as np

from mpi_ensemble import data, local_sgd, startup, training

LEARNING_RATE = 0.05
SETTINGS = {"epochs": 2, "batch_size": 8, "validation_split": 0.25, "precision": "float32"}


def sgd_model(keras, spe):
    return training.initial_model(keras, 0, 0, (28, 28, 1), {**SETTINGS, "steps_per_execution": spe},
                                  optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE))


def distributed(keras, comm, x, y, every):
    """The product's local SGD on this rank's shard."""
    net = sgd_model(keras, training.local_steps(every))
    common = local_sgd.common_steps(len(x), comm.Get_size(), SETTINGS)
    start, stop = data.shard_range(len(x), comm.Get_size(), comm.Get_rank())
    averaging = local_sgd.WeightAveraging(comm, every, common, every, SETTINGS["epochs"])
    step = training.KerasEpochs(keras, net, x[start:stop], y[start:stop], SETTINGS, 0, comm.Get_rank(), averaging)
    training.run_epochs(step, SETTINGS, label=f"local_sgd k={every}", rank=comm.Get_rank())
    return net.get_weights()


def simulated(keras, ranks, x, y, every, spe):
    """N models in one process: every call of `spe` steps, each model steps on its own batches; after it, as
    the product's callback does, the weights are averaged when the common local steps cross a multiple of `every`."""
    import tensorflow as tf

    nets = [sgd_model(keras, 1) for _ in range(ranks)]
    loss = keras.losses.SparseCategoricalCrossentropy()
    batch = SETTINGS["batch_size"]
    shards = [data.shard_range(len(x), ranks, r) for r in range(ranks)]
    cuts = [data.validation_split_index(stop - start, SETTINGS["validation_split"]) for start, stop in shards]
    common = local_sgd.common_steps(len(x), ranks, SETTINGS)

    def average():
        mean = [np.mean(layer, axis=0) for layer in zip(*(n.get_weights() for n in nets))]
        for net in nets:
            net.set_weights(mean)

    for epoch in range(SETTINGS["epochs"]):
        orders = [start + training.epoch_order(cut, 0, r, epoch) for r, ((start, _), cut) in enumerate(zip(shards, cuts))]
        steps = [-(-cut // batch) for cut in cuts]
        done = last = epoch * common
        for call in range(max(-(-s // spe) for s in steps)):
            for net, order, own in zip(nets, orders, steps):
                for s in range(call * spe, min((call + 1) * spe, own)):
                    part = order[s * batch:(s + 1) * batch]
                    with tf.GradientTape() as tape:
                        value = loss(y[part], net(x[part], training=True))
                    net.optimizer.apply_gradients(zip(tape.gradient(value, net.trainable_variables),
                                                      net.trainable_variables))
            now = done + min((call + 1) * spe, common)
            if now // every > last // every:
                average()
            last = now
    if any(not all(np.array_equal(a, b) for a, b in zip(nets[0].get_weights(), n.get_weights())) for n in nets):
        average()
    return nets[0].get_weights()


def main():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    every = int(sys.argv[1])
    keras = startup.import_keras(1)
    rng = np.random.default_rng(3)
    # Shards of 43 images and the last one more per extra rank: 32 training images each (4 full batches), the
    # last rank 33 (a fifth step of one image).
    x = rng.random((comm.Get_size() * 44 - 1, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, len(x)).astype(np.int64)
    weights = distributed(keras, comm, x, y, every)
    if comm.Get_rank() == 0:
        spe = training.local_steps(every)
        reference = simulated(keras, comm.Get_size(), x, y, every, spe)
        control = simulated(keras, comm.Get_size(), x, y, every + 1, spe)
        diff = lambda a, b: max(float(np.abs(u - v).max()) for u, v in zip(a, b))  # noqa: E731
        Path(sys.argv[2]).write_text(json.dumps({
            "max_abs_difference": diff(weights, reference), "control_difference": diff(weights, control),
            "max_abs_weight": max(float(np.abs(w).max()) for w in reference), "steps_per_execution": spe,
            "common_steps": local_sgd.common_steps(len(x), comm.Get_size(), SETTINGS)}))


if __name__ == "__main__":
    main()

"""What the ranks send each other, with mpi4py: the epoch step of synchronous data-parallel training (gradients
averaged every step), the weight averaging of local SGD, and the bookkeeping of both (allreduces, seconds, bytes).

Data-parallel training does what Horovod does, without Horovod (it no longer builds against TensorFlow >= 2.16):

- rank 0's initial weights are broadcast, so every rank starts from the same model;
- **global batch semantics**: `batch_size` is the *global* batch, as in the sequential run. Every epoch all ranks
  draw the same permutation of the training images (seed + epoch), cut it into global batches of `batch_size`,
  and rank r takes its part of each (np.array_split: sizes differ by at most one). So an epoch has exactly as
  many optimizer steps as the sequential `fit()`, and each step is the same mean gradient over 64 images;
- each rank computes the *sum* of its images' losses divided by the global batch's size, and one
  `MPI.Allreduce(SUM)` of the flattened gradients gives every rank that global mean gradient;
- every rank applies it with its own Adam optimizer: same start, same gradients, same state, same weights.
  The job compares the ranks' weight checksums at the end and fails if they differ;
- `validation_split` keeps Keras' meaning: the last `validation_split` of the training set is held out (never
  shuffled in); each epoch's validation loss and accuracy are computed by all ranks on disjoint parts of it and
  summed with an Allreduce.

Local SGD (`WeightAveraging`) leaves each rank's training to Keras (training.KerasEpochs) and averages the weights,
one Allreduce of all of them, after every k-th local step of an epoch, or at each epoch's end, and once more at the
end of training where the ranks' weights still differ. Each rank keeps its own Adam state: averaging it as well
would send three times the bytes per averaging, and the moments describe each rank's own data.
"""

import hashlib
import math
import time

import numpy as np

from . import checkpoint, data


class Traffic:
    """What one rank sent through Allreduce: calls, seconds inside them, payload bytes."""

    def __init__(self, comm):
        self.comm, self.count, self.seconds, self.bytes = comm, 0, 0.0, 0

    def allreduce(self, buffer):
        """Sum `buffer` over the ranks, in place."""
        from mpi4py import MPI

        began = time.perf_counter()
        self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        self.seconds += time.perf_counter() - began
        self.count += 1
        self.bytes += buffer.nbytes
        return buffer

    def facts(self):
        return {"allreduce_count": self.count, "allreduce_seconds": self.seconds, "allreduce_bytes": self.bytes}


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


# --- data-parallel ----------------------------------------------------------------------------------------------


def epoch_batches(n_train, batch_size, seed, epoch):
    """The global batches of one epoch: the same shuffled index arrays on every rank."""
    order = np.random.default_rng([seed, epoch]).permutation(n_train)
    return [order[i:i + batch_size] for i in range(0, n_train, batch_size)]


def local_part(indices, ranks, rank):
    """Rank r's part of a global batch (sorted: the order inside a summed gradient does not matter)."""
    return np.sort(np.array_split(np.asarray(indices), ranks)[rank])


class DataParallelEpochs:
    """The epoch step of data-parallel training: local gradient (compiled), one flat Allreduce, Adam update
    (compiled), for every global batch; then the validation, scored by all ranks together."""

    def __init__(self, keras, net, comm, x, y, settings, seed):
        import tensorflow as tf

        self.net, self.comm, self.x, self.y, self.seed = net, comm, x, y, seed
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.traffic = Traffic(comm)
        self.variables = net.trainable_variables
        self.n_values = sum(int(np.prod(v.shape)) for v in self.variables)
        # The compiled optimizer (the paper's "adam", Keras' defaults), so the saved model keeps its trained state.
        self.optimizer = net.optimizer
        self.optimizer.build(self.variables)
        self.loss = keras.losses.SparseCategoricalCrossentropy(reduction="sum")
        spec_x = tf.TensorSpec((None, *net.input_shape[1:]), tf.float32)
        spec_y = tf.TensorSpec((None,), tf.int64)
        scale = tf.TensorSpec((), tf.float32)
        self._gradients = tf.function(self._local_gradients, input_signature=[spec_x, spec_y, scale])
        self._apply = tf.function(self._apply_flat, input_signature=[tf.TensorSpec((None,), tf.float32)])
        self._evaluate = tf.function(self._evaluate_batch, input_signature=[spec_x, spec_y])
        self.batch_size = settings["batch_size"]
        self.cut = data.validation_split_index(len(x), settings["validation_split"])
        self.steps_per_epoch = len(epoch_batches(self.cut, self.batch_size, seed, 0))
        # Per epoch: this rank's parts of the global batches, and of the held-out images.
        self.train_images = sum(len(local_part(b, self.size, self.rank))
                                for b in epoch_batches(self.cut, self.batch_size, seed, 0))
        self.validation_part = np.array_split(np.arange(self.cut, len(x)), self.size)[self.rank]
        self.validation_images = len(self.validation_part)

    def _local_gradients(self, x, y, scale):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            probs = self.net(x, training=True)
            loss = self.loss(y, probs) * scale
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=1), y), tf.float32))
        return loss, correct, tape.gradient(loss, self.variables)

    def _apply_flat(self, flat):
        import tensorflow as tf

        grads, start = [], 0
        for v in self.variables:
            size = int(np.prod(v.shape))
            grads.append(tf.reshape(flat[start:start + size], v.shape))
            start += size
        self.optimizer.apply_gradients(zip(grads, self.variables))

    def _evaluate_batch(self, x, y):
        import tensorflow as tf

        probs = self.net(x, training=False)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=1), y), tf.float32))
        return self.loss(y, probs), correct

    def global_gradient(self, x, y, global_count):
        """This rank's part of a global batch in, the global batch's mean gradient out (flat, float32), followed
        by the global batch's summed loss / count and its correct predictions: one Allreduce."""
        buffer = np.zeros(self.n_values + 2, dtype=np.float32)
        if len(x):
            loss, correct, grads = self._gradients(x, y, np.float32(1.0 / global_count))
            buffer[:-2] = flatten([g.numpy() for g in grads])
            buffer[-2:] = (loss.numpy(), correct.numpy())
        return self.traffic.allreduce(buffer)

    def step(self, x, y, global_count):
        """One synchronous step; returns the global batch's (summed loss / count, correct images)."""
        buffer = self.global_gradient(x, y, global_count)
        self._apply(buffer[:-2])
        return float(buffer[-2]), float(buffer[-1])

    def resume(self, store):
        """Rank 0 loads the checkpoint (if any) and every rank takes it: same weights, same Adam state, same epoch;
        without one, every rank takes rank 0's initial weights."""
        state = checkpoint.load_state(store, self.net) if self.rank == 0 else None
        state = self.comm.bcast(state, root=0)
        if state is None:
            broadcast_weights(self.comm, self.net)
        elif self.rank != 0:
            checkpoint.restore(self.net, state)
        return state

    def wait_for_ranks(self):
        self.comm.Barrier()  # rank 0 may still be writing the last epoch's checkpoint

    def train_epoch(self, epoch):
        loss_sum = correct_sum = 0.0
        for batch in epoch_batches(self.cut, self.batch_size, self.seed, epoch):
            part = local_part(batch, self.size, self.rank)
            loss, correct = self.step(self.x[part], self.y[part], len(batch))
            loss_sum, correct_sum = loss_sum + loss * len(batch), correct_sum + correct
        logs = {"loss": loss_sum / self.cut, "accuracy": correct_sum / self.cut}
        if len(self.x) > self.cut:
            logs["val_loss"], logs["val_accuracy"] = self.validate()
        return logs

    def validate(self, batch=1024):
        """(loss, accuracy) on the held-out x[cut:], each rank scoring its part, summed by an Allreduce."""
        x, y = self.x[self.validation_part], self.y[self.validation_part]
        totals = np.zeros(2, dtype=np.float64)
        for i in range(0, len(x), batch):
            totals += [float(v) for v in self._evaluate(x[i:i + batch], y[i:i + batch])]
        self.traffic.allreduce(totals)
        held_out = len(self.x) - self.cut
        return totals[0] / held_out, totals[1] / held_out

    def finish(self):
        pass

    def facts(self):
        return {"steps_per_epoch": self.steps_per_epoch, "averagings_per_epoch": self.steps_per_epoch,
                "global_train_images": self.cut, **self.traffic.facts()}


# --- local SGD -------------------------------------------------------------------------------------------------


def common_steps(n_train, ranks, settings):
    """Local steps per epoch that every rank takes: the shards of `data.shard_range` differ by the last rank's
    remainder, so the last rank may take one step more, which is never an averaging point."""
    steps = []
    for rank in range(ranks):
        start, stop = data.shard_range(n_train, ranks, rank)
        cut = data.validation_split_index(stop - start, settings["validation_split"])
        steps.append(-(-cut // settings["batch_size"]))
    return min(steps)


def parse_period(text):
    """A period as the command line and paths write it: 'end' (None: average once, at the end), 'epoch', or the
    local steps between two averagings (a positive integer)."""
    if text in (None, "end"):
        return None
    if text == "epoch":
        return "epoch"
    if str(text).isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(f"period must be a positive number of steps, 'epoch' or 'end', not {text!r}")


def averagings_per_epoch(period, common):
    if period is None:
        return 0
    return 1 if period == "epoch" else common // period


class WeightAveraging:
    """Local SGD's communication: after every `every`-th local step of an epoch (within the `common` steps every
    rank takes), at each epoch's end (`every` None and `at_epoch_end`), and at the end of training where the
    ranks' weights still differ, every rank's weights become the mean of all ranks' weights."""

    def __init__(self, comm, every, common, period):
        self.comm, self.every, self.common, self.period = comm, every, common, period
        self.traffic = Traffic(comm)

    def average(self, net):
        weights = net.get_weights()
        flat = self.traffic.allreduce(flatten(weights))
        flat /= np.float32(self.comm.Get_size())
        net.set_weights(unflatten(flat, [w.shape for w in weights]))

    def callback(self, keras):
        averaging = self

        class AverageWeights(keras.callbacks.Callback):
            """Keras reports the last step of each call into the graph (steps_per_execution divides `every`)."""

            def on_train_batch_end(self, batch, logs=None):
                if averaging.every and batch < averaging.common and (batch + 1) % averaging.every == 0:
                    averaging.average(self.model)

        return AverageWeights()

    def end_epoch(self, net):
        if self.period == "epoch":
            self.average(net)

    def finish(self, net):
        digest = hashlib.sha256(flatten(net.get_weights()).tobytes()).hexdigest()
        if len(set(self.comm.allgather(digest))) > 1:
            self.average(net)

    def resume(self, store, net):
        """The latest epoch every rank has a checkpoint of (a rank stopped while writing its newest one still has
        the one before); none: every rank starts from rank 0's initial weights, the shared start."""
        saved = self.comm.allgather(set(store.saved_epochs()) if store else set())
        common = max(set.intersection(*saved), default=0)
        state = checkpoint.load_state(store, net, common) if common else None
        if self.comm.allreduce(int(bool(common) and state is None)):
            raise RuntimeError(f"a rank could not restore its checkpoint of epoch {common}; delete "
                               f"{store.folder.parent} to train this job from the start")
        if state is None:
            broadcast_weights(self.comm, net)
        return state

    def facts(self):
        return {"steps_per_epoch": self.common, "averagings_per_epoch": averagings_per_epoch(self.period, self.common),
                "period": "end" if self.period is None else self.period, **self.traffic.facts()}


# --- what an Allreduce costs on a network: the α–β model of MPICH's algorithms ------------------------------------
# T(m, N) = steps · α + bytes on the critical path · β, fitted to Allreduces on shaped links in
# benchmarks/results/network-*/ (benchmarks/network.py, docs/network.md); the cost figure draws it.

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



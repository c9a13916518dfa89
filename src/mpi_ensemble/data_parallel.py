"""Synchronous data-parallel training, the epoch step that training.run_epochs drives (gradients averaged over the
ranks every step). It does what Horovod does, without Horovod (which no longer builds against TensorFlow >= 2.16):

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
"""

import numpy as np

from . import checkpoint, data
from .collective import Traffic, broadcast_weights, flatten


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

    def __init__(self, keras, net, comm, x, y, settings, seed, environment=None, global_batch=None):
        import tensorflow as tf

        self.net, self.comm, self.x, self.y, self.seed = net, comm, x, y, seed
        self.environment = environment
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
        self.batch_size = global_batch or settings["batch_size"]
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
        without one, every rank takes rank 0's initial weights. Every rank compares the environment it runs in
        (`self.environment`) with the one the checkpoint was made in: a change on any rank makes the resume
        inexact."""
        state = checkpoint.load_state(store, self.net) if self.rank == 0 else None
        state = self.comm.bcast(state, root=0)
        if state is None:
            broadcast_weights(self.comm, self.net)
            return None
        if self.rank != 0:
            checkpoint.restore(self.net, state)
        mine = checkpoint.differences(state.environment, self.environment) if self.environment else []
        state.environment_changes = [f"rank {r}: {change}" for r, found in enumerate(self.comm.allgather(mine))
                                     for change in found]
        return state

    def warm_up(self):
        """Trace the gradient, update and validation functions on a few of this rank's images, no Allreduce, then
        put the model back as it was (training.kept_state): the first epoch costs what the others cost."""
        from .training import kept_state

        x, y = self.x[:8], self.y[:8]
        with kept_state(self.net):
            self._gradients(x, y, np.float32(1.0))
            self._apply(np.zeros(self.n_values, dtype=np.float32))
            self._evaluate(x, y)

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
        """(loss, accuracy) on the held-out images, each rank scoring its part, summed by an Allreduce."""
        x, y = self.x[self.validation_part], self.y[self.validation_part]
        totals = np.zeros(3, dtype=np.float64)
        for i in range(0, len(x), batch):
            totals[:2] += [float(v) for v in self._evaluate(x[i:i + batch], y[i:i + batch])]
        totals[2] = len(x)
        self.traffic.allreduce(totals)
        return totals[0] / totals[2], totals[1] / totals[2]

    def delivered(self, logs):
        """The replicas are the model: its validation accuracy."""
        return logs.get("val_accuracy")

    def finish(self):
        pass

    def facts(self):
        return {"steps_per_epoch": self.steps_per_epoch, "averagings_per_epoch": self.steps_per_epoch,
                "batch_per_rank": -(-self.batch_size // self.size), "global_batch": self.batch_size,
                "global_train_images": self.cut, **self.traffic.facts()}


class ShardedDataParallelEpochs(DataParallelEpochs):
    """Synchronous SGD at the per-rank batch on the ranks' own shards, the data local SGD trains on: every step
    each rank takes its next `batch_size` images in the same epoch order local SGD draws (training.epoch_order of
    seed, rank, epoch), and one Allreduce gives every rank the mean gradient over the N·batch_size images (fewer
    in an epoch's last step). Every rank takes the `common` steps all can (local_sgd.common_steps: the last rank's
    extra step of its remainder is left out). The validation is each rank's own held-out part, summed."""

    def __init__(self, keras, net, comm, x, y, settings, seed, environment=None, common=None, shard_cuts=None):
        super().__init__(keras, net, comm, x, y, settings, seed, environment)
        self.batch_size, self.common = settings["batch_size"], common
        self.shard_cuts = shard_cuts  # every rank's training images, to know each step's global count
        self.steps_per_epoch = common
        self.train_images = min(self.cut, common * self.batch_size)
        self.validation_part = np.arange(self.cut, len(x))
        self.validation_images = len(self.validation_part)

    def global_count(self, step):
        return sum(min(self.batch_size, max(0, cut - step * self.batch_size)) for cut in self.shard_cuts)

    def train_epoch(self, epoch):
        from .training import epoch_order

        order = epoch_order(self.cut, self.seed, self.rank, epoch)
        loss_sum = correct_sum = images = 0.0
        for i in range(self.common):
            part = np.sort(order[i * self.batch_size:(i + 1) * self.batch_size])
            count = self.global_count(i)
            loss, correct = self.step(self.x[part], self.y[part], count)
            loss_sum, correct_sum, images = loss_sum + loss * count, correct_sum + correct, images + count
        logs = {"loss": loss_sum / images, "accuracy": correct_sum / images}
        if self.validation_images:
            logs["val_loss"], logs["val_accuracy"] = self.validate()
        return logs

    def facts(self):
        return {**super().facts(), "batch_per_rank": self.batch_size, "global_batch": self.batch_size * self.size,
                "global_train_images": sum(min(c, self.common * self.batch_size) for c in self.shard_cuts)}



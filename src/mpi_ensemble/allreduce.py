"""Synchronous data-parallel training with mpi4py: N ranks, one model, gradients averaged every step.

What Horovod does, without Horovod (it no longer builds against TensorFlow >= 2.16):

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
  shuffled in); the validation loss and accuracy of each epoch are computed by all ranks on disjoint parts of it
  and summed with an Allreduce, so the timed loop does the same work as `fit()` (training plus validation).
"""

import time

import numpy as np

from . import data, faults, model, records

def epoch_batches(n_train, batch_size, seed, epoch):
    """The global batches of one epoch: the same shuffled index arrays on every rank."""
    order = np.random.default_rng([seed, epoch]).permutation(n_train)
    return [order[i:i + batch_size] for i in range(0, n_train, batch_size)]


def local_part(indices, ranks, rank):
    """Rank r's part of a global batch (sorted: the order inside a summed gradient does not matter)."""
    return np.sort(np.array_split(np.asarray(indices), ranks)[rank])


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


def check_identical(checksums):
    """Raise naming the ranks whose weights differ from rank 0's."""
    bad = [r for r, c in enumerate(checksums) if c != checksums[0]]
    if bad:
        raise RuntimeError(
            f"data-parallel ranks diverged: the weights of rank(s) {bad} differ from rank 0's after training "
            f"(SHA-256 {checksums}); the allreduce did not keep the replicas identical"
        )


class Trainer:
    """The custom loop: local gradient (compiled), one flat Allreduce, Adam update (compiled)."""

    def __init__(self, keras, net, comm):
        import tensorflow as tf

        self.net, self.comm = net, comm
        self.variables = net.trainable_variables
        self.size = sum(int(np.prod(v.shape)) for v in self.variables)
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
        from mpi4py import MPI

        buffer = np.zeros(self.size + 2, dtype=np.float32)
        if len(x):
            loss, correct, grads = self._gradients(x, y, np.float32(1.0 / global_count))
            buffer[:-2] = flatten([g.numpy() for g in grads])
            buffer[-2:] = (loss.numpy(), correct.numpy())
        self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        return buffer

    def step(self, x, y, global_count, perturb=0.0):
        """One synchronous step; returns the global batch's (summed loss / count, correct images)."""
        buffer = self.global_gradient(x, y, global_count)
        if perturb:
            buffer[:-2] += np.float32(perturb)
        self._apply(buffer[:-2])
        return float(buffer[-2]), float(buffer[-1])

    def evaluate(self, x, y, batch=1024):
        """(summed loss, correct) over this rank's part of a held-out set."""
        loss = correct = 0.0
        for i in range(0, len(x), batch):
            part_loss, part_correct = self._evaluate(x[i:i + batch], y[i:i + batch])
            loss, correct = loss + float(part_loss), correct + float(part_correct)
        return loss, correct

    def broadcast_weights(self, root=0):
        weights = self.net.get_weights()
        flat = flatten(weights)
        self.comm.Bcast(flat, root=root)
        self.net.set_weights(unflatten(flat, [w.shape for w in weights]))


def validate(trainer, comm, x, y, cut):
    """(loss, accuracy) on the held-out x[cut:], each rank scoring its disjoint part, summed by an Allreduce."""
    from mpi4py import MPI

    part = np.array_split(np.arange(cut, len(x)), comm.Get_size())[comm.Get_rank()]
    val = np.array(trainer.evaluate(x[part], y[part]), dtype=np.float64)
    comm.Allreduce(MPI.IN_PLACE, val, op=MPI.SUM)
    return float(val[0]) / (len(x) - cut), float(val[1]) / (len(x) - cut)


def resume(trainer, comm, store):
    """Rank 0 loads the checkpoint (if any) and every rank takes it: same weights, same Adam state, same epoch."""
    from . import training

    state = training.load_state(store, trainer.net) if comm.Get_rank() == 0 else None
    state = comm.bcast(state, root=0)
    if state is None:
        trainer.broadcast_weights()
    elif comm.Get_rank() != 0:
        training.restore(trainer.net, state)
    return state


def train(keras, comm, x, y, seed, settings, store=None, label="data_parallel"):
    """The timed loop, resumed from rank 0's checkpoint and checkpointed by rank 0 after every epoch; returns the
    model and facts shaped like training.fit's."""
    from . import checkpoint, training

    rank, size = comm.Get_rank(), comm.Get_size()
    keras.utils.set_random_seed(seed)
    net = model.build_model(keras, input_shape=x.shape[1:])
    trainer = Trainer(keras, net, comm)
    state = resume(trainer, comm, store)
    start_epoch, rows = (state.epoch, training.resumed_rows(state)) if state else (0, [])
    cut = data.validation_split_index(len(x), settings["validation_split"])
    perturb = faults.divergence(rank)
    epochs = settings["epochs"]
    epoch_seconds, checkpoint_seconds = [], 0.0
    comm.Barrier()
    start, cpu_start = time.perf_counter(), records.cpu_seconds()
    for epoch in range(start_epoch, epochs):
        epoch_start, loss_sum, correct_sum, images = time.perf_counter(), 0.0, 0.0, 0
        faults.hold_if_due(rank, epoch, start_epoch)
        for batch in epoch_batches(cut, settings["batch_size"], seed, epoch):
            part = local_part(batch, size, rank)
            images += len(part)
            loss, correct = trainer.step(x[part], y[part], len(batch), perturb)
            loss_sum, correct_sum = loss_sum + loss * len(batch), correct_sum + correct
        logs = {"loss": loss_sum / cut, "accuracy": correct_sum / cut}
        if len(x) > cut:
            logs["val_loss"], logs["val_accuracy"] = validate(trainer, comm, x, y, cut)
        epoch_seconds.append(time.perf_counter() - epoch_start)
        rows.append(training.epoch_row(rank, epoch, epochs, logs, epoch_seconds[-1], images))
        print(training.progress_line(label, rows[-1]), flush=True)
        if store:
            saved = time.perf_counter()
            store.put(checkpoint.State(epoch + 1, net.get_weights(), training.optimizer_state(net), rows))
            checkpoint_seconds += time.perf_counter() - saved
    batches = epoch_batches(cut, settings["batch_size"], seed, 0)
    facts = {
        # Checkpoint writes (rank 0's, between epochs) are timed apart, as in training.fit.
        "fit_seconds": time.perf_counter() - start - checkpoint_seconds,
        "epoch_seconds": epoch_seconds,
        "fit_cpu_seconds": records.cpu_seconds() - cpu_start,
        "checkpoint_seconds": checkpoint_seconds,
        "resumed_from_epoch": start_epoch,
        # The images this rank computed gradients for, per epoch (its parts of the global batches).
        "train_images": sum(len(local_part(b, size, rank)) for b in batches),
        "global_train_images": cut,
        "validation_images": len(x) - cut,
        "history": training.history_of(rows),
        "history_rows": rows,
        "steps_per_epoch": len(batches),
    }
    return net, facts

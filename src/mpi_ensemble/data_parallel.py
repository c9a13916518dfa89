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
  `weights_sha256` in each rank's record proves it, and the job fails if the ranks disagree;
- `validation_split` keeps Keras' meaning: the last `validation_split` of the training set is held out (never
  shuffled in); the validation loss and accuracy of each epoch are computed by all ranks on disjoint parts of it
  and summed with an Allreduce, so the timed loop does the same work as `fit()` (training plus validation).
"""

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from . import data, io, metrics, model, provenance, runtime, training

DIVERGE_ENV = "MPI_ENSEMBLE_DP_DIVERGE_RANK"  # test-only: this rank perturbs its update, so it must be caught


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


def weights_sha256(weights):
    """Checksum of the exact float32 bytes of all weights (in layer order)."""
    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()


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

        self.tf, self.net, self.comm = tf, net, comm
        self.variables = net.trainable_variables
        self.shapes = [tuple(v.shape) for v in self.variables]
        # The compiled optimizer (the paper's "adam", Keras' defaults), so the saved model keeps its trained state.
        self.optimizer = net.optimizer
        self.optimizer.build(self.variables)
        self.loss = keras.losses.SparseCategoricalCrossentropy(reduction="sum")
        spec_x = tf.TensorSpec((None, *net.input_shape[1:]), tf.float32)
        spec_y = tf.TensorSpec((None,), tf.int64)

        @tf.function(input_signature=[spec_x, spec_y, tf.TensorSpec((), tf.float32)])
        def gradients(x, y, scale):
            with tf.GradientTape() as tape:
                probs = net(x, training=True)
                loss = self.loss(y, probs) * scale
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=1), y), tf.float32))
            return loss, correct, tape.gradient(loss, self.variables)

        @tf.function(input_signature=[tf.TensorSpec((None,), tf.float32)])
        def apply(flat):
            grads, start = [], 0
            for v in self.variables:
                size = int(np.prod(v.shape))
                grads.append(tf.reshape(flat[start:start + size], v.shape))
                start += size
            self.optimizer.apply_gradients(zip(grads, self.variables))

        @tf.function(input_signature=[spec_x, spec_y])
        def evaluate(x, y):
            probs = net(x, training=False)
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=1), y), tf.float32))
            return self.loss(y, probs), correct

        self._gradients, self._apply, self._evaluate = gradients, apply, evaluate
        self.size = sum(int(np.prod(s)) for s in self.shapes)

    def step(self, x, y, global_count, perturb=0.0):
        """One synchronous step; returns the global batch's (summed loss / count, correct images)."""
        from mpi4py import MPI

        buffer = np.zeros(self.size + 2, dtype=np.float32)
        if len(x):
            loss, correct, grads = self._gradients(x, y, np.float32(1.0 / global_count))
            buffer[:-2] = flatten([g.numpy() for g in grads])
            buffer[-2:] = (loss.numpy(), correct.numpy())
        self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        if perturb:
            buffer[:-2] += np.float32(perturb)
        self._apply(buffer[:-2])
        return float(buffer[-2]), float(buffer[-1])

    def evaluate(self, x, y, batch=1024):
        """(summed loss, correct) over this rank's part of a held-out set."""
        loss = correct = 0.0
        for i in range(0, len(x), batch):
            l, c = self._evaluate(x[i:i + batch], y[i:i + batch])
            loss, correct = loss + float(l), correct + float(c)
        return loss, correct

    def broadcast_weights(self, root=0):
        weights = self.net.get_weights()
        flat = flatten(weights)
        self.comm.Bcast(flat, root=root)
        self.net.set_weights(unflatten(flat, [w.shape for w in weights]))


def train(keras, comm, x, y, seed, settings):
    """The timed loop; returns the model and facts shaped like training.fit's."""
    from mpi4py import MPI

    rank, size = comm.Get_rank(), comm.Get_size()
    keras.utils.set_random_seed(seed)
    net = model.build_model(keras, input_shape=x.shape[1:])
    trainer = Trainer(keras, net, comm)
    trainer.broadcast_weights()
    cut = data.validation_split_index(len(x), settings["validation_split"])
    val_part = np.array_split(np.arange(cut, len(x)), size)[rank]
    perturb = 1e-3 if os.environ.get(DIVERGE_ENV) == str(rank) else 0.0
    history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    local_images = 0
    comm.Barrier()
    start = time.perf_counter()
    for epoch in range(settings["epochs"]):
        loss_sum = correct_sum = 0.0
        for batch in epoch_batches(cut, settings["batch_size"], seed, epoch):
            part = local_part(batch, size, rank)
            local_images += len(part)
            loss, correct = trainer.step(x[part], y[part], len(batch), perturb)
            loss_sum += loss * len(batch)
            correct_sum += correct
        history["loss"].append(loss_sum / cut)
        history["accuracy"].append(correct_sum / cut)
        if len(x) > cut:
            val = np.array(trainer.evaluate(x[val_part], y[val_part]), dtype=np.float64)
            comm.Allreduce(MPI.IN_PLACE, val, op=MPI.SUM)
            history["val_loss"].append(float(val[0]) / (len(x) - cut))
            history["val_accuracy"].append(float(val[1]) / (len(x) - cut))
    fit_seconds = time.perf_counter() - start
    facts = {
        "fit_seconds": fit_seconds,
        "train_images": cut,
        "train_images_this_rank_per_epoch": local_images // settings["epochs"],
        "validation_images": len(x) - cut,
        "history": {k: v for k, v in history.items() if v},
        "steps_per_epoch": len(epoch_batches(cut, settings["batch_size"], seed, 0)),
    }
    return net, facts


def run(args):
    """One rank (under mpiexec): train, check the replicas agree, rank 0 saves and scores the model."""
    from mpi4py import MPI

    started = time.perf_counter()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    threads = runtime.parse_threads(args.threads)
    keras = training.import_keras(threads, getattr(args, "precision", "float32"))
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "validation_split": args.validation_split,
                "batch_semantics": "global batch split across ranks", "precision": getattr(args, "precision", "float32")}
    x, y = data.load_arrays(args.train_x, args.train_y)
    net, facts = train(keras, comm, x, y, args.seed, settings)
    checksum = weights_sha256(net.get_weights())
    checksums = comm.allgather(checksum)
    out = Path(args.out_dir)
    record = training.timing_record(
        threads, started, facts, method="data_parallel", seed=args.seed, ranks=size, rank=rank,
        settings=settings, mpi_library=provenance.mpi_library(), job_cores=args.job_cores,
        oversubscribed=size * (threads or 1) > args.job_cores, weights_sha256=checksum,
    )
    io.write_json(out / f"rank{rank}.json", record)
    records = comm.gather(record, root=0)
    print(f"data_parallel rank {rank}/{size}: fit {facts['fit_seconds']:.2f} s, weights {checksum[:12]}",
          flush=True)
    if rank == 0:
        check_identical(checksums)
        training.save_model(net, out / "model.keras")
        test_x, test_y = data.load_arrays(args.test_x, args.test_y)
        scores = metrics.classification_metrics(test_y, training.predict(net, test_x).argmax(axis=1), 10)
        fits = [r["fit_seconds"] for r in records]
        io.write_json(out / "record.json", {
            "method": "data_parallel", "ranks": size, "seed": args.seed, "metrics": scores, "ties": 0,
            "oversubscribed": record["oversubscribed"], "member_accuracy": [scores["accuracy"]],
            "weights_sha256": checksums, "weights_identical": True, "settings": settings,
            "history": facts["history"], "steps_per_epoch": facts["steps_per_epoch"],
            "timing": {
                "fit_seconds_mean": float(np.mean(fits)), "fit_seconds_max": float(max(fits)),
                "fit_seconds_min": float(min(fits)),
                "peak_rss_mb_max": float(max(r["peak_rss_mb"] for r in records)),
                "train_images_per_rank": [r["train_images_this_rank_per_epoch"] for r in records],
                "threads_per_rank": record["thread_settings"]["threads"],
                "affinity": [r["thread_settings"]["affinity"] for r in records],
            },
            "host": {k: record[k] for k in ("host", "cpu_model", "cpu_count", "versions", "scheduler")},
            "mpi_library": record["mpi_library"],
        })
        print(f"data_parallel ranks={size} seed={args.seed}: accuracy {scores['accuracy']:.4f}, "
              f"{facts['steps_per_epoch']} steps/epoch, replicas identical", flush=True)
    comm.Barrier()

"""The training stage: the sequential baseline, the ensemble's MPI ranks and data-parallel training.

All three share `fit`'s conventions (Keras' validation_split cut, seeded shuffles, only training timed) and write
the same rank record (records.rank_record); the MPI ranks of both kinds start through one scaffold (`RankJob`).
"""

import hashlib
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from . import allreduce, atomic, data, faults, metrics, model, records, runtime

CLASSES = 10
# Train steps per call into the compiled graph: the same batches and updates, fewer Python round trips.
STEPS_PER_EXECUTION = 16


class ModelFileError(ValueError):
    pass


# --- fit: the shared training call ---------------------------------------------------------------------------


def epoch_timer(keras):
    """A callback whose `seconds` lists each epoch's wall time: the first one carries the graph tracing, the rest
    are the steady state."""

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self._start = [], None

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def tf_dataset(x, y, batch_size, seed=None):
    """Batches of (x, y) as a tf.data pipeline: a fresh shuffle each epoch when `seed` is given, each batch gathered
    by index straight from the (memory-mapped) shard arrays, prefetched so the next batch is ready when the step ends.

    Only the indices are shuffled, and the images are never copied into a TensorFlow constant: converting the shard
    to a tensor costs twice its size in anonymous memory (≈ 300 MB more peak RSS for 48k images), while the NumPy
    gather of one batch takes ≈ 0.4 ms on the pipeline's own thread.
    """
    import tensorflow as tf

    x_dtype, y_dtype = tf.as_dtype(x.dtype), tf.as_dtype(y.dtype)

    def take(idx):
        return x[idx], y[idx]

    def gather(idx):
        images, labels = tf.numpy_function(take, [idx], (x_dtype, y_dtype), stateful=False)
        return tf.ensure_shape(images, (None, *x.shape[1:])), tf.ensure_shape(labels, (None, *y.shape[1:]))

    indices = tf.data.Dataset.range(len(x))
    if seed is not None:
        indices = indices.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    pipeline = indices.batch(batch_size).map(gather, num_parallel_calls=1, deterministic=True).prefetch(2)
    return pipeline.with_options(pipeline_options(tf))


def pipeline_options(tf):
    """tf.data options without autotuning. Its background tuner left a 1-thread rank's core idle for 30-40% of
    fit() (measured: 62-70% CPU with it, 100% without, same steps); our pipeline has fixed sizes, so nothing to tune.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def fit_inputs(keras, x, y, cut, batch_size, seed):
    """`fit()` keyword arguments for training on x[:cut] and validating on x[cut:] (Keras' validation_split cut).

    On TensorFlow, our own tf.data pipeline; on other backends, Keras' array adapter (shuffle every epoch too).
    """
    validation = (x[cut:], y[cut:]) if cut < len(x) else None
    if keras.backend.backend() != "tensorflow":
        return {"x": x[:cut], "y": y[:cut], "batch_size": batch_size, "shuffle": True, "validation_data": validation}
    return {
        "x": tf_dataset(x[:cut], y[:cut], batch_size, seed=seed),
        "shuffle": False,  # the pipeline reshuffles every epoch itself; Keras would only warn that it cannot
        "validation_data": None if validation is None else tf_dataset(*validation, batch_size),
    }


def steps_per_execution(keras, settings):
    """Several steps per graph call on TensorFlow; Keras' torch backend accepts only 1."""
    if keras.backend.backend() != "tensorflow":
        return 1
    return settings.get("steps_per_execution", STEPS_PER_EXECUTION)


def fit(keras, x, y, seed, settings, callbacks=()):
    """Train the paper's CNN on (x, y) with Keras' validation_split semantics; time only `fit()`."""
    keras.utils.set_random_seed(seed)
    net = model.build_model(keras, input_shape=x.shape[1:], steps_per_execution=steps_per_execution(keras, settings))
    cut = data.validation_split_index(len(x), settings["validation_split"])
    inputs = fit_inputs(keras, x, y, cut, settings["batch_size"], seed)
    timer = epoch_timer(keras)
    start, cpu_start = time.perf_counter(), records.cpu_seconds()
    history = net.fit(**inputs, epochs=settings["epochs"], verbose=0, callbacks=[timer, *callbacks])
    facts = {
        "fit_seconds": time.perf_counter() - start,
        "epoch_seconds": timer.seconds,
        "fit_cpu_seconds": records.cpu_seconds() - cpu_start,
        "train_images": cut,
        "validation_images": len(x) - cut,
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
    }
    return net, facts


def weights_sha256(weights):
    """Checksum of the exact float32 bytes of all weights (in layer order): equal only for bitwise-equal models."""
    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()


def save_model(net, path):
    with atomic.atomic_path(path) as tmp:
        net.save(tmp)


def load_model(keras, path):
    """Load one saved model, naming the file when it is missing or damaged."""
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a valid .keras file (missing, truncated or corrupted); "
                             "delete it and rerun the workflow to retrain that job")
    try:
        return keras.models.load_model(path)
    except Exception as err:  # Keras raises many kinds for a damaged archive
        raise ModelFileError(f"{path}: cannot be loaded as a Keras model ({err}); delete it and rerun") from err


def predict(net, x):
    return net.predict(x, batch_size=1024, verbose=0)


def test_metrics(net, arrays):
    """Weighted metrics of `net` on the test set."""
    test_x, test_y = data.load_arrays(arrays["test_x"], arrays["test_y"])
    return metrics.classification_metrics(test_y, predict(net, test_x).argmax(axis=1), CLASSES)


# --- the three trainers ---------------------------------------------------------------------------------------


def train_sequential(arrays, model_path, result_path, threads, seed, settings, job_cores):
    """The baseline: one process, the whole training set; its result is scored on the test set."""
    started = time.perf_counter()
    threads = runtime.parse_threads(threads)
    runtime.bind_self(threads)
    keras = runtime.import_keras(threads, settings["precision"])
    x, y = data.load_arrays(arrays["train_x"], arrays["train_y"])
    net, facts = fit(keras, x, y, seed, settings)
    save_model(net, model_path)
    scores = test_metrics(net, arrays)
    record = records.rank_record("sequential", 0, 1, seed, settings, threads, job_cores, started, facts,
                                 shard=[0, len(x)], weights_sha256=weights_sha256(net.get_weights()))
    atomic.write_json(result_path, records.result_record("sequential", [record], scores))
    return (f"sequential threads={record['thread_settings']['threads']} seed={seed}: "
            f"fit {facts['fit_seconds']:.2f} s, accuracy {scores['accuracy']:.4f}")


class RankJob:
    """What every MPI training rank does around its training: the world, the thread pools (pinned before Keras
    starts), the oversubscription warning, and its rank record."""

    def __init__(self, method, threads, precision, job_cores):
        from mpi4py import MPI

        self.started = time.perf_counter()
        self.method, self.job_cores = method, job_cores
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.threads = runtime.parse_threads(threads)
        self.keras = runtime.import_keras(self.threads, precision)
        if self.rank == 0 and runtime.is_oversubscribed(self.size, self.threads or 1, job_cores):
            print(f"warning: {self.size} ranks x {self.threads or 1} thread(s) exceed the job's {job_cores} cores; "
                  "the ranks share cores (oversubscribed), so their fit times do not measure scaling",
                  file=sys.stderr, flush=True)

    def record(self, seed, settings, facts, **extra):
        return records.rank_record(self.method, self.rank, self.size, seed, settings, self.threads, self.job_cores,
                                   self.started, facts, mpi_library=records.mpi_library(), **extra)

    def report(self, facts, what):
        print(f"{self.method} rank {self.rank}/{self.size}: {what}, fit {facts['fit_seconds']:.2f} s, "
              f"affinity {sorted(os.sched_getaffinity(0))}", flush=True)


def train_mpi_ranks(arrays, out_dir, threads, seed, settings, job_cores):
    """One rank of the ensemble's MPI job: train on this rank's contiguous shard, save its model and record."""
    job = RankJob("ensemble_member", threads, settings["precision"], job_cores)
    start, stop = data.shard_range(data.count_items(arrays["train_y"]), job.size, job.rank)
    x, y = data.load_arrays(arrays["train_x"], arrays["train_y"], start, stop)
    job.comm.Barrier()  # start the clocks together so the slowest rank's fit time is the phase's wall time
    net, facts = fit(job.keras, x, y, seed + job.rank, settings, faults.keras_callbacks(job.keras, job.rank))
    out = Path(out_dir)
    save_model(net, out / f"rank{job.rank}.keras")
    atomic.write_json(out / f"rank{job.rank}.json", job.record(
        seed, settings, facts, shard=[start, stop], weights_sha256=weights_sha256(net.get_weights())))
    job.comm.Barrier()
    job.report(facts, f"shard [{start}, {stop})")


def train_data_parallel(arrays, out_dir, threads, seed, settings, job_cores):
    """One rank of synchronous data-parallel training; rank 0 checks the replicas agree, saves and scores."""
    job = RankJob("data_parallel", threads, settings["precision"], job_cores)
    x, y = data.load_arrays(arrays["train_x"], arrays["train_y"])
    net, facts = allreduce.train(job.keras, job.comm, x, y, seed, settings)
    checksum = weights_sha256(net.get_weights())
    checksums = job.comm.allgather(checksum)
    out = Path(out_dir)
    record = job.record(seed, settings, facts, shard=[0, len(x)], weights_sha256=checksum)
    atomic.write_json(out / f"rank{job.rank}.json", record)
    members = job.comm.gather(record, root=0)
    job.report(facts, f"weights {checksum[:12]}")
    if job.rank == 0:
        allreduce.check_identical(checksums)
        save_model(net, out / "model.keras")
        result = records.result_record("data_parallel", members, test_metrics(net, arrays),
                                       steps_per_epoch=facts["steps_per_epoch"], weights_identical=True)
        atomic.write_json(out / "result.json", result)
        print(f"data_parallel ranks={job.size} seed={seed}: accuracy {result['metrics']['accuracy']:.4f}, "
              f"{facts['steps_per_epoch']} steps/epoch, replicas identical", flush=True)
    job.comm.Barrier()

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

from . import allreduce, atomic, checkpoint, data, faults, metrics, model, records, runtime

CLASSES = 10
# Train steps per call into the compiled graph: the same batches and updates, fewer Python round trips.
STEPS_PER_EXECUTION = 16


class ModelFileError(ValueError):
    pass


# --- the input pipeline and the epoch timer --------------------------------------------------------------------


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


def epoch_order(n, seed, rank, epoch):
    """The order in which one epoch visits the n training images: a pure function of (seed, rank, epoch), so a
    resumed job draws exactly the orders the uninterrupted one would have drawn for its remaining epochs."""
    return np.random.default_rng([seed, rank, epoch]).permutation(n)


def tf_dataset(x, y, batch_size, order=None):
    """Batches of (x, y) as a tf.data pipeline, in `order` (an index array; None: as stored), each batch gathered
    by index straight from the (memory-mapped) shard arrays, prefetched so the next batch is ready when the step ends.

    Only the indices are ordered, and the images are never copied into a TensorFlow constant: converting the shard
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

    indices = tf.data.Dataset.range(len(x)) if order is None else tf.data.Dataset.from_tensor_slices(order)
    pipeline = indices.batch(batch_size).map(gather, num_parallel_calls=1, deterministic=True).prefetch(2)
    return pipeline.with_options(pipeline_options(tf))


def pipeline_options(tf):
    """tf.data options without autotuning. Its background tuner left a 1-thread rank's core idle for 30-40% of
    fit() (measured: 62-70% CPU with it, 100% without, same steps); our pipeline has fixed sizes, so nothing to tune.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def epoch_inputs(keras, x, y, cut, batch_size, order):
    """`fit()` training arguments for one epoch on x[:cut] in `order`: our tf.data pipeline on TensorFlow, the
    reordered arrays on other backends (Keras must not shuffle again: the order is ours)."""
    if keras.backend.backend() != "tensorflow":
        return {"x": x[:cut][order], "y": y[:cut][order], "batch_size": batch_size, "shuffle": False}
    return {"x": tf_dataset(x[:cut], y[:cut], batch_size, order=order), "shuffle": False}


def validation_inputs(keras, x, y, cut, batch_size):
    """Keras' validation_split cut: x[cut:], in order (None when nothing is held out)."""
    if cut >= len(x):
        return None
    if keras.backend.backend() != "tensorflow":
        return (x[cut:], y[cut:])
    return tf_dataset(x[cut:], y[cut:], batch_size)


def steps_per_execution(keras, settings):
    """Several steps per graph call on TensorFlow; Keras' torch backend accepts only 1."""
    if keras.backend.backend() != "tensorflow":
        return 1
    return settings.get("steps_per_execution", STEPS_PER_EXECUTION)


# --- progress, history and checkpoints: shared by fit and the data-parallel loop -------------------------------

METRIC_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
HISTORY_COLUMNS = ("rank", "epoch", "epochs", *METRIC_KEYS, "epoch_seconds", "images_per_second",
                   "from_checkpoint")


def epoch_row(rank, epoch, epochs, logs, seconds, images):
    """One epoch's line of history.csv (epoch counted from 1): metrics, wall time and training images per second."""
    return {"rank": rank, "epoch": epoch + 1, "epochs": epochs,
            **{k: None if logs.get(k) is None else float(logs[k]) for k in METRIC_KEYS},
            "epoch_seconds": seconds, "images_per_second": images / seconds if seconds > 0 else None,
            "from_checkpoint": False}


def progress_line(label, row):
    """What a rank prints to its job log as each epoch ends, so `tail -f` shows how far the job is."""
    metrics = " ".join(f"{k} {row[k]:.4f}" for k in METRIC_KEYS if row[k] is not None)
    speed = f", {row['images_per_second']:.0f} images/s" if row["images_per_second"] else ""
    return f"{label} epoch {row['epoch']}/{row['epochs']}: {metrics}, {row['epoch_seconds']:.2f} s{speed}"


def history_csv(rows):
    """history.csv's text (the training stage has no pandas): one line per epoch, HISTORY_COLUMNS."""
    lines = [",".join(HISTORY_COLUMNS)]
    for row in rows:
        cells = ("" if row.get(k) is None else f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k])
                 for k in HISTORY_COLUMNS)
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def history_of(rows):
    """The record's `history`: {metric: per-epoch values} over every epoch, resumed ones included."""
    return {k: [row[k] for row in rows] for k in METRIC_KEYS if rows and all(row[k] is not None for row in rows)}


def resumed_rows(state):
    """The history a checkpoint carries, marked as trained before this process started."""
    return [{**row, "from_checkpoint": True} for row in (state.history if state else [])]


def optimizer_state(net):
    return [np.array(v.numpy()) for v in net.optimizer.variables]


def restore(net, state):
    """Put a checkpoint's weights and optimizer variables (Adam's moments and iteration count) into `net`."""
    net.optimizer.build(net.trainable_variables)
    variables = net.optimizer.variables
    shapes = [tuple(w.shape) for w in net.get_weights()], [tuple(v.shape) for v in variables]
    saved = [tuple(w.shape) for w in state.weights], [tuple(v.shape) for v in state.optimizer]
    if shapes != saved:  # checked first, so a refused checkpoint leaves the fresh model untouched
        raise checkpoint.Discarded("its weight or optimizer shapes differ from this model's")
    net.set_weights(state.weights)
    for variable, value in zip(variables, state.optimizer):
        variable.assign(value)


def fingerprint(keras, method, ranks, rank, seed, settings, shard, x, y):
    """What a checkpoint must have been made with to be resumed: the settings, shard, dataset and model code."""
    return {"method": method, "ranks": ranks, "rank": rank, "seed": seed, **settings, "shard": list(shard),
            "data_sha256": checkpoint.array_sha256(x, y), "model_version": model.MODEL_VERSION,
            "keras": keras.__version__}


def checkpoint_store(folder, rank, fp):
    """This process's checkpoints (None: the job keeps none)."""
    return None if folder is None else checkpoint.Store(Path(folder) / f"rank{rank}", fp)


def load_state(store, net):
    """The checkpoint to resume from, restored into `net` (None: start at epoch 0)."""
    state = store.load() if store else None
    if state is not None:
        try:
            restore(net, state)
        except checkpoint.Discarded as why:
            store.log(f"checkpoint {state.path} discarded: {why}")
            store.remove()
            return None
    return state


# --- fit: the shared training call ---------------------------------------------------------------------------


def fit(keras, x, y, seed, settings, rank=0, callbacks=(), store=None, label="sequential rank 0/1"):
    """Train the paper's CNN on (x, y) with Keras' validation_split semantics, one `fit()` call per epoch (each
    epoch's order from `epoch_order`), resuming from `store`'s checkpoint and saving one after every epoch; only
    the `fit()` calls are timed. The initial weights come from seed + rank."""
    keras.utils.set_random_seed(seed + rank)
    net = model.build_model(keras, input_shape=x.shape[1:], steps_per_execution=steps_per_execution(keras, settings))
    cut = data.validation_split_index(len(x), settings["validation_split"])
    epochs = settings["epochs"]
    state = load_state(store, net)
    start_epoch, rows = (state.epoch, resumed_rows(state)) if state else (0, [])
    validation = validation_inputs(keras, x, y, cut, settings["batch_size"])
    timer = epoch_timer(keras)
    fit_seconds = checkpoint_seconds = 0.0
    cpu_start = records.cpu_seconds()
    for epoch in range(start_epoch, epochs):
        order = epoch_order(cut, seed, rank, epoch)
        start = time.perf_counter()
        history = net.fit(**epoch_inputs(keras, x, y, cut, settings["batch_size"], order), validation_data=validation,
                          initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=[timer, *callbacks])
        fit_seconds += time.perf_counter() - start
        logs = {k: v[-1] for k, v in history.history.items()}
        rows.append(epoch_row(rank, epoch, epochs, logs, timer.seconds[-1], cut))
        print(progress_line(label, rows[-1]), flush=True)
        if store:
            start = time.perf_counter()
            store.put(checkpoint.State(epoch + 1, net.get_weights(), optimizer_state(net), rows))
            checkpoint_seconds += time.perf_counter() - start
    facts = {
        "fit_seconds": fit_seconds,
        "epoch_seconds": timer.seconds,
        "fit_cpu_seconds": records.cpu_seconds() - cpu_start,
        "checkpoint_seconds": checkpoint_seconds,
        "resumed_from_epoch": start_epoch,
        "train_images": cut,
        "validation_images": len(x) - cut,
        "history": history_of(rows),
        "history_rows": rows,
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


def write_history(path, facts):
    """history.csv of one model (every epoch, resumed ones included); the record keeps `history` instead."""
    atomic.write_text(path, history_csv(facts.pop("history_rows")))


def train_sequential(arrays, model_path, result_path, threads, seed, settings, job_cores, history_path=None,
                     checkpoints=None):
    """The baseline: one process, the whole training set; its result is scored on the test set."""
    started = time.perf_counter()
    threads = runtime.parse_threads(threads)
    runtime.bind_self(threads)
    keras = runtime.import_keras(threads, settings["precision"])
    x, y = data.load_arrays(arrays["train_x"], arrays["train_y"])
    store = checkpoint_store(checkpoints, 0, fingerprint(keras, "sequential", 1, 0, seed, settings, [0, len(x)], x, y))
    net, facts = fit(keras, x, y, seed, settings, callbacks=faults.keras_callbacks(keras, 0), store=store)
    save_model(net, model_path)
    if history_path:
        write_history(history_path, facts)
    facts.pop("history_rows", None)
    scores = test_metrics(net, arrays)
    record = records.rank_record("sequential", 0, 1, seed, settings, threads, job_cores, started, facts,
                                 shard=[0, len(x)], weights_sha256=weights_sha256(net.get_weights()))
    atomic.write_json(result_path, records.result_record("sequential", [record], scores))
    if store:
        store.remove()
    return (f"sequential threads={record['thread_settings']['threads']} seed={seed}: "
            f"fit {facts['fit_seconds']:.2f} s, accuracy {scores['accuracy']:.4f}, weights {record['weights_sha256']}"
            + (f", resumed after epoch {facts['resumed_from_epoch']}" if facts["resumed_from_epoch"] else ""))


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
        self.label = f"{method} rank {self.rank}/{self.size}"
        if self.rank == 0 and runtime.is_oversubscribed(self.size, self.threads or 1, job_cores):
            print(f"warning: {self.size} ranks x {self.threads or 1} thread(s) exceed the job's {job_cores} cores; "
                  "the ranks share cores (oversubscribed), so their fit times do not measure scaling",
                  file=sys.stderr, flush=True)

    def store(self, folder, seed, settings, shard, x, y):
        """This rank's checkpoints (None without a folder)."""
        return checkpoint_store(folder, self.rank, fingerprint(self.keras, self.method, self.size, self.rank, seed,
                                                                settings, shard, x, y))

    def record(self, seed, settings, facts, **extra):
        return records.rank_record(self.method, self.rank, self.size, seed, settings, self.threads, self.job_cores,
                                   self.started, facts, mpi_library=records.mpi_library(), **extra)

    def report(self, facts, what):
        resumed = f", resumed after epoch {facts['resumed_from_epoch']}" if facts["resumed_from_epoch"] else ""
        print(f"{self.label}: {what}, fit {facts['fit_seconds']:.2f} s{resumed}, "
              f"affinity {sorted(os.sched_getaffinity(0))}", flush=True)


def train_mpi_ranks(arrays, out_dir, threads, seed, settings, job_cores, checkpoints=None):
    """One rank of the ensemble's MPI job: train on this rank's contiguous shard, save its model, history and
    record; once every rank has, drop the checkpoints."""
    job = RankJob("ensemble_member", threads, settings["precision"], job_cores)
    start, stop = data.shard_range(data.count_items(arrays["train_y"]), job.size, job.rank)
    x, y = data.load_arrays(arrays["train_x"], arrays["train_y"], start, stop)
    store = job.store(checkpoints, seed, settings, [start, stop], x, y)
    job.comm.Barrier()  # start the clocks together so the slowest rank's fit time is the phase's wall time
    net, facts = fit(job.keras, x, y, seed, settings, rank=job.rank, store=store, label=job.label,
                     callbacks=faults.keras_callbacks(job.keras, job.rank))
    out = Path(out_dir)
    save_model(net, out / f"rank{job.rank}.keras")
    write_history(out / f"rank{job.rank}_history.csv", facts)
    checksum = weights_sha256(net.get_weights())
    atomic.write_json(out / f"rank{job.rank}.json", job.record(
        seed, settings, facts, shard=[start, stop], weights_sha256=checksum))
    job.comm.Barrier()
    if store:
        store.remove()
    job.report(facts, f"shard [{start}, {stop}), weights {checksum}")


def train_data_parallel(arrays, out_dir, threads, seed, settings, job_cores, checkpoints=None):
    """One rank of synchronous data-parallel training; rank 0 checks the replicas agree, saves and scores, and
    keeps the job's checkpoints (the replicas are identical, so one copy serves every rank)."""
    job = RankJob("data_parallel", threads, settings["precision"], job_cores)
    x, y = data.load_arrays(arrays["train_x"], arrays["train_y"])
    store = job.store(checkpoints, seed, settings, [0, len(x)], x, y) if job.rank == 0 else None
    net, facts = allreduce.train(job.keras, job.comm, x, y, seed, settings, store=store, label=job.label)
    checksum = weights_sha256(net.get_weights())
    checksums = job.comm.allgather(checksum)
    out = Path(out_dir)
    rows = facts.pop("history_rows")
    record = job.record(seed, settings, facts, shard=[0, len(x)], weights_sha256=checksum)
    atomic.write_json(out / f"rank{job.rank}.json", record)
    members = job.comm.gather(record, root=0)
    job.report(facts, f"weights {checksum}")
    if job.rank == 0:
        allreduce.check_identical(checksums)
        save_model(net, out / "model.keras")
        atomic.write_text(out / "history.csv", history_csv(rows))
        result = records.result_record("data_parallel", members, test_metrics(net, arrays),
                                       steps_per_epoch=facts["steps_per_epoch"], weights_identical=True)
        atomic.write_json(out / "result.json", result)
        print(f"data_parallel ranks={job.size} seed={seed}: accuracy {result['metrics']['accuracy']:.4f}, "
              f"{facts['steps_per_epoch']} steps/epoch, replicas identical", flush=True)
        if store:
            store.remove()
    job.comm.Barrier()

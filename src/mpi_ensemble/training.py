"""The training stage: one epoch loop for every method, and the trainers that hand it their epoch step.

`run_epochs` is the only place that resumes from a checkpoint, times an epoch, prints its progress line, keeps the
history and saves the next checkpoint. A trainer only says how one epoch is trained (its step):

- `KerasEpochs`: one Keras fit() call per epoch on this process's shard, then its validation part: the sequential
  baseline and the ensemble's members; with `averaging` (local_sgd.WeightAveraging) also local SGD, whose ranks
  average their weights every k steps, and one-shot averaging from a shared start;
- `data_parallel.DataParallelEpochs`: synchronous data-parallel training, gradients allreduced every step.

Timing is the same for every method: `fit_seconds` adds up the epochs' training and validation, and nothing else
(not the checkpoint writes, not the wait for the other ranks before an epoch starts).
"""

import contextlib
import hashlib
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from . import (atomic, checkpoint, collective, data, data_parallel, local_sgd, metrics, model, provenance, records,
               runtime, startup)
from .model import CLASSES
# Train steps per call into the compiled graph: the same batches and updates, fewer Python round trips.
STEPS_PER_EXECUTION = 16


class ModelFileError(ValueError):
    pass


# --- random streams: every one a function of (seed, rank) ----------------------------------------------------


def init_seed(seed, rank):
    """The seed of the initial weights of rank `rank` in a job of seed `seed`, drawn from the pair: seed + rank
    gave (s, r + 1) and (s + 1, r) the same start, so ensembles of neighbouring seeds shared members."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def epoch_order(n, seed, rank, epoch):
    """The order in which one epoch visits the n training images: a pure function of (seed, rank, epoch), so a
    resumed job draws exactly the orders the uninterrupted one would have drawn for its remaining epochs."""
    return np.random.default_rng([seed, rank, epoch]).permutation(n)


def initial_model(keras, seed, rank, input_shape, settings, optimizer="adam", images_per_update=None):
    """The paper's CNN with the initial weights of (seed, rank), its Adam at the learning rate of the one rule for
    updates of `images_per_update` images (batch_size unless said)."""
    keras.utils.set_random_seed(init_seed(seed, rank))
    batch = settings["batch_size"]
    rate = model.learning_rate(settings.get("learning_rate_scaling", "none"), images_per_update or batch, batch)
    return model.build_model(keras, input_shape=input_shape, optimizer=optimizer, learning_rate=rate,
                             steps_per_execution=steps_per_execution(keras, settings))


# --- the input pipeline -------------------------------------------------------------------------------------


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


def batches(keras, x, y, batch_size, order=None):
    """fit()/evaluate() arguments for x, y in `order`: our tf.data pipeline on TensorFlow, the reordered arrays on
    other backends (Keras must not shuffle again: the order is ours)."""
    if keras.backend.backend() != "tensorflow":
        return {"x": x if order is None else x[order], "y": y if order is None else y[order],
                "batch_size": batch_size}
    return {"x": tf_dataset(x, y, batch_size, order=order)}


def steps_per_execution(keras, settings):
    """Several steps per graph call on TensorFlow; Keras' torch backend accepts only 1."""
    if keras.backend.backend() != "tensorflow":
        return 1
    return settings.get("steps_per_execution", STEPS_PER_EXECUTION)


# --- progress and history -----------------------------------------------------------------------------------

METRIC_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
# The validation accuracy of the model the method would deliver after this epoch: its own model's (sequential,
# data-parallel), the ranks' averaged weights (local SGD, shared start); none for an ensemble's member (the ensemble
# rule votes the members' predictions of a common validation sample, `vote_sample`).
DELIVERED = "delivered_val_accuracy"
HISTORY_COLUMNS = ("rank", "epoch", "epochs", *METRIC_KEYS, DELIVERED, "epoch_seconds", "images_per_second",
                   "from_checkpoint")


def epoch_row(rank, epoch, epochs, logs, seconds, images):
    """One epoch's line of history.csv (epoch counted from 1): metrics, wall time and training images per second."""
    return {"rank": rank, "epoch": epoch + 1, "epochs": epochs,
            **{k: None if logs.get(k) is None else float(logs[k]) for k in (*METRIC_KEYS, DELIVERED)},
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
    return {k: [row.get(k) for row in rows] for k in (*METRIC_KEYS, DELIVERED)
            if rows and all(row.get(k) is not None for row in rows)}


# --- checkpoints: what must match, what may differ, and resuming ---------------------------------------------


def fingerprint(keras, method, ranks, rank, seed, settings, shard, x, y):
    """What a checkpoint must have been made with to be resumed at all: the settings, shard, dataset, model code."""
    return {"method": method, "ranks": ranks, "rank": rank, "seed": seed, **settings, "shard": list(shard),
            "data_sha256": checkpoint.array_sha256(x, y), "model_version": model.MODEL_VERSION,
            "keras": keras.__version__}


def environment(threads):
    """What else decides the bits of every step: the threads (and the cores behind `all`), the kernel choice and
    every variable that steers it (ONEDNN_MAX_CPU_ISA, ONEDNN_DEFAULT_FPMATH_MODE, ...), TensorFlow, the CPU and its
    instruction set, the MPI library (its reduction order). A checkpoint made elsewhere still resumes, but the
    record then says the result is not bitwise the uncut one's."""
    kernels = startup.kernel_settings()
    versions = provenance.package_versions()
    return {"threads": "all" if threads is None else threads, "cores": runtime.available_cores(),
            "cpu_tuning": kernels["cpu_tuning"], "onednn": kernels["onednn"], "kernel_env": kernels["env"],
            "tensorflow": versions.get("tensorflow-cpu") or versions.get("tensorflow"),
            "cpu_model": provenance.cpu_model(), "isa_flags": provenance.isa_flags(),
            "mpi_library": records.mpi_library()}


def checkpoint_store(folder, rank, fp, env, keep=1):
    """This process's checkpoints (None: the job keeps none)."""
    return None if folder is None else checkpoint.Store(Path(folder) / f"rank{rank}", fp, env, keep=keep)


@contextlib.contextmanager
def kept_state(net):
    """Whatever runs inside leaves `net`'s weights and optimizer (Adam's moments, its step count) as they were."""
    net.optimizer.build(net.trainable_variables)
    saved = checkpoint.State(0, net.get_weights(), checkpoint.optimizer_state(net), [])
    try:
        yield
    finally:
        checkpoint.restore(net, saved)


def resumed_rows(state):
    """The history a checkpoint carries, marked as trained before this process started."""
    return [{**row, "from_checkpoint": True} for row in (state.history if state else [])]


# --- the one epoch loop ---------------------------------------------------------------------------------------


def run_epochs(step, settings, store=None, label="sequential rank 0/1", rank=0):
    """Train `step` for settings["epochs"], resuming from `store` and saving a checkpoint after every epoch.

    Only the epochs are timed (`fit_seconds`, `epoch_seconds`): `step.warm_up()` (tracing the training and validation
    functions, `warm_up_seconds`), `step.wait_for_ranks()` (ranks that communicate wait there for each other, so no
    rank's clock counts another's checkpoint write) and the checkpoint writes are not; the job's time holds them all.
    `step.finish()` (a last weight average) is timed: it is part of making the model. Returns the facts every
    record carries."""
    state = step.resume(store)
    start_epoch, rows = (state.epoch, resumed_rows(state)) if state else (0, [])
    epochs = settings["epochs"]
    began = time.perf_counter()
    if start_epoch < epochs:
        step.warm_up()
    warm_up_seconds = time.perf_counter() - began
    epoch_seconds, checkpoint_seconds, fit_cpu_seconds = [], 0.0, 0.0
    for epoch in range(start_epoch, epochs):
        step.wait_for_ranks()
        began, cpu_began = time.perf_counter(), records.cpu_seconds()
        logs = step.train_epoch(epoch)
        epoch_seconds.append(time.perf_counter() - began)
        fit_cpu_seconds += records.cpu_seconds() - cpu_began  # the same spans as fit_seconds, so CPU/wall = busy cores
        # Outside the clock: judging the model the method would deliver is the measurement's, not the method's.
        logs[DELIVERED] = step.delivered(logs)
        rows.append(epoch_row(rank, epoch, epochs, logs, epoch_seconds[-1], step.train_images))
        if "vote_labels" in logs:  # kept in the checkpoint's history, so that a resumed member still has them
            rows[-1]["vote_labels"] = logs["vote_labels"]
        print(progress_line(label, rows[-1]), flush=True)
        if store:
            began = time.perf_counter()
            store.put(checkpoint.State(epoch + 1, step.net.get_weights(), checkpoint.optimizer_state(step.net), rows))
            checkpoint_seconds += time.perf_counter() - began
    step.wait_for_ranks()
    began, cpu_began = time.perf_counter(), records.cpu_seconds()
    step.finish()
    finish_seconds = time.perf_counter() - began
    fit_cpu_seconds += records.cpu_seconds() - cpu_began
    return {
        "fit_seconds": sum(epoch_seconds) + finish_seconds,
        "epoch_seconds": epoch_seconds,
        "warm_up_seconds": warm_up_seconds,
        "fit_cpu_seconds": fit_cpu_seconds,
        "checkpoint_seconds": checkpoint_seconds,
        "resumed_from_epoch": start_epoch,
        "resumed_exactly": None if state is None else not state.environment_changes,
        "resume_changes": state.environment_changes if state else [],
        # Per epoch: the images this process trained on and those it validated (what its fit time computed).
        "train_images": step.train_images,
        "validation_images": step.validation_images,
        "history": history_of(rows),
        "history_rows": rows,
        **step.facts(),
    }


class KerasEpochs:
    """The epoch step of a process that trains on its own images (the sequential run, an ensemble member, a local
    SGD rank): one fit() call on x[:cut] in epoch_order(seed, rank, epoch), then evaluate() on x[cut:], Keras'
    validation_split cut. `averaging` (local_sgd.WeightAveraging) averages the weights across the ranks."""

    def __init__(self, keras, net, x, y, settings, seed, rank, averaging=None, callbacks=(), vote_sample=None):
        self.keras, self.net, self.x, self.y = keras, net, x, y
        self.seed, self.rank, self.batch_size = seed, rank, settings["batch_size"]
        self.cut = data.validation_split_index(len(x), settings["validation_split"])
        self.train_images, self.validation_images = self.cut, len(x) - self.cut
        self.validation = batches(keras, x[self.cut:], y[self.cut:], self.batch_size) if self.validation_images \
            else None
        self.averaging = averaging
        self.callbacks = [*callbacks, *([averaging.callback(keras)] if averaging else [])]
        self.vote_sample = vote_sample  # an ensemble member's: the images all members predict (data.vote_sample)

    def resume(self, store):
        if self.averaging:
            return self.averaging.resume(store, self.net)
        return checkpoint.load_state(store, self.net)

    def warm_up(self):
        """Build and trace the training and validation functions on one batch, then put the model back as it was:
        the epochs' clock then measures training, and the first epoch costs what the others cost."""
        n = min(self.batch_size, self.cut)
        with kept_state(self.net):
            self.net.fit(**batches(self.keras, self.x[:n], self.y[:n], self.batch_size), epochs=1, verbose=0,
                         shuffle=False)
            if self.validation:
                self.net.evaluate(**batches(self.keras, self.x[self.cut:self.cut + n], self.y[self.cut:self.cut + n],
                                            self.batch_size), verbose=0)

    def wait_for_ranks(self):
        if self.averaging:
            self.averaging.comm.Barrier()

    def train_epoch(self, epoch):
        order = epoch_order(self.cut, self.seed, self.rank, epoch)
        if self.averaging:
            self.averaging.begin_epoch(epoch)
        history = self.net.fit(**batches(self.keras, self.x[:self.cut], self.y[:self.cut], self.batch_size, order),
                               shuffle=False, initial_epoch=epoch, epochs=epoch + 1, verbose=0,
                               callbacks=self.callbacks)
        logs = {k: v[-1] for k, v in history.history.items()}
        if self.averaging:
            self.averaging.end_epoch(self.net)
        if self.validation:
            scores = self.net.evaluate(**self.validation, verbose=0, return_dict=True)
            logs.update({f"val_{k}": v for k, v in scores.items()})
        return logs

    def delivered(self, logs):
        """The validation accuracy of what the method would deliver now: the ranks' averaged weights (local SGD, a
        shared start), this model's own; an ensemble member predicts the vote sample instead, for the ensemble rule
        to vote (None here)."""
        if self.averaging:
            return self.averaging.delivered_accuracy(self.net, self.validation_correct)
        if self.vote_sample is not None:
            # At the training batch: a larger one would raise the member's peak memory above what training needs.
            labels = predict(self.net, self.vote_sample, self.batch_size).argmax(axis=1)
            logs["vote_labels"] = [int(c) for c in labels]
            return None
        return logs.get("val_accuracy")

    def validation_correct(self):
        """(images classified right, images) on this process's validation part."""
        if not self.validation:
            return 0, 0
        scores = self.net.evaluate(**self.validation, verbose=0, return_dict=True)
        return round(scores["accuracy"] * self.validation_images), self.validation_images

    def finish(self):
        if self.averaging:
            self.averaging.finish(self.net)

    def facts(self):
        return self.averaging.facts() if self.averaging else {}


def fit(keras, x, y, seed, settings, rank=0, store=None, label="sequential rank 0/1", callbacks=(), vote_sample=None):
    """A model of its own trained on (x, y) from the initial weights of (seed, rank): the sequential run and each
    ensemble member (which predicts `vote_sample` after every epoch). Returns the model and run_epochs' facts."""
    net = initial_model(keras, seed, rank, x.shape[1:], settings)
    step = KerasEpochs(keras, net, x, y, settings, seed, rank, callbacks=callbacks, vote_sample=vote_sample)
    return net, run_epochs(step, settings, store, label, rank)


# --- saving, loading and scoring models ------------------------------------------------------------------------


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


def predict(net, x, batch_size=1024):
    return net.predict(x, batch_size=batch_size, verbose=0)


def test_metrics(net, arrays):
    """Weighted metrics of `net` on the test set."""
    test_x, test_y = data.load_arrays(arrays["test_x"], arrays["test_y"])
    return metrics.classification_metrics(test_y, predict(net, test_x).argmax(axis=1), CLASSES)


def write_history(path, facts):
    """history.csv of one model (every epoch, resumed ones included); the record keeps `history` instead."""
    atomic.write_text(path, history_csv(facts.pop("history_rows")))


def resumed_note(facts):
    if not facts["resumed_from_epoch"]:
        return ""
    exact = "" if facts["resumed_exactly"] else " (not bitwise: " + "; ".join(facts["resume_changes"]) + ")"
    return f", resumed after epoch {facts['resumed_from_epoch']}{exact}"


# --- the trainers ---------------------------------------------------------------------------------------------


def train_sequential(arrays, model_path, result_path, threads, seed, settings, job_cores, history_path=None,
                     checkpoints=None):
    """The baseline: one process, the whole training set; its result is scored on the test set."""
    started = time.perf_counter()
    threads = runtime.parse_threads(threads)
    runtime.bind_self(threads or job_cores)  # `all` is every core of the job, not of the machine
    keras = startup.import_keras(threads, settings["precision"])
    x, y = data.load_arrays(arrays["train_x"], arrays["train_y"])
    store = checkpoint_store(checkpoints, 0, fingerprint(keras, "sequential", 1, 0, seed, settings, [0, len(x)], x, y),
                             environment(threads))
    net, facts = fit(keras, x, y, seed, settings, store=store)
    save_model(net, model_path)
    if history_path:
        write_history(history_path, facts)
    facts.pop("history_rows", None)
    # Measured over the span every method's record covers, start to saved model: before scoring the test set.
    record = records.rank_record("sequential", 0, 1, seed, settings, threads, job_cores, started, facts,
                                 shard=[0, len(x)], weights_sha256=weights_sha256(net.get_weights()))
    scores = test_metrics(net, arrays)
    atomic.write_json(result_path, records.result_record("sequential", [record], scores))
    if store:
        store.remove()
    return (f"sequential threads={record['thread_settings']['threads']} seed={seed}: "
            f"fit {facts['fit_seconds']:.2f} s, accuracy {scores['accuracy']:.4f}, weights {record['weights_sha256']}"
            + resumed_note(facts))


class RankJob:
    """What every MPI training rank does around its training: the world, the thread pools (pinned before Keras
    starts), the oversubscription warning, its checkpoints and its rank record."""

    def __init__(self, method, threads, precision, job_cores):
        from mpi4py import MPI

        self.started = time.perf_counter()
        self.method, self.job_cores = method, job_cores
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.threads = runtime.parse_threads(threads)
        self.keras = startup.import_keras(self.threads, precision)
        self.label = f"{method} rank {self.rank}/{self.size}"
        if self.rank == 0 and runtime.is_oversubscribed(self.size, self.threads or 1, job_cores):
            print(f"warning: {self.size} ranks x {self.threads or 1} thread(s) exceed the job's {job_cores} cores; "
                  "the ranks share cores (oversubscribed), so their fit times do not measure scaling",
                  file=sys.stderr, flush=True)

    def store(self, folder, seed, settings, shard, x, y, keep=1):
        """This rank's checkpoints (None without a folder)."""
        fp = fingerprint(self.keras, self.method, self.size, self.rank, seed, settings, shard, x, y)
        return checkpoint_store(folder, self.rank, fp, environment(self.threads), keep)

    def record(self, seed, settings, facts, **extra):
        return records.rank_record(self.method, self.rank, self.size, seed, settings, self.threads, self.job_cores,
                                   self.started, facts, mpi_library=records.mpi_library(), **extra)

    def report(self, facts, what):
        print(f"{self.label}: {what}, fit {facts['fit_seconds']:.2f} s{resumed_note(facts)}, "
              f"affinity {sorted(os.sched_getaffinity(0))}", flush=True)


def train_mpi(arrays, out_dir, threads, seed, settings, job_cores, checkpoints=None):
    """One rank of the ensemble's MPI job: train on this rank's contiguous shard, save its model, history and
    record; once every rank has, drop the checkpoints."""
    job = RankJob("ensemble_member", threads, settings["precision"], job_cores)
    n_train = data.count_items(arrays["train_y"])
    start, stop = data.shard_range(n_train, job.size, job.rank)
    x, y = data.load_arrays(arrays["train_x"], arrays["train_y"], start, stop)
    sample = data.vote_sample(n_train, job.size, settings["validation_split"])
    sample_x, sample_y = (np.load(arrays[k], mmap_mode="r")[sample] for k in ("train_x", "train_y"))
    store = job.store(checkpoints, seed, settings, [start, stop], x, y)
    job.comm.Barrier()  # start the clocks together so the slowest rank's fit time is the phase's wall time
    net, facts = fit(job.keras, x, y, seed, settings, job.rank, store, job.label, vote_sample=sample_x)
    votes = {"truth": [int(v) for v in sample_y], "labels": [row.get("vote_labels") for row in facts["history_rows"]]}
    out = Path(out_dir)
    save_model(net, out / f"rank{job.rank}.keras")
    write_history(out / f"rank{job.rank}_history.csv", facts)
    checksum = weights_sha256(net.get_weights())
    atomic.write_json(out / f"rank{job.rank}.json", job.record(
        seed, settings, facts, shard=[start, stop], weights_sha256=checksum, vote_sample=votes))
    job.comm.Barrier()
    if store:
        store.remove()
    job.report(facts, f"shard [{start}, {stop}), weights {checksum}")


# What a job whose ranks train one model says of its steps, for its result (summarize's steps columns).
STEP_FACTS = ("steps_per_epoch", "averagings_per_epoch", "batch_per_rank", "global_batch")


def finish_shared_model(job, net, facts, seed, settings, arrays, out_dir, method, shard, store, **extra):
    """The end of a job whose ranks hold one model (data-parallel, local SGD): every rank writes its record, the
    replicas must agree, and rank 0 saves, scores and writes the history and the result."""
    checksum = weights_sha256(net.get_weights())
    checksums = job.comm.allgather(checksum)
    out = Path(out_dir)
    rows = facts.pop("history_rows")
    record = job.record(seed, settings, facts, shard=shard, weights_sha256=checksum)
    atomic.write_json(out / f"rank{job.rank}.json", record)
    members = job.comm.gather(record, root=0)
    job.report(facts, f"weights {checksum}")
    if job.rank == 0:
        collective.check_identical(checksums)
        save_model(net, out / "model.keras")
        atomic.write_text(out / "history.csv", history_csv(rows))
        steps = {k: facts[k] for k in STEP_FACTS if k in facts}
        result = records.result_record(method, members, test_metrics(net, arrays), weights_identical=True,
                                       **steps, **extra)
        atomic.write_json(out / "result.json", result)
        print(f"{method} ranks={job.size} seed={seed}: accuracy {result['metrics']['accuracy']:.4f}, "
              f"{facts['steps_per_epoch']} steps/epoch, {facts['averagings_per_epoch']:g} averagings/epoch, "
              "replicas identical", flush=True)
    job.comm.Barrier()
    if store:
        store.remove()


def train_data_parallel(arrays, out_dir, threads, seed, settings, job_cores, checkpoints=None):
    """One rank of synchronous data-parallel training with the sequential run's global batch, split across the
    ranks; rank 0 checks the replicas agree, saves and scores, and keeps the job's checkpoints (the replicas are
    identical, so one copy serves every rank)."""
    job = RankJob("data_parallel", threads, settings["precision"], job_cores)
    x, y = data.load_arrays(arrays["train_x"], arrays["train_y"])
    store = job.store(checkpoints, seed, settings, [0, len(x)], x, y) if job.rank == 0 else None
    net = initial_model(job.keras, seed, 0, x.shape[1:], settings)
    step = data_parallel.DataParallelEpochs(job.keras, net, job.comm, x, y, settings, seed,
                                            environment(job.threads))
    facts = run_epochs(step, settings, store, job.label, job.rank)
    finish_shared_model(job, net, facts, seed, settings, arrays, out_dir, "data_parallel", [0, len(x)], store)


class Shard:
    """This rank's contiguous shard of the training set, as the ensemble and local SGD cut it, with what the
    ranks' common steps need: every shard's training images and the steps every rank takes per epoch."""

    def __init__(self, job, arrays, settings):
        n_train = data.count_items(arrays["train_y"])
        self.start, self.stop = data.shard_range(n_train, job.size, job.rank)
        self.x, self.y = data.load_arrays(arrays["train_x"], arrays["train_y"], self.start, self.stop)
        self.cuts = [data.validation_split_index(b - a, settings["validation_split"])
                     for a, b in (data.shard_range(n_train, job.size, r) for r in range(job.size))]
        self.common = local_sgd.common_steps(n_train, job.size, settings)


def train_data_parallel_rank_batch(arrays, out_dir, threads, seed, settings, job_cores, checkpoints=None):
    """One rank of synchronous SGD at the per-rank batch: every step each rank takes batch_size images of its own
    shard and the ranks average their gradients (global batch batch_size·N), the comparison local SGD needs. The
    replicas stay identical: rank 0 keeps the checkpoints, checks, saves and scores."""
    method = "data_parallel_rank_batch"
    job = RankJob(method, threads, settings["precision"], job_cores)
    shard = Shard(job, arrays, settings)
    store = job.store(checkpoints, seed, settings, [shard.start, shard.stop], shard.x, shard.y) \
        if job.rank == 0 else None
    net = initial_model(job.keras, seed, 0, shard.x.shape[1:], settings,
                        images_per_update=settings["batch_size"] * job.size)
    step = data_parallel.ShardedDataParallelEpochs(job.keras, net, job.comm, shard.x, shard.y, settings, seed,
                                                   environment(job.threads), shard.common, shard.cuts)
    facts = run_epochs(step, settings, store, job.label, job.rank)
    finish_shared_model(job, net, facts, seed, settings, arrays, out_dir, method, [shard.start, shard.stop], store)


def local_steps(period):
    """Train steps per call into the graph for local SGD: Keras calls back after each, so they divide the period."""
    return int(np.gcd(period, STEPS_PER_EXECUTION)) if isinstance(period, int) else STEPS_PER_EXECUTION


def train_local_sgd(arrays, out_dir, threads, seed, settings, period, job_cores, checkpoints=None):
    """One rank of local SGD: every rank starts from rank 0's initial weights, trains on its own shard as an
    ensemble member does, and the ranks average their weights every `period` local steps, counted across epochs
    ("epoch": once at each epoch's end; None: only once, at the end, the one-shot average from a shared start).
    Each rank keeps its own optimizer state; rank 0 saves and scores the averaged model."""
    method = "local_sgd" if period is not None else "weight_average_shared_start"
    job = RankJob(method, threads, settings["precision"], job_cores)
    shard = Shard(job, arrays, settings)
    store = job.store(checkpoints, seed, {**settings, "period": period}, [shard.start, shard.stop], shard.x, shard.y,
                      keep=2)
    every = period if isinstance(period, int) else None
    net = initial_model(job.keras, seed, 0, shard.x.shape[1:], {**settings, "steps_per_execution": local_steps(period)})
    averaging = local_sgd.WeightAveraging(job.comm, every, shard.common, period, settings["epochs"])
    step = KerasEpochs(job.keras, net, shard.x, shard.y, settings, seed, job.rank, averaging=averaging)
    facts = run_epochs(step, settings, store, job.label, job.rank)
    finish_shared_model(job, net, facts, seed, settings, arrays, out_dir, method, [shard.start, shard.stop], store,
                        period=facts["period"], realised_period=facts["realised_period"])


# Post-local SGD's synchronous epochs before it averages only every k local steps.
SYNCHRONOUS_EPOCHS = 1


class PostLocalEpochs:
    """Post-local SGD (Lin et al., 2020): synchronous SGD at the per-rank batch for the first SYNCHRONOUS_EPOCHS
    (gradients averaged every step), then local SGD (weights averaged every k local steps). One model, one
    optimizer; its learning rate follows the one rule in each phase (the images one update averages)."""

    def __init__(self, sync, local, rates):
        self.sync, self.local, self.rates = sync, local, rates
        self.net, self.current = local.net, sync
        self.train_images, self.validation_images = local.train_images, local.validation_images

    def resume(self, store):
        return self.local.resume(store)  # each rank its own checkpoints: after the switch their weights differ

    def warm_up(self):
        self.sync.warm_up()
        self.local.warm_up()

    def wait_for_ranks(self):
        self.local.wait_for_ranks()

    def train_epoch(self, epoch):
        synchronous = epoch < SYNCHRONOUS_EPOCHS
        self.current = self.sync if synchronous else self.local
        self.net.optimizer.learning_rate.assign(self.rates[0 if synchronous else 1])
        return self.current.train_epoch(epoch)

    def delivered(self, logs):
        return self.current.delivered(logs)

    def finish(self):
        self.local.finish()

    def facts(self):
        local, sync = self.local.facts(), self.sync.traffic.facts()
        epochs = self.local.averaging.epochs
        synchronous = min(SYNCHRONOUS_EPOCHS, epochs)
        averagings = local["averagings_per_epoch"] * epochs + synchronous * self.sync.steps_per_epoch
        return {**local, **{k: local[k] + sync[k] for k in sync}, "averagings_per_epoch": averagings / epochs,
                "synchronous_epochs": synchronous}


def train_post_local_sgd(arrays, out_dir, threads, seed, settings, period, job_cores, checkpoints=None):
    """One rank of post-local SGD with averaging period `period` after its synchronous epochs (local_sgd.py and
    ShardedDataParallelEpochs, on the same shard, from rank 0's initial weights)."""
    method = "post_local_sgd"
    job = RankJob(method, threads, settings["precision"], job_cores)
    shard = Shard(job, arrays, settings)
    store = job.store(checkpoints, seed, {**settings, "period": period}, [shard.start, shard.stop], shard.x, shard.y,
                      keep=2)
    batch = settings["batch_size"]
    rates = [model.learning_rate(settings.get("learning_rate_scaling", "none"), images, batch)
             for images in (batch * job.size, batch)]
    net = initial_model(job.keras, seed, 0, shard.x.shape[1:], {**settings, "steps_per_execution": local_steps(period)})
    sync = data_parallel.ShardedDataParallelEpochs(job.keras, net, job.comm, shard.x, shard.y, settings, seed,
                                                   environment(job.threads), shard.common, shard.cuts)
    averaging = local_sgd.WeightAveraging(job.comm, period if isinstance(period, int) else None, shard.common, period,
                                          settings["epochs"], first_epoch=SYNCHRONOUS_EPOCHS)
    local = KerasEpochs(job.keras, net, shard.x, shard.y, settings, seed, job.rank, averaging=averaging)
    facts = run_epochs(PostLocalEpochs(sync, local, rates), settings, store, job.label, job.rank)
    finish_shared_model(job, net, facts, seed, settings, arrays, out_dir, method, [shard.start, shard.stop], store,
                        period=facts["period"], realised_period=facts["realised_period"])

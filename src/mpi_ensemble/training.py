"""Training one model: the same code for the sequential baseline and for every MPI rank."""

import os
import time

from . import data, model, provenance, runtime

CRASH_ENV = "MPI_ENSEMBLE_CRASH_RANK"  # test-only: the rank that raises after its first epoch


def import_keras(threads):
    """Import TensorFlow/Keras with the thread pools already pinned (they cannot change later)."""
    runtime.apply_threads(threads)
    import tensorflow as tf

    runtime.apply_tf_threads(tf, threads)
    # Same seed, same data -> same weights: op determinism costs little for this small CNN on a CPU.
    tf.config.experimental.enable_op_determinism()
    import keras

    return keras


def crash_callback(keras, rank):
    """Make `rank` fail mid-training when the test-only variable names it."""
    if os.environ.get(CRASH_ENV) != str(rank):
        return []

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            # The wall-clock time lets a test measure how fast the whole MPI job goes down after it.
            raise RuntimeError(f"rank {rank}: crash injected through {CRASH_ENV} at unix time {time.time():.3f}")

    return [Crash()]


def fit(keras, x, y, seed, settings, callbacks=()):
    """Train the paper's CNN on (x, y) with Keras' validation_split semantics; time only `fit()`."""
    keras.utils.set_random_seed(seed)
    net = model.build_model(keras, input_shape=x.shape[1:])
    cut = data.validation_split_index(len(x), settings["validation_split"])
    validation = (x[cut:], y[cut:]) if cut < len(x) else None
    start = time.perf_counter()
    history = net.fit(
        x[:cut],
        y[:cut],
        validation_data=validation,
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        verbose=0,
        callbacks=list(callbacks),
    )
    fit_seconds = time.perf_counter() - start
    facts = {
        "fit_seconds": fit_seconds,
        "train_images": cut,
        "validation_images": len(x) - cut,
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
    }
    return net, facts


def save_model(net, path):
    from .io import atomic_path

    with atomic_path(path) as tmp:
        net.save(tmp)


def predict(net, x):
    return net.predict(x, batch_size=1024, verbose=0)


def timing_record(threads, started, facts, **extra):
    """Everything needed to trust one timing: settings, binding, memory, host, versions."""
    return {
        **extra,
        **facts,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": provenance.peak_rss_mb(),
        "thread_settings": runtime.thread_settings(threads),
        **provenance.host_facts(),
    }

"""Training one model: the same code for the sequential baseline and for every MPI rank."""

import os
import resource
import time

from . import data, model, provenance, runtime

CRASH_ENV = "MPI_ENSEMBLE_CRASH_RANK"  # test-only: the rank that raises after its first epoch
PRECISIONS = ("float32", "mixed_bfloat16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Train steps per call into the compiled graph: the same batches and updates, fewer Python round trips.
STEPS_PER_EXECUTION = 16


def keras_backend():
    """The Keras backend that `import keras` will pick (KERAS_BACKEND, as Keras reads it; TensorFlow by default)."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags (empty when /proc/cpuinfo is unreadable, e.g. not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def check_precision(precision, flags):
    """Refuse a precision the config cannot mean, and bfloat16 on a CPU that would emulate it (slower, not faster)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "mixed_bfloat16" and not flags & set(BF16_FLAGS):
        raise ValueError(
            "precision mixed_bfloat16 needs a CPU with native bfloat16 arithmetic (flag avx512_bf16 or amx_bf16 "
            "in /proc/cpuinfo); this CPU has neither, so bfloat16 would be emulated and slower than float32. "
            "Set precision: float32."
        )
    return precision


def import_keras(threads, precision="float32"):
    """Import Keras with the thread pools already pinned (they cannot change later) and the precision policy set."""
    check_precision(precision, cpu_flags() if precision != "float32" else set())
    runtime.apply_threads(threads)
    backend = keras_backend()
    if backend == "tensorflow":
        import tensorflow as tf

        runtime.apply_tf_threads(tf, threads)
        # Same seed, same data -> same weights: op determinism costs little for this small CNN on a CPU.
        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":  # the device sweep: TensorFlow is too large to carry there
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
            torch.set_num_interop_threads(1)
    import keras

    keras.mixed_precision.set_global_policy(precision)
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


def cpu_seconds():
    """User + system CPU time of this process so far, all its threads together."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    start, cpu_start = time.perf_counter(), cpu_seconds()
    history = net.fit(**inputs, epochs=settings["epochs"], verbose=0, callbacks=[timer, *callbacks])
    fit_seconds = time.perf_counter() - start
    facts = {
        "fit_seconds": fit_seconds,
        "epoch_seconds": timer.seconds,
        "fit_cpu_seconds": cpu_seconds() - cpu_start,
        "train_images": cut,
        "validation_images": len(x) - cut,
        "precision": keras.mixed_precision.global_policy().name,
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
        "cpu_seconds": cpu_seconds(),
        "thread_settings": runtime.thread_settings(threads),
        **provenance.host_facts(),
    }

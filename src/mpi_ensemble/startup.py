"""TensorFlow's start-up in a training, combining or auditing process: the thread pools pinned and the kernels chosen
before TensorFlow is imported, the precision policy set, and what decided the kernels, as TensorFlow itself reports
it."""

import os
import sys

from .runtime import (CPU_TUNING_ENV, KERNEL_ENV, apply_cpu_settings, apply_threads, check_precision, cpu_flags,
                      cpu_kind)


def import_keras(threads, precision="float32"):
    """Import Keras with the thread pools already pinned (they cannot change later) and the precision policy set."""
    check_precision(precision, cpu_flags() if precision != "float32" else set())
    apply_threads(threads)
    apply_cpu_settings()
    import tensorflow as tf

    apply_tf_threads(tf, threads)
    # Same seed, same data -> same weights: op determinism costs little for this small CNN on a CPU.
    tf.config.experimental.enable_op_determinism()
    import keras

    keras.mixed_precision.set_global_policy(precision)
    return keras


def apply_tf_threads(tf, threads):
    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def kernel_settings(flags=None, environ=None):
    """What decided the kernels of this process: the CPU kind, every kernel variable in force, and whether
    TensorFlow runs oneDNN's kernels (its own answer; None before TensorFlow is imported)."""
    environ = os.environ if environ is None else environ
    return {
        "cpu_kind": cpu_kind(cpu_flags() if flags is None else flags),
        "cpu_tuning": environ.get(CPU_TUNING_ENV, "auto"),
        "env": {key: environ[key] for key in KERNEL_ENV if key in environ},
        "onednn": onednn_enabled(),
    }


def onednn_enabled():
    """TensorFlow's own verdict on oneDNN in this process, if TensorFlow is running (the variable alone does not
    prove it: a launcher may not pass the environment on)."""
    if "tensorflow" not in sys.modules:
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow without the private hook: unknown rather than wrong
        return None
    return bool(_pywrap_util_port.IsMklEnabled())

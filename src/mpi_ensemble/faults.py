"""Test-only fault hooks, switched on by environment variables that name a rank; normal runs never set them.

- CRASH_ENV: that rank raises at the end of its first epoch (the MPI job must go down as a whole);
- HOLD_ENV (+ HOLD_FILE_ENV): that rank writes HOLD_FILE + ".rank{r}" when its first epoch starts, then stays
  there until the process is stopped, so a test can act on a job known to be training, without sleeping and hoping;
- DIVERGE_ENV: that data-parallel rank perturbs its updates, which the replica check must catch.
"""

import os
import time

from . import atomic

CRASH_ENV = "MPI_ENSEMBLE_CRASH_RANK"
HOLD_ENV = "MPI_ENSEMBLE_HOLD_RANK"
HOLD_FILE_ENV = "MPI_ENSEMBLE_HOLD_FILE"
DIVERGE_ENV = "MPI_ENSEMBLE_DP_DIVERGE_RANK"


def names(variable, rank):
    return os.environ.get(variable) == str(rank)


def crash(rank):
    raise RuntimeError(f"rank {rank}: crash injected through {CRASH_ENV} at unix time {time.time():.3f}")


def hold_requested(rank):
    return names(HOLD_ENV, rank) and bool(os.environ.get(HOLD_FILE_ENV))


def hold(rank):
    """Announce (a file) that this rank is inside training, then stay there until the process is stopped."""
    atomic.write_text(f"{os.environ[HOLD_FILE_ENV]}.rank{rank}", f"{os.getpid()}\n")
    while True:
        time.sleep(1)


def divergence(rank):
    """The perturbation this data-parallel rank adds to every update (0 unless the test asks for one)."""
    return 1e-3 if names(DIVERGE_ENV, rank) else 0.0


def keras_callbacks(keras, rank):
    """The hooks that name this rank, as Keras callbacks (none in normal runs)."""
    hooks = []
    if names(CRASH_ENV, rank):

        class Crash(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                crash(rank)

        hooks.append(Crash())
    if hold_requested(rank):

        class Hold(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                hold(rank)

        hooks.append(Hold())
    return hooks

"""Test-only fault hooks, switched on by environment variables that name a rank; normal runs never set them.

- CRASH_ENV: that rank raises at the end of its first epoch (the MPI job must go down as a whole);
- HOLD_ENV (+ HOLD_FILE_ENV): that rank writes HOLD_FILE + ".rank{r}" (its PID, and its SLURM job id if any) when
  an epoch starts, then stays there until the process is stopped, so a test can act on a job known to be training,
  without sleeping and hoping. HOLD_EPOCH_ENV chooses the epoch (counted from 1; default: the first one this
  process trains, so a resumed job holds at its first unfinished epoch). A rank holds once: when the file exists
  already (a rerun of the job after the test stopped it), it trains on;
- DIVERGE_ENV: that data-parallel rank perturbs its updates, which the replica check must catch.
"""

import os
import time
from pathlib import Path

from . import atomic

CRASH_ENV = "MPI_ENSEMBLE_CRASH_RANK"
HOLD_ENV = "MPI_ENSEMBLE_HOLD_RANK"
HOLD_FILE_ENV = "MPI_ENSEMBLE_HOLD_FILE"
HOLD_EPOCH_ENV = "MPI_ENSEMBLE_HOLD_EPOCH"
DIVERGE_ENV = "MPI_ENSEMBLE_DP_DIVERGE_RANK"


def names(variable, rank):
    return os.environ.get(variable) == str(rank)


def crash(rank):
    raise RuntimeError(f"rank {rank}: crash injected through {CRASH_ENV} at unix time {time.time():.3f}")


def hold_requested(rank):
    return names(HOLD_ENV, rank) and bool(os.environ.get(HOLD_FILE_ENV))


def hold_file(rank):
    return Path(f"{os.environ[HOLD_FILE_ENV]}.rank{rank}")


def hold_due(rank, epoch, first_epoch):
    """Should this rank hold as epoch `epoch` (counted from 0) starts, the process having started at `first_epoch`?"""
    if not hold_requested(rank) or hold_file(rank).exists():
        return False
    wanted = os.environ.get(HOLD_EPOCH_ENV)
    return epoch == (int(wanted) - 1 if wanted else first_epoch)


def hold(rank):
    """Announce (a file: PID, then SLURM job id) that this rank is inside training, then stay there until the
    process is stopped."""
    atomic.write_text(hold_file(rank), f"{os.getpid()}\n{os.environ.get('SLURM_JOB_ID', '')}\n")
    while True:
        time.sleep(1)


def hold_if_due(rank, epoch, first_epoch):
    if hold_due(rank, epoch, first_epoch):
        hold(rank)


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
            first_epoch = None  # the first epoch this process trains (fit runs one epoch per call)

            def on_epoch_begin(self, epoch, logs=None):
                Hold.first_epoch = epoch if Hold.first_epoch is None else Hold.first_epoch
                hold_if_due(rank, epoch, Hold.first_epoch)

        hooks.append(Hold())
    return hooks

"""Fault hooks for the tests and the resume benchmark, switched on by environment variables that name a rank and
wrapped around the product's training code by sitecustomize.py (this folder on PYTHONPATH):

- CRASH_ENV: that rank raises at the end of its first epoch (the MPI job must go down as a whole);
- HOLD_ENV (+ HOLD_FILE_ENV): that rank writes HOLD_FILE + ".rank{r}" (its PID, and its SLURM job id if any) as an
  epoch starts (after the ranks' wait for each other, so every checkpoint before it is complete), then stays there
  until the process is stopped, so a test can act on a job known to be training, without sleeping and hoping.
  HOLD_EPOCH_ENV chooses the epoch (counted from 1; default: the first one this process trains, so a resumed job
  holds at its first unfinished epoch), HOLD_COMMAND_ENV the training command (sub-command) whose rank holds
  (default: any). A rank holds once: when the file exists already (a rerun of the job after the test stopped it),
  it trains on;
- DIVERGE_ENV: that data-parallel rank perturbs its gradients, which the replica check must catch;
- SLOW_CHECKPOINT_ENV ("rank:seconds"): that rank takes that much longer to write each checkpoint (a slow store),
  which no rank's fit time may count.
"""

import functools
import os
import sys
import time
from pathlib import Path

CRASH_ENV = "MPI_ENSEMBLE_CRASH_RANK"
HOLD_ENV = "MPI_ENSEMBLE_HOLD_RANK"
HOLD_FILE_ENV = "MPI_ENSEMBLE_HOLD_FILE"
HOLD_EPOCH_ENV = "MPI_ENSEMBLE_HOLD_EPOCH"
HOLD_COMMAND_ENV = "MPI_ENSEMBLE_HOLD_COMMAND"
DIVERGE_ENV = "MPI_ENSEMBLE_DP_DIVERGE_RANK"
SLOW_CHECKPOINT_ENV = "MPI_ENSEMBLE_SLOW_CHECKPOINT"


def names(variable, rank):
    return os.environ.get(variable) == str(rank)


def hold_file(rank):
    return Path(f"{os.environ[HOLD_FILE_ENV]}.rank{rank}")


def hold_due(rank, epoch, first_epoch):
    """Should this rank hold as epoch `epoch` (counted from 0) starts, the process having started at `first_epoch`?"""
    if not (names(HOLD_ENV, rank) and os.environ.get(HOLD_FILE_ENV)) or hold_file(rank).exists():
        return False
    if os.environ.get(HOLD_COMMAND_ENV) and os.environ[HOLD_COMMAND_ENV] not in sys.argv:
        return False
    wanted = os.environ.get(HOLD_EPOCH_ENV)
    return epoch == (int(wanted) - 1 if wanted else first_epoch)


def hold(rank):
    """Announce (a file: PID, then SLURM job id) that this rank is inside training, then stay there until the
    process is stopped."""
    from mpi_ensemble import atomic

    atomic.write_text(hold_file(rank), f"{os.getpid()}\n{os.environ.get('SLURM_JOB_ID', '')}\n")
    while True:
        time.sleep(1)


def with_hooks(train_epoch):
    """An epoch step's train_epoch, holding before and crashing after as the variables say."""

    @functools.wraps(train_epoch)
    def wrapped(self, epoch):
        first = self.__dict__.setdefault("_first_epoch", epoch)
        if hold_due(self.rank, epoch, first):
            hold(self.rank)
        logs = train_epoch(self, epoch)
        if names(CRASH_ENV, self.rank):
            raise RuntimeError(f"rank {self.rank}: crash injected through {CRASH_ENV} at unix time {time.time():.3f}")
        return logs

    return wrapped


def diverging(global_gradient):
    @functools.wraps(global_gradient)
    def wrapped(self, x, y, global_count):
        buffer = global_gradient(self, x, y, global_count)
        if names(DIVERGE_ENV, self.rank):
            buffer[:-2] += buffer.dtype.type(1e-3)
        return buffer

    return wrapped


def slow(put):
    rank, _, seconds = os.environ.get(SLOW_CHECKPOINT_ENV, "").partition(":")

    @functools.wraps(put)
    def wrapped(self, state):
        if self.folder.name == f"rank{rank}":
            time.sleep(float(seconds))
        return put(self, state)

    return wrapped


def install_if_asked():
    """Wrap the training code of this process (before the job's code runs), if a variable above names a rank."""
    if not any(os.environ.get(name) for name in (CRASH_ENV, HOLD_ENV, DIVERGE_ENV, SLOW_CHECKPOINT_ENV)):
        return
    from mpi_ensemble import checkpoint, data_parallel, training

    for step in (training.KerasEpochs, data_parallel.DataParallelEpochs):
        step.train_epoch = with_hooks(step.train_epoch)
    data_parallel.DataParallelEpochs.global_gradient = diverging(data_parallel.DataParallelEpochs.global_gradient)
    if os.environ.get(SLOW_CHECKPOINT_ENV):
        checkpoint.Store.put = slow(checkpoint.Store.put)

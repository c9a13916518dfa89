"""Local SGD's communication: each rank trains on its own shard with Keras (training.KerasEpochs), and
`WeightAveraging` averages the ranks' weights, one Allreduce of all of them, after every k-th local step (counted
across epochs), or at each epoch's end, and once more at the end of training where the ranks' weights still
differ. Each rank keeps its own Adam state: averaging it as well would send three times the bytes per averaging,
and the moments describe each rank's own data."""

import hashlib

import numpy as np

from . import checkpoint, data
from .collective import Traffic, broadcast_weights, flatten, unflatten



def common_steps(n_train, ranks, settings):
    """Local steps per epoch that every rank takes: the shards of `data.shard_range` differ by the last rank's
    remainder, so the last rank may take one step more, which is never an averaging point."""
    steps = []
    for rank in range(ranks):
        start, stop = data.shard_range(n_train, ranks, rank)
        cut = data.validation_split_index(stop - start, settings["validation_split"])
        steps.append(-(-cut // settings["batch_size"]))
    return min(steps)


def parse_period(text):
    """A period as the command line and paths write it: 'end' (None: average once, at the end), 'epoch', or the
    local steps between two averagings (a positive integer)."""
    if text in (None, "end"):
        return None
    if text == "epoch":
        return "epoch"
    if str(text).isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(f"period must be a positive number of steps, 'epoch' or 'end', not {text!r}")


def averagings(period, common, epochs):
    """The averagings a run of `epochs` local epochs makes while it trains: every `period` local steps counted
    across epochs (the period runs on over an epoch's end), once per epoch for "epoch", none for the one-shot
    average from a shared start (None)."""
    if period is None:
        return 0
    return epochs if period == "epoch" else common * epochs // period


class WeightAveraging:
    """Local SGD's communication: after every `every`-th local step (within the `common` steps every rank takes per
    epoch, counted across epochs), or at each epoch's end (`period` "epoch"), and at the end of training where the
    ranks' weights still differ, every rank's weights become the mean of all ranks' weights. Local steps count
    from `first_epoch` on (post-local SGD trains synchronously before it)."""

    def __init__(self, comm, every, common, period, epochs, first_epoch=0):
        self.comm, self.every, self.common, self.period = comm, every, common, period
        self.epochs, self.first_epoch = epochs, first_epoch
        self.traffic = Traffic(comm)
        self.done = self.last = 0  # local steps before this epoch; at the last callback

    def average(self, net):
        weights = net.get_weights()
        flat = self.traffic.allreduce(flatten(weights))
        flat /= np.float32(self.comm.Get_size())
        net.set_weights(unflatten(flat, [w.shape for w in weights]))

    def begin_epoch(self, epoch):
        """Where the local-step count stands as `epoch` starts (a pure function of the epoch: a resumed job counts
        as the uncut one did)."""
        self.done = self.last = (epoch - self.first_epoch) * self.common

    def callback(self, keras):
        averaging = self

        class AverageWeights(keras.callbacks.Callback):
            """Keras reports the last step of each call into the graph (steps_per_execution divides `every`):
            average whenever the local steps cross a multiple of `every`."""

            def on_train_batch_end(self, batch, logs=None):
                if not averaging.every:
                    return
                now = averaging.done + min(batch + 1, averaging.common)
                if now // averaging.every > averaging.last // averaging.every:
                    averaging.average(self.model)
                averaging.last = now

        return AverageWeights()

    def end_epoch(self, net):
        if self.period == "epoch":
            self.average(net)

    def finish(self, net):
        digest = hashlib.sha256(flatten(net.get_weights()).tobytes()).hexdigest()
        if len(set(self.comm.allgather(digest))) > 1:
            self.average(net)

    def delivered_accuracy(self, net, correct):
        """The validation accuracy of the model local SGD would deliver now, the ranks' mean weights, on the union
        of their validation parts: `correct()` gives (right, images) on this rank's. The Allreduces that build
        the mean are the measurement's, not counted as the method's traffic; each rank's own weights come back."""
        from mpi4py import MPI

        own = net.get_weights()
        flat = flatten(own)
        self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        net.set_weights(unflatten(flat / np.float32(self.comm.Get_size()), [w.shape for w in own]))
        totals = np.asarray(correct(), dtype=np.float64)
        net.set_weights(own)
        self.comm.Allreduce(MPI.IN_PLACE, totals, op=MPI.SUM)
        return float(totals[0] / totals[1]) if totals[1] else None

    def resume(self, store, net):
        """The latest epoch every rank has a checkpoint of (a rank stopped while writing its newest one still has
        the one before); none: every rank starts from rank 0's initial weights, the shared start."""
        saved = self.comm.allgather(set(store.saved_epochs()) if store else set())
        common = max(set.intersection(*saved), default=0)
        state = checkpoint.load_state(store, net, common) if common else None
        if self.comm.allreduce(int(bool(common) and state is None)):
            raise RuntimeError(f"a rank could not restore its checkpoint of epoch {common}; delete "
                               f"{store.folder.parent} to train this job from the start")
        if state is None:
            broadcast_weights(self.comm, net)
        return state

    def facts(self):
        """Steps and averagings; the realised period is the local steps between two averagings, on average."""
        local = self.epochs - self.first_epoch
        count = averagings(self.period, self.common, local)
        return {"steps_per_epoch": self.common, "averagings_per_epoch": count / self.epochs,
                "realised_period": self.common * local / count if count else None,
                "period": "end" if self.period is None else self.period, **self.traffic.facts()}

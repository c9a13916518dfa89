"""Per-epoch checkpoints, so that a killed, preempted or timed-out training job resumes where it stopped and ends
with the same weights, bit for bit, as one that was never cut, as long as it resumes in the same environment.

Layout: one folder per training process, `<job's checkpoint folder>/rank{r}/epoch{k}/` holding `state.npz`
(weights and optimizer variables, Adam's moments and iteration count included) and `manifest.json` (the epoch
count k, the SHA-256 of state.npz, the settings fingerprint, the environment and the history of the k epochs). The
workflow puts the job's folder at `results/checkpoints/<the job's output folder below results/>`, outside its
declared outputs, which Snakemake deletes when a job fails.

- written atomically: a hidden temporary folder renamed to `epoch{k}`; older epochs are removed only after, and
  the newest `keep` stay (ranks that must resume together keep two: a rank stopped while writing its newest one
  still has the epoch the others can go back to);
- verified on load: a manifest that does not parse, or a state whose checksum differs, is damaged and discarded;
- a checkpoint made with other settings (its fingerprint differs) is discarded with a message naming each
  difference; training then starts from epoch 0;
- one made in another environment (threads, kernel choice, TensorFlow version, the CPU's instruction set: each
  changes the last bits of every step) is resumed, and the state says what changed, so the record can say that
  the model is no longer bitwise the uncut run's;
- removed by the job once its outputs are written.
"""

import hashlib
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np

from . import atomic

STATE, MANIFEST = "state.npz", "manifest.json"
EPOCH_DIR = re.compile(r"^epoch(\d+)$")


class Discarded(Exception):
    """Why a checkpoint cannot be used (the message names the difference or the damage)."""


def array_sha256(*arrays):
    """SHA-256 of arrays' bytes: the data a checkpoint was trained on, so another dataset never resumes it."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


def differences(saved, wanted):
    """'key: checkpoint X, this job Y' for every setting in which two fingerprints differ."""
    keys = sorted(set(saved) | set(wanted))
    return [f"{k}: checkpoint {saved.get(k)!r}, this job {wanted.get(k)!r}" for k in keys
            if saved.get(k) != wanted.get(k)]


def write_state(path, weights, optimizer):
    """Weights and optimizer variables as one .npz (w0.., o0..), written atomically; returns its SHA-256."""
    with atomic.atomic_path(path) as tmp:
        np.savez(tmp, **{f"w{i}": w for i, w in enumerate(weights)}, **{f"o{i}": v for i, v in enumerate(optimizer)})
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def unpack(blob):
    with np.load(io.BytesIO(blob)) as arrays:
        count = lambda prefix: sum(1 for name in arrays.files if name.startswith(prefix))  # noqa: E731
        return [arrays[f"w{i}"] for i in range(count("w"))], [arrays[f"o{i}"] for i in range(count("o"))]


class State:
    """What a checkpoint holds: epochs done, weights, optimizer variables, the history of those epochs, and what
    differs between the environment it was made in and this one (empty: a bitwise resume)."""

    def __init__(self, epoch, weights, optimizer, history, path=None, environment_changes=(), environment=None):
        self.epoch, self.weights, self.optimizer, self.history, self.path = epoch, weights, optimizer, history, path
        self.environment_changes = list(environment_changes)
        self.environment = environment or {}  # the one it was made in


class Store:
    """The checkpoints of one training process (one rank's folder), for one settings fingerprint (None: any) and
    environment."""

    def __init__(self, folder, fingerprint=None, environment=None, keep=1, log=None):
        self.folder = Path(folder)
        self.fingerprint, self.environment, self.keep = fingerprint, environment or {}, keep
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))

    def epochs(self):
        """The epoch folders present, latest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := EPOCH_DIR.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def put(self, state):
        """Write epoch `state.epoch` atomically, then remove all but the newest `keep` epochs."""
        target = self.folder / f"epoch{state.epoch}"
        with atomic.atomic_dir(target) as tmp:
            digest = write_state(tmp / STATE, state.weights, state.optimizer)
            atomic.write_json(tmp / MANIFEST, {"epoch": state.epoch, "state_sha256": digest,
                                               "fingerprint": self.fingerprint, "environment": self.environment,
                                               "history": state.history})
        for old in self.epochs()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def read(self, path):
        """The state in one epoch folder; raises Discarded naming what is wrong with it."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            blob = (path / STATE).read_bytes()
        except (OSError, ValueError) as err:
            raise Discarded(f"damaged (unreadable: {err})") from err
        if not isinstance(manifest, dict) or not {"epoch", "state_sha256", "fingerprint"} <= set(manifest):
            raise Discarded("damaged (manifest incomplete)")
        actual = hashlib.sha256(blob).hexdigest()
        if actual != manifest["state_sha256"]:
            raise Discarded(f"damaged ({STATE} has SHA-256 {actual}, its manifest says {manifest['state_sha256']})")
        changed = differences(manifest["fingerprint"], self.fingerprint) if self.fingerprint is not None else []
        if changed:
            raise Discarded("made with other settings (" + "; ".join(changed) + ")")
        weights, optimizer = unpack(blob)
        moved = differences(manifest.get("environment") or {}, self.environment) if self.environment else []
        return State(int(manifest["epoch"]), weights, optimizer, manifest.get("history", []), path, moved,
                     manifest.get("environment"))

    def saved_epochs(self):
        """The epochs this store would resume from, newest first: those that verify. Reads only, deletes nothing
        (what a job, or a test watching one, may ask while the store is being written)."""
        usable = []
        for path in self.epochs():
            try:
                usable.append(self.read(path).epoch)
            except Discarded:
                continue
        return usable

    def load(self, epoch=None):
        """The latest usable state (or that of `epoch`), or None. Unusable ones are deleted, each with a message
        saying why; a resume in another environment says what changed."""
        for stale in self.folder.glob(".epoch*.tmp*") if self.folder.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)  # what a writer killed mid-checkpoint left
        for path in self.epochs():
            if epoch is not None and path.name != f"epoch{epoch}":
                continue
            try:
                state = self.read(path)
            except Discarded as why:
                self.log(f"checkpoint {path} discarded: {why}")
                shutil.rmtree(path, ignore_errors=True)
                continue
            moved = ("; made in another environment (" + "; ".join(state.environment_changes)
                     + "), so the result is not bitwise the uncut run's") if state.environment_changes else ""
            self.log(f"checkpoint {path}: resuming after epoch {state.epoch}{moved}")
            return state
        return None

    def remove(self):
        """Delete this process's checkpoints (the job succeeded), and the folders above it left empty: the job's
        once every rank's is gone, and those up to the nearest `checkpoints` folder (results/checkpoints/)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        parents = list(self.folder.parents)
        top = next((i for i, p in enumerate(parents) if p.name == "checkpoints"), 0)
        for parent in parents[:top + 1]:
            try:
                parent.rmdir()  # refused while another rank's folder (or anything else) is still inside
            except OSError:
                break


# --- a checkpoint in and out of a Keras model -----------------------------------------------------------------


def optimizer_state(net):
    return [np.array(v.numpy()) for v in net.optimizer.variables]


def restore(net, state):
    """Put a checkpoint's weights and optimizer variables (Adam's moments and iteration count) into `net`."""
    net.optimizer.build(net.trainable_variables)
    variables = net.optimizer.variables
    shapes = [tuple(w.shape) for w in net.get_weights()], [tuple(v.shape) for v in variables]
    saved = [tuple(w.shape) for w in state.weights], [tuple(v.shape) for v in state.optimizer]
    if shapes != saved:  # checked first, so a refused checkpoint leaves the fresh model untouched
        raise Discarded("its weight or optimizer shapes differ from this model's")
    net.set_weights(state.weights)
    for variable, value in zip(variables, state.optimizer):
        variable.assign(value)


def load_state(store, net, epoch=None):
    """The checkpoint to resume from (the latest, or `epoch`), restored into `net` (None: start at epoch 0)."""
    state = store.load(epoch) if store else None
    if state is not None:
        try:
            restore(net, state)
        except Discarded as why:
            store.log(f"checkpoint {state.path} discarded: {why}")
            store.remove()
            return None
    return state

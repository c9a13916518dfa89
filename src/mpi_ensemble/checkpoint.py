"""Per-epoch checkpoints, so that a killed, preempted or timed-out training job resumes where it stopped and ends
with the same weights, bit for bit, as one that was never cut.

Layout: one folder per training process, `<job's checkpoint folder>/rank{r}/epoch{k}/` holding `state.npz`
(weights and optimizer variables, Adam's moments and iteration count included) and `manifest.json` (the epoch
count k, the SHA-256 of state.npz, the settings fingerprint and the history of the k epochs). The workflow puts
the job's folder at `results/checkpoints/<the job's output folder below results/>`, outside its declared outputs,
which Snakemake deletes when a job fails.

- written atomically: a hidden temporary folder renamed to `epoch{k}`; the previous epoch is removed only after;
- verified on load: a manifest that does not parse, or a state whose checksum differs, is damaged and discarded;
- a checkpoint made with other settings (its fingerprint differs) is discarded with a message naming each
  difference; training then starts from epoch 0;
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
    """What a checkpoint holds: epochs done, weights, optimizer variables, the history of those epochs."""

    def __init__(self, epoch, weights, optimizer, history, path=None):
        self.epoch, self.weights, self.optimizer, self.history, self.path = epoch, weights, optimizer, history, path


class Store:
    """The checkpoints of one training process (one rank's folder), for one settings fingerprint."""

    def __init__(self, folder, fingerprint, log=None):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))

    def epochs(self):
        """The epoch folders present, latest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := EPOCH_DIR.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def put(self, state):
        """Write epoch `state.epoch` atomically, then remove the older epochs."""
        target = self.folder / f"epoch{state.epoch}"
        with atomic.atomic_dir(target) as tmp:
            digest = write_state(tmp / STATE, state.weights, state.optimizer)
            atomic.write_json(tmp / MANIFEST, {"epoch": state.epoch, "state_sha256": digest,
                                               "fingerprint": self.fingerprint, "history": state.history})
        for old in self.epochs():
            if old != target:
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
        changed = differences(manifest["fingerprint"], self.fingerprint)
        if changed:
            raise Discarded("made with other settings (" + "; ".join(changed) + ")")
        weights, optimizer = unpack(blob)
        return State(int(manifest["epoch"]), weights, optimizer, manifest.get("history", []), path)

    def load(self):
        """The latest usable state, or None. Unusable ones are deleted, each with a message saying why."""
        for stale in self.folder.glob(".epoch*.tmp*") if self.folder.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)  # what a writer killed mid-checkpoint left
        for path in self.epochs():
            try:
                state = self.read(path)
            except Discarded as why:
                self.log(f"checkpoint {path} discarded: {why}")
                shutil.rmtree(path, ignore_errors=True)
                continue
            self.log(f"checkpoint {path}: resuming after epoch {state.epoch}")
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

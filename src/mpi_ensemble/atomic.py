"""Atomic file writes: an interrupted job never leaves a file that looks complete."""

import contextlib
import json
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the suffix (Keras insists on `.keras`) but starts with a dot and carries
    `.tmp`, so neither Snakemake nor a user can mistake it for the finished file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a hidden temporary sibling folder of `path`; rename it onto `path` only if the block succeeds, so
    a killed writer leaves the previous folder or none, never a half-filled one. Its files are fsynced first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.iterdir():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path, data):
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_csv(path, frame):
    """A pandas DataFrame as CSV (no index column; floats to 6 significant digits, missing values empty)."""
    write_text(path, frame.to_csv(index=False, lineterminator="\n", float_format="%.6g"))


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_npy(path, array):
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def _jsonable(value):
    """Let numpy scalars and paths pass through json.dumps."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (Path, set, frozenset)):
        return sorted(value) if isinstance(value, (set, frozenset)) else str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")

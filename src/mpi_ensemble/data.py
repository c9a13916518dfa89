"""MNIST-style IDX data: verify, fetch, preprocess into memory-mappable arrays, and shard."""

import hashlib
import shutil
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from . import datasets
from .io import atomic_path, write_npy

IDX_DTYPES = {0x08: np.uint8}
ARRAY_NAMES = ("train_x", "train_y", "test_x", "test_y")


class ChecksumError(ValueError):
    pass


class DataSourceError(FileNotFoundError):
    pass


def parse_idx(raw):
    """Parse IDX bytes (magic: two zero bytes, a dtype byte, a rank byte; then big-endian dims)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError("not an IDX file: the first two bytes must be zero")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code not in IDX_DTYPES:
        raise ValueError(f"unsupported IDX element type 0x{dtype_code:02x}; only unsigned bytes are used")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError("IDX header is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != count:
        raise ValueError(f"IDX body holds {len(raw) - header} bytes but the header {shape} needs {count}")
    return np.frombuffer(raw, dtype=IDX_DTYPES[dtype_code], offset=header).reshape(shape)


def gunzip(blob):
    """Decompress gzip bytes as far as they go: (content, problem), problem None or saying what is wrong.

    A truncated or damaged file still yields the content before the damage, so the refusal can show its
    hash beside the expected one.
    """
    if not blob:
        return b"", "the file is empty"
    parts = []
    while blob:  # a gzip file may hold several members back to back
        stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            parts.append(stream.decompress(blob))
        except zlib.error as err:
            return b"".join(parts), f"not valid gzip ({err})"
        if not stream.eof:
            return b"".join(parts + [stream.flush()]), "the gzip stream ends early (truncated)"
        blob = stream.unused_data.lstrip(b"\0")  # gzip tolerates zero padding at the end
    return b"".join(parts), None


def verify(path, expected, label=None):
    """Return the decompressed bytes of `path` if their SHA-256 is `expected`; else raise naming the file
    (or `label`, e.g. the URL of a download) and both hashes."""
    raw, problem = gunzip(Path(path).read_bytes())
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise ChecksumError(
            f"{label or path}: checksum mismatch (SHA-256 of the decompressed content)\n"
            f"  expected {expected}\n  actual   {actual}\n"
            + (f"  {problem}\n" if problem else "")
            + "The file is altered or truncated: replace it with the original."
        )
    return raw


def missing_files(directory, names):
    return [name for name in names if not (Path(directory) / name).is_file()]


def require_files(directory, names):
    """Raise one error listing every missing file and the folder searched."""
    if not Path(directory).is_dir():
        raise DataSourceError(f"data_dir {directory} does not exist; set data_dir to a folder holding {', '.join(names)}")
    missing = missing_files(directory, names)
    if missing:
        raise DataSourceError(
            f"data_dir {directory} lacks {len(missing)} file(s): {', '.join(missing)}. "
            "Put them there, or set data_dir: null to use the bundled copy or the download mirrors."
        )


def copy_verified(source, dest, expected):
    """Copy `source` to `dest` only after its checksum passes."""
    verify(source, expected)
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)


def download_verified(file_name, dest, expected, mirrors, timeout=60):
    """Try each mirror in turn; keep the first download whose checksum passes."""
    errors = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + file_name
        try:
            with atomic_path(dest) as tmp:
                with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                    shutil.copyfileobj(response, out)
                verify(tmp, expected, label=url)
            return url
        except ChecksumError as err:
            errors.append(f"  {err}")  # already names the URL
        except (urllib.error.URLError, OSError) as err:
            errors.append(f"  {url}: {err}")
    raise DataSourceError(f"could not fetch {file_name} from any mirror:\n" + "\n".join(errors))


def to_arrays(images, labels):
    """uint8 images (n, 28, 28) -> float32 NHWC scaled to [0, 1]; labels -> int64."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    x = (images.astype(np.float32) / np.float32(255.0))[..., np.newaxis]
    return x, labels.astype(np.int64)


def preprocess(paths, out_paths, dataset, max_train=None, max_test=None):
    """Verify the four IDX files and write train/test x/y as `.npy` (memory-mappable, so shards are views)."""
    parsed = {}
    for role, path in zip(datasets.ROLES, paths):
        name = datasets.dataset_spec(dataset)["files"][role][0]
        parsed[role] = parse_idx(verify(path, datasets.expected_sha256(dataset, name)))
    train = to_arrays(parsed["train_images"][:max_train], parsed["train_labels"][:max_train])
    test = to_arrays(parsed["test_images"][:max_test], parsed["test_labels"][:max_test])
    for name, array in zip(ARRAY_NAMES, (*train, *test)):
        write_npy(out_paths[name], array)
    return {"train_images": len(train[0]), "test_images": len(test[0])}


def shard_range(n_items, ranks, rank):
    """The paper's contiguous chunk: n // ranks each, the last rank also takes the remainder."""
    if ranks < 1 or not 0 <= rank < ranks:
        raise ValueError(f"rank {rank} is not in a world of {ranks} ranks")
    chunk = n_items // ranks
    if chunk == 0:
        raise ValueError(f"{n_items} training images cannot be split into {ranks} non-empty shards; use fewer ranks")
    stop = n_items if rank == ranks - 1 else (rank + 1) * chunk
    return rank * chunk, stop


def validation_split_index(n_items, validation_split):
    """Where Keras' fit(validation_split=...) cuts: the first floor(n·(1−v)) items train, the rest validate."""
    return int(np.floor(n_items * (1.0 - validation_split)))


def load_arrays(x_path, y_path, start=None, stop=None):
    """Read only [start, stop) of the arrays: memory-mapped, so no rank loads the whole file."""
    x = np.load(x_path, mmap_mode="r")[start:stop]
    y = np.load(y_path, mmap_mode="r")[start:stop]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def count_items(path):
    """Length of a `.npy` array, read from its header only."""
    return len(np.load(path, mmap_mode="r"))

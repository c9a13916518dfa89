"""The data stage: the IDX datasets (files, checksums, mirrors), fetching and verifying them, decoding them into
memory-mappable arrays, and cutting the training set into the ranks' shards.

Checksums are SHA-256 of the *decompressed* IDX content, so a re-compressed copy of the same data passes while
altered data fails.
"""

import hashlib
import shutil
import struct
import subprocess
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_npy

MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

# role -> (file name, sha256 of the decompressed content)
DATASETS = {
    "mnist": {
        "mirrors": MNIST_MIRRORS,
        "train_images": 60000,
        "files": {
            "train_images": (
                "train-images-idx3-ubyte.gz",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            "train_labels": (
                "train-labels-idx1-ubyte.gz",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            "test_images": (
                "t10k-images-idx3-ubyte.gz",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            "test_labels": (
                "t10k-labels-idx1-ubyte.gz",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        },
    },
}

FASHION_MNIST_MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
]

# Fashion-MNIST: SHA-256 of the decompressed files of Debian's package dataset-fashion-mnist
# (0.0~git20200523.55506a9-1, /usr/share/datasets/fashion-mnist/), which re-gzips the upstream files; the
# upstream README only publishes MD5 sums of its own .gz files, which a re-compressed copy cannot match.
DATASETS["fashion_mnist"] = {
    "mirrors": FASHION_MNIST_MIRRORS,
    "train_images": 60000,
    "files": {
        "train_images": (
            "train-images-idx3-ubyte.gz",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        "train_labels": (
            "train-labels-idx1-ubyte.gz",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        "test_images": (
            "t10k-images-idx3-ubyte.gz",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        "test_labels": (
            "t10k-labels-idx1-ubyte.gz",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    },
}

# KMNIST (Kuzushiji-MNIST, CODH). TODO: the SHA-256 of the decompressed files is not recorded: the only
# published checksums are MD5 sums of the .gz files (torchvision: train images bdb82020997e1d708af4cf47b453dcf7,
# train labels e144d726b3acfaa3e44228e80efcd344, test images 5c965bf0a639b31b8f53240b1b52f4d7, test labels
# 7320c461ea6c1c855c0b718fb2a4b134), and no copy could be fetched to compute them. Until someone with the files
# fills these in (python -m mpi_ensemble fetch_data prints both hashes on a mismatch), kmnist fails closed.
DATASETS["kmnist"] = {
    "mirrors": ["http://codh.rois.ac.jp/kmnist/dataset/kmnist/", "https://codh.rois.ac.jp/kmnist/dataset/kmnist/"],
    "train_images": 60000,
    "files": {
        "train_images": ("train-images-idx3-ubyte.gz", None),
        "train_labels": ("train-labels-idx1-ubyte.gz", None),
        "test_images": ("t10k-images-idx3-ubyte.gz", None),
        "test_labels": ("t10k-labels-idx1-ubyte.gz", None),
    },
}

ROLES = ("train_images", "train_labels", "test_images", "test_labels")


class UnknownChecksumError(ValueError):
    """A dataset whose checksums are not recorded yet: refuse it rather than trust unverified data."""


def dataset_spec(name):
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}") from None


def file_names(name):
    """The four file names of a dataset, in ROLES order."""
    files = dataset_spec(name)["files"]
    return [files[role][0] for role in ROLES]


def missing_checksums(name):
    """File names of a dataset whose SHA-256 is not recorded (the dataset cannot be used until it is)."""
    return [fname for fname, digest in dataset_spec(name)["files"].values() if not digest]


def require_checksums(name):
    missing = missing_checksums(name)
    if missing:
        raise UnknownChecksumError(
            f"dataset {name!r}: the SHA-256 of the decompressed content of {', '.join(missing)} is not recorded "
            "in src/mpi_ensemble/data.py (TODO), so the files cannot be verified and are refused. "
            "Fill in the checksums from a trusted copy, or choose dataset: mnist or fashion_mnist."
        )


def expected_sha256(name, file_name):
    for fname, digest in dataset_spec(name)["files"].values():
        if fname == file_name:
            if not digest:
                require_checksums(name)
            return digest
    raise ValueError(f"{file_name!r} is not a file of dataset {name!r}")

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


def data_source(data_dir, bundled, names):
    """The folder fetch_data copies from: `data_dir` if set (it must hold every file), else the folder of the copy
    bundled with the workflow if it has every file (`bundled`: one path per name, None for a file it lacks), else
    None, meaning download from the mirrors."""
    if data_dir:
        require_files(data_dir, names)
        return str(data_dir)
    return str(Path(bundled[0]).parent) if bundled and all(bundled) else None


def fetch_data(dataset, out_paths, source_dir=None, mirrors=None):
    """Copy (from a folder) or download (from mirrors) each file of the dataset, verifying its checksum; returns
    one line per file saying where it came from."""
    lines = []
    for dest in out_paths:
        name = Path(dest).name
        digest = expected_sha256(dataset, name)
        if source_dir:
            copy_verified(Path(source_dir) / name, dest, digest)
            lines.append(f"{name}: copied from {source_dir}, SHA-256 verified")
        else:
            url = download_verified(name, dest, digest, mirrors or dataset_spec(dataset)["mirrors"])
            lines.append(f"{name}: downloaded from {url}, SHA-256 verified")
    return lines


def unpack_bundled(sources, out_paths):
    """Copy files of a workflow read from git out of its repository: `sources` "git folder:ref:path" each, written
    to `out_paths` in order. Returns a line per file."""
    if len(sources) != len(out_paths):
        raise ValueError(f"{len(sources)} sources but {len(out_paths)} outputs; they must pair up")
    lines = []
    for source, dest in zip(sources, out_paths):
        folder, ref, path = source.split(":", 2)
        blob = subprocess.run(["git", "-C", folder, "show", f"{ref}:{path}"], capture_output=True, check=False)
        if blob.returncode != 0:
            raise FileNotFoundError(f"{path} at {ref} in {folder}: {blob.stderr.decode(errors='replace').strip()}")
        with atomic_path(dest) as tmp:
            Path(tmp).write_bytes(blob.stdout)
        lines.append(f"{path}: {len(blob.stdout)} bytes from {folder} at {ref}")
    return lines


def to_arrays(images, labels):
    """uint8 images (n, 28, 28) -> float32 NHWC scaled to [0, 1]; labels -> int64."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    x = (images.astype(np.float32) / np.float32(255.0))[..., np.newaxis]
    return x, labels.astype(np.int64)


def preprocess(paths, out_paths, dataset, max_train=None, max_test=None):
    """Verify the four IDX files and write train/test x/y as `.npy` (memory-mappable, so shards are views)."""
    parsed = {}
    for role, path in zip(ROLES, paths):
        name = dataset_spec(dataset)["files"][role][0]
        parsed[role] = parse_idx(verify(path, expected_sha256(dataset, name)))
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


def train_count(name, max_train=None):
    """How many training images a run of this dataset uses: the dataset's own count, or max_train if fewer
    (preprocess also checks the count in the files' headers)."""
    total = dataset_spec(name)["train_images"]
    return min(total, max_train) if max_train else total


def check_shards(ranks, n_train, validation_split):
    """Refuse a world size that leaves a shard with nothing to train on once the validation part is cut off."""
    for n in ranks:
        shard = n_train // n
        fit_images = validation_split_index(shard, validation_split)
        if fit_images < 1:
            raise ValueError(
                f"ranks {n} with {n_train} training images leaves shards of {shard} image(s), "
                f"{fit_images} to train on after validation_split {validation_split}; "
                "lower the ranks, raise max_train_images or lower validation_split"
            )


def validation_split_index(n_items, validation_split):
    """Where Keras' fit(validation_split=...) cuts: the first floor(n·(1−v)) items train, the rest validate."""
    return int(np.floor(n_items * (1.0 - validation_split)))


def vote_sample(n_items, ranks, validation_split, size=2000):
    """The held-out images an ensemble's members all predict after every epoch, so that the ensemble rule can vote
    them: `size` of them (or all), evenly spread over the union of the ranks' validation parts (never trained on)."""
    held_out = np.concatenate([np.arange(start + validation_split_index(stop - start, validation_split), stop)
                               for start, stop in (shard_range(n_items, ranks, r) for r in range(ranks))])
    if len(held_out) <= size:
        return held_out
    return held_out[np.linspace(0, len(held_out) - 1, size).round().astype(int)]


def load_arrays(x_path, y_path, start=None, stop=None):
    """Read only [start, stop) of the arrays: memory-mapped, so no rank loads the whole file."""
    x = np.load(x_path, mmap_mode="r")[start:stop]
    y = np.load(y_path, mmap_mode="r")[start:stop]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def count_items(path):
    """Length of a `.npy` array, read from its header only."""
    return len(np.load(path, mmap_mode="r"))

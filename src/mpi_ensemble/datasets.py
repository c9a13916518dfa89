"""Datasets in the IDX format, with their files, checksums and public mirrors.

Checksums are SHA-256 of the *decompressed* IDX content, so a re-compressed copy of the same data passes
while altered data fails.
"""

MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

# role -> (file name, sha256 of the decompressed content)
DATASETS = {
    "mnist": {
        "mirrors": MNIST_MIRRORS,
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
# fills these in (python -m mpi_ensemble.cli fetch prints both hashes on a mismatch), kmnist fails closed.
DATASETS["kmnist"] = {
    "mirrors": ["http://codh.rois.ac.jp/kmnist/dataset/kmnist/", "https://codh.rois.ac.jp/kmnist/dataset/kmnist/"],
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
            "in src/mpi_ensemble/datasets.py (TODO), so the files cannot be verified and are refused. "
            "Fill in the checksums from a trusted copy, or choose dataset: mnist or fashion_mnist."
        )


def expected_sha256(name, file_name):
    for fname, digest in dataset_spec(name)["files"].values():
        if fname == file_name:
            if not digest:
                require_checksums(name)
            return digest
    raise ValueError(f"{file_name!r} is not a file of dataset {name!r}")

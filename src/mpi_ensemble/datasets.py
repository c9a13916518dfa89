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

ROLES = ("train_images", "train_labels", "test_images", "test_labels")


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


def expected_sha256(name, file_name):
    for fname, digest in dataset_spec(name)["files"].values():
        if fname == file_name:
            return digest
    raise ValueError(f"{file_name!r} is not a file of dataset {name!r}")

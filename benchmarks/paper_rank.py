"""The paper's code path, rebuilt as a baseline for benchmarks/scaling.py (run under mpiexec, one process per rank).

What the paper's script does, kept on purpose: every rank loads the whole training set and converts it to float64
(x / 255.0 on uint8 gives float64) with one-hot labels, takes its contiguous chunk (n // size each, the last rank
also the remainder), and trains the same CNN with categorical cross-entropy and fit(validation_split=0.2) under
TensorFlow's default threading (every rank starts a thread pool as large as the machine). Only fit() is timed.
Rank 0 gathers the test-set predictions and takes the majority vote (bincount().argmax()).

Not in the paper: reading the bundled IDX files instead of keras.datasets (no internet needed), the optional subset
sizes for quick runs, and the JSON record that the benchmark reads.
"""

import argparse
import gzip
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


def load_idx(path):
    """An IDX file as the uint8 array keras.datasets.mnist.load_data() would return."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-train-images", type=int)
    parser.add_argument("--max-test-images", type=int)
    parser.add_argument("--out", required=True, help="JSON record of all ranks (written by rank 0)")
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    import keras  # default threading: nothing set before TensorFlow starts

    x_train, y_train, x_test, y_test = (load_idx(Path(args.data_dir) / name) for name in FILES)
    x_train, y_train = x_train[:args.max_train_images], y_train[:args.max_train_images]
    x_test, y_test = x_test[:args.max_test_images], y_test[:args.max_test_images]
    x_train = x_train.reshape(-1, 28, 28, 1) / 255.0  # float64, the whole set on every rank
    x_test = x_test.reshape(-1, 28, 28, 1) / 255.0
    y_train_onehot = keras.utils.to_categorical(y_train, 10)

    chunk = len(x_train) // size
    start = rank * chunk
    end = len(x_train) if rank == size - 1 else start + chunk
    x_local, y_local = x_train[start:end], y_train_onehot[start:end]

    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(32, (3, 3), activation="relu"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Conv2D(64, (3, 3), activation="relu"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Conv2D(64, (3, 3), activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])

    comm.Barrier()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.time()
    model.fit(x_local, y_local, epochs=args.epochs, batch_size=args.batch_size, validation_split=0.2, verbose=0)
    fit_seconds = time.time() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)

    predictions = model.predict(x_test, verbose=0).argmax(axis=1)
    all_predictions = comm.gather(predictions, root=0)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record = {
        "rank": rank,
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024.0,
        "train_images": int(np.floor((end - start) * 0.8)),
        "validation_images": (end - start) - int(np.floor((end - start) * 0.8)),
        "member_accuracy": float((predictions == y_test).mean()),
    }
    records = comm.gather(record, root=0)
    if rank == 0:
        votes = np.stack(all_predictions)
        ensemble = np.array([np.bincount(votes[:, i], minlength=10).argmax() for i in range(votes.shape[1])])
        Path(args.out).write_text(json.dumps({"ranks": records, "ensemble_accuracy": float((ensemble == y_test).mean())}))
    print(f"paper rank {rank}/{size}: fit {fit_seconds:.2f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

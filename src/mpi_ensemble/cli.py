"""Entry points of the workflow's rules: `python -m mpi_ensemble.cli COMMAND ...`.

Each command parses arguments, calls the package's functions and writes its outputs atomically.
"""

import argparse
import sys
import time
from pathlib import Path

from . import data, datasets, ensemble, io, provenance, report, runtime


def cmd_fetch(args):
    """Copy (from a folder) or download (from mirrors) the dataset's files, verifying each checksum."""
    for dest in args.out:
        name = Path(dest).name
        digest = datasets.expected_sha256(args.dataset, name)
        if args.source_dir:
            data.copy_verified(Path(args.source_dir) / name, dest, digest)
            print(f"{name}: copied from {args.source_dir}, SHA-256 verified")
        else:
            mirrors = args.mirror or datasets.dataset_spec(args.dataset)["mirrors"]
            url = data.download_verified(name, dest, digest, mirrors)
            print(f"{name}: downloaded from {url}, SHA-256 verified")


def cmd_preprocess(args):
    outs = dict(zip(data.ARRAY_NAMES, (args.train_x, args.train_y, args.test_x, args.test_y)))
    counts = data.preprocess(args.inputs, outs, args.dataset, args.max_train_images, args.max_test_images)
    print(f"preprocessed {counts['train_images']} training and {counts['test_images']} test images")


def settings_of(args):
    return {"epochs": args.epochs, "batch_size": args.batch_size, "validation_split": args.validation_split,
            "precision": args.precision}


def cmd_sequential(args):
    from . import metrics, training

    started = time.perf_counter()
    threads = runtime.parse_threads(args.threads)
    runtime.bind_self(threads)
    keras = training.import_keras(threads, args.precision)
    x, y = data.load_arrays(args.train_x, args.train_y)
    net, facts = training.fit(keras, x, y, args.seed, settings_of(args))
    training.save_model(net, args.model)
    test_x, test_y = data.load_arrays(args.test_x, args.test_y)
    scores = metrics.classification_metrics(test_y, training.predict(net, test_x).argmax(axis=1), 10)
    record = training.timing_record(
        threads, started, facts, method="sequential", seed=args.seed, ranks=1, settings=settings_of(args)
    )
    io.write_json(args.record, {**record, "metrics": scores})
    print(f"sequential threads={args.threads} seed={args.seed}: fit {facts['fit_seconds']:.2f} s, "
          f"accuracy {scores['accuracy']:.4f}")


def cmd_ranks(args):
    """One MPI rank: train on this rank's contiguous shard, save model and timing record."""
    from mpi4py import MPI

    from . import training

    started = time.perf_counter()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    threads = runtime.parse_threads(args.threads)
    keras = training.import_keras(threads, args.precision)
    oversubscribed = runtime.is_oversubscribed(size, threads or 1, args.job_cores)
    if oversubscribed and rank == 0:
        print(f"warning: {size} ranks x {threads or 1} thread(s) exceed the job's {args.job_cores} cores; "
              "the ranks share cores (oversubscribed), so their fit times do not measure scaling",
              file=sys.stderr, flush=True)
    n_items = data.count_items(args.train_y)
    start, stop = data.shard_range(n_items, size, rank)
    x, y = data.load_arrays(args.train_x, args.train_y, start, stop)
    comm.Barrier()  # start the clocks together so the slowest rank's fit time is the phase's wall time
    net, facts = training.fit(keras, x, y, args.seed + rank, settings_of(args), training.crash_callback(keras, rank))
    out = Path(args.out_dir)
    training.save_model(net, out / f"rank{rank}.keras")
    record = training.timing_record(
        threads, started, facts, method="ensemble_member", seed=args.seed, ranks=size, rank=rank,
        shard=[start, stop], settings=settings_of(args), mpi_library=provenance.mpi_library(),
        job_cores=args.job_cores, oversubscribed=oversubscribed,
    )
    io.write_json(out / f"rank{rank}.json", record)
    comm.Barrier()
    print(f"rank {rank}/{size}: shard [{start}, {stop}), fit {facts['fit_seconds']:.2f} s, "
          f"affinity {record['thread_settings']['affinity']}", flush=True)


def add_training_args(parser):
    parser.add_argument("--train-x", required=True)
    parser.add_argument("--train-y", required=True)
    parser.add_argument("--threads", default="1", help="'all' or a positive integer")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--validation-split", type=float, required=True)
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16"),
                        help="Keras dtype policy; mixed_bfloat16 needs a CPU with native bfloat16")


def build_parser():
    parser = argparse.ArgumentParser(prog="mpi_ensemble", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="copy or download and verify a dataset's IDX files")
    p.add_argument("--dataset", required=True)
    p.add_argument("--source-dir", help="copy from this folder instead of downloading")
    p.add_argument("--mirror", action="append", help="base URL; repeat to try several in order")
    p.add_argument("--out", nargs="+", required=True)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("preprocess", help="IDX -> float32 NHWC .npy arrays")
    p.add_argument("--dataset", required=True)
    p.add_argument("--inputs", nargs=4, required=True, help="train images, train labels, test images, test labels")
    for name in ("train-x", "train-y", "test-x", "test-y"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--max-train-images", type=int)
    p.add_argument("--max-test-images", type=int)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("sequential", help="train one model on the whole training set")
    add_training_args(p)
    p.add_argument("--test-x", required=True)
    p.add_argument("--test-y", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--record", required=True)
    p.set_defaults(func=cmd_sequential)

    p = sub.add_parser("ranks", help="one MPI rank (run under mpiexec ... python -m mpi4py -m mpi_ensemble.cli)")
    add_training_args(p)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--job-cores", type=int, required=True, help="cores the job was given (for oversubscription)")
    p.set_defaults(func=cmd_ranks)

    p = sub.add_parser("ensemble", help="majority vote over saved models")
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--records", nargs="+", required=True)
    p.add_argument("--test-x", required=True)
    p.add_argument("--test-y", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--probabilities", required=True)
    p.set_defaults(func=ensemble.run)

    p = sub.add_parser("report", help="summary table and figures")
    p.add_argument("--sequential", nargs="+", required=True, help="sequential records")
    p.add_argument("--sequential-benchmarks", nargs="+", required=True)
    p.add_argument("--ensemble", nargs="+", required=True, help="ensemble metrics")
    p.add_argument("--ensemble-benchmarks", nargs="+", required=True, help="benchmarks of the MPI jobs")
    p.add_argument("--paper", required=True)
    p.add_argument("--cores", type=int, required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--provenance", required=True)
    p.add_argument("--fig-sequential", required=True)
    p.add_argument("--fig-scaling", required=True)
    # Methods beyond the paper (issue 4): results in the ensemble's format, paired with their job's benchmark,
    # and results that carry their own job_seconds (single_shard).
    p.add_argument("--extra-results", nargs="*", default=[])
    p.add_argument("--extra-benchmarks", nargs="*", default=[])
    p.add_argument("--timed-results", nargs="*", default=[])
    p.add_argument("--fig-speedup", help="speed-up plot (ideal, ours, the paper's machines)")
    p.add_argument("--fig-rank-times", help="per-rank fit() time plot")
    p.set_defaults(func=report.run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (data.ChecksumError, data.DataSourceError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The controls the paper lacks, computed from what the MPI job already saved (no retraining, no TensorFlow).

- `ensemble_soft` and `ensemble_majority_tiebreak`: other ways to combine the same N members, from the member
  softmax outputs that the ensemble rule stores in probabilities.npy.
- `single_shard`: rank 0's model alone. It is one model trained on 1/N of the data (the first contiguous shard)
  in exactly the wall time of one rank of the N-rank job, so it is the control the ensemble's N-fold CPU cost
  has to beat. Reusing rank 0 (rather than a separate training job) makes the comparison paired: the ensemble
  and its control share that model, and no extra training time is spent.

Entry point: `python -m mpi_ensemble.controls COMMAND ...` (commands `vote-variants`, `single-shard`,
`data-parallel`, `beyond-report`).
"""

import argparse
import sys

import numpy as np

from . import data, io, metrics, voting
from .cli import add_training_args

CLASSES = 10
VARIANTS = {
    "ensemble_soft": lambda probs: (voting.soft_vote(probs), np.zeros(probs.shape[1], dtype=bool)),
    "ensemble_majority_tiebreak": voting.majority_vote_tiebreak,
}


def load_probabilities(path, n_test):
    probs = np.load(path)
    if probs.ndim != 3 or probs.shape[1] != n_test:
        raise ValueError(f"{path}: expected (members, {n_test}, classes) probabilities, got {probs.shape}")
    return probs


def variant_results(ensemble_result, probabilities, test_y):
    """One result per combination rule, in the ensemble's own result format (so summary rows line up)."""
    out = {}
    for method, rule in VARIANTS.items():
        winners, ties = rule(probabilities)
        out[method] = {
            **{k: ensemble_result[k] for k in ("ranks", "seed", "oversubscribed", "member_accuracy", "timing")},
            "method": method,
            "metrics": metrics.classification_metrics(test_y, winners, CLASSES),
            # Ties that this rule had to break (soft voting has none to break).
            "ties": int(ties.sum()),
        }
    return out


def single_shard_result(ensemble_result, rank0_record, probabilities, test_y):
    """Rank 0's model alone: its own accuracy, fit time and process wall time."""
    if rank0_record["rank"] != 0:
        raise ValueError(f"single_shard needs rank 0's record, got rank {rank0_record['rank']}")
    labels = probabilities[0].argmax(axis=1)
    scores = metrics.classification_metrics(test_y, labels, CLASSES)
    fit = rank0_record["fit_seconds"]
    return {
        "method": "single_shard",
        "ranks": ensemble_result["ranks"],
        "seed": ensemble_result["seed"],
        "metrics": scores,
        "ties": 0,
        "oversubscribed": ensemble_result["oversubscribed"],
        "member_accuracy": [scores["accuracy"]],
        "shard": rank0_record.get("shard"),
        # Rank 0's process from start to its saved model: what one rank alone costs in wall time.
        "job_seconds": rank0_record["wall_seconds"],
        "timing": {
            "fit_seconds_mean": fit,
            "fit_seconds_max": fit,
            "fit_seconds_min": fit,
            "peak_rss_mb_max": rank0_record["peak_rss_mb"],
            "train_images_per_rank": [rank0_record["train_images"]],
            "threads_per_rank": rank0_record["thread_settings"]["threads"],
            "affinity": [rank0_record["thread_settings"]["affinity"]],
        },
    }


def cmd_vote_variants(args):
    result = io.read_json(args.ensemble)
    test_y = np.load(args.test_y)
    probs = load_probabilities(args.probabilities, len(test_y))
    outs = variant_results(result, probs, test_y)
    for method, path in ((m, getattr(args, m)) for m in VARIANTS):
        io.write_json(path, outs[method])
        print(f"{method} ranks={result['ranks']} seed={result['seed']}: accuracy "
              f"{outs[method]['metrics']['accuracy']:.4f} ({outs[method]['ties']} ties broken)")


def cmd_single_shard(args):
    result = io.read_json(args.ensemble)
    test_y = np.load(args.test_y)
    probs = load_probabilities(args.probabilities, len(test_y))
    out = single_shard_result(result, io.read_json(args.rank0_record), probs, test_y)
    io.write_json(args.out, out)
    print(f"single_shard (1/{out['ranks']} of the data) seed={out['seed']}: accuracy "
          f"{out['metrics']['accuracy']:.4f}, fit {out['timing']['fit_seconds_max']:.2f} s")


def cmd_data_parallel(args):
    from . import data_parallel

    data_parallel.run(args)


def cmd_beyond_report(args):
    from . import beyond_report

    beyond_report.run(args)


def cmd_method_table(args):
    from . import beyond_report, stats

    rows = [r for r in stats.read_summary(args.summary) if r["method"] == args.method]
    columns = list(rows[0]) if rows else ["method"]
    text = (f"No run of {args.method} in this configuration." if not rows else
            f"{len(rows)} run(s) of {args.method}: every number of ranks, threads and seed.")
    io.write_text(args.out, beyond_report.html_page(f"Method: {args.method}", [
        (args.method, text, beyond_report.html_table(rows, columns, f"method-{args.method}"))]))
    print(text)


def build_parser():
    parser = argparse.ArgumentParser(prog="mpi_ensemble.controls", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("vote-variants", help="soft vote and confidence tie-break from saved probabilities")
    p.add_argument("--ensemble", required=True, help="the ensemble rule's metrics.json")
    p.add_argument("--probabilities", required=True)
    p.add_argument("--test-y", required=True)
    for method in VARIANTS:
        p.add_argument(f"--{method}", required=True, help="output JSON")
    p.set_defaults(func=cmd_vote_variants)

    p = sub.add_parser("single-shard", help="rank 0's model alone: one model on 1/N of the data")
    p.add_argument("--ensemble", required=True)
    p.add_argument("--probabilities", required=True)
    p.add_argument("--rank0-record", required=True)
    p.add_argument("--test-y", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_single_shard)

    p = sub.add_parser("data-parallel", help="one MPI rank of synchronous data-parallel training")
    add_training_args(p)  # the same flags as the ensemble's ranks; --batch-size is the global batch here
    for name in ("test-x", "test-y", "out-dir"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--job-cores", type=int, required=True)
    p.set_defaults(func=cmd_data_parallel)

    p = sub.add_parser("beyond-report", help="mean ± sd over seeds, differences, paper comparison, figures")
    p.add_argument("--summary", required=True)
    p.add_argument("--paper", required=True)
    p.add_argument("--provenance", required=True)
    for name in ("stats", "differences", "comparison", "summary-html", "provenance-html", "fig-methods",
                 "fig-voting"):
        p.add_argument(f"--{name}", required=True)
    p.set_defaults(func=cmd_beyond_report)

    p = sub.add_parser("method-table", help="one method's rows of summary.csv as an HTML table")
    p.add_argument("--summary", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_method_table)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (data.ChecksumError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

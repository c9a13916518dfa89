"""The workflow's one command line: `python -m mpi_ensemble RULE ...`, one sub-command per rule, named as the rule
(`train_mpi` serves every `train_mpi_ranks{N}`, and `train_{method}` every `train_{method}_ranks{N}` of a method
whose ranks train together: data_parallel, data_parallel_rank_batch, local_sgd, post_local_sgd,
weight_average_shared_start).
MPI rules run it under the launcher: `mpiexec -n N python -m mpi4py -m mpi_ensemble train_mpi ...`, after
`python -m mpi_ensemble clean_shm` (the one sub-command that is a step of those rules, not a rule: it must run before
the ranks start).

Each sub-command parses its arguments and calls one function of the stage's module (data, training, combine,
summarize, plots), which writes its outputs atomically.
"""

import argparse
import json
import os
import sys

from . import data, methods, runtime

ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def settings_of(args):
    """The training settings every trainer records (and a resumed or compared run must match)."""
    return {"epochs": args.epochs, "batch_size": args.batch_size, "validation_split": args.validation_split,
            "precision": args.precision, "learning_rate_scaling": args.learning_rate_scaling}


def use_cpu_tuning(args):
    """Hand --cpu-tuning to startup.import_keras, which applies it before TensorFlow starts."""
    os.environ[runtime.CPU_TUNING_ENV] = args.cpu_tuning


def arrays_of(args):
    return {name: getattr(args, name) for name in ARRAYS if getattr(args, name, None)}


def fetch_data(args):
    for line in data.fetch_data(args.dataset, args.out, args.source_dir, args.mirror):
        print(line)


def unpack_bundled(args):
    for line in data.unpack_bundled(args.sources, args.out):
        print(line)


def preprocess(args):
    outs = dict(zip(data.ARRAY_NAMES, (args.train_x, args.train_y, args.test_x, args.test_y)))
    counts = data.preprocess(args.inputs, outs, args.dataset, args.max_train_images, args.max_test_images)
    print(f"preprocessed {counts['train_images']} training and {counts['test_images']} test images")


def train_sequential(args):
    from . import training

    use_cpu_tuning(args)
    print(training.train_sequential(arrays_of(args), args.model, args.result, args.threads, args.seed,
                                    settings_of(args), args.job_cores, args.history, args.checkpoint_dir))


def train_mpi(args):
    from . import training

    use_cpu_tuning(args)
    training.train_mpi(arrays_of(args), args.out_dir, args.threads, args.seed, settings_of(args),
                             args.job_cores, args.checkpoint_dir)


def train_data_parallel(args):
    from . import training

    use_cpu_tuning(args)
    training.train_data_parallel(arrays_of(args), args.out_dir, args.threads, args.seed,
                                 {**settings_of(args), "batch_semantics": "global batch split across ranks"},
                                 args.job_cores, args.checkpoint_dir)


def train_data_parallel_rank_batch(args):
    from . import training

    use_cpu_tuning(args)
    training.train_data_parallel_rank_batch(arrays_of(args), args.out_dir, args.threads, args.seed,
                                            {**settings_of(args), "batch_semantics": "batch_size per rank"},
                                            args.job_cores, args.checkpoint_dir)


def train_post_local_sgd(args):
    from . import local_sgd, training

    use_cpu_tuning(args)
    training.train_post_local_sgd(arrays_of(args), args.out_dir, args.threads, args.seed, settings_of(args),
                                  local_sgd.parse_period(args.period), args.job_cores, args.checkpoint_dir)


def train_local_sgd(args):
    from . import local_sgd, training

    use_cpu_tuning(args)
    training.train_local_sgd(arrays_of(args), args.out_dir, args.threads, args.seed, settings_of(args),
                             local_sgd.parse_period(args.period), args.job_cores, args.checkpoint_dir)


def train_weight_average_shared_start(args):
    from . import training

    use_cpu_tuning(args)
    training.train_local_sgd(arrays_of(args), args.out_dir, args.threads, args.seed, settings_of(args), None,
                             args.job_cores, args.checkpoint_dir)


def clean_shm(args):
    from . import runtime

    for path in runtime.remove_stale_mpich_segments(args.shm_dir):
        print(f"removed {path}: an MPICH shared-memory segment no process uses (left by killed ranks)")


def ensemble(args):
    from . import combine

    print(combine.ensemble(args.models, args.records, args.test_x, args.test_y, args.result, args.probabilities))


def vote_variants(args):
    from . import combine

    outs = dict(item.split("=", 1) for item in args.result)
    print(combine.vote_variants(args.probabilities, args.records, args.test_y, outs))


def weight_average(args):
    from . import combine

    if not len(args.methods) == len(args.out_models) == len(args.out_results):
        raise ValueError("--methods, --out-models and --out-results must pair up, one of each per method")
    outputs = {m: pair for m, *pair in zip(args.methods, args.out_models, args.out_results)}
    print(combine.weight_average(args.models, args.records, args.probabilities, args.test_x, args.test_y, outputs))


def single_shard(args):
    from . import combine

    print(combine.single_shard(args.model, args.rank0_record, args.test_x, args.test_y, args.result))


def summarize(args):
    from . import summarize as stage

    outputs = {k: getattr(args, k) for k in ("summary", "stats", "differences", "comparison", "rank_times",
                                              "provenance")}
    print(stage.summarize(args.results, args.paper, args.cores, outputs, args.results_dir, args.targets))


def figures(args):
    from . import plots

    outputs = dict(item.split("=", 1) for item in args.outputs)
    histories = [item.split("=", 1) for item in args.histories or []]
    plots.figures(args.stats, args.rank_times, args.paper, outputs, histories, json.loads(args.networks),
                  args.caption)


def tables(args):
    from . import summarize as stage

    if len(args.methods) != len(args.method_pages):
        raise ValueError(f"{len(args.methods)} methods but {len(args.method_pages)} method pages; they must pair up")
    print(stage.tables(args.summary, args.stats, args.differences, args.comparison, args.provenance,
                       args.summary_html, args.provenance_html, list(zip(args.methods, args.method_pages))))


def audit(args):
    from . import audit as check

    if not check.run(args.results_dir, args.paper, args.out, args.results) and not args.report_only:
        sys.exit(1)


def training_args(parser):
    """The flags every trainer takes; for data_parallel, --batch-size is the global batch."""
    for name in ("train-x", "train-y"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--threads", default="1", help="'all' or a positive integer")
    parser.add_argument("--job-cores", type=int, required=True, help="cores the job was given (oversubscription)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--validation-split", type=float, required=True)
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16"),
                        help="Keras dtype policy; mixed_bfloat16 needs a CPU with native bfloat16")
    parser.add_argument("--learning-rate-scaling", default="none", choices=("none", "linear", "sqrt"),
                        help="the one learning-rate rule: Adam's 0.001 for updates of batch-size images, scaled for "
                        "updates that average more (model.learning_rate)")
    parser.add_argument("--cpu-tuning", default="auto", choices=runtime.CPU_TUNINGS,
                        help="auto: kernel settings chosen from the CPU's flags; tensorflow: TensorFlow's defaults")
    parser.add_argument("--checkpoint-dir", help="keep a checkpoint per rank and epoch here, resume from it, and "
                        "delete it once the job succeeded (none: no checkpoints)")


def required(parser, *names, **kwargs):
    for name in names:
        parser.add_argument(f"--{name}", required=True, **kwargs)


def data_commands(sub):
    p = sub.add_parser("fetch_data", help="copy or download the dataset's IDX files, verifying each checksum")
    p.add_argument("--dataset", required=True)
    p.add_argument("--source-dir", help="copy from this folder instead of downloading")
    p.add_argument("--mirror", action="append", help="base URL; repeat to try several in order")
    p.add_argument("--out", nargs="+", required=True)
    p.set_defaults(func=fetch_data)

    p = sub.add_parser("unpack_bundled", help="copy the bundled files of a workflow read from git out of it")
    p.add_argument("--sources", nargs="+", required=True, help="git folder:ref:path, one per output")
    p.add_argument("--out", nargs="+", required=True)
    p.set_defaults(func=unpack_bundled)

    p = sub.add_parser("preprocess", help="IDX -> float32 NHWC .npy arrays")
    p.add_argument("--dataset", required=True)
    p.add_argument("--inputs", nargs=4, required=True, help="train images, train labels, test images, test labels")
    required(p, "train-x", "train-y", "test-x", "test-y")
    p.add_argument("--max-train-images", type=int)
    p.add_argument("--max-test-images", type=int)
    p.set_defaults(func=preprocess)


def training_commands(sub):
    p = sub.add_parser("train_sequential", help="one model on the whole training set, scored on the test set")
    training_args(p)
    required(p, "test-x", "test-y", "model", "result")
    p.add_argument("--history", help="history.csv: one line per epoch")
    p.set_defaults(func=train_sequential)

    p = sub.add_parser("train_mpi", help="one MPI rank of the ensemble (under mpiexec ... -m mpi4py -m ...)")
    training_args(p)
    required(p, "out-dir")
    p.set_defaults(func=train_mpi)

    p = sub.add_parser("clean_shm", help="remove MPICH shared-memory segments that killed ranks left (before a launch)")
    p.add_argument("--shm-dir", default="/dev/shm")
    p.set_defaults(func=clean_shm)

    # One sub-command per method whose ranks train together, named as its rule, described by its declaration.
    trainers = {f.__name__: f for f in (train_data_parallel, train_data_parallel_rank_batch, train_local_sgd,
                                        train_post_local_sgd, train_weight_average_shared_start)}
    for method in methods.TOGETHER:
        p = sub.add_parser(method.train, help=f"one MPI rank of {method.name}: {method.description}")
        training_args(p)
        required(p, "test-x", "test-y", "out-dir")
        if method.periodic:
            p.add_argument("--period", required=True, help="local steps between averagings, or 'epoch'")
        p.set_defaults(func=trainers[method.train])


def combine_commands(sub):
    p = sub.add_parser("ensemble", help="majority vote over an MPI job's saved models")
    required(p, "models", "records", nargs="+")
    required(p, "test-x", "test-y", "result", "probabilities")
    p.set_defaults(func=ensemble)

    p = sub.add_parser("vote_variants", help="soft vote and confidence tie-break from the saved probabilities")
    required(p, "records", nargs="+")
    required(p, "probabilities", "test-y")
    p.add_argument("--result", action="append", required=True, help="METHOD=result.json, one per vote rule")
    p.set_defaults(func=vote_variants)

    p = sub.add_parser("weight_average", help="the members' weights averaged once, weighted by test or by "
                       "validation accuracy")
    required(p, "models", "records", "methods", "out-models", "out-results", nargs="+")
    required(p, "probabilities", "test-x", "test-y")
    p.set_defaults(func=weight_average)

    p = sub.add_parser("single_shard", help="rank 0's model alone: one model on 1/N of the data")
    required(p, "model", "rank0-record", "test-x", "test-y", "result")
    p.set_defaults(func=single_shard)


def summarize_commands(sub):
    p = sub.add_parser("summarize", help="summary.csv, statistics over seeds, paper comparison, provenance")
    p.add_argument("--results", nargs="+", required=True)
    p.add_argument("--results-dir", default="results", help="where the benchmarks of the results' jobs are")
    p.add_argument("--targets", nargs="*", type=float, default=[], help="validation accuracies to time the training to")
    p.add_argument("--cores", type=int, required=True)
    required(p, "paper", "summary", "stats", "differences", "comparison", "rank-times", "provenance")
    p.set_defaults(func=summarize)

    p = sub.add_parser("figures", help="the figures, from the summarize tables")
    required(p, "stats", "rank-times", "paper")
    p.add_argument("--outputs", nargs="+", required=True, help="KEY=path.png per figure (methods.FIGURES' keys)")
    p.add_argument("--histories", nargs="+", help="LABEL=history.csv per model (an ensemble's ranks share a label)")
    p.add_argument("--networks", default="[]", help="the config's networks, as JSON, for the cost figure")
    p.add_argument("--caption", default="", help="the headline figure's last words (its machine and commit)")
    p.set_defaults(func=figures)

    p = sub.add_parser("tables", help="the summary, the provenance and each method's runs as HTML pages")
    required(p, "summary", "stats", "differences", "comparison", "provenance", "summary-html", "provenance-html")
    p.add_argument("--methods", nargs="*", default=[], help="methods with a page of their runs")
    p.add_argument("--method-pages", nargs="*", default=[], help="one page per --methods entry, in order")
    p.set_defaults(func=tables)

    p = sub.add_parser("audit", help="recompute a finished results folder from what it saved and name every "
                       "disagreement (exit status 1 if there is any)")
    p.add_argument("results_dir", help="the results folder, e.g. results")
    p.add_argument("--paper", required=True, help="the paper's reported numbers (paper/reported_results.csv)")
    p.add_argument("--out", help="also write the verdict to this file")
    p.add_argument("--results", nargs="+", help="the result.json files of the run to audit (the workflow passes its "
                   "own; default: every one in the folder, which may hold other configs' results)")
    p.add_argument("--report-only", action="store_true", help="exit 0 whatever the verdict (the workflow's rule: "
                   "its verdict goes into the report, and `make reproduce` fails on it afterwards)")
    p.set_defaults(func=audit)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m mpi_ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="RULE")
    for add in (data_commands, training_commands, combine_commands, summarize_commands):
        add(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (data.ChecksumError, data.DataSourceError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)

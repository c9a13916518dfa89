"""Aggregate the run into `summary.csv`, `provenance.json` and the paper's figures."""

import csv
import io as _io
import math

from . import io, model, plots, provenance

COLUMNS = [
    "method", "ranks", "seed", "threads", "accuracy", "precision", "recall", "f1",
    "fit_seconds_mean", "fit_seconds_max", "job_seconds", "time_decrease_pct", "speedup", "efficiency",
    "job_speedup", "oversubscribed", "ties", "train_images_per_rank", "peak_rss_mb", "member_accuracy_mean",
    "compute_precision", "cores_used", "cpu_seconds", "images_per_second_per_core", "gflops_per_core",
]


def read_benchmark_seconds(path):
    """Wall seconds (`s` column) of a Snakemake benchmark file: what the user waited for that job."""
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return float(rows[0]["s"])


def sequential_row(record, job_seconds, cores):
    threads = record["thread_settings"]["threads"]
    return {
        "method": "sequential", "ranks": 1, "seed": record["seed"], "threads": threads,
        **{k: record["metrics"][k] for k in ("accuracy", "precision", "recall", "f1")},
        "fit_seconds_mean": record["fit_seconds"], "fit_seconds_max": record["fit_seconds"],
        "job_seconds": job_seconds, "oversubscribed": threads != "all" and threads > cores, "ties": 0,
        "train_images_per_rank": record["train_images"], "peak_rss_mb": record["peak_rss_mb"],
        "compute_precision": record.get("precision", "float32"), "cpu_seconds": record.get("cpu_seconds"),
        "images_trained": record["train_images"] * record["settings"]["epochs"] if "settings" in record else None,
    }


def ensemble_row(result, job_seconds):
    timing = result["timing"]
    return {
        "method": result["method"], "ranks": result["ranks"], "seed": result["seed"],
        "threads": timing["threads_per_rank"],
        **{k: result["metrics"][k] for k in ("accuracy", "precision", "recall", "f1")},
        "fit_seconds_mean": timing["fit_seconds_mean"], "fit_seconds_max": timing["fit_seconds_max"],
        "job_seconds": job_seconds, "oversubscribed": result["oversubscribed"], "ties": result["ties"],
        "train_images_per_rank": min(timing["train_images_per_rank"]), "peak_rss_mb": timing["peak_rss_mb_max"],
        "member_accuracy_mean": sum(result["member_accuracy"]) / len(result["member_accuracy"]),
        "compute_precision": timing.get("precision", "float32"), "cpu_seconds": timing.get("cpu_seconds_sum"),
        "images_trained": sum(timing["train_images_per_rank"]) * timing["epochs"] if timing.get("epochs") else None,
    }


def add_relative_columns(rows):
    """Paper's metric against the all-threads baseline it ran; speed-ups against the honest 1-thread baseline."""
    base = {(r["seed"], str(r["threads"])): r for r in rows if r["method"] == "sequential"}
    for row in rows:
        if row["method"] == "sequential":
            continue
        paper_base, one = base.get((row["seed"], "all")), base.get((row["seed"], "1"))
        if paper_base:
            row["time_decrease_pct"] = 100.0 * (1.0 - row["fit_seconds_mean"] / paper_base["fit_seconds_mean"])
        if one:
            row["speedup"] = one["fit_seconds_mean"] / row["fit_seconds_max"]
            row["efficiency"] = row["speedup"] / row["ranks"]
            row["job_speedup"] = one["job_seconds"] / row["job_seconds"]
    return rows


def extra_rows(results, benchmarks=(), timed=()):
    """Rows of the methods beyond the paper (vote variants, data_parallel with their job's benchmark; single_shard
    with the job_seconds it carries), all in the ensemble's result format."""
    if len(results) != len(benchmarks):
        raise ValueError(f"{len(results)} extra results but {len(benchmarks)} benchmarks; they must pair up")
    rows = [ensemble_row(io.read_json(res), read_benchmark_seconds(b)) for res, b in zip(results, benchmarks)]
    for path in timed:
        result = io.read_json(path)
        rows.append(ensemble_row(result, result["job_seconds"]))
    return rows


def cores_used(row, cores):
    """Cores the row's training could use: threads per rank times ranks, at most the job's cores."""
    threads = cores if row.get("threads") in ("all", None) else int(row["threads"])
    return min(row["ranks"] * threads, cores)


def add_throughput_columns(rows, cores):
    """Training images per second per core (over the slowest rank's fit time, validation passes not counted) and
    the GFLOP/s per core that this throughput means for the model's FLOP count."""
    flops = model.training_flops_per_image()
    for row in rows:
        row["cores_used"] = cores_used(row, cores)
        if row.get("images_trained") and row.get("fit_seconds_max"):
            per_core = row["images_trained"] / row["fit_seconds_max"] / row["cores_used"]
            row["images_per_second_per_core"] = per_core
            row["gflops_per_core"] = per_core * flops / 1e9
    return rows


def build_rows(sequential, ensembles, cores, extra=()):
    rows = [sequential_row(io.read_json(rec), read_benchmark_seconds(b), cores) for rec, b in sequential]
    rows += [ensemble_row(io.read_json(res), read_benchmark_seconds(b)) for res, b in ensembles]
    rows += list(extra)
    rows.sort(key=lambda r: (r["method"] != "sequential", r["method"], r["ranks"], str(r["threads"]), r["seed"]))
    return add_throughput_columns(add_relative_columns(rows), cores)


def to_csv(rows):
    out = _io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    return out.getvalue()


def _cell(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_paper(path):
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run(args):
    rows = build_rows(
        list(zip(args.sequential, args.sequential_benchmarks)),
        list(zip(args.ensemble, args.ensemble_benchmarks)),
        args.cores,
        extra_rows(getattr(args, "extra_results", None) or [], getattr(args, "extra_benchmarks", None) or [],
                   getattr(args, "timed_results", None) or []),
    )
    io.write_text(args.summary, to_csv(rows))
    first = io.read_json(args.sequential[0])
    io.write_json(args.provenance, {
        **{k: first[k] for k in ("host", "cpu_model", "cpu_count", "versions")},
        "mpi_library": io.read_json(args.ensemble[0]).get("mpi_library"),
        "workflow_cores": args.cores,
        "git_commit": provenance.git_commit(),
        "threads": {f"{r['method']} ranks={r['ranks']} seed={r['seed']}": r["threads"] for r in rows},
    })
    paper = read_paper(args.paper)
    plots.sequential_figure(rows, paper, args.fig_sequential)
    plots.scaling_figure(rows, paper, args.fig_scaling)
    if getattr(args, "fig_speedup", None):
        plots.speedup_figure(rows, paper, args.fig_speedup)
    if getattr(args, "fig_rank_times", None):
        plots.rank_times_figure([io.read_json(p) for p in args.ensemble], args.fig_rank_times)
    print(to_csv(rows))

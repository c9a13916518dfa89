"""The summarize stage: every result as one row of `summary.csv`, its derived columns, the statistics over seeds,
the differences against the seed spread, the paper comparison, the per-rank times, the provenance, and the same
tables as HTML for the Snakemake report. Built once, with pandas.

Standard deviations are sample standard deviations over seeds (ddof=1), empty with a single seed.

A result whose training resumed from a checkpoint (`resumed_from_epoch` > 0) keeps its accuracy (the model is
bitwise the uninterrupted one's when it resumed in the same environment), but a job measured only the epochs after
the checkpoint: its cells of methods.PARTIAL_WHEN_RESUMED are empty, flagged by that column, and so are the
relative columns of every row that would use it as a baseline. The statistics count such rows in `n_resumed`.
"""

import html
import math

import pandas as pd

from . import atomic, methods, model
from .provenance import HOST_KEYS, INPUTS_KEY, git_commit, inputs_note

METRICS = ("accuracy", "precision", "recall", "f1")
COLUMNS = [
    "method", "ranks", "period", "seed", "threads", "cores_used", "oversubscribed", "compute_precision",
    "resumed_from_epoch", "resumed_exactly",
    *METRICS, "member_accuracy_mean", "ties",
    "fit_seconds_mean", "fit_seconds_max", "train_job_seconds", "job_seconds",
    "time_decrease_pct", "speedup", "efficiency", "job_speedup",
    "train_images_per_rank", "batch_per_rank", "global_batch", "steps_per_epoch", "updates_per_rank",
    "averagings_per_epoch", "allreduces_per_rank", "allreduce_bytes_per_rank", "wire_bytes_per_rank",
    "allreduce_seconds_max", "core_seconds", "cpu_seconds", "images_per_second_per_core", "gflops_per_core",
    "rank_peak_rss_mib", "train_job_max_rss_mib",
]
# Constant within a (method, ranks, period, threads) group, so they label the group's statistics.
GROUP = ["method", "ranks", "period", "threads", "cores_used", "oversubscribed", "compute_precision"]
STAT_METRICS = (
    *METRICS, "member_accuracy_mean", "ties", "fit_seconds_mean", "fit_seconds_max", "train_job_seconds",
    "job_seconds", "time_decrease_pct", "speedup", "efficiency", "job_speedup", "batch_per_rank", "global_batch",
    "steps_per_epoch", "updates_per_rank", "averagings_per_epoch", "allreduces_per_rank", "allreduce_bytes_per_rank",
    "wire_bytes_per_rank", "allreduce_seconds_max", "core_seconds", "images_per_second_per_core", "gflops_per_core",
    "rank_peak_rss_mib", "train_job_max_rss_mib",
)
RANK_TIMES_COLUMNS = ["method", "ranks", "period", "threads", "seed", "oversubscribed", "rank", "fit_seconds", "host",
                      "resumed_from_epoch"]
DIFF_METRICS = ("accuracy", "fit_seconds_max")
DIFF_COLUMNS = ["metric", "ranks", "method", "period", "threads", "reference", "mean", "reference_mean",
                "difference", "spread", "n_seeds", "exceeds_spread"]
COMPARISON_COLUMNS = ["machine", "cores", "metric", "unit", "paper", "ours_mean", "ours_sd", "n_seeds", "n_ranks",
                      "our_cores_used", "our_oversubscribed", "difference", "difference_pp", "ratio", "ours_source"]


# --- one row per result ---------------------------------------------------------------------------------------


def read_benchmark(path):
    """(wall seconds, max RSS in MiB or None) of a Snakemake benchmark file: what the user waited for that job,
    and the memory of all its processes together (sampled)."""
    row = pd.read_csv(path, sep="\t").iloc[0]
    rss = pd.to_numeric(row.get("max_rss"), errors="coerce")
    return float(row["s"]), None if pd.isna(rss) else float(rss)


def job_memory_measured(result, timing):
    """Does the training job's benchmark hold its ranks' memory? Not for an MPI job whose ranks ran as a SLURM job
    step of their own (srun starts them under slurmstepd, outside the process tree Snakemake samples), nor for one
    whose ranks ran on more than one host."""
    stepped = "slurm_step" in timing and timing["slurm_step"].notna().any()
    hosts = timing["host"].nunique(dropna=False) if "host" in timing else 1
    return not (result["ranks"] > 1 and stepped) and hosts <= 1


def job_times(result, timing, benchmarks):
    """(train_job_seconds, job_seconds, train_job_max_rss_mib). `benchmarks` are those of the jobs on the result's
    path, the training job first. A result of one rank of a larger job (single_shard) takes that rank's own wall
    time from its record instead of the whole job's, and no job memory: its job held N ranks."""
    jobs = [read_benchmark(path) for path in benchmarks]
    own = methods.method(result["method"]).made_of == "rank0"
    train_seconds = timing["wall_seconds"].max() if own else jobs[0][0]
    memory = None if own or not job_memory_measured(result, timing) else jobs[0][1]
    return train_seconds, train_seconds + sum(seconds for seconds, _ in jobs[1:]), memory


def delivered_history(result):
    """The validation accuracy, per epoch, of the model the result's training delivers; None for the results that
    are not a training's own (the other votes, the averages of the members, rank 0 alone: their training row is
    the ensemble's)."""
    made_of = methods.method(result["method"]).made_of
    if made_of == "rank0" or (made_of == "members" and result["method"] != "ensemble_majority"):
        return None
    return result.get(methods.DELIVERED) or (result["rank_timing"][0].get("history") or {}).get(methods.DELIVERED)


def time_to_targets(result, targets):
    """{seconds_to_t, core_seconds_to_t} for each target t: the epochs' seconds (the slowest process's, summed up to
    that epoch) until the model the method would deliver first reached t on its validation images, and those
    seconds times the cores used; empty when it never did, and where there is no delivered history."""
    columns = dict.fromkeys(methods.target_columns(targets))
    delivered = delivered_history(result)
    if not delivered:
        return columns
    epochs = [list(t.get("epoch_seconds") or []) for t in result["rank_timing"]]
    reached = [max(sum(e[:i + 1]) for e in epochs) for i in range(min(len(e) for e in epochs))]
    for target in targets:
        first = next((i for i, accuracy in enumerate(delivered) if accuracy >= target and i < len(reached)), None)
        if first is not None:
            columns[f"seconds_to_{target:g}"] = reached[first]
            columns[f"core_seconds_to_{target:g}"] = reached[first] * result["cores_used"]
    return columns


def summary_row(result, benchmarks, targets=()):
    """One result as a row; its relative and throughput columns are added over the whole table."""
    timing = pd.DataFrame(result["rank_timing"])
    train_seconds, job_seconds, memory = job_times(result, timing, benchmarks)
    return {
        **{k: result[k] for k in ("method", "ranks", "seed", "threads", "cores_used", "oversubscribed", "ties")},
        "period": result.get("period"),
        "compute_precision": result["precision"],
        "resumed_from_epoch": int(result.get("resumed_from_epoch") or 0),
        "resumed_exactly": result.get("resumed_exactly"),
        **{k: result["metrics"][k] for k in METRICS},
        "member_accuracy_mean": sum(result["member_accuracy"]) / len(result["member_accuracy"]),
        "fit_seconds_mean": timing["fit_seconds"].mean(),
        "fit_seconds_max": timing["fit_seconds"].max(),
        "train_job_seconds": train_seconds,
        "job_seconds": job_seconds,
        "train_images_per_rank": timing["train_images"].min(),
        "train_images_total": timing["train_images"].sum() * result["epochs"],
        **steps(result, timing),
        **communication(timing),
        "fit_flops": model.fit_flops(timing["train_images"].sum(), column(timing, "validation_images").sum())
        * result["epochs"],
        "cpu_seconds": timing["cpu_seconds"].sum(),
        "rank_peak_rss_mib": timing["peak_rss_mib"].max(),
        "train_job_max_rss_mib": memory,
        **time_to_targets(result, targets),
    }


def column(timing, name):
    """A rank-timing column, zeros where records predate it."""
    return timing[name].fillna(0) if name in timing else pd.Series(0, index=timing.index)


def steps(result, timing):
    """How each rank's model learned: the images in one of its optimizer updates (the largest part of a global
    batch for data-parallel training), the images all ranks take per step together, the updates per epoch and in
    all, and the averagings of the ranks' weights per epoch (none for the methods whose ranks never talk; the
    sequential run has none to count)."""
    batch = result["batch_size"]
    per_epoch = result.get("steps_per_epoch") or math.ceil(timing["train_images"].min() / batch)
    per_rank = result.get("batch_per_rank") or batch
    return {"batch_per_rank": per_rank, "global_batch": result.get("global_batch") or batch * result["ranks"],
            "steps_per_epoch": per_epoch, "updates_per_rank": per_epoch * result["epochs"],
            "averagings_per_epoch": result.get("averagings_per_epoch",
                                               math.nan if result["method"] == "sequential" else 0)}


def communication(timing):
    """What each rank sent through Allreduce: calls, payload bytes, the bytes on the wire between nodes (MPICH's
    algorithm, network.wire_bytes) and the seconds inside the calls; the busiest rank's."""
    return {"allreduces_per_rank": int(column(timing, "allreduce_count").max()),
            "allreduce_bytes_per_rank": int(column(timing, "allreduce_bytes").max()),
            "wire_bytes_per_rank": float(column(timing, "allreduce_wire_bytes").max()),
            "allreduce_seconds_max": column(timing, "allreduce_seconds").max()}


def clean_timings(frame):
    """`frame` with the partial columns of resumed jobs emptied: part of a run's time never passes for all of it."""
    out = frame.copy()
    resumed = out["resumed_from_epoch"] > 0
    for name in out.columns:
        if methods.partial_when_resumed(name):
            counts = pd.api.types.is_integer_dtype(out[name])  # counts stay whole numbers in the CSV, not 6 digits
            out[name] = out[name].astype(float).mask(resumed).astype("Int64" if counts else float)
    return out


def add_throughput_columns(frame):
    """Training images per second per core used over the slowest rank's fit time, and GFLOP/s per core: what the
    fit time computed (training steps and validation passes, model.fit_flops) over it. Core-seconds: the cores
    used, held for the slowest rank's fit time."""
    out = frame.copy()
    per_core = out["fit_seconds_max"] * out["cores_used"]
    out["images_per_second_per_core"] = out["train_images_total"] / per_core
    out["gflops_per_core"] = out["fit_flops"] / per_core / 1e9
    out["core_seconds"] = per_core
    return out


def add_relative_columns(frame):
    """The paper's metric against the all-threads baseline it ran; the speed-ups against the honest 1-thread
    baseline; efficiency as training images per second per core used against that baseline's, so a method that
    trains on less data (single_shard) is judged by the work it did. A row's baselines are the sequential runs of
    its seed; a resumed one gives none."""
    seq = frame[(frame["method"] == "sequential") & (frame["resumed_from_epoch"] == 0)]
    base_all = seq[seq["threads"].astype(str) == "all"].set_index("seed")
    base_one = seq[seq["threads"].astype(str) == "1"].set_index("seed")
    out = frame.copy()
    all_fit = out["seed"].map(base_all["fit_seconds_mean"]) if len(base_all) else math.nan
    out["time_decrease_pct"] = (100.0 * (1.0 - out["fit_seconds_mean"] / all_fit)).where(out["method"] != "sequential")
    one = base_one.reindex(out["seed"]) if len(base_one) else None
    nan = pd.Series(math.nan, index=out.index)
    out["speedup"] = one["fit_seconds_max"].to_numpy() / out["fit_seconds_max"] if one is not None else nan
    out["efficiency"] = (out["images_per_second_per_core"] / one["images_per_second_per_core"].to_numpy()
                         if one is not None else nan)
    out["job_speedup"] = one["job_seconds"].to_numpy() / out["job_seconds"] if one is not None else nan
    return out


def summary_table(results, targets=()):
    """`results`: (result record, [benchmark paths]) pairs -> summary.csv's rows, sorted; the columns of the
    target accuracies last."""
    frame = pd.DataFrame([summary_row(result, benches, targets) for result, benches in results])
    frame = clean_timings(add_relative_columns(add_throughput_columns(frame)))
    frame["sequential_first"] = frame["method"] != "sequential"
    frame["threads_key"] = frame["threads"].astype(str)
    frame["period_key"] = frame["period"].astype(str)
    frame = frame.sort_values(["sequential_first", "method", "ranks", "period_key", "threads_key", "seed"])
    return frame[COLUMNS + methods.target_columns(targets)].reset_index(drop=True)


def rank_times(results):
    """One row per training process: its fit() time, by method, world size and seed (empty for a resumed job,
    whose time covers part of its training)."""
    rows = [{"method": r["method"], "ranks": r["ranks"], "period": r.get("period"), "threads": r["threads"],
             "seed": r["seed"], "oversubscribed": r["oversubscribed"],
             "rank": t["rank"], "fit_seconds": None if r.get("resumed_from_epoch") else t["fit_seconds"],
             "host": t.get("host"), "resumed_from_epoch": int(r.get("resumed_from_epoch") or 0)}
            for r, _ in results if methods.method(r["method"]).made_of in ("own", "together")
            or r["method"] == "ensemble_majority"
            for t in r["rank_timing"]]
    return pd.DataFrame(rows, columns=RANK_TIMES_COLUMNS)


# --- statistics over seeds ------------------------------------------------------------------------------------


def group_stats(summary):
    """One row per (method, ranks, period, threads): n_seeds (behind the accuracy statistics), n_timed (behind the
    timing ones: the seeds whose jobs were not resumed), n_resumed, n_reached_t (behind the times to target t),
    and {metric}_mean / {metric}_sd (sample sd, ddof=1); the timings of resumed jobs are left out."""
    frame = clean_timings(summary.assign(threads=summary["threads"].astype(str)))
    grouped = frame.groupby(GROUP, sort=False, dropna=False)
    stats = grouped["seed"].nunique().rename("n_seeds").to_frame()
    stats["n_timed"] = grouped["resumed_from_epoch"].agg(lambda epochs: int((epochs == 0).sum()))
    stats["n_resumed"] = grouped["resumed_from_epoch"].agg(lambda epochs: int((epochs > 0).sum()))
    for column in frame.columns:
        if methods.reached_column(column):
            stats[methods.reached_column(column)] = grouped[column].count()
    for metric in (*STAT_METRICS, *(c for c in frame.columns if c.startswith(methods.TARGET_PREFIXES))):
        values = grouped[metric].agg(["mean", "std"])  # pandas' std is the sample sd (ddof=1), NaN for one value
        stats[f"{metric}_mean"], stats[f"{metric}_sd"] = values["mean"], values["std"]
    return stats.reset_index()


def exceeds_spread(diff, sd_a, sd_b):
    """'yes' when the means differ by more than the two seed-to-seed sds together (the ±1 sd error bars do not
    overlap); 'no' when they overlap; 'one seed' when a group has a single seed and no spread to compare with."""
    if any(pd.isna(v) for v in (diff, sd_a, sd_b)):
        return "one seed"
    return "yes" if abs(diff) > sd_a + sd_b else "no"


def seed_count(column):
    """The stats column that counts the seeds behind a metric: resumed jobs give accuracies, not timings."""
    return "n_timed" if methods.partial_when_resumed(column) else "n_seeds"


def differences(stats):
    """Every method against the majority-vote ensemble at the same number of ranks, and against the all-threads
    sequential run, for accuracy and the slowest rank's fit time."""
    ensemble = stats[stats["method"] == "ensemble_majority"]
    sequential = stats[(stats["method"] == "sequential") & (stats["threads"] == "all")]
    pairs = [
        (stats[stats["method"] != "ensemble_majority"].merge(ensemble, on="ranks", suffixes=("", "_ref")),
         "ensemble_majority"),
        (stats.merge(sequential, how="cross", suffixes=("", "_ref")), "sequential threads=all"),
    ]
    rows = []
    for merged, reference in pairs:
        for _, row in merged[merged["method"] != "sequential"].iterrows():
            for metric in DIFF_METRICS:
                a, b = row[f"{metric}_mean"], row[f"{metric}_mean_ref"]
                sd_a, sd_b = row[f"{metric}_sd"], row[f"{metric}_sd_ref"]
                seeds = seed_count(metric)
                rows.append({"metric": metric, "ranks": row["ranks"], "method": row["method"],
                             "period": row["period"], "threads": row["threads"], "reference": reference, "mean": a,
                             "reference_mean": b, "difference": a - b, "spread": sd_a + sd_b,
                             "n_seeds": min(row[seeds], row[f"{seeds}_ref"]),
                             "exceeds_spread": exceeds_spread(a - b, sd_a, sd_b)})
    return pd.DataFrame(rows, columns=DIFF_COLUMNS)


# --- the paper's numbers next to ours -------------------------------------------------------------------------


def ours_for(paper_row, stats):
    """Our value for one row of the paper's table: mean, sd, seeds, world sizes, cores used, oversubscribed, source
    (mean None: this run has no matching core count)."""
    metric, cores = paper_row["metric"], str(paper_row["cores"])
    seq = stats[(stats["method"] == "sequential") & (stats["threads"] == "all")]
    ens = stats[stats["method"] == "ensemble_majority"]
    if metric in ("sequential_accuracy", "sequential_fit_seconds"):
        column, scale = ("accuracy", 100.0) if metric == "sequential_accuracy" else ("fit_seconds_mean", 1.0)
        return pick(seq, column, scale, f"sequential threads=all {column}" + (" × 100" if scale != 1 else ""))
    if metric == "time_decrease":
        return pick(ens[ens["ranks"] == int(cores)], "time_decrease_pct", 1.0,
                    f"ensemble_majority ranks={cores} time_decrease_pct")
    if metric in ("ensemble_accuracy_min", "ensemble_accuracy_max"):
        lo, hi = (int(c) for c in cores.split("-"))
        sub = ens[ens["ranks"].between(lo, hi)]
        if sub.empty:
            return empty()
        means = sub["accuracy_mean"] * 100.0
        best = means.idxmin() if metric.endswith("min") else means.idxmax()
        return {"ours_mean": means[best], "ours_sd": sub.loc[best, "accuracy_sd"] * 100.0,
                "n_seeds": sub["n_seeds"].min(), "n_ranks": len(sub), "our_cores_used": sub["cores_used"].max(),
                "our_oversubscribed": bool(sub["oversubscribed"].any()),
                "ours_source": f"{metric[-3:]} over ranks {lo}-{hi} of the mean ensemble_majority accuracy × 100"}
    return empty()


def pick(rows, column, scale, source):
    if rows.empty or pd.isna(rows.iloc[0][f"{column}_mean"]):
        return empty()
    row = rows.iloc[0]
    return {"ours_mean": row[f"{column}_mean"] * scale, "ours_sd": row[f"{column}_sd"] * scale,
            "n_seeds": row[seed_count(column)], "n_ranks": 1, "our_cores_used": row["cores_used"],
            "our_oversubscribed": bool(row["oversubscribed"]), "ours_source": source}


def empty():
    return {"ours_mean": None, "ours_sd": None, "n_seeds": 0, "n_ranks": 0, "our_cores_used": None,
            "our_oversubscribed": None, "ours_source": ""}


def compare(paper, stats):
    """The paper's reported numbers next to ours: difference (in percentage points for percentages) and ratio."""
    rows = []
    for _, p in paper.iterrows():
        ours = ours_for(p, stats)
        value, mean = float(p["value"]), ours["ours_mean"]
        diff = None if mean is None else mean - value
        rows.append({"machine": p["machine"], "cores": p["cores"], "metric": p["metric"], "unit": p["unit"],
                     "paper": value, **ours, "difference": diff,
                     "difference_pp": diff if p["unit"] == "percent" else None,
                     "ratio": None if mean is None or value == 0 else mean / value})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


# --- provenance and HTML --------------------------------------------------------------------------------------


def provenance(results, summary, workflow_cores):
    first = results[0][0]
    return {
        **{k: first[k] for k in HOST_KEYS if k != "scheduler"},
        "mpi_library": next((r["mpi_library"] for r, _ in results if r.get("mpi_library")), None),
        "thread_env": first["thread_settings"]["env"],
        "kernel_settings": first.get("kernel_settings"),
        "workflow_cores": workflow_cores,
        "git_commit": git_commit(),
        "threads": {f"{r.method} ranks={r.ranks} seed={r.seed}": str(r.threads) for r in summary.itertuples()},
    }


def html_cell(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def html_table(frame, table_id):
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "\n".join("<tr>" + "".join(f"<td>{html_cell(v)}</td>" for v in row) + "</tr>"
                     for row in frame.itertuples(index=False))
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


STYLE = ("<style>body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse;margin-bottom:2em}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} th{background:#eee}</style>")


def html_page(title, sections, inputs=""):
    """A page of tables; `inputs` (provenance.inputs_note) names the files it was built from, for the audit."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
             f"<meta name='{INPUTS_KEY}' content='{html.escape(inputs, quote=True)}'>"
             f"<title>{html.escape(title)}</title>{STYLE}</head><body><h1>{html.escape(title)}</h1>"]
    for heading, text, table in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(text)}</p>{table}")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def flat_provenance(prov, prefix=""):
    """Nested provenance as (key, value) rows: versions.keras, threads.<row>, ..."""
    rows = []
    for key, value in prov.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flat_provenance(value, name + ".")
        else:
            rows.append({"key": name, "value": ", ".join(map(str, value)) if isinstance(value, list) else value})
    return rows


def spread_sentence(diffs):
    """The report's plain-language verdict: which differences exceed the seed-to-seed spread."""
    judged = diffs[diffs["exceeds_spread"] != "one seed"]
    if judged.empty:
        return ("Every group ran with a single seed, so no seed-to-seed spread is known: run with several seeds "
                "(config key seeds) to tell real differences from noise.")
    big = [f"{d.method} vs {d.reference} at {d.ranks} ranks ({d.metric}: {d.difference:+.4g})"
           for d in judged.itertuples() if d.exceeds_spread == "yes"]
    if not big:
        return "No difference exceeds the seed-to-seed spread (sum of the two sample standard deviations)."
    return ("Differences larger than the seed-to-seed spread (sum of the two sample standard deviations): "
            + "; ".join(big) + ". All others are within the spread.")


SHORT_STATS = ["method", "ranks", "threads", "cores_used", "oversubscribed", "n_seeds", "accuracy_mean",
               "accuracy_sd", "fit_seconds_max_mean", "fit_seconds_max_sd", "job_seconds_mean", "job_seconds_sd",
               "time_decrease_pct_mean", "time_decrease_pct_sd", "speedup_mean", "efficiency_mean"]


def summary_page(summary, stats, diffs, comparison, inputs=""):
    return html_page("Summary", [
        ("Mean ± sd over seeds", "One row per method, number of ranks and threads (summary_stats.csv); sd is the "
         "sample standard deviation (ddof=1), empty with one seed.", html_table(stats[SHORT_STATS], "summary-stats")),
        ("Which differences exceed the seed-to-seed spread", spread_sentence(diffs), html_table(diffs, "differences")),
        ("Paper comparison", "The paper's numbers next to ours (paper_comparison.csv); difference_pp in percentage "
         "points for percentages, ratio = ours / paper; our_cores_used and our_oversubscribed say what our run had.",
         html_table(comparison, "paper-comparison")),
        ("Every run", "summary.csv: one row per method, ranks, threads and seed.", html_table(summary, "summary")),
    ], inputs)


def provenance_page(prov, inputs=""):
    rows = pd.DataFrame(flat_provenance(prov), columns=["key", "value"])
    return html_page("Run provenance", [
        ("Where and with what these numbers were made",
         "Package versions, CPU model, count and vector-ISA flags, cores given to the workflow, MPI library, "
         "threads per job, git commit of the workflow.", html_table(rows, "provenance")),
    ], inputs)


def method_page(summary, method, inputs=""):
    rows = summary[summary["method"] == method]
    text = (f"No run of {method} in this configuration." if rows.empty else
            f"{len(rows)} run(s) of {method}: every number of ranks, threads and seed.")
    return html_page(f"Method: {method}", [(method, text, html_table(rows, f"method-{method}"))], inputs), text


# --- the stage's entry points ---------------------------------------------------------------------------------


def summarize(result_paths, paper_path, workflow_cores, outputs, root="results", targets=()):
    """Writes summary, statistics, differences, comparison, rank times and provenance of the results (result.json
    paths; the benchmarks of their jobs are where the method declaration puts them under `root`) to the paths in
    `outputs`; returns the verdict on the seed spread."""
    loaded = []
    for path in result_paths:
        result = atomic.read_json(path)
        loaded.append((result, methods.benchmarks(methods.run_of(result), root)))
    summary = summary_table(loaded, targets)
    stats = group_stats(summary)
    diffs = differences(stats)
    comparison = compare(pd.read_csv(paper_path, dtype={"cores": str}), stats)
    for key, frame in (("summary", summary), ("stats", stats), ("differences", diffs),
                       ("comparison", comparison), ("rank_times", rank_times(loaded))):
        atomic.write_csv(outputs[key], frame)
    atomic.write_json(outputs["provenance"], provenance(loaded, summary, workflow_cores))
    return spread_sentence(diffs)


def tables(summary_path, stats_path, differences_path, comparison_path, provenance_path, summary_html,
           provenance_html, method_pages=()):
    """The summary, the provenance and each method's runs as HTML pages for the Snakemake report; `method_pages`:
    (method, path) pairs. Returns a line per method page."""
    tables = (summary_path, stats_path, differences_path, comparison_path)
    frames = [pd.read_csv(p) for p in tables]
    atomic.write_text(summary_html, summary_page(*frames, inputs_note(tables)))
    atomic.write_text(provenance_html, provenance_page(atomic.read_json(provenance_path),
                                                      inputs_note([provenance_path])))
    lines = []
    for method, out in method_pages:
        page, text = method_page(frames[0], method, inputs_note([summary_path]))
        atomic.write_text(out, page)
        lines.append(text)
    return "\n".join(lines)

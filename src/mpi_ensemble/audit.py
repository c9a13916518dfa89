"""The audit: `python -m mpi_ensemble audit RESULTS_DIR` rebuilds a finished results folder's numbers from what was
saved, without the summarize stage's code, and names every place where they disagree.

- Models: every saved model is reloaded, its weights checked against the `weights_sha256` of its record, and
  rescored on the test set; every vote (the paper's majority with ties to the lowest class, soft, tie-break), every
  one-shot weight average and the single-shard control is recomputed from the members.
- Records: each result's copy of its members' timing (`rank_timing`) must equal the members' own rank records.
- summary.csv and summary_stats.csv: every column is recomputed from the rank records, the rescored metrics and
  the Snakemake benchmark files, with the formulas written out here a second time (docs/results.md).
- Figures and report tables: each names the SHA-256 of the files it was made from (records.INPUTS_KEY); those
  must be the files in the folder now.

One line per disagreement: the file, the row, the column, the value found and the one recomputed.
"""

import json
import math
import statistics
import zipfile
from pathlib import Path

import numpy as np

from . import atomic, metrics, model, records, voting

CLASSES = 10
REL_TOL = 1e-5  # summary.csv keeps 6 significant digits
ENSEMBLE_FAMILY = ("ensemble_majority", "ensemble_soft", "ensemble_majority_tiebreak", "single_shard",
                   "weight_average_by_test", "weight_average_by_validation")
TRAINED_TOGETHER = ("data_parallel", "local_sgd", "weight_average_shared_start")
# The jobs whose benchmarks add up to a result's job time, after its training job (docs/results.md, job_seconds).
FOLLOWING_JOBS = {"ensemble_majority": ["ensemble"], "ensemble_soft": ["ensemble", "vote_variants"],
                  "ensemble_majority_tiebreak": ["ensemble", "vote_variants"],
                  "weight_average_by_test": ["ensemble", "weight_average"],
                  "weight_average_by_validation": ["ensemble", "weight_average"],
                  "single_shard": ["ensemble", "single_shard"]}
TIMING = ("fit_seconds_mean", "fit_seconds_max", "train_job_seconds", "job_seconds", "time_decrease_pct", "speedup",
          "efficiency", "job_speedup", "allreduce_seconds_max", "core_seconds", "cpu_seconds",
          "images_per_second_per_core", "gflops_per_core")


class Findings:
    """Disagreements, and what was checked."""

    def __init__(self):
        self.lines, self.checked = [], {"models": 0, "results": 0, "summary cells": 0, "statistics cells": 0,
                                        "figures": 0, "tables": 0}

    def add(self, file, row, column, value, recomputed):
        self.lines.append(f"{file}: {row}, column {column}: value {value}, recomputed {recomputed}")

    def verdict(self):
        what = ", ".join(f"{n} {k}" for k, n in self.checked.items())
        if not self.lines:
            return f"audit: clean ({what} checked)\n"
        return f"audit: {len(self.lines)} disagreement(s) ({what} checked)\n" + "\n".join(self.lines) + "\n"


def same(a, b):
    """Equal as a CSV cell and its recomputation can be: both missing, or numbers within REL_TOL, or equal text."""
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) or v == "" for v in (a, b)]
    if any(missing):
        return all(missing)
    try:
        return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


# --- what the folder holds -------------------------------------------------------------------------------------


class Folder:
    """A results folder: its results, their members' records, benchmarks, test set and models."""

    def __init__(self, root, keras):
        self.root, self.keras = Path(root), keras
        self.results = {}
        for path in sorted(self.root.glob("*/**/result.json")):
            if "checkpoints" not in path.relative_to(self.root).parts:
                self.results[path] = atomic.read_json(path)
        [test_x] = sorted(self.root.glob("data/*/test_x.npy")) or [None]
        if test_x is None:
            raise FileNotFoundError(f"{self.root}/data/<dataset>/test_x.npy: no test set to rescore the models on")
        self.test_x, self.test_y = np.load(test_x), np.load(test_x.with_name("test_y.npy"))
        self._models, self._networks = {}, {}

    def record_paths(self, path, result):
        """The rank records of a result's members (none for the sequential run: its record is its result)."""
        n, seed = result["ranks"], result["seed"]
        if result["method"] in ENSEMBLE_FAMILY:
            ranks = [0] if result["method"] == "single_shard" else range(n)
            return [self.root / "models" / f"ranks{n}" / f"seed{seed}" / f"rank{r}.json" for r in ranks]
        if result["method"] in TRAINED_TOGETHER:
            return [path.parent / f"rank{r}.json" for r in range(n)]
        return []

    def member_records(self, path, result):
        """The members' rank records; the sequential run's, rebuilt from its result."""
        if result["method"] == "sequential":
            return [{**result["rank_timing"][0], "thread_settings": result["thread_settings"],
                     "job_cores": result["job_cores"], "precision": result["precision"],
                     "settings": {"epochs": result["epochs"], "batch_size": result["batch_size"]}}]
        return [atomic.read_json(p) for p in self.record_paths(path, result)]

    def benchmarks(self, result):
        """The benchmark files of the jobs a result waited for, the training job first."""
        method, n, seed = result["method"], result["ranks"], result["seed"]
        bench = self.root / "benchmarks"
        if method == "sequential":
            return [bench / "train_sequential" / f"threads{result['threads']}_seed{seed}.tsv"]
        if method == "local_sgd":
            return [bench / "train_local_sgd" / f"period{result['period']}_ranks{n}_seed{seed}.tsv"]
        if method in TRAINED_TOGETHER:
            return [bench / f"train_{method}" / f"ranks{n}_seed{seed}.tsv"]
        return [bench / job / f"ranks{n}_seed{seed}.tsv" for job in ["train_mpi", *FOLLOWING_JOBS[method]]]

    def model(self, path):
        """(test-set softmax, weights) of a saved model, each model read once. Models of one architecture share
        one network (and its traced forward pass); only their weights are loaded into it."""
        if path not in self._models:
            net, forward = self.network(path)
            net.load_weights(path)
            self._models[path] = (np.asarray(forward(self.test_x)), net.get_weights())
        return self._models[path]

    def network(self, path):
        """The network and compiled forward pass for a saved model's architecture (its archive's config.json)."""
        import tensorflow as tf

        with zipfile.ZipFile(path) as archive:
            config = architecture(json.loads(archive.read("config.json")))
        if config not in self._networks:
            net = self.keras.models.load_model(path, compile=False)
            self._networks[config] = (net, tf.function(lambda x: net(x, training=False)))
        return self._networks[config]


def architecture(config):
    """A model's config as a key, without what differs between two saves of the same architecture (object ids)."""
    return json.dumps(without_object_ids(config), sort_keys=True)


def without_object_ids(value):
    if isinstance(value, dict):
        return {k: without_object_ids(v) for k, v in value.items() if k != "shared_object_id"}
    if isinstance(value, list):
        return [without_object_ids(v) for v in value]
    return value


def weights_sha256(weights):
    import hashlib

    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()


def read_benchmark(path):
    """(seconds, max RSS MiB or None) of a Snakemake benchmark file, read with the csv module."""
    import csv

    with open(path, encoding="utf-8") as handle:
        row = next(csv.DictReader(handle, delimiter="\t"))
    try:
        rss = float(row.get("max_rss", ""))
    except ValueError:
        rss = None
    return float(row["s"]), rss


# --- models, votes and the results' metrics --------------------------------------------------------------------


def saved_models(folder, path, result):
    """(model, the checksum its record gives it) of every model a result rests on: the members, and a model made
    from them (a weight average) or by all ranks together (whose every rank recorded the checksum)."""
    if result["method"] == "sequential":
        return [(path.parent / "model.keras", result["rank_timing"][0]["weights_sha256"])]
    records_ = folder.member_records(path, result)
    if result["method"] in TRAINED_TOGETHER:
        return [(path.parent / "model.keras", r["weights_sha256"]) for r in records_]
    members = [(p.with_suffix(".keras"), r["weights_sha256"]) for p, r in zip(folder.record_paths(path, result),
                                                                               records_)]
    if result["method"].startswith("weight_average_by"):
        members.append((path.parent / "model.keras", result["weights_sha256"]))
    return members


def check_models(folder, findings):
    """Every model of every result: present, and bitwise what its record says (each model and record once)."""
    pairs = {pair for path, result in folder.results.items() for pair in saved_models(folder, path, result)}
    for model_path, expected in sorted(pairs):
        if not model_path.is_file():
            findings.add(model_path, "-", "file", "missing", "a saved model")
        elif weights_sha256(folder.model(model_path)[1]) != expected:
            findings.add(model_path, "-", "weights_sha256", weights_sha256(folder.model(model_path)[1]),
                         f"{expected} (its record)")
    findings.checked["models"] = len(folder._models)


def rescore(folder, findings):
    """{result path: recomputed metrics, ties, mean member accuracy}, compared with each result.json."""
    scored = {}
    for path, result in folder.results.items():
        models = [m for m, _ in saved_models(folder, path, result)]
        if not all(m.is_file() for m in models):
            continue
        scored[path] = outcome = recompute(folder, path, result, models)
        for key in ("accuracy", "precision", "recall", "f1", "ties"):
            value = result["ties"] if key == "ties" else result["metrics"][key]
            if not same(value, outcome[key]):
                findings.add(path, "metrics", key, value, outcome[key])
        if result["method"].startswith("weight_average_by"):
            check_average(folder, path, result, models, findings)
        if result["method"] == "ensemble_majority":
            check_probabilities(path.parent / "probabilities.npy", np.stack([folder.model(m)[0] for m in models]),
                                findings)
        findings.checked["results"] += 1
    return scored


def recompute(folder, path, result, models):
    """The method's labels from its models' predictions: the votes from the members, one model's argmax else."""
    method, y = result["method"], folder.test_y
    probs = np.stack([folder.model(m)[0] for m in models])
    members = probs[:-1] if method.startswith("weight_average_by") else probs
    ties = 0
    if method == "ensemble_majority":
        winners, tied = voting.majority_vote(probs.argmax(axis=2), CLASSES)
        ties = int(tied.sum())
    elif method == "ensemble_soft":
        winners = probs.astype(np.float64).mean(axis=0).argmax(axis=1)
    elif method == "ensemble_majority_tiebreak":
        winners, tied = voting.majority_vote_tiebreak(probs)
        ties = int(tied.sum())
    else:
        winners = probs[-1].argmax(axis=1)  # one model: the run's, rank 0 alone, or the weight average
    scores = metrics.classification_metrics(y, winners, CLASSES)
    accuracy = [float((p.argmax(axis=1) == y).mean()) for p in members]
    return {**{k: scores[k] for k in ("accuracy", "precision", "recall", "f1")}, "ties": ties,
            "member_accuracy_mean": sum(accuracy) / len(accuracy)}


def check_average(folder, path, result, models, findings):
    """A one-shot average: weighted by what its name says, and its weights the members' weighted mean."""
    members = models[:-1]
    if result["method"] == "weight_average_by_test":
        wanted = [float((folder.model(m)[0].argmax(axis=1) == folder.test_y).mean()) for m in members]
    else:
        wanted = [atomic.read_json(m.with_suffix(".json"))["history"]["val_accuracy"][-1] for m in members]
    if not all(same(a, b) for a, b in zip(result["averaging_weights"], wanted)):
        findings.add(path, "weighting", "averaging_weights", result["averaging_weights"], wanted)
    share = np.asarray(wanted, dtype=np.float64) / np.sum(wanted)
    layers = zip(*(folder.model(m)[1] for m in members))
    average = [sum(s * np.asarray(w, dtype=np.float64) for s, w in zip(share, layer)) for layer in layers]
    gap = max(float(np.abs(a - b).max()) for a, b in zip(average, folder.model(models[-1])[1]))
    if gap > 1e-6:
        findings.add(models[-1], "weights", "weights", "the saved average",
                     f"{gap:.3g} away from the members' weighted mean")


def check_probabilities(path, recomputed, findings):
    saved = np.load(path) if path.is_file() else None
    if saved is None or saved.shape != recomputed.shape or not np.allclose(saved, recomputed, atol=1e-5):
        findings.add(path, "-", "probabilities", "saved" if saved is not None else "missing",
                     "the members' predictions now")


def check_rank_timing(folder, findings):
    """Each result's copy of its members' timing must be what their rank records say."""
    for path, result in folder.results.items():
        if result["method"] == "sequential":
            continue
        for copy, record in zip(result["rank_timing"], folder.member_records(path, result)):
            for key, value in copy.items():
                if key != "affinity" and key in record and not same(value, record[key]):
                    findings.add(path, f"rank_timing[{copy['rank']}]", key, value, f"{record[key]} (rank record)")


# --- summary.csv and summary_stats.csv, recomputed --------------------------------------------------------------


def per_rank_threads(record):
    threads = record["thread_settings"]["threads"]
    return record["job_cores"] if threads == "all" else int(threads)


def summary_rows(folder, scored):
    """Every summary row, keyed by (method, ranks, period, threads, seed), from records, rescoring and benchmarks."""
    rows = {}
    for path, result in folder.results.items():
        recs = folder.member_records(path, result)
        first = recs[0]
        row = {"method": result["method"], "ranks": result["ranks"], "period": result.get("period"),
               "seed": result["seed"], "threads": str(first["thread_settings"]["threads"]),
               "compute_precision": first["precision"], **scored.get(path, {})}
        row.update(resources(result, recs))
        row.update(job_times(folder, result, recs))
        row.update(throughput(result, recs, row))
        rows[(row["method"], row["ranks"], str(row["period"]), row["threads"], row["seed"])] = row
    add_baselines(rows)
    return rows


def resources(result, recs):
    """Cores, oversubscription, resume state, fit times, steps and traffic of the members."""
    job_cores = recs[0]["job_cores"]
    per_rank = per_rank_threads(recs[0])
    fits = [r["fit_seconds"] for r in recs]
    resumed = [r for r in recs if r.get("resumed_from_epoch")]
    batch = recs[0]["settings"]["batch_size"]
    return {
        "cores_used": min(len(recs) * per_rank, job_cores),
        "oversubscribed": recs[0]["thread_settings"]["threads"] != "all" and result["ranks"] * per_rank > job_cores,
        "resumed_from_epoch": max([int(r.get("resumed_from_epoch") or 0) for r in recs]),
        "resumed_exactly": None if not resumed else all(r.get("resumed_exactly") is not False for r in resumed),
        "fit_seconds_mean": sum(fits) / len(fits), "fit_seconds_max": max(fits),
        "train_images_per_rank": min(r["train_images"] for r in recs),
        "steps_per_epoch": recs[0].get("steps_per_epoch") or math.ceil(min(r["train_images"] for r in recs) / batch),
        "averagings_per_epoch": recs[0].get("averagings_per_epoch",
                                            math.nan if result["method"] == "sequential" else 0),
        "allreduces_per_rank": max(r.get("allreduce_count") or 0 for r in recs),
        "allreduce_bytes_per_rank": max(r.get("allreduce_bytes") or 0 for r in recs),
        "allreduce_seconds_max": max(r.get("allreduce_seconds") or 0.0 for r in recs),
        "cpu_seconds": sum(r["cpu_seconds"] for r in recs),
        "rank_peak_rss_mib": max(r["peak_rss_mib"] for r in recs),
    }


def job_times(folder, result, recs):
    """What the user waited for: the benchmarks' seconds; a result of one rank of a larger job counts that rank's
    own process, not the whole job."""
    jobs = [read_benchmark(p) for p in folder.benchmarks(result)]
    if len(recs) < result["ranks"]:
        jobs[0] = (max(r["wall_seconds"] for r in recs), max(r["peak_rss_mib"] for r in recs))
    return {"train_job_seconds": jobs[0][0], "job_seconds": sum(s for s, _ in jobs), "train_job_max_rss_mib": jobs[0][1]}


def throughput(result, recs, row):
    """Images and GFLOP/s per core over the slowest fit: every training step and validation pass the fit timed."""
    epochs = recs[0]["settings"]["epochs"]
    core_seconds = row["fit_seconds_max"] * row["cores_used"]
    train = sum(r["train_images"] for r in recs) * epochs
    flops = sum(r["train_images"] * model.training_flops_per_image() + (r.get("validation_images") or 0)
                * model.forward_flops() for r in recs) * epochs
    return {"images_per_second_per_core": train / core_seconds, "gflops_per_core": flops / core_seconds / 1e9,
            "core_seconds": core_seconds}


def add_baselines(rows):
    """The columns relative to the sequential runs of the same seed; timings of resumed jobs are none."""
    for row in rows.values():
        if row["resumed_from_epoch"]:
            row.update({column: math.nan for column in TIMING if column in row})
    for row in rows.values():
        one = rows.get(("sequential", 1, "None", "1", row["seed"]), {})
        every = rows.get(("sequential", 1, "None", "all", row["seed"]), {})
        ratio = lambda a, b: a / b if a is not None and b else math.nan  # noqa: E731
        row["time_decrease_pct"] = math.nan if row["method"] == "sequential" else \
            100.0 * (1.0 - ratio(row["fit_seconds_mean"], every.get("fit_seconds_mean")))
        row["speedup"] = ratio(one.get("fit_seconds_max"), row["fit_seconds_max"])
        row["efficiency"] = row["speedup"] / row["cores_used"]
        row["job_speedup"] = ratio(one.get("job_seconds"), row["job_seconds"])
        if row["resumed_from_epoch"]:
            row.update({c: math.nan for c in ("time_decrease_pct", "speedup", "efficiency", "job_speedup")})


def describe(key):
    method, ranks, period, threads, seed = key
    return f"{method} ranks={ranks}" + (f" period={period}" if period != "None" else "") + \
        f" threads={threads} seed={seed}"


def compare_summary(folder, rows, findings):
    import pandas as pd

    path = folder.root / "summary.csv"
    table = pd.read_csv(path, dtype={"threads": str, "period": str}, keep_default_na=True)
    seen = set()
    for i, cells in table.iterrows():
        period = "None" if pd.isna(cells["period"]) else cells["period"]
        key = (cells["method"], int(cells["ranks"]), period, cells["threads"], int(cells["seed"]))
        seen.add(key)
        row = rows.get(key)
        if row is None:
            findings.add(path, f"line {i + 2}", "method", key, "no result.json in the folder")
            continue
        for column in table.columns:
            findings.checked["summary cells"] += 1
            if column in row and not same(cells[column], row[column]):
                findings.add(path, f"line {i + 2} ({describe(key)})", column, cells[column], row[column])
    for key in set(rows) - seen:
        findings.add(path, "-", "method", "missing", f"a row for {describe(key)}")


def compare_stats(folder, rows, findings):
    """summary_stats.csv: per group, seeds counted and mean and sample sd of every metric, from the recomputed
    rows."""
    import pandas as pd

    path = folder.root / "summary_stats.csv"
    table = pd.read_csv(path, dtype={"threads": str, "period": str})
    groups = {}
    for row in rows.values():
        groups.setdefault((row["method"], row["ranks"], str(row["period"]), row["threads"]), []).append(row)
    for i, cells in table.iterrows():
        period = "None" if pd.isna(cells["period"]) else cells["period"]
        members = groups.get((cells["method"], int(cells["ranks"]), period, cells["threads"]))
        if members is None:
            findings.add(path, f"line {i + 2}", "method", cells["method"], "no such runs")
            continue
        wanted = group_values(members)
        for column in table.columns:
            if column in wanted:
                findings.checked["statistics cells"] += 1
                if not same(cells[column], wanted[column]):
                    findings.add(path, f"line {i + 2} ({cells['method']} ranks={cells['ranks']} period={period} "
                                       f"threads={cells['threads']})", column, cells[column], wanted[column])


def group_values(members):
    out = {"n_seeds": len({m["seed"] for m in members}),
           "n_timed": sum(1 for m in members if not m["resumed_from_epoch"]),
           "n_resumed": sum(1 for m in members if m["resumed_from_epoch"])}
    for metric in members[0]:
        values = [m[metric] for m in members if isinstance(m.get(metric), (int, float)) and not (
            isinstance(m[metric], float) and math.isnan(m[metric])) and not isinstance(m[metric], bool)]
        if values and metric not in ("ranks", "seed", "resumed_from_epoch"):
            out[f"{metric}_mean"] = sum(values) / len(values)
            out[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else math.nan
    return out


# --- figures and tables: made from the files that are there now ---------------------------------------------


def made_from(folder, findings):
    from PIL import Image

    sources = [(p, Image.open(p).text.get(records.INPUTS_KEY)) for p in sorted((folder.root / "figures").glob("*.png"))]
    sources += [(p, html_inputs(p)) for p in sorted((folder.root / "tables").rglob("*.html"))]
    for path, note in sources:
        findings.checked["figures" if path.suffix == ".png" else "tables"] += 1
        if not note:
            findings.add(path, "-", records.INPUTS_KEY, "absent", "the SHA-256 of the files it was made from")
            continue
        for name, digest in json.loads(note).items():
            current = folder.root / name
            actual = records.file_sha256(current) if current.is_file() else "missing"
            if actual != digest:
                findings.add(path, "-", f"made from {name}", digest, f"{actual} (the file now)")


def html_inputs(path):
    import html
    import re

    found = re.search(rf"<meta name='{re.escape(records.INPUTS_KEY)}' content='([^']*)'>", path.read_text())
    return html.unescape(found.group(1)) if found else None


# --- the command -----------------------------------------------------------------------------------------------


def audit(results_dir):
    """Every check above on one results folder; returns the Findings."""
    from . import runtime

    folder = Folder(results_dir, runtime.import_keras(None))
    findings = Findings()
    check_models(folder, findings)
    scored = rescore(folder, findings)
    check_rank_timing(folder, findings)
    rows = summary_rows(folder, scored)
    compare_summary(folder, rows, findings)
    compare_stats(folder, rows, findings)
    made_from(folder, findings)
    return findings


def run(results_dir, out=None):
    """The audit's verdict, printed and (with `out`) written; True when clean."""
    findings = audit(results_dir)
    text = findings.verdict()
    if out:
        atomic.write_text(out, text)
    print(text, end="")
    return not findings.lines

"""The audit: `python -m mpi_ensemble audit RESULTS_DIR` rebuilds a finished results folder's numbers from what was
saved, and names every place where they disagree.

It reads the method declaration (methods.py) to know what exists: where a result's rank records, models, histories
and job benchmarks lie, which figures and tables the run draws, which columns a resumed job leaves empty. Every
formula is its own second implementation: the votes, the weighted metrics, the FLOPs (from the saved models'
layers, not from model.py), the summary's columns, the statistics, the differences against the seed spread and the
paper comparison. It imports neither the product's vote nor its metrics, nor pandas: a bug there cannot pass here.

- Models: every saved model is reloaded, its weights checked against the `weights_sha256` of its record, and
  rescored on the test set; every vote, one-shot weight average and the single-shard control is recomputed from the
  members, and each member's test accuracy.
- Records: each result's copy of its members' timing (`rank_timing`) must equal the members' own rank records, and
  every history.csv the history its record carries.
- summary.csv, summary_stats.csv, method_differences.csv, paper_comparison.csv and rank_times.csv: every cell is
  recomputed from the records, the rescoring, the benchmarks and the paper's table.
- Figures and report tables: each must exist and name the SHA-256 of the files it was made from; those must be the
  files in the folder now.

One line per disagreement: the file, the row, the column, the value found and the one recomputed. Only cells that
were compared are counted as checked.
"""

import csv
import hashlib
import html
import json
import math
import re
import statistics
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import methods

REL_TOL = 1e-5  # the CSVs keep 6 significant digits
INPUTS_KEY = "mpi_ensemble:inputs"  # where figures and tables keep the SHA-256 of their inputs (records.py)
TABLE_FILES = ("summary.csv", "summary_stats.csv", "method_differences.csv", "paper_comparison.csv",
               "rank_times.csv")


class Findings:
    """Disagreements, and what was checked."""

    def __init__(self):
        self.lines = []
        self.checked = {"models": 0, "results": 0, "result cells": 0, "histories": 0, "summary cells": 0,
                        "statistics cells": 0,
                        "difference cells": 0, "comparison cells": 0, "rank time cells": 0, "figures": 0,
                        "tables": 0}

    def add(self, file, row, column, value, recomputed):
        self.lines.append(f"{file}: {row}, column {column}: value {value}, recomputed {recomputed}")

    def compare(self, counter, file, row, column, value, recomputed):
        """Compare one cell with its recomputation, count it, and note a disagreement."""
        self.checked[counter] += 1
        if not same(value, recomputed):
            self.add(file, row, column, value, recomputed)

    def verdict(self):
        what = ", ".join(f"{n} {k}" for k, n in self.checked.items())
        if not self.lines:
            return f"audit: clean ({what} checked)\n"
        return f"audit: {len(self.lines)} disagreement(s) ({what} checked)\n" + "\n".join(self.lines) + "\n"


def missing(value):
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def same(a, b):
    """Equal as a CSV cell and its recomputation can be: both missing, or numbers within REL_TOL, or equal text."""
    if missing(a) or missing(b):
        return missing(a) and missing(b)
    if isinstance(a, bool) or isinstance(b, bool) or str(a) in ("True", "False") or str(b) in ("True", "False"):
        return str(a) == str(b)
    try:
        return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_table(path):
    """A CSV as a list of {column: text} rows (empty cells are "")."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- the audit's own formulas ------------------------------------------------------------------------------------


def majority(labels, classes):
    """The paper's vote: most votes wins, a tie goes to the lowest class. (winners, ties)"""
    counts = np.stack([np.bincount(column, minlength=classes) for column in np.asarray(labels).T])
    top = counts.max(axis=1)
    return counts.argmax(axis=1), int(((counts == top[:, None]).sum(axis=1) > 1).sum())


def majority_tiebreak(probs):
    """Majority; a tie goes to the tied class with the largest summed probability. (winners, ties)"""
    labels = probs.argmax(axis=2)
    winners, ties = majority(labels, probs.shape[2])
    counts = np.stack([np.bincount(column, minlength=probs.shape[2]) for column in labels.T])
    summed = probs.astype(np.float64).sum(axis=0)
    for i in np.flatnonzero((counts == counts.max(axis=1)[:, None]).sum(axis=1) > 1):
        tied = np.flatnonzero(counts[i] == counts[i].max())
        winners[i] = tied[np.argmax(summed[i, tied])]
    return winners, ties


def weighted_scores(y, predicted, classes):
    """Accuracy and the class-support-weighted precision, recall and F1 (0 where a class is never predicted)."""
    scores = {"accuracy": float(np.mean(predicted == y)), "precision": 0.0, "recall": 0.0, "f1": 0.0}
    for c in range(classes):
        support = int(np.sum(y == c))
        hits = int(np.sum((y == c) & (predicted == c)))
        called = int(np.sum(predicted == c))
        p = hits / called if called else 0.0
        r = hits / support if support else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        for key, value in (("precision", p), ("recall", r), ("f1", f)):
            scores[key] += value * support / len(y)
    return scores


def layer_flops(net):
    """(forward FLOPs per image of each weighted layer, in order), read off the saved network's layers: a
    convolution costs 2·kh·kw·cin·cout per output position, a dense layer 2·in·out."""
    flops = []
    for layer in net.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        shape = tuple(kernel.shape)
        if len(shape) == 4:
            positions = int(np.prod(layer.output.shape[1:3]))
            flops.append(2 * int(np.prod(shape)) * positions)
        else:
            flops.append(2 * int(np.prod(shape)))
    return flops


def fit_flops_per_image(net):
    """(a training step's FLOPs per image, a validation pass's): forward, every weight gradient (as costly as its
    forward pass), every input gradient but the first layer's (its input is the image)."""
    flops = layer_flops(net)
    return 2 * sum(flops) + sum(flops[1:]), sum(flops)


def read_benchmark(path):
    """(seconds, max RSS MiB or None) of a Snakemake benchmark file."""
    with open(path, encoding="utf-8") as handle:
        row = next(csv.DictReader(handle, delimiter="\t"))
    try:
        rss = float(row.get("max_rss", ""))
    except ValueError:
        rss = None
    return float(row["s"]), rss


def png_text(path):
    """The text chunks (tEXt, zTXt, iTXt) of a PNG file, read by hand."""
    blob, found, at = Path(path).read_bytes(), {}, 8
    while at + 8 <= len(blob):
        length, kind = struct.unpack(">I4s", blob[at:at + 8])
        body = blob[at + 8:at + 8 + length]
        at += 12 + length
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            found[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            found[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _, _, rest = rest.partition(b"\0")  # language tag
            _, _, text = rest.partition(b"\0")  # translated keyword
            found[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode("utf-8")
    return found


def html_inputs(path):
    found = re.search(rf"<meta name='{re.escape(INPUTS_KEY)}' content='([^']*)'>", Path(path).read_text())
    return html.unescape(found.group(1)) if found else None


# --- what the folder holds -------------------------------------------------------------------------------------


class Folder:
    """A results folder: its results (by their Run), records, benchmarks, test set and models. `results`: the
    result files of the run being audited (the workflow passes its own); without them, every result.json found.
    A folder that earlier runs of other configs left results in holds more than the run wrote its tables from."""

    def __init__(self, root, keras, results=None):
        self.root, self.keras = Path(root), keras
        self.results = {}
        found = [Path(p) for p in results] if results is not None else sorted(self.root.glob("*/**/result.json"))
        for path in found:
            if "checkpoints" not in path.relative_to(self.root).parts:
                result = read_json(path)
                self.results[path] = (methods.run_of(result), result)
        [test_x] = sorted(self.root.glob("data/*/test_x.npy")) or [None]
        if test_x is None:
            raise FileNotFoundError(f"{self.root}/data/<dataset>/test_x.npy: no test set to rescore the models on")
        self.test_x, self.test_y = np.load(test_x), np.load(test_x.with_name("test_y.npy"))
        self._models, self._networks = {}, {}

    def path(self, declared):
        """A path of the declaration (below `results`) in this folder."""
        return self.root / Path(declared).relative_to("results")

    def records(self, run, result):
        """The rank records of a result's processes; the sequential run's, rebuilt from its result."""
        paths = methods.record_paths(run)
        if not paths:
            return [{**result["rank_timing"][0], "thread_settings": result["thread_settings"],
                     "job_cores": result["job_cores"], "precision": result["precision"],
                     "settings": {"epochs": result["epochs"], "batch_size": result["batch_size"]}}]
        return [read_json(self.path(p)) for p in paths]

    def model(self, path):
        """(test-set softmax, weights, training and validation FLOPs per image) of a saved model, each read once.
        Models of one architecture share one network and its traced forward pass; only their weights load."""
        if path not in self._models:
            net, forward = self.network(path)
            net.load_weights(path)
            self._models[path] = (np.asarray(forward(self.test_x)), net.get_weights(), fit_flops_per_image(net))
        return self._models[path]

    def network(self, path):
        import tensorflow as tf

        with zipfile.ZipFile(path) as archive:
            key = architecture(json.loads(archive.read("config.json")))
        if key not in self._networks:
            net = self.keras.models.load_model(path, compile=False)
            self._networks[key] = (net, tf.function(lambda x: net(x, training=False)))
        return self._networks[key]


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
    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()


# --- models, votes and the results' metrics --------------------------------------------------------------------


def saved_models(folder, run, result):
    """(model path, the checksum its record gives it) for every model a result rests on."""
    declared = methods.model_paths(run)
    if run.declared.made_of == "own":
        return [(folder.path(declared[0]), result["rank_timing"][0]["weights_sha256"])]
    records = folder.records(run, result)
    if run.declared.made_of == "together":
        return [(folder.path(declared[0]), r["weights_sha256"]) for r in records]
    pairs = [(folder.path(p), r["weights_sha256"]) for p, r in zip(declared, records)]
    if run.declared.saves_model:
        pairs.append((folder.path(declared[-1]), result["weights_sha256"]))
    return pairs


def check_models(folder, findings):
    """Every model of every result: present, and bitwise what its record says (each model and record once)."""
    pairs = {pair for path, (run, result) in folder.results.items() for pair in saved_models(folder, run, result)}
    for model_path, expected in sorted(pairs):
        if not model_path.is_file():
            findings.add(model_path, "-", "file", "missing", "a saved model")
            continue
        findings.checked["models"] += 1
        actual = weights_sha256(folder.model(model_path)[1])
        if actual != expected:
            findings.add(model_path, "-", "weights_sha256", actual, f"{expected} (its record)")


def rescore(folder, findings):
    """{result path: recomputed metrics, ties, member accuracies, FLOPs}, compared with each result.json."""
    scored = {}
    for path, (run, result) in folder.results.items():
        models = [m for m, _ in saved_models(folder, run, result)]
        if not all(m.is_file() for m in models):
            continue
        scored[path] = outcome = recompute(folder, run, models)
        findings.checked["results"] += 1
        for key in ("accuracy", "precision", "recall", "f1"):
            findings.compare("result cells", path, "metrics", key, result["metrics"][key], outcome[key])
        findings.compare("result cells", path, "-", "ties", result["ties"], outcome["ties"])
        if len(result["member_accuracy"]) != len(outcome["member_accuracy"]):
            findings.add(path, "-", "member_accuracy", result["member_accuracy"], outcome["member_accuracy"])
        for i, (a, b) in enumerate(zip(result["member_accuracy"], outcome["member_accuracy"])):
            findings.compare("result cells", path, f"member {i}", "member_accuracy", a, b)
        if run.declared.saves_model and run.declared.made_of == "members":
            check_average(folder, path, result, models, findings)
        if run.method == "ensemble_majority":
            check_probabilities(path.parent / "probabilities.npy", np.stack([folder.model(m)[0] for m in models]),
                                findings)
            voted = delivered_history(run, folder.records(run, result)) or []
            for epoch, (a, b) in enumerate(zip(result.get(methods.DELIVERED) or [], voted)):
                findings.compare("result cells", path, f"epoch {epoch + 1}", methods.DELIVERED, a, b)
            if len(result.get(methods.DELIVERED) or []) != len(voted):
                findings.add(path, "-", methods.DELIVERED, result.get(methods.DELIVERED), voted)
    return scored


def recompute(folder, run, models):
    """A result's labels from its models' predictions: the votes from the members, one model's argmax else."""
    probs = np.stack([folder.model(m)[0] for m in models])
    y, classes = folder.test_y, probs.shape[2]
    members = probs[:-1] if run.declared.saves_model and run.declared.made_of == "members" else probs
    ties = 0
    if run.method == "ensemble_majority":
        winners, ties = majority(probs.argmax(axis=2), classes)
    elif run.method == "ensemble_soft":
        winners = probs.astype(np.float64).mean(axis=0).argmax(axis=1)
    elif run.method == "ensemble_majority_tiebreak":
        winners, ties = majority_tiebreak(probs)
    else:
        winners = probs[-1].argmax(axis=1)  # one model: the run's, rank 0 alone, or the weight average
    if run.declared.made_of in ("own", "together"):
        members = probs[:1]
    return {**weighted_scores(y, winners, classes), "ties": ties,
            "member_accuracy": [float(np.mean(p.argmax(axis=1) == y)) for p in members],
            "flops": folder.model(models[0])[2]}


def check_average(folder, path, result, models, findings):
    """A one-shot average: weighted by what its name says, and its weights the members' weighted mean."""
    members = models[:-1]
    if result["method"] == "weight_average_by_test":
        wanted = [float(np.mean(folder.model(m)[0].argmax(axis=1) == folder.test_y)) for m in members]
    else:
        wanted = [read_json(m.with_suffix(".json"))["history"]["val_accuracy"][-1] for m in members]
    for i, (a, b) in enumerate(zip(result["averaging_weights"], wanted)):
        findings.compare("result cells", path, f"member {i}", "averaging_weights", a, b)
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
    for path, (run, result) in folder.results.items():
        if run.declared.made_of == "own":
            continue
        for copy, record in zip(result["rank_timing"], folder.records(run, result)):
            for key, value in copy.items():
                if key != "affinity" and key in record and not same(value, record[key]):
                    findings.add(path, f"rank_timing[{copy['rank']}]", key, value, f"{record[key]} (rank record)")


def check_histories(folder, findings):
    """Every history.csv a result rests on against the per-epoch history its rank record carries."""
    seen = set()
    for path, (run, result) in folder.results.items():
        for declared, rank in zip(methods.history_paths(run), methods.members(run)):
            history = folder.path(declared)
            if history in seen:
                continue
            seen.add(history)
            if not history.is_file():
                findings.add(history, "-", "file", "missing", "the model's history")
                continue
            carried = (result["rank_timing"][0] if run.declared.made_of == "own"
                       else folder.records(run, result)[rank]).get("history", {})
            rows = read_table(history)
            findings.checked["histories"] += 1
            for metric, values in carried.items():
                if len(values) != len(rows):
                    findings.add(history, "-", metric, f"{len(rows)} epochs", f"{len(values)} (its record)")
                    continue
                for i, (row, value) in enumerate(zip(rows, values)):
                    if not same(row[metric], value):
                        findings.add(history, f"epoch {i + 1}", metric, row[metric], f"{value} (its record)")


# --- summary.csv, recomputed -------------------------------------------------------------------------------------


def threads_per_rank(record):
    threads = record["thread_settings"]["threads"]
    if threads == "all":
        return len(record["thread_settings"].get("affinity") or []) or record["job_cores"]
    return int(threads)


def delivered_history(run, recs):
    """The validation accuracy after every epoch of the model a training delivers: its own (or its ranks'
    averaged) model's, as its records carry it; for the ensemble the majority vote of its members' predictions of
    their common validation sample, voted here; none for the results that are no training's own."""
    made_of = run.declared.made_of
    if made_of == "rank0" or (made_of == "members" and run.method != "ensemble_majority"):
        return None
    if run.method != "ensemble_majority":
        return (recs[0].get("history") or {}).get(methods.DELIVERED)
    samples = [r.get("vote_sample") or {} for r in recs]
    if not samples[0].get("truth") or any(not s.get("labels") or None in s["labels"] for s in samples):
        return None
    truth = np.asarray(samples[0]["truth"])
    votes = [np.array([s["labels"][e] for s in samples]) for e in range(min(len(s["labels"]) for s in samples))]
    classes = 1 + max(int(truth.max()), *(int(v.max()) for v in votes))
    return [float(np.mean(majority(v, classes)[0] == truth)) for v in votes]


def time_to_targets(run, recs, cores_used, targets):
    """seconds_to_t and core_seconds_to_t: the slowest process's epochs summed up to the first whose delivered
    accuracy reached t."""
    out = {f"{prefix}{t:g}": None for t in targets for prefix in methods.TARGET_PREFIXES}
    history = delivered_history(run, recs)
    if not history:
        return out
    done = min(len(r.get("epoch_seconds") or []) for r in recs)
    reached = [max(sum(r["epoch_seconds"][:i + 1]) for r in recs) for i in range(done)]
    for t in targets:
        first = next((i for i, a in enumerate(history[:done]) if a >= t), None)
        if first is not None:
            out[f"seconds_to_{t:g}"], out[f"core_seconds_to_{t:g}"] = reached[first], reached[first] * cores_used
    return out


def summary_rows(folder, scored, targets=()):
    """Every summary row, keyed by (method, ranks, period, threads, seed), from records, rescoring and benchmarks."""
    rows = {}
    for path, (run, result) in folder.results.items():
        recs = folder.records(run, result)
        first = recs[0]
        row = {"method": run.method, "ranks": run.ranks, "period": result.get("period"), "seed": run.seed,
               "threads": str(first["thread_settings"]["threads"]), "compute_precision": first["precision"]}
        if path in scored:
            row.update({k: v for k, v in scored[path].items() if k not in ("member_accuracy", "flops")})
            accuracies = scored[path]["member_accuracy"]
            row["member_accuracy_mean"] = sum(accuracies) / len(accuracies)
        row.update(resources(run, result, recs))
        row.update(job_times(folder, run, recs))
        row.update(steps(run, result, recs))
        row.update(throughput(recs, row, scored.get(path, {}).get("flops")))
        row.update(time_to_targets(run, recs, row["cores_used"], targets))
        rows[(run.method, run.ranks, str(row["period"]), row["threads"], run.seed)] = row
    add_baselines(rows)
    return rows


def resources(run, result, recs):
    """Cores, oversubscription, resume state, fit times and traffic of the processes."""
    job_cores = recs[0]["job_cores"]
    per_rank = threads_per_rank(recs[0])
    fits = [r["fit_seconds"] for r in recs]
    resumed = [r for r in recs if r.get("resumed_from_epoch")]
    return {
        "cores_used": min(len(recs) * per_rank, job_cores),
        "oversubscribed": recs[0]["thread_settings"]["threads"] != "all" and run.ranks * per_rank > job_cores,
        "resumed_from_epoch": max(int(r.get("resumed_from_epoch") or 0) for r in recs),
        "resumed_exactly": None if not resumed else all(r.get("resumed_exactly") is not False for r in resumed),
        "fit_seconds_mean": sum(fits) / len(fits), "fit_seconds_max": max(fits),
        "train_images_per_rank": min(r["train_images"] for r in recs),
        "allreduces_per_rank": max(r.get("allreduce_count") or 0 for r in recs),
        "allreduce_bytes_per_rank": max(r.get("allreduce_bytes") or 0 for r in recs),
        "wire_bytes_per_rank": max(r.get("allreduce_wire_bytes") or 0 for r in recs),
        "allreduce_seconds_max": max(r.get("allreduce_seconds") or 0.0 for r in recs),
        "cpu_seconds": sum(r["cpu_seconds"] for r in recs),
        "rank_peak_rss_mib": max(r["peak_rss_mib"] for r in recs),
    }


def job_times(folder, run, recs):
    """What the user waited for: the benchmarks' seconds; rank 0 alone counts its own process, not the N-rank job.
    The training job's memory only where Snakemake's benchmark held every rank: not for rank 0 alone, not for ranks
    that ran as a SLURM step of their own or on several hosts."""
    jobs = [read_benchmark(folder.path(p)) for p in methods.benchmarks(run)]
    alone = run.declared.made_of == "rank0"
    train = max(r["wall_seconds"] for r in recs) if alone else jobs[0][0]
    stepped = run.ranks > 1 and any(r.get("slurm_step") is not None for r in recs)
    spread = len({r.get("host") for r in recs}) > 1
    return {"train_job_seconds": train, "job_seconds": train + sum(s for s, _ in jobs[1:]),
            "train_job_max_rss_mib": None if alone or stepped or spread else jobs[0][1]}


def steps(run, result, recs):
    """Batch per rank and all ranks together, optimizer steps per epoch and in all, averagings per epoch."""
    first, batch = recs[0], recs[0]["settings"]["batch_size"]
    per_epoch = first.get("steps_per_epoch") or -(-min(r["train_images"] for r in recs) // batch)
    return {"batch_per_rank": first.get("batch_per_rank") or batch,
            "global_batch": first.get("global_batch") or batch * run.ranks,
            "steps_per_epoch": per_epoch, "updates_per_rank": per_epoch * result["epochs"],
            "averagings_per_epoch": first.get("averagings_per_epoch", math.nan if run.method == "sequential" else 0)}


def throughput(recs, row, flops):
    """Images and GFLOP/s per core over the slowest fit, core-seconds."""
    epochs = recs[0]["settings"]["epochs"]
    core_seconds = row["fit_seconds_max"] * row["cores_used"]
    out = {"images_per_second_per_core": sum(r["train_images"] for r in recs) * epochs / core_seconds,
           "core_seconds": core_seconds}
    if flops:
        work = sum(r["train_images"] * flops[0] + (r.get("validation_images") or 0) * flops[1] for r in recs)
        out["gflops_per_core"] = work * epochs / core_seconds / 1e9
    return out


def add_baselines(rows):
    """The columns relative to the sequential runs of the same seed; a resumed job's partial columns empty."""
    for row in rows.values():
        one = rows.get(("sequential", 1, "None", "1", row["seed"]), {})
        every = rows.get(("sequential", 1, "None", "all", row["seed"]), {})
        one, every = ({} if base.get("resumed_from_epoch") else base for base in (one, every))

        def ratio(a, b):
            return a / b if a is not None and b else math.nan

        row["time_decrease_pct"] = math.nan if row["method"] == "sequential" else \
            100.0 * (1.0 - ratio(row["fit_seconds_mean"], every.get("fit_seconds_mean")))
        row["speedup"] = ratio(one.get("fit_seconds_max"), row["fit_seconds_max"])
        row["efficiency"] = ratio(row["images_per_second_per_core"], one.get("images_per_second_per_core"))
        row["job_speedup"] = ratio(one.get("job_seconds"), row["job_seconds"])
    for row in rows.values():
        if row["resumed_from_epoch"]:
            row.update({column: math.nan for column in row if methods.partial_when_resumed(column)})
            row.update({column: math.nan for column in methods.PARTIAL_WHEN_RESUMED})


def describe(key):
    method, ranks, period, threads, seed = key
    return f"{method} ranks={ranks}" + (f" period={period}" if period != "None" else "") + \
        f" threads={threads} seed={seed}"


def compare_summary(folder, rows, findings):
    path = folder.root / "summary.csv"
    seen = set()
    for i, cells in enumerate(read_table(path)):
        key = (cells["method"], int(cells["ranks"]), cells["period"] or "None", cells["threads"], int(cells["seed"]))
        seen.add(key)
        row = rows.get(key)
        if row is None:
            findings.add(path, f"line {i + 2}", "method", key, "no result.json in the folder")
            continue
        for column, value in cells.items():
            if column in row:
                findings.compare("summary cells", path, f"line {i + 2} ({describe(key)})", column, value, row[column])
    for key in set(rows) - seen:
        findings.add(path, "-", "method", "missing", f"a row for {describe(key)}")


# --- the statistics, the differences and the paper comparison, recomputed --------------------------------------

GROUP_KEY = ("method", "ranks", "period", "threads")


def group_stats(rows):
    """Per (method, ranks, period, threads): the seeds counted, and the mean and sample sd of every number."""
    groups = {}
    for row in rows.values():
        groups.setdefault((row["method"], row["ranks"], str(row["period"]), row["threads"]), []).append(row)
    return {key: group_values(members) for key, members in groups.items()}


def group_values(members):
    out = {"n_seeds": len({m["seed"] for m in members}),
           "n_timed": sum(1 for m in members if not m["resumed_from_epoch"]),
           "n_resumed": sum(1 for m in members if m["resumed_from_epoch"]),
           **{k: members[0][k] for k in ("cores_used", "oversubscribed")}}
    for metric in members[0]:
        values = [m[metric] for m in members if isinstance(m.get(metric), (int, float))
                  and not isinstance(m[metric], bool) and not missing(m[metric])]
        if metric not in ("ranks", "seed", "resumed_from_epoch", "cores_used"):
            out[f"{metric}_mean"] = sum(values) / len(values) if values else math.nan
            out[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else math.nan
        if methods.reached_column(metric):
            out[methods.reached_column(metric)] = len(values)
    return out


def stats_key(cells):
    return cells["method"], int(cells["ranks"]), cells["period"] or "None", cells["threads"]


def compare_stats(folder, stats, findings):
    path = folder.root / "summary_stats.csv"
    for i, cells in enumerate(read_table(path)):
        wanted = stats.get(stats_key(cells))
        if wanted is None:
            findings.add(path, f"line {i + 2}", "method", cells["method"], "no such runs")
            continue
        for column, value in cells.items():
            if column in wanted:
                findings.compare("statistics cells", path, f"line {i + 2} ({' '.join(cells[k] for k in GROUP_KEY)})",
                                 column, value, wanted[column])


def seeds_behind(metric):
    """Resumed jobs give accuracies, not timings: a timing's mean rests on the seeds that were timed."""
    return "n_timed" if methods.partial_when_resumed(metric) else "n_seeds"


def expected_differences(stats):
    """Every method against the majority vote at its N and against the all-threads sequential run."""
    out = {}
    every = [k for k in stats if k[0] == "sequential" and k[3] == "all"]
    for key, values in stats.items():
        if key[0] == "sequential":
            continue
        refs = [(k, "ensemble_majority") for k in stats if k[0] == "ensemble_majority" and k[1] == key[1]
                and key[0] != "ensemble_majority"] + [(k, "sequential threads=all") for k in every]
        for ref_key, reference in refs:
            ref = stats[ref_key]
            for metric in ("accuracy", "fit_seconds_max"):
                a, b = values[f"{metric}_mean"], ref[f"{metric}_mean"]
                sd_a, sd_b = values[f"{metric}_sd"], ref[f"{metric}_sd"]
                judged = "one seed" if any(missing(v) for v in (a - b, sd_a, sd_b)) else \
                    ("yes" if abs(a - b) > sd_a + sd_b else "no")
                seeds = seeds_behind(metric)
                out[(metric, key[1], key[0], key[2], key[3], reference)] = {
                    "mean": a, "reference_mean": b, "difference": a - b, "spread": sd_a + sd_b,
                    "n_seeds": min(values[seeds], ref[seeds]), "exceeds_spread": judged}
    return out


def compare_differences(folder, stats, findings):
    path = folder.root / "method_differences.csv"
    wanted = expected_differences(stats)
    seen = set()
    for i, cells in enumerate(read_table(path)):
        key = (cells["metric"], int(cells["ranks"]), cells["method"], cells["period"] or "None", cells["threads"],
               cells["reference"])
        seen.add(key)
        if key not in wanted:
            findings.add(path, f"line {i + 2}", "method", key, "no such comparison")
            continue
        for column, value in wanted[key].items():
            findings.compare("difference cells", path, f"line {i + 2}", column, cells[column], value)
    for key in set(wanted) - seen:
        findings.add(path, "-", "method", "missing", f"a row for {key}")


def paper_ours(metric, cores, stats):
    """(mean, sd, seeds, world sizes, cores used, oversubscribed) of ours for one row of the paper's table."""
    sequential = [v for k, v in stats.items() if k[0] == "sequential" and k[3] == "all"]
    ensemble = {k[1]: v for k, v in stats.items() if k[0] == "ensemble_majority"}
    if metric in ("sequential_accuracy", "sequential_fit_seconds") and sequential:
        column, scale = ("accuracy", 100.0) if metric == "sequential_accuracy" else ("fit_seconds_mean", 1.0)
        chosen, n = sequential[0], 1
    elif metric == "time_decrease" and int(cores) in ensemble:
        column, scale, chosen, n = "time_decrease_pct", 1.0, ensemble[int(cores)], 1
    elif metric.startswith("ensemble_accuracy_"):
        lo, hi = (int(c) for c in cores.split("-"))
        inside = [v for n, v in ensemble.items() if lo <= n <= hi]
        if not inside:
            return None
        pick = min if metric.endswith("min") else max
        chosen = pick(inside, key=lambda v: v["accuracy_mean"])
        return (100 * chosen["accuracy_mean"], 100 * chosen["accuracy_sd"], min(v["n_seeds"] for v in inside),
                len(inside), max(v["cores_used"] for v in inside), any(v["oversubscribed"] for v in inside))
    else:
        return None
    if missing(chosen[f"{column}_mean"]):
        return None
    return (scale * chosen[f"{column}_mean"], scale * chosen[f"{column}_sd"], chosen[seeds_behind(column)], n,
            chosen["cores_used"], chosen["oversubscribed"])


def compare_paper(folder, stats, paper_path, findings):
    """paper_comparison.csv: the paper's values as its table gives them, ours from the recomputed statistics."""
    path = folder.root / "paper_comparison.csv"
    table = {(r["machine"], r["cores"], r["metric"]): r for r in read_table(path)}
    for paper in read_table(paper_path):
        key = (paper["machine"], paper["cores"], paper["metric"])
        cells = table.pop(key, None)
        if cells is None:
            findings.add(path, "-", "metric", "missing", f"a row for {key}")
            continue
        ours = paper_ours(paper["metric"], paper["cores"], stats)
        value = float(paper["value"])
        mean = None if ours is None else ours[0]
        wanted = {"paper": value, "ours_mean": mean, "ours_sd": None if ours is None else ours[1],
                  "n_seeds": 0 if ours is None else ours[2], "n_ranks": 0 if ours is None else ours[3],
                  "our_cores_used": None if ours is None else ours[4],
                  "our_oversubscribed": None if ours is None else ours[5],
                  "difference": None if mean is None else mean - value,
                  "difference_pp": None if mean is None or paper["unit"] != "percent" else mean - value,
                  "ratio": None if mean is None or value == 0 else mean / value}
        for column, recomputed in wanted.items():
            findings.compare("comparison cells", path, f"{' '.join(key)}", column, cells[column], recomputed)
    for key in table:
        findings.add(path, "-", "metric", key, "no such row in the paper's table")


def compare_rank_times(folder, findings):
    """rank_times.csv: one row per process of the sequential runs, the ensembles and the methods whose ranks train
    together, its fit time from its record (empty for a resumed job)."""
    path = folder.root / "rank_times.csv"
    wanted = {}
    for _, (run, result) in folder.results.items():
        if run.declared.made_of not in ("own", "together") and run.method != "ensemble_majority":
            continue
        resumed = bool(result.get("resumed_from_epoch"))
        for record in folder.records(run, result):
            wanted[(run.method, run.ranks, str(result.get("period") or ""), str(result["threads"]), run.seed,
                    record["rank"])] = {
                "fit_seconds": None if resumed else record["fit_seconds"], "host": record.get("host"),
                "resumed_from_epoch": int(result.get("resumed_from_epoch") or 0)}
    for i, cells in enumerate(read_table(path)):
        key = (cells["method"], int(cells["ranks"]), cells["period"], cells["threads"], int(cells["seed"]),
               int(cells["rank"]))
        if key not in wanted:
            findings.add(path, f"line {i + 2}", "rank", key, "no such process")
            continue
        for column, value in wanted.pop(key).items():
            findings.compare("rank time cells", path, f"line {i + 2}", column, cells[column], value)
    for key in wanted:
        findings.add(path, "-", "rank", "missing", f"a row for {key}")


# --- figures and tables: made from the files that are there now ---------------------------------------------


def made_from(folder, findings):
    """Every figure and table the run draws: present, and drawn from the files in the folder now."""
    expected = [folder.root / "figures" / name for name in methods.FIGURES.values()]
    expected += [folder.root / "tables" / name for name in methods.TABLES]
    for path in expected:
        if not path.is_file():
            findings.add(path, "-", "file", "missing", "a figure or table the run draws")
            continue
        note = png_text(path).get(INPUTS_KEY) if path.suffix == ".png" else html_inputs(path)
        findings.checked["figures" if path.suffix == ".png" else "tables"] += 1
        if not note:
            findings.add(path, "-", INPUTS_KEY, "absent", "the SHA-256 of the files it was made from")
            continue
        for name, digest in json.loads(note).items():
            current = folder.root / name
            actual = sha256(current) if current.is_file() else "missing"
            if actual != digest:
                findings.add(path, "-", f"made from {name}", digest, f"{actual} (the file now)")


# --- the command -----------------------------------------------------------------------------------------------


def audit(results_dir, paper_path, results=None):
    """Every check above on one results folder (on `results` of it, where given); returns the Findings."""
    from . import startup

    folder = Folder(results_dir, startup.import_keras(None), results)
    findings = Findings()
    missing_tables = [name for name in TABLE_FILES if not (folder.root / name).is_file()]
    for name in missing_tables:
        findings.add(folder.root / name, "-", "file", "missing", "a table the run writes")
    check_models(folder, findings)
    scored = rescore(folder, findings)
    check_rank_timing(folder, findings)
    check_histories(folder, findings)
    header = [] if "summary.csv" in missing_tables else \
        next(csv.reader((folder.root / "summary.csv").read_text(encoding="utf-8").splitlines()))
    targets = [float(c[len("seconds_to_"):]) for c in header if c.startswith("seconds_to_")]
    rows = summary_rows(folder, scored, targets)
    stats = group_stats(rows)
    checks = {"summary.csv": lambda: compare_summary(folder, rows, findings),
              "summary_stats.csv": lambda: compare_stats(folder, stats, findings),
              "method_differences.csv": lambda: compare_differences(folder, stats, findings),
              "paper_comparison.csv": lambda: compare_paper(folder, stats, paper_path, findings),
              "rank_times.csv": lambda: compare_rank_times(folder, findings)}
    for name, check in checks.items():
        if name not in missing_tables:
            check()
    made_from(folder, findings)
    return findings


def run(results_dir, paper_path, out=None, results=None):
    """The audit's verdict, printed and (with `out`) written; True when clean."""
    from .atomic import write_text

    findings = audit(results_dir, paper_path, results)
    text = findings.verdict()
    if out:
        write_text(out, text)
    print(text, end="")
    return not findings.lines

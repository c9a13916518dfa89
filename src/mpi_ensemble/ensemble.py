"""The ensemble rule: load the saved member models, predict, vote, score."""

import zipfile

import numpy as np

from . import data, io, metrics, voting

CLASSES = 10


class ModelFileError(ValueError):
    pass


def load_member(keras, path):
    """Load one saved model, naming the file when it is missing or damaged."""
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a valid .keras file (missing, truncated or corrupted); "
                             "delete it and rerun the workflow to retrain that job")
    try:
        return keras.models.load_model(path)
    except Exception as err:  # Keras raises many kinds for a damaged archive
        raise ModelFileError(f"{path}: cannot be loaded as a Keras model ({err}); delete it and rerun") from err


def timing_summary(records):
    fits = np.array([r["fit_seconds"] for r in records])
    return {
        "fit_seconds_mean": float(fits.mean()),
        "fit_seconds_max": float(fits.max()),
        "fit_seconds_min": float(fits.min()),
        "peak_rss_mb_max": float(max(r["peak_rss_mb"] for r in records)),
        "train_images_per_rank": [r["train_images"] for r in records],
        "threads_per_rank": records[0]["thread_settings"]["threads"],
        "affinity": [r["thread_settings"]["affinity"] for r in records],
        "fit_seconds_per_rank": [float(f) for f in fits],
        "cpu_seconds_sum": sum(r["cpu_seconds"] for r in records) if all("cpu_seconds" in r for r in records) else None,
        "precision": records[0].get("precision", "float32"),
        "epochs": records[0].get("settings", {}).get("epochs"),
    }


def member_records(paths, ranks):
    records = sorted((io.read_json(p) for p in paths), key=lambda r: r["rank"])
    if [r["rank"] for r in records] != list(range(ranks)):
        raise ValueError(f"timing records cover ranks {[r['rank'] for r in records]}, expected 0..{ranks - 1}")
    return records


def run(args):
    from .training import import_keras, predict

    keras = import_keras(1)
    records = member_records(args.records, len(args.models))
    test_x, test_y = data.load_arrays(args.test_x, args.test_y)
    probabilities = np.stack([predict(load_member(keras, p), test_x) for p in args.models])
    member_labels = probabilities.argmax(axis=2)
    winners, ties = voting.majority_vote(member_labels, CLASSES)
    scores = metrics.classification_metrics(test_y, winners, CLASSES)
    member_accuracy = [float((labels == test_y).mean()) for labels in member_labels]
    io.write_npy(args.probabilities, probabilities.astype(np.float32))
    io.write_json(args.metrics, {
        "method": "ensemble_majority",
        "ranks": len(args.models),
        "seed": records[0]["seed"],
        "metrics": scores,
        "ties": int(ties.sum()),
        "oversubscribed": records[0]["oversubscribed"],
        "member_accuracy": member_accuracy,
        "timing": timing_summary(records),
        "host": {k: records[0][k] for k in ("host", "cpu_model", "cpu_count", "versions", "scheduler")},
        "mpi_library": records[0].get("mpi_library"),
    })
    print(f"ensemble of {len(args.models)}: accuracy {scores['accuracy']:.4f}, {int(ties.sum())} ties, "
          f"members {', '.join(f'{a:.4f}' for a in member_accuracy)}")

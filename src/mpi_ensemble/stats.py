"""Repeats: mean ± sd over seeds per (method, ranks, threads), and which differences exceed the seed spread."""

import csv
import math

import numpy as np

STAT_METRICS = (
    "accuracy", "precision", "recall", "f1", "fit_seconds_mean", "fit_seconds_max", "job_seconds",
    "time_decrease_pct", "speedup", "efficiency", "job_speedup", "ties", "member_accuracy_mean",
)
GROUP = ("method", "ranks", "threads")
# Each method is compared with these at the same number of ranks (sequential: threads=all, the paper's baseline).
REFERENCES = ("ensemble_majority", "sequential")
DIFF_METRICS = ("accuracy", "fit_seconds_max")


def read_summary(path):
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def number(value):
    """A summary cell as a float; '' and unparsable cells are missing (None)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def mean_sd(values):
    """Mean and sample standard deviation (ddof=1); sd is None with fewer than two values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), sd, len(values)


def group_stats(rows, metrics=STAT_METRICS):
    """One row per (method, ranks, threads): n_seeds, and {metric}_mean / {metric}_sd."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(str(row[k]) for k in GROUP), []).append(row)
    out = []
    for key, members in groups.items():
        stat = dict(zip(GROUP, key))
        stat["n_seeds"] = len({str(r["seed"]) for r in members})
        for metric in metrics:
            mean, sd, _ = mean_sd([number(r.get(metric)) for r in members])
            stat[f"{metric}_mean"], stat[f"{metric}_sd"] = mean, sd
        out.append(stat)
    out.sort(key=lambda s: (s["method"] != "sequential", s["method"], int(s["ranks"]), s["threads"]))
    return out


def exceeds_spread(diff, sd_a, sd_b):
    """'yes' when the means differ by more than the two seed-to-seed sds together (the ±1 sd error bars do not
    overlap); 'no' when they overlap; 'n/a' when a group has a single seed and no spread to compare with."""
    if diff is None or sd_a is None or sd_b is None:
        return "n/a"
    return "yes" if abs(diff) > sd_a + sd_b else "no"


def differences(stats, metrics=DIFF_METRICS):
    """Every non-reference method against each reference at the same number of ranks."""
    ensemble = {s["ranks"]: s for s in stats if s["method"] == "ensemble_majority"}
    sequential = next((s for s in stats if s["method"] == "sequential" and s["threads"] == "all"), None)
    out = []
    for s in stats:
        if s["method"] == "sequential":
            continue
        refs = {"ensemble_majority": ensemble.get(s["ranks"]), "sequential": sequential}
        for ref_name in REFERENCES:
            ref = refs[ref_name]
            if ref is None or ref is s:
                continue
            for metric in metrics:
                a, b = s[f"{metric}_mean"], ref[f"{metric}_mean"]
                diff = None if a is None or b is None else a - b
                sd_a, sd_b = s[f"{metric}_sd"], ref[f"{metric}_sd"]
                out.append({
                    "metric": metric, "ranks": s["ranks"], "method": s["method"], "threads": s["threads"],
                    "reference": ref_name + (" threads=all" if ref_name == "sequential" else ""),
                    "mean": a, "reference_mean": b, "difference": diff,
                    "spread": None if sd_a is None or sd_b is None else sd_a + sd_b,
                    "n_seeds": min(s["n_seeds"], ref["n_seeds"]),
                    "exceeds_spread": exceeds_spread(diff, sd_a, sd_b),
                })
    return out

"""The paper's reported numbers next to ours, per core count, with percentage-point and ratio differences."""

from . import stats

COLUMNS = ["machine", "cores", "metric", "unit", "paper", "ours_mean", "ours_sd", "ours_n", "difference",
           "difference_pp", "ratio", "ours_source"]


def _ours_seq(rows, metric, scale):
    seq = [r for r in rows if r["method"] == "sequential" and str(r["threads"]) == "all"]
    return stats.mean_sd([None if stats.number(r[metric]) is None else scale * stats.number(r[metric])
                          for r in seq])


def _ours_ens(rows, ranks, metric, scale):
    ens = [r for r in rows if r["method"] == "ensemble_majority" and str(r["ranks"]) == str(ranks)]
    return stats.mean_sd([None if stats.number(r[metric]) is None else scale * stats.number(r[metric])
                          for r in ens])


def ours_for(paper_row, rows):
    """(mean, sd, n, source) of our value matching one row of the paper's table (None mean: we have none)."""
    metric, cores = paper_row["metric"], paper_row["cores"]
    if metric == "sequential_accuracy":
        return (*_ours_seq(rows, "accuracy", 100.0), "sequential threads=all accuracy × 100")
    if metric == "sequential_fit_seconds":
        return (*_ours_seq(rows, "fit_seconds_mean", 1.0), "sequential threads=all fit_seconds")
    if metric == "time_decrease":
        return (*_ours_ens(rows, cores, "time_decrease_pct", 1.0), f"ensemble_majority ranks={cores} time_decrease_pct")
    if metric in ("ensemble_accuracy_min", "ensemble_accuracy_max"):
        lo, hi = (int(c) for c in cores.split("-"))
        means = [_ours_ens(rows, n, "accuracy", 100.0)[0] for n in range(lo, hi + 1)]
        means = [m for m in means if m is not None]
        if not means:
            return None, None, 0, ""
        pick = min if metric.endswith("min") else max
        return pick(means), None, len(means), f"{metric[-3:]} over ranks {lo}-{hi} of the mean ensemble_majority accuracy × 100"
    return None, None, 0, ""


def compare(paper, rows):
    out = []
    for p in paper:
        mean, sd, n, source = ours_for(p, rows)
        value = float(p["value"])
        diff = None if mean is None else mean - value
        out.append({
            "machine": p["machine"], "cores": p["cores"], "metric": p["metric"], "unit": p["unit"], "paper": value,
            "ours_mean": mean, "ours_sd": sd, "ours_n": n, "difference": diff,
            # Percentage points only make sense for percentages; seconds keep the plain difference and ratio.
            "difference_pp": diff if p["unit"] == "percent" else None,
            "ratio": None if mean is None or value == 0 else mean / value,
            "ours_source": source,
        })
    return out

"""The α–β cost model of MPI_Allreduce, and the time per epoch of each way of training over N ranks.

Pure arithmetic on measurements (numpy, pandas): benchmarks/network.py measures and calls these functions;
tests/test_network.py checks them. Units: seconds and bytes; a network is named by a label ("unshaped", "10gbit").

T(m, N) = steps(N, m) · α + critical_bytes(N, m) · β, with the steps and bytes of the algorithm MPICH picks:

  recursive doubling         log2(p) steps of m bytes each
  reduce-scatter + allgather 2·log2(p) steps moving 2(p-1)/p · m bytes (Rabenseifner)
  ring                       2(N-1) steps moving 2(N-1)/N · m bytes

where p is the largest power of two ≤ N; when N is not a power of two, the first 2(N-p) ranks fold pairwise
before (one step of m bytes) and unfold after (another), as MPICH does. α is the time of one step that carries
(almost) nothing, β the seconds per byte on the busiest link; the reduction's own arithmetic is folded into β.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
# The Allreduce model itself is the workflow's (its cost figure draws the same times): one implementation.
from mpi_ensemble import local_sgd  # noqa: E402
from mpi_ensemble.network import ALGORITHMS, allreduce_seconds, bytes_sent, mpich_algorithm, pof2, terms  # noqa: E402,F401

PARAMETERS = 93_322
MODEL_BYTES = 4 * PARAMETERS  # local SGD and one-shot averaging: the float32 weights
GRADIENT_BYTES = 4 * (PARAMETERS + 2)  # data-parallel: the gradient, the batch's loss and its correct count
TRAIN_IMAGES = 48_000  # 60,000 minus Keras' validation_split of 0.2
BATCH = 64
# local_sgd's averaging intervals projected: every step, every 16 steps, once per epoch.
LOCAL_SGD_K = (1, 16, "epoch")


# --- the fit ---------------------------------------------------------------------------------------------------


def with_terms(points):
    """The measurements (columns ranks, bytes, algorithm, seconds) with each row's `steps` and `critical` bytes."""
    out = points.copy()
    pairs = [terms(a, int(n), int(m)) for a, n, m in zip(out["algorithm"], out["ranks"], out["bytes"])]
    out["steps"] = [s for s, _ in pairs]
    out["critical"] = [c for _, c in pairs]
    return out


def fit_network(points, small_bytes=64, large_bytes=131072):
    """α and β of one network from its Allreduce medians (ranks, bytes, algorithm, seconds).

    α: the messages of at most `small_bytes`, each time less its few bytes' share, divided by its algorithm's
    steps (median). There is no added latency on these links (the kernel has no netem), so α is this machine's MPI
    and TCP software path. β: weighted least squares of (seconds - steps·α) against the critical-path bytes over
    the messages of at least `large_bytes`, weights 1/seconds² (relative error: 128 KB counts as much as 4 MB).
    The sizes between are left out: a shaped link's token bucket (64 KB) lets them through at the machine's own
    speed, which no rate describes. The two are refined in turn a few times (the small messages' bytes barely
    move α)."""
    rows = with_terms(points)
    small = rows[rows["bytes"] <= small_bytes]
    large = rows[rows["bytes"] >= large_bytes]
    if small.empty or large.empty:
        raise ValueError(f"the fit needs messages of at most {small_bytes} bytes and of at least {large_bytes}; "
                         f"got sizes {sorted(rows['bytes'].unique())}")
    weight = 1.0 / large["seconds"] ** 2
    beta = 0.0
    for _ in range(4):
        alpha = float(((small["seconds"] - small["critical"] * beta) / small["steps"]).median())
        beta = float((weight * large["critical"] * (large["seconds"] - large["steps"] * alpha)).sum()
                     / (weight * large["critical"] ** 2).sum())
    return {"alpha_s": alpha, "beta_s_per_byte": beta, "effective_gbit_s": 8 / beta / 1e9 if beta > 0 else math.inf}


def fit_all(points):
    """{network: fit_network(its rows)} over the `network` column."""
    return {name: fit_network(group) for name, group in points.groupby("network", sort=False)}


def residuals(points, fits):
    """Each measurement beside the model's value for it, and their ratio."""
    rows = with_terms(points)
    rows["model_s"] = [fits[w]["alpha_s"] * s + fits[w]["beta_s_per_byte"] * c
                       for w, s, c in zip(rows["network"], rows["steps"], rows["critical"])]
    rows["model_over_measured"] = rows["model_s"] / rows["seconds"]
    return rows


# --- compute per step ------------------------------------------------------------------------------------------


def compute_summary(steps):
    """Per kind of step ("local" and "local_spe1": a Keras fit step of the ensemble and local SGD, 16 or 1 steps
    per call into the graph; "data_parallel": the custom loop's step without communication; "averaging": the
    copies around one weight averaging): fixed seconds per step and seconds per image, by least squares over the
    measured batch sizes (medians per `images`)."""
    rows = []
    for kind, group in steps.groupby("kind", sort=False):
        medians = group.groupby("images")["seconds"].median()
        if len(medians) < 2:  # one size (the averaging's copies): a fixed cost
            rows.append({"kind": kind, "fixed_s": float(medians.iloc[0]), "per_image_s": 0.0})
            continue
        per_image, fixed = np.polyfit(medians.index.to_numpy(float), medians.to_numpy(float), 1)
        rows.append({"kind": kind, "fixed_s": float(fixed), "per_image_s": float(per_image)})
    return pd.DataFrame(rows)


def step_time(steps, kind, images):
    """Seconds of one step of `kind` on `images` images: the measured median, interpolated between measured batch
    sizes (never extrapolated: the batches of the projection lie within the measured 1..64)."""
    medians = steps[steps["kind"] == kind].groupby("images")["seconds"].median()
    if medians.empty:
        raise ValueError(f"no step times of kind {kind!r}; measured kinds: {sorted(steps['kind'].unique())}")
    lo, hi = medians.index.min(), medians.index.max()
    if not lo <= images <= hi:
        raise ValueError(f"{images} images per step is outside the measured {lo}..{hi} ({kind})")
    return float(np.interp(images, medians.index.to_numpy(float), medians.to_numpy(float)))


# --- the projection --------------------------------------------------------------------------------------------


def shard_batches(n, images=TRAIN_IMAGES, batch=BATCH):
    """(full batches, images in the last partial batch) of the largest of n shards: what the slowest rank of the
    ensemble or of local SGD trains in one epoch."""
    return divmod(-(-images // n), batch)


def shard_steps(n, images=TRAIN_IMAGES, batch=BATCH):
    """Local steps per epoch of the largest of n shards, the last partial batch included."""
    full, last = shard_batches(n, images, batch)
    return full + (1 if last else 0)


def local_kind(k):
    """The step kind local training runs: Keras calls back only between calls into the graph, so an averaging
    period k of local SGD sets steps_per_execution to gcd(k, 16). "local" was measured at 16, "local_spe1" at 1
    (any gcd below 16 is charged as 1: an upper bound)."""
    return "local" if k in (None, "epoch") or math.gcd(k, 16) == 16 else "local_spe1"


def local_compute(steps, n, kind="local", images=TRAIN_IMAGES):
    """(seconds, steps) of one epoch of local training on the largest shard."""
    full, last = shard_batches(n, images)
    seconds = full * step_time(steps, kind, BATCH) + (step_time(steps, kind, last) if last else 0.0)
    return seconds, shard_steps(n, images)


def averagings(k, local_steps, epochs):
    """Weight averagings per epoch, as local SGD runs them (src/mpi_ensemble/local_sgd.py): after every k-th local
    step counted across epochs, or once per epoch ("epoch"); and once more at the end of training where the
    ranks' weights still differ, i.e. when the last step is not an averaging point (spread over the epochs)."""
    during = local_sgd.averagings(k, local_steps, epochs)
    final = 0 if k == "epoch" or (local_steps * epochs) % k == 0 else 1
    return (during + final) / epochs


def epoch_time(method, n, steps, alpha, beta, k=None, epochs=5, allreduce=None, images=TRAIN_IMAGES):
    """{compute_s, communication_s, seconds} of one epoch on `images` training images at n ranks, training steps
    only (validation left out). Communication is the Allreduce alone; the copies around a weight averaging
    (measured as kind "averaging") count as compute. `allreduce(nbytes)` overrides the model's Allreduce seconds
    (measured points)."""
    def comm(nbytes):
        if n == 1:
            return 0.0
        return allreduce(nbytes) if allreduce else allreduce_seconds(alpha, beta, n, nbytes)

    if method == "data_parallel":
        # The global batch of 64 is split over the ranks: the slowest holds ceil(64/n) images, and beyond
        # n = 64 some ranks hold none but still join every step's Allreduce.
        count = -(-images // BATCH)
        compute = count * step_time(steps, "data_parallel", -(-BATCH // n))
        return parts(compute, count * comm(GRADIENT_BYTES))
    if method == "data_parallel_rank_batch":
        # A batch of 64 per rank (global 64·n): the largest shard's steps, each with its gradient's Allreduce.
        compute, count = local_compute(steps, n, "data_parallel", images)
        return parts(compute, count * comm(GRADIENT_BYTES))
    if method not in ("ensemble", "one_shot", "local_sgd"):
        raise ValueError(f"unknown method {method!r}: ensemble, one_shot, local_sgd, data_parallel or "
                         "data_parallel_rank_batch")
    compute, local_steps = local_compute(steps, n, local_kind(k if method == "local_sgd" else None), images)
    if method == "ensemble":
        count = 0.0
    elif method == "one_shot":
        count = 1 / epochs
    else:
        count = averagings(k, local_steps, epochs)
    copies = count * step_time(steps, "averaging", 0) if count and n > 1 else 0.0
    return parts(compute + copies, count * comm(MODEL_BYTES))


def parts(compute, communication):
    return {"compute_s": compute, "communication_s": communication, "seconds": compute + communication}


def methods():
    """(label, method, k) of every projected line."""
    return ([("ensemble", "ensemble", None), ("one-shot averaging", "one_shot", None)]
            + [(f"local_sgd k={k}", "local_sgd", k) for k in LOCAL_SGD_K]
            + [("data-parallel", "data_parallel", None)])


# Powers of two up to 1,024 and the measured 3: MPICH's reduce-scatter + allgather adds a fold and an unfold of the
# whole message at every other N, which would draw a saw-tooth through the powers of two.
RANKS = sorted({2**i for i in range(11)} | {3})


def regime(method, n, k=None, images=TRAIN_IMAGES, batch=BATCH, epochs=5):
    """Why a projected point no longer is the method its label names ("" where it still is): a rank holding less
    than one batch; data-parallel's global batch split over more ranks than it has images; local SGD with fewer
    local steps in all its epochs than its period k (it then averages only once, at the end: one-shot
    averaging)."""
    if -(-images // n) < batch:
        return "less than one batch per rank"
    if method == "data_parallel" and n > batch:
        return f"ranks beyond {batch} hold no image of the global batch"
    if method == "local_sgd" and isinstance(k, int) and shard_steps(n, images, batch) * epochs < k:
        return f"fewer than k = {k} local steps in {epochs} epochs"
    return ""


def projection(steps, fits, ranks=RANKS, epochs=5):
    """One row per (network, method, n): the modelled time per epoch, its parts, and `regime` (why the point is
    outside the method's meaning; empty within it)."""
    rows = []
    for network, fit in fits.items():
        for label, method, k in methods():
            for n in ranks:
                parts = epoch_time(method, n, steps, fit["alpha_s"], fit["beta_s_per_byte"], k, epochs)
                rows.append({"network": network, "method": label, "ranks": n, **parts,
                             "regime": regime(method, n, k, epochs=epochs)})
    return pd.DataFrame(rows)


def measured_points(steps, medians, epochs=5):
    """Time per epoch composed from measurements only, at the world sizes measured: the step times measured
    alone and the Allreduce medians measured at the exact size of one model (`medians`: network, ranks, bytes,
    seconds, with the algorithm MPICH picks), used for the data-parallel gradient too (8 bytes more)."""
    rows = []
    for (network, n), group in medians.groupby(["network", "ranks"]):
        by_size = group.set_index("bytes")["seconds"]
        if MODEL_BYTES not in by_size.index:
            raise ValueError(f"no Allreduce of {MODEL_BYTES} bytes measured on {network} at N = {n}")
        for label, method, k in methods():
            parts = epoch_time(method, int(n), steps, 0.0, 0.0, k, epochs,
                               allreduce=lambda nbytes: float(by_size[MODEL_BYTES]))
            rows.append({"network": network, "method": label, "ranks": int(n), **parts})
    return pd.DataFrame(rows)


def crossovers(table):
    """Per network and method with communication, over the powers of two where the method still is itself (empty
    `regime`): the best n (least time per epoch), the first n where communication takes as long as computing, the
    first n where an epoch takes longer than one rank training alone (the ensemble at n = 1: Keras fit on every
    image; the method's own n = 1 where the table has no ensemble), and the largest n within the regime. None: not
    within that range."""
    rows = []
    table = table[table["ranks"].map(lambda n: n == pof2(n))]
    if "regime" in table:
        table = table[table["regime"].fillna("") == ""]
    for (network, method), group in table.groupby(["network", "method"], sort=False):
        if method == "ensemble":
            continue
        group = group.sort_values("ranks")
        single = table[(table["network"] == network) & (table["ranks"] == 1)].set_index("method")["seconds"]
        alone = float(single.get("ensemble", single[method]))
        rows.append({
            "network": network, "method": method,
            "best_n": int(group.loc[group["seconds"].idxmin(), "ranks"]),
            "best_s": float(group["seconds"].min()),
            "comm_ge_compute_n": first(group, group["communication_s"] >= group["compute_s"]),
            "slower_than_one_rank_n": first(group, (group["seconds"] > alone) & (group["ranks"] > 1)),
            "valid_up_to_n": int(group["ranks"].max()),
        })
    return pd.DataFrame(rows)


def first(group, mask):
    hits = group.loc[mask, "ranks"]
    return int(hits.iloc[0]) if len(hits) else None


# --- a real job's records against the model --------------------------------------------------------------------


def check_records(records, fit):
    """A real data_parallel or local_sgd job's rank records (dicts with allreduce_count, allreduce_seconds,
    allreduce_bytes, fit_seconds) against the fitted network: per rank, the mean payload and seconds of one
    Allreduce, the model's seconds for that payload at the job's N, and their ratio."""
    n = len(records)
    rows = []
    for rank, rec in enumerate(records):
        missing = [key for key in ("allreduce_count", "allreduce_seconds", "allreduce_bytes") if key not in rec]
        if missing:
            raise KeyError(f"rank {rank}'s record has no {', '.join(missing)}: it comes from a job that did not "
                           "count its Allreduce calls (data_parallel and local_sgd jobs record them)")
        count = rec["allreduce_count"]
        payload = rec["allreduce_bytes"] / count
        measured = rec["allreduce_seconds"] / count
        model = allreduce_seconds(fit["alpha_s"], fit["beta_s_per_byte"], n, int(round(payload)))
        rows.append({"rank": rank, "ranks": n, "calls": count, "payload_bytes": payload, "measured_s": measured,
                     "model_s": model, "model_over_measured": model / measured,
                     "allreduce_share_of_fit": rec["allreduce_seconds"] / rec["fit_seconds"]})
    return pd.DataFrame(rows)


# --- time to an accuracy ---------------------------------------------------------------------------------------

# The workflow's training methods (src/mpi_ensemble/methods.py) that the model prices, as its own names.
# post_local_sgd is priced epoch by epoch: data_parallel_rank_batch first, then local_sgd.
PRICED = {"ensemble_majority": "ensemble", "weight_average_shared_start": "one_shot", "local_sgd": "local_sgd",
          "data_parallel": "data_parallel", "data_parallel_rank_batch": "data_parallel_rank_batch",
          "post_local_sgd": "local_sgd"}


def period_k(period):
    """A workflow period ("16", 16, "epoch", "end", empty) as the model's k."""
    if period is None or (isinstance(period, float) and math.isnan(period)) or period == "":
        return None
    return local_sgd.parse_period(str(period))


def epoch_seconds(method, period, n, steps, alpha, beta, epochs=5):
    """The modelled seconds of each of a workflow method's epochs at n ranks (training steps only)."""
    if method not in PRICED:
        raise ValueError(f"the model does not price {method!r}; it prices {', '.join(PRICED)}")
    k = period_k(period)
    each = epoch_time(PRICED[method], n, steps, alpha, beta, k, epochs)["seconds"]
    if method == "post_local_sgd":  # synchronous first epoch at the per-rank batch
        return [epoch_time("data_parallel_rank_batch", n, steps, alpha, beta)["seconds"]] + [each] * (epochs - 1)
    return [each] * epochs


def epochs_to(delivered, target):
    """The first epoch (counted from 1) whose delivered validation accuracy reached target; None if none did."""
    return next((i + 1 for i, accuracy in enumerate(delivered) if accuracy >= target), None)


def time_to_accuracy(history, steps, fits, targets):
    """One row per network, measured run (method, period, ranks, seed) and target: the epochs its delivered model
    took to reach the target (measured, `history`: one row per epoch with delivered_val_accuracy) and the
    modelled seconds of those epochs on that network; both empty when it never reached it."""
    rows = []
    runs = history.sort_values("epoch").groupby(["method", "period", "ranks", "seed"], dropna=False, sort=True)
    for (method, period, n, seed), run in runs:
        delivered = run["delivered_val_accuracy"].tolist()
        for network, fit in fits.items():
            each = epoch_seconds(method, period, int(n), steps, fit["alpha_s"], fit["beta_s_per_byte"], len(delivered))
            for target in targets:
                e = epochs_to(delivered, target)
                rows.append({"network": network, "method": method, "period": period, "ranks": int(n),
                             "seed": seed, "target": target, "epochs_to_target": e,
                             "seconds_to_target": sum(each[:e]) if e else None})
    return pd.DataFrame(rows)


def time_to_accuracy_stats(rows):
    """Per network, method, period, ranks and target: the seeds, how many reached the target, and the mean and
    sample sd of the modelled seconds over those that did."""
    keys = ["network", "method", "period", "ranks", "target"]
    stats = rows.groupby(keys, dropna=False, sort=False).agg(
        seeds=("seed", "count"), reached=("epochs_to_target", "count"),
        epochs_mean=("epochs_to_target", "mean"), seconds_mean=("seconds_to_target", "mean"),
        seconds_sd=("seconds_to_target", "std"))
    return stats.reset_index()

"""The paper's figures, ours drawn beside the paper's reported values."""

import matplotlib

matplotlib.use("Agg")  # no display on workstations' batch nodes or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_path  # noqa: E402

PAPER_STYLE = {"laptop": ("tab:gray", "s", "paper: laptop i5-1135G7"), "xeon": ("tab:brown", "^", "paper: Xeon Gold 6354")}


def paper_values(paper, metric):
    """{machine: {cores: value}} for one metric of the paper's table."""
    out = {}
    for row in paper:
        if row["metric"] == metric:
            out.setdefault(row["machine"], {})[row["cores"]] = float(row["value"])
    return out


def mean_by(rows, key, value, **match):
    groups = {}
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()) and row.get(value) is not None:
            groups.setdefault(row[key], []).append(row[value])
    return {k: (float(np.mean(v)), float(np.std(v))) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}


def sequential_figure(rows, paper, path):
    """Fig. 5: sequential accuracy and fit time."""
    labels, acc, fit, colors = [], [], [], []
    for machine, (color, _, label) in PAPER_STYLE.items():
        labels.append(label.replace("paper: ", "paper\n"))
        acc.append(paper_values(paper, "sequential_accuracy")[machine]["1"])
        fit.append(paper_values(paper, "sequential_fit_seconds")[machine]["1"])
        colors.append(color)
    for threads, (a, _) in mean_by(rows, "threads", "accuracy", method="sequential").items():
        labels.append(f"ours\nthreads={threads}")
        acc.append(100 * a)
        fit.append(mean_by(rows, "threads", "fit_seconds_mean", method="sequential")[threads][0])
        colors.append("tab:blue")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(labels, acc, color=colors)
    ax1.set_ylim(min(acc) - 2, 100)
    ax1.set_ylabel("test accuracy (%)")
    ax2.bar(labels, fit, color=colors)
    ax2.set_ylabel("fit() time (s)")
    for ax, values in ((ax1, acc), (ax2, fit)):
        for i, v in enumerate(values):
            ax.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("Fig. 5: sequential baseline (paper's values in grey/brown, ours in blue)")
    save(fig, path)


def scaling_figure(rows, paper, path):
    """Fig. 6/7: time decrease and ensemble accuracy against the number of ranks (cores)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for machine, (color, marker, label) in PAPER_STYLE.items():
        values = paper_values(paper, "time_decrease")[machine]
        ax1.plot([int(c) for c in values], list(values.values()), marker=marker, color=color, label=label)
        lo = paper_values(paper, "ensemble_accuracy_min")[machine]
        hi = paper_values(paper, "ensemble_accuracy_max")[machine]
        span = [int(c) for c in next(iter(lo)).split("-")]
        ax2.fill_between(span, list(lo.values()) * 2, list(hi.values()) * 2, color=color, alpha=0.25, label=label + " (range)")
    ens = [r for r in rows if r["method"] == "ensemble_majority"]
    for over, style in ((False, "o-"), (True, "o--")):
        pts = mean_by([r for r in ens if r["oversubscribed"] == over], "ranks", "time_decrease_pct")
        if pts:
            tag = "ours, oversubscribed (ranks > cores)" if over else "ours"
            ax1.errorbar(list(pts), [m for m, _ in pts.values()], yerr=[s for _, s in pts.values()],
                         fmt=style, color="tab:blue", mfc="white" if over else "tab:blue", label=tag)
    accs = mean_by(ens, "ranks", "accuracy")
    ax2.errorbar(list(accs), [100 * m for m, _ in accs.values()], yerr=[100 * s for _, s in accs.values()],
                 fmt="o-", color="tab:blue", label="ours: majority-vote ensemble")
    for threads, (a, _) in mean_by(rows, "threads", "accuracy", method="sequential").items():
        ax2.axhline(100 * a, color="tab:blue", ls=":", lw=1, label=f"ours: sequential threads={threads}")
    ax1.axhline(0, color="black", lw=0.5)
    ax1.set(xlabel="MPI ranks (cores)", ylabel="fit() time decrease vs sequential (%)")
    ax2.set(xlabel="MPI ranks (cores)", ylabel="test accuracy (%)")
    for ax in (ax1, ax2):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Fig. 6/7: training-time decrease and ensemble accuracy vs number of ranks")
    save(fig, path)


def save(fig, path):
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def paper_speedup(time_decrease_pct):
    """The speed-up a reported time decrease d (%) means: t_N = (1 - d/100) t_1, so t_1 / t_N = 1 / (1 - d/100)."""
    return 1.0 / (1.0 - time_decrease_pct / 100.0)


def speedup_figure(rows, paper, path):
    """Fit-time speed-up against the number of ranks: ideal, ours (against the 1-thread baseline; oversubscribed
    runs left out) and the paper's two machines (from their time decrease against an all-threads baseline)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ens = [r for r in rows if r["method"] == "ensemble_majority" and not r["oversubscribed"]]
    ours = mean_by(ens, "ranks", "speedup")
    top = max([1, *ours, *(int(c) for v in paper_values(paper, "time_decrease").values() for c in v)])
    ax.plot([1, top], [1, top], color="black", lw=1, ls="--", label="ideal (speed-up = N)")
    for machine, (color, marker, label) in PAPER_STYLE.items():
        values = paper_values(paper, "time_decrease")[machine]
        ax.plot([int(c) for c in values], [paper_speedup(v) for v in values.values()], marker=marker, color=color,
                label=label + " (from its time decrease)")
    if ours:
        ax.errorbar(list(ours), [m for m, _ in ours.values()], yerr=[s for _, s in ours.values()], fmt="o-",
                    color="tab:blue", label="ours: 1-thread fit / slowest rank's fit")
    jobs = mean_by(ens, "ranks", "job_speedup")
    if jobs:
        ax.plot(list(jobs), [m for m, _ in jobs.values()], "o:", color="tab:cyan", mfc="white",
                label="ours: job wall-time speed-up")
    ax.set(xlabel="MPI ranks (cores)", ylabel="speed-up of fit()", xscale="log", yscale="log")
    ax.set_xticks([t for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128) if t <= top])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.get_yaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title("Speed-up against ranks (oversubscribed runs left out)", fontsize=10)
    save(fig, path)


def rank_times_figure(results, path):
    """Each rank's fit() time per world size: the spread shows imbalance (the last rank's remainder, noise,
    shared cores); the slowest rank sets the phase's wall time."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    by_ranks = {}
    for result in results:
        timing = result["timing"]
        by_ranks.setdefault(result["ranks"], []).append((timing.get("fit_seconds_per_rank") or [], result["oversubscribed"]))
    for n, runs in sorted(by_ranks.items()):
        for fits, over in runs:
            xs = n + np.linspace(-0.15, 0.15, len(fits)) if len(fits) > 1 else [n] * len(fits)
            ax.scatter(xs, fits, s=18, color="tab:orange" if over else "tab:blue", alpha=0.8,
                       marker="x" if over else "o")
            if fits:
                ax.hlines(max(fits), n - 0.25, n + 0.25, color="black", lw=1)
    ax.scatter([], [], color="tab:blue", s=18, label="one rank's fit() time")
    ax.scatter([], [], color="tab:orange", marker="x", s=18, label="one rank, oversubscribed run")
    ax.hlines([], 0, 0, color="black", lw=1, label="slowest rank (the phase's wall time)")
    ax.set(xlabel="MPI ranks", ylabel="fit() time per rank (s)", ylim=(0, None))
    ax.set_xticks(sorted(by_ranks))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Per-rank fit() time (spread across ranks)", fontsize=10)
    save(fig, path)

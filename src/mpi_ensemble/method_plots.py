"""Figures of the methods beyond the paper, with mean ± sd over seeds as error bars."""

from . import plots  # noqa: F401  (selects the Agg backend before pyplot is imported)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

STYLE = {
    "ensemble_majority": ("tab:blue", "o", "ensemble, majority (paper)"),
    "ensemble_majority_tiebreak": ("tab:cyan", "v", "ensemble, majority + confidence tie-break"),
    "ensemble_soft": ("tab:green", "D", "ensemble, soft vote"),
    "single_shard": ("tab:red", "x", "single shard (rank 0 alone, 1/N of the data)"),
    "data_parallel": ("tab:purple", "s", "data-parallel (allreduce)"),
}


def _series(stats, method, metric, scale=1.0):
    pts = sorted((int(s["ranks"]), s[f"{metric}_mean"], s[f"{metric}_sd"]) for s in stats
                 if s["method"] == method and s[f"{metric}_mean"] is not None)
    return ([p[0] for p in pts], [scale * p[1] for p in pts], [scale * (p[2] or 0.0) for p in pts])


def _sequential_lines(ax, stats, metric, scale=1.0):
    for s in stats:
        if s["method"] == "sequential" and s[f"{metric}_mean"] is not None:
            mean, sd = scale * s[f"{metric}_mean"], scale * (s[f"{metric}_sd"] or 0.0)
            ax.axhline(mean, color="black", ls=":" if s["threads"] == "all" else "--", lw=1,
                       label=f"sequential threads={s['threads']}")
            if sd:
                ax.axhspan(mean - sd, mean + sd, color="black", alpha=0.08)


def methods_figure(stats, path):
    """Accuracy, slowest rank's fit time and job wall time against N, one curve per method."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = ((axes[0], "accuracy", 100.0, "test accuracy (%)"),
              (axes[1], "fit_seconds_max", 1.0, "fit time, slowest rank (s)"),
              (axes[2], "job_seconds", 1.0, "job wall time (s)"))
    for ax, metric, scale, label in panels:
        for method, (color, marker, name) in STYLE.items():
            x, y, err = _series(stats, method, metric, scale)
            if x:
                ax.errorbar(x, y, yerr=err, fmt=f"{marker}-", color=color, capsize=3, label=name)
        _sequential_lines(ax, stats, metric, scale)
        ax.set(xlabel="MPI ranks N", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    n = max((s["n_seeds"] for s in stats), default=0)
    fig.suptitle(f"Methods against the number of ranks (mean ± sd over up to {n} seed(s))")
    plots.save(fig, path)


def voting_figure(stats, path):
    """How each combination rule compares with its own members: ensemble accuracy minus mean member accuracy."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for method in ("ensemble_majority", "ensemble_majority_tiebreak", "ensemble_soft"):
        color, marker, name = STYLE[method]
        acc = {int(s["ranks"]): s for s in stats if s["method"] == method}
        xs = sorted(n for n in acc if acc[n].get("member_accuracy_mean_mean") is not None)
        if xs:
            gain = [100 * (acc[n]["accuracy_mean"] - acc[n]["member_accuracy_mean_mean"]) for n in xs]
            ax1.plot(xs, gain, f"{marker}-", color=color, label=name)
        x, y, err = _series(stats, method, "accuracy", 100.0)
        if x:
            ax2.errorbar(x, y, yerr=err, fmt=f"{marker}-", color=color, capsize=3, label=name)
    x, y, err = _series(stats, "single_shard", "accuracy", 100.0)
    if x:
        ax2.errorbar(x, y, yerr=err, fmt="x--", color="tab:red", capsize=3, label=STYLE["single_shard"][2])
    ax1.axhline(0, color="black", lw=0.8)
    ax1.set(xlabel="MPI ranks N", ylabel="ensemble − mean member accuracy (pp)",
            title="gain over its own members (below 0: the vote hurts)")
    ax2.set(xlabel="MPI ranks N", ylabel="test accuracy (%)", title="voting rules and the single-shard control")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Combining N members: majority (ties to the lowest class), tie-break by confidence, soft vote")
    plots.save(fig, path)

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

"""The figures: the paper's (Figs. 5-7) with its reported values beside ours, the speed-up and per-rank times, and
the methods beyond the paper. Every error bar is ±1 sample standard deviation over seeds (ddof=1, from
summary_stats.csv); a single seed draws none. Each PNG carries the SHA-256 of the tables it was drawn from (text
chunk INPUTS_KEY), so the audit can tell a figure drawn from another summary."""

import matplotlib

matplotlib.use("Agg")  # no display on workstations' batch nodes or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402

from . import methods, network  # noqa: E402
from .atomic import atomic_path  # noqa: E402
from .provenance import INPUTS_KEY, inputs_note  # noqa: E402

PAPER_STYLE = {"laptop": ("tab:gray", "s", "paper: laptop i5-1135G7"),
               "xeon": ("tab:brown", "^", "paper: Xeon Gold 6354")}
# Each method's colour, marker and label, as the method declaration gives them (one per method, in every figure).
METHOD_STYLE = {m.name: (m.colour, m.marker, m.label) for m in methods.METHODS if m.name != "sequential"}
SD_NOTE = "error bars: ±1 sample sd over seeds"


def paper_values(paper, metric):
    """{machine: {cores: value}} for one metric of the paper's table."""
    out = {}
    for row in paper[paper["metric"] == metric].itertuples():
        out.setdefault(row.machine, {})[str(row.cores)] = float(row.value)
    return out


def paper_speedup(time_decrease_pct):
    """The speed-up a reported time decrease d (%) means: t_N = (1 - d/100) t_1, so t_1 / t_N = 1 / (1 - d/100)."""
    return 1.0 / (1.0 - time_decrease_pct / 100.0)


def series(stats, method, metric, scale=1.0, **match):
    """(ranks, means, sds) of one method's statistics, by ranks; missing sds (one seed) are 0."""
    rows = stats[stats["method"] == method]
    for key, value in match.items():
        rows = rows[rows[key] == value]
    rows = rows.dropna(subset=[f"{metric}_mean"]).sort_values("ranks")
    return (rows["ranks"].tolist(), (scale * rows[f"{metric}_mean"]).tolist(),
            (scale * rows[f"{metric}_sd"].fillna(0.0)).tolist())


def sequential_rows(stats):
    return stats[stats["method"] == "sequential"].sort_values("threads", key=lambda t: t.astype(str))


def save(fig, path, inputs=""):
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png", metadata={INPUTS_KEY: inputs})
    plt.close(fig)


def sequential_figure(stats, paper, path, inputs=""):
    """Fig. 5: sequential accuracy and fit time."""
    labels, acc, fit, acc_sd, fit_sd, colors = [], [], [], [], [], []
    for machine, (color, _, label) in PAPER_STYLE.items():
        labels.append(label.replace("paper: ", "paper\n"))
        acc.append(paper_values(paper, "sequential_accuracy")[machine]["1"])
        fit.append(paper_values(paper, "sequential_fit_seconds")[machine]["1"])
        acc_sd.append(0.0), fit_sd.append(0.0), colors.append(color)
    for row in sequential_rows(stats).itertuples():
        labels.append(f"ours\nthreads={row.threads}")
        acc.append(100 * row.accuracy_mean), acc_sd.append(100 * np.nan_to_num(row.accuracy_sd))
        fit.append(row.fit_seconds_mean_mean), fit_sd.append(np.nan_to_num(row.fit_seconds_mean_sd))
        colors.append("tab:blue")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(labels, acc, yerr=acc_sd, color=colors, capsize=3)
    ax1.set_ylim(min(acc) - 2, 100)
    ax1.set_ylabel("test accuracy (%)")
    ax2.bar(labels, fit, yerr=fit_sd, color=colors, capsize=3)
    ax2.set_ylabel("fit() time (s)")
    for ax, values in ((ax1, acc), (ax2, fit)):
        for i, v in enumerate(values):
            ax.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"Fig. 5: sequential baseline (paper's values in grey/brown, ours in blue; {SD_NOTE})")
    save(fig, path, inputs)


def scaling_figure(stats, paper, path, inputs=""):
    """Figs. 6/7: time decrease and ensemble accuracy against the number of ranks (cores)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for machine, (color, marker, label) in PAPER_STYLE.items():
        values = paper_values(paper, "time_decrease")[machine]
        ax1.plot([int(c) for c in values], list(values.values()), marker=marker, color=color, label=label)
        lo = paper_values(paper, "ensemble_accuracy_min")[machine]
        hi = paper_values(paper, "ensemble_accuracy_max")[machine]
        span = [int(c) for c in next(iter(lo)).split("-")]
        ax2.fill_between(span, list(lo.values()) * 2, list(hi.values()) * 2, color=color, alpha=0.25,
                         label=label + " (range)")
    for over, style in ((False, "o-"), (True, "o--")):
        x, y, err = series(stats, "ensemble_majority", "time_decrease_pct", oversubscribed=over)
        if x:
            tag = "ours, oversubscribed (ranks > cores)" if over else "ours"
            ax1.errorbar(x, y, yerr=err, fmt=style, color="tab:blue", mfc="white" if over else "tab:blue",
                         capsize=3, label=tag)
    x, y, err = series(stats, "ensemble_majority", "accuracy", 100.0)
    ax2.errorbar(x, y, yerr=err, fmt="o-", color="tab:blue", capsize=3, label="ours: majority-vote ensemble")
    for row in sequential_rows(stats).itertuples():
        ax2.axhline(100 * row.accuracy_mean, color="tab:blue", ls=":", lw=1,
                    label=f"ours: sequential threads={row.threads}")
    ax1.axhline(0, color="black", lw=0.5)
    ax1.set(xlabel="MPI ranks (cores)", ylabel="fit() time decrease vs sequential (%)")
    ax2.set(xlabel="MPI ranks (cores)", ylabel="test accuracy (%)")
    for ax in (ax1, ax2):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Figs. 6/7: training-time decrease and ensemble accuracy vs number of ranks ({SD_NOTE})")
    save(fig, path, inputs)


def speedup_figure(stats, paper, path, inputs=""):
    """Fit-time speed-up against the cores used: ideal, ours (against the 1-thread baseline, each point labelled
    with its ranks; oversubscribed runs left out) and the paper's two machines (from their time decrease)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ours = stats[stats["method"].isin(["ensemble_majority", "sequential"]) & ~stats["oversubscribed"].astype(bool)]
    ours = ours.dropna(subset=["speedup_mean"]).sort_values(["cores_used", "ranks"])
    paper_td = paper_values(paper, "time_decrease")
    top = max([1, *ours["cores_used"], *(int(c) for v in paper_td.values() for c in v)])
    ax.plot([1, top], [1, top], color="black", lw=1, ls="--", label="ideal (speed-up = cores used)")
    for machine, (color, marker, label) in PAPER_STYLE.items():
        values = paper_td[machine]
        ax.plot([int(c) for c in values], [paper_speedup(v) for v in values.values()], marker=marker, color=color,
                label=label + " (from its time decrease; cores = ranks)")
    for method, marker in (("ensemble_majority", "o"), ("sequential", "D")):
        rows = ours[ours["method"] == method]
        if rows.empty:
            continue
        ax.errorbar(rows["cores_used"], rows["speedup_mean"], yerr=rows["speedup_sd"].fillna(0.0), fmt=marker,
                    color="tab:blue", capsize=3, label=f"ours: {method}, 1-thread fit / slowest rank's fit")
        ax.plot(rows["cores_used"], rows["job_speedup_mean"], marker, color="tab:cyan", mfc="white",
                label=f"ours: {method}, job wall-time speed-up")
        for row in rows.itertuples():
            tag = f"N={row.ranks}" if method != "sequential" else f"seq {row.threads}"
            ax.annotate(tag, (row.cores_used, row.speedup_mean), fontsize=7, xytext=(4, 2),
                        textcoords="offset points")
    ax.set(xlabel="cores used (ranks × threads per rank)", ylabel="speed-up of fit()", xscale="log", yscale="log")
    ax.set_xticks([t for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128) if t <= top])
    ax.get_xaxis().set_major_formatter(ScalarFormatter())
    ax.get_yaxis().set_major_formatter(ScalarFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    ax.set_title(f"Speed-up against cores used, oversubscribed runs left out\n({SD_NOTE})", fontsize=9)
    save(fig, path, inputs)


def rank_times_figure(rank_times, path, inputs=""):
    """Each rank's fit() time per world size: the spread shows imbalance (the last rank's remainder, noise,
    shared cores); the slowest rank sets the phase's wall time."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    resumed = rank_times.get("resumed_from_epoch", pd.Series(0, index=rank_times.index)) > 0
    ens = rank_times[(rank_times["method"] == "ensemble_majority") & ~resumed]  # resumed: partial times
    for (n, _seed), run in ens.groupby(["ranks", "seed"]):
        over = bool(run["oversubscribed"].iloc[0])
        fits = run.sort_values("rank")["fit_seconds"].to_numpy()
        xs = n + np.linspace(-0.15, 0.15, len(fits)) if len(fits) > 1 else [n]
        ax.scatter(xs, fits, s=18, color="tab:orange" if over else "tab:blue", alpha=0.8, marker="x" if over else "o")
        ax.hlines(fits.max(), n - 0.25, n + 0.25, color="black", lw=1)
    ax.scatter([], [], color="tab:blue", s=18, label="one rank's fit() time")
    ax.scatter([], [], color="tab:orange", marker="x", s=18, label="one rank, oversubscribed run")
    ax.hlines([], 0, 0, color="black", lw=1, label="slowest rank (the phase's wall time)")
    ax.set(xlabel="MPI ranks", ylabel="fit() time per rank (s)", ylim=(0, None))
    ax.set_xticks(sorted(ens["ranks"].unique()))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Per-rank fit() time (spread across ranks)", fontsize=10)
    save(fig, path, inputs)


def sequential_lines(ax, stats, metric, scale=1.0):
    for row in sequential_rows(stats).itertuples():
        mean = scale * getattr(row, f"{metric}_mean")
        sd = scale * np.nan_to_num(getattr(row, f"{metric}_sd"))
        ax.axhline(mean, color="black", ls=":" if str(row.threads) == "all" else "--", lw=1,
                   label=f"sequential threads={row.threads}")
        if sd:
            ax.axhspan(mean - sd, mean + sd, color="black", alpha=0.08)


def method_series(stats, method):
    """(label suffix, rows) per period of a method (local SGD has one curve per period, the others one)."""
    rows = stats[stats["method"] == method]
    periods = rows["period"].dropna().astype(str).unique() if "period" in rows else []
    if len(periods) <= 1:
        return [("", {})]
    return [(f", period {p}", {"period": p}) for p in sorted(periods, key=lambda p: (not p.isdigit(), p.zfill(9)))]


def methods_figure(stats, path, inputs=""):
    """Accuracy, slowest rank's fit time and job wall time against N, one curve per method (and period)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = ((axes[0], "accuracy", 100.0, "test accuracy (%)"),
              (axes[1], "fit_seconds_max", 1.0, "fit time, slowest rank (s)"),
              (axes[2], "job_seconds", 1.0, "job wall time: training + vote or evaluation (s)"))
    stats = stats.assign(period=stats["period"].astype(str).where(stats["period"].notna()))
    for ax, metric, scale, label in panels:
        for method, (color, marker, name) in METHOD_STYLE.items():
            for i, (suffix, match) in enumerate(method_series(stats, method)):
                x, y, err = series(stats, method, metric, scale, **match)
                if x:
                    ax.errorbar(x, y, yerr=err, fmt=f"{marker}{'-:--'[i % 3:i % 3 + 1]}", color=color, capsize=3,
                                label=name + suffix)
        sequential_lines(ax, stats, metric, scale)
        ax.set(xlabel="MPI ranks N", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    n = int(stats["n_seeds"].max()) if len(stats) else 0
    fig.suptitle(f"Methods against the number of ranks (mean over up to {n} seed(s); {SD_NOTE})")
    save(fig, path, inputs)


def voting_figure(stats, path, inputs=""):
    """How each combination rule compares with its own members: ensemble accuracy minus mean member accuracy."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for method in ("ensemble_majority", "ensemble_majority_tiebreak", "ensemble_soft"):
        color, marker, name = METHOD_STYLE[method]
        rows = stats[stats["method"] == method].dropna(subset=["member_accuracy_mean_mean"]).sort_values("ranks")
        if not rows.empty:
            gain = 100 * (rows["accuracy_mean"] - rows["member_accuracy_mean_mean"])
            ax1.plot(rows["ranks"], gain, f"{marker}-", color=color, label=name)
        x, y, err = series(stats, method, "accuracy", 100.0)
        if x:
            ax2.errorbar(x, y, yerr=err, fmt=f"{marker}-", color=color, capsize=3, label=name)
    x, y, err = series(stats, "single_shard", "accuracy", 100.0)
    if x:
        ax2.errorbar(x, y, yerr=err, fmt="x--", color="tab:red", capsize=3, label=METHOD_STYLE["single_shard"][2])
    ax1.axhline(0, color="black", lw=0.8)
    ax1.set(xlabel="MPI ranks N", ylabel="ensemble − mean member accuracy (pp)",
            title="gain over its own members (below 0: the vote hurts)")
    ax2.set(xlabel="MPI ranks N", ylabel="test accuracy (%)", title="voting rules and the single-shard control")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Combining N members: majority (ties to the lowest class), confidence tie-break, soft vote "
                 f"({SD_NOTE})")
    save(fig, path, inputs)


def read_histories(labelled):
    """`labelled`: (label, history.csv path) pairs -> one frame; a label's files (an ensemble's ranks, the seeds)
    are averaged per epoch by `training_curves_figure`."""
    frames = [pd.read_csv(path).assign(label=label) for label, path in labelled]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["label", "epoch"])


def training_curves_figure(histories, path, inputs=""):
    """Accuracy and loss per epoch, one panel per method, one colour per N (or threads, or period): training solid,
    validation dashed. An ensemble's curve is the mean over its members, every curve the mean over seeds."""
    curves = histories.groupby(["label", "epoch"], sort=True).mean(numeric_only=True).reset_index()
    curves["method"] = curves["label"].str.split("/").str[0]
    methods = list(dict.fromkeys(histories["label"].str.split("/").str[0])) or ["(none)"]  # the workflow's order
    fig, axes = plt.subplots(2, len(methods), figsize=(3.6 * len(methods), 7), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, method in enumerate(methods):
        runs = curves[curves["method"] == method]
        for i, (label, curve) in enumerate(runs.groupby("label", sort=True)):
            color, tag = colors[i % len(colors)], label.split("/", 1)[-1]
            for ax, metric in ((axes[0, col], "accuracy"), (axes[1, col], "loss")):
                ax.plot(curve["epoch"], curve[metric], "o-", color=color, ms=3, label=f"{tag}, training")
                if curve.get(f"val_{metric}") is not None and curve[f"val_{metric}"].notna().any():
                    ax.plot(curve["epoch"], curve[f"val_{metric}"], "s--", color=color, ms=3, mfc="white",
                            label=f"{tag}, validation")
        axes[0, col].set_title(method, fontsize=9)
        axes[0, col].legend(fontsize=5)
        axes[0, col].set(ylabel="accuracy" if col == 0 else None)
        axes[1, col].set(xlabel="epoch", ylabel="loss" if col == 0 else None, yscale="log")
        for ax in axes[:, col]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    fig.suptitle("Training curves per method: training solid, validation dashed (ensemble: mean over its members; "
                 "mean over seeds)")
    save(fig, path, inputs)


def communication_figure(stats, path, inputs=""):
    """Accuracy against how often the ranks average per epoch, one line per N: 0 for the one-shot averages
    (independent starts and shared start) and the ensemble, then local SGD's periods, then data-parallel training
    (every step). The x axis is linear below 1 and logarithmic above."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    rows = stats[stats["method"].isin(COMMUNICATING) & (stats["ranks"] > 1)].dropna(subset=["accuracy_mean"])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (n, group) in enumerate(rows.groupby("ranks")):
        group = group.sort_values("averagings_per_epoch_mean")
        line = group[group["method"].isin(("weight_average_shared_start", "local_sgd", "data_parallel"))]
        color = colors[i % len(colors)]
        ax.plot(line["averagings_per_epoch_mean"], 100 * line["accuracy_mean"], "-", color=color, alpha=0.6,
                label=f"N = {n}: shared start, averaged more and more often")
        for row in group.itertuples():
            marker = METHOD_STYLE[row.method][1]
            ax.errorbar(row.averagings_per_epoch_mean, 100 * row.accuracy_mean, yerr=100 * np.nan_to_num(
                row.accuracy_sd), fmt=marker, color=color, capsize=3, ms=7)
    for method in COMMUNICATING:
        color, marker, name = METHOD_STYLE[method]
        ax.plot([], [], marker, color="black", mfc="white", label=name)
    ax.set_xscale("symlog", linthresh=1)
    ax.set(xlabel="averagings (allreduces) per epoch", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    ax.set_title(f"How often should the ranks talk? Accuracy against averagings per epoch ({SD_NOTE})", fontsize=9)
    save(fig, path, inputs)


# The methods of the communication figure, from never talking to talking every step.
COMMUNICATING = ("ensemble_majority", "weight_average_by_validation", "weight_average_by_test",
                 "weight_average_shared_start", "local_sgd", "data_parallel")


def network_seconds(row, link):
    """A row's fit time with its Allreduces on `link`: this machine's fit time, plus what each Allreduce of its
    mean size would take there (network.allreduce_seconds; the shared-memory Allreduces already in the fit time
    cost far less, and are not taken off)."""
    calls = row.allreduces_per_rank_mean
    if not calls or np.isnan(calls):
        return row.fit_seconds_max_mean
    each = network.allreduce_seconds(link["alpha_seconds"], link["beta_seconds_per_byte"], int(row.ranks),
                                       row.allreduce_bytes_per_rank_mean / calls)
    return row.fit_seconds_max_mean + calls * each


def cost_figure(stats, path, inputs="", networks=()):
    """Accuracy against what it cost: core-seconds (cores used x the slowest rank's fit time), the fit's wall time
    on this machine, and on each network of `networks` (modelled); one marker per method, one colour per N.
    Oversubscribed runs are left out."""
    rows = stats[~stats["oversubscribed"].astype(bool)].dropna(subset=["accuracy_mean", "core_seconds_mean"])
    panels = [("core-seconds (cores used × slowest rank's fit time)", lambda r: r.core_seconds_mean),
              ("fit wall seconds, this machine (shared memory)", lambda r: r.fit_seconds_max_mean)]
    panels += [(f"fit wall seconds, {n['name']} network (modelled)", lambda r, n=n: network_seconds(r, n))
               for n in networks]
    rows_of_panels = -(-len(panels) // 2)
    fig, axes = plt.subplots(rows_of_panels, 2, figsize=(11, 4.5 * rows_of_panels), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ranks = sorted(rows["ranks"].unique())
    for ax, (label, cost) in zip(axes.flat, panels):
        for row in rows.itertuples():
            style = methods.method(row.method)
            ax.errorbar(cost(row), 100 * row.accuracy_mean, yerr=100 * np.nan_to_num(row.accuracy_sd),
                        fmt=style.marker, color=colors[ranks.index(row.ranks) % len(colors)], capsize=2, ms=6)
        ax.set(xlabel=label, ylabel="test accuracy (%)", xscale="log")
        ax.grid(alpha=0.3, which="both")
    for n in ranks:
        axes[0, 0].plot([], [], "o", color=colors[ranks.index(n) % len(colors)], label=f"N = {n}")
    for m in methods.METHODS:
        axes[0, 1].plot([], [], m.marker, color="black", mfc="white", label=m.label)
    axes[0, 0].legend(fontsize=7)
    axes[0, 1].legend(fontsize=5)
    fig.suptitle(f"Accuracy against cost: the frontier to pick from ({SD_NOTE}; networks: α–β model, "
                 "docs/network.md)")
    save(fig, path, inputs)


DRAW = {
    "fig_sequential": lambda t: sequential_figure(t["stats"], t["paper"], t["out"], t["inputs"]),
    "fig_scaling": lambda t: scaling_figure(t["stats"], t["paper"], t["out"], t["inputs"]),
    "fig_speedup": lambda t: speedup_figure(t["stats"], t["paper"], t["out"], t["inputs"]),
    "fig_rank_times": lambda t: rank_times_figure(t["rank_times"], t["out"], t["inputs"]),
    "fig_methods": lambda t: methods_figure(t["stats"], t["out"], t["inputs"]),
    "fig_voting": lambda t: voting_figure(t["stats"], t["out"], t["inputs"]),
    "fig_training_curves": lambda t: training_curves_figure(t["histories"], t["out"], t["inputs"]),
    "fig_communication": lambda t: communication_figure(t["stats"], t["out"], t["inputs"]),
    "fig_cost": lambda t: cost_figure(t["stats"], t["out"], t["inputs"], t["networks"]),
}


def figures(stats_path, rank_times_path, paper_path, outputs, histories=(), networks=()):
    """Draw every figure named in `outputs` ({figure key: path}) from the summarize stage's tables and the models'
    histories ((label, history.csv) pairs); each records the SHA-256 of the tables it was drawn from."""
    tables = {"stats": pd.read_csv(stats_path, dtype={"threads": str, "period": str}),
              "rank_times": pd.read_csv(rank_times_path),
              "paper": pd.read_csv(paper_path, dtype={"cores": str}),
              "histories": read_histories(histories), "networks": list(networks),
              "inputs": inputs_note([stats_path, rank_times_path])}
    for key, path in outputs.items():
        DRAW[key]({**tables, "out": path})

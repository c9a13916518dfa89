"""The figures: the paper's (Figs. 5-7) with its reported values beside ours, the speed-up and per-rank times, the
methods beyond the paper, and the headline figure of the README. Every error bar is ±1 sample standard deviation
over seeds (ddof=1, from summary_stats.csv); a single seed draws none. Each PNG carries the SHA-256 of the tables it
was drawn from (text chunk INPUTS_KEY), so the audit can tell a figure drawn from another summary.

How they read: accuracy is drawn as the test error on a log axis, so that 1.0 % against 1.5 % is plain to see, and
a method that fails (its error far above the others', such as the members' weights averaged from independent
starts) is an arrow at the top with its value written beside it rather than a point that squeezes the axis. Each
method has one colour and one marker, the method declaration's, in every figure; an axis over N or cores has integer
ticks; log axes label plain numbers; legends sit below the panels."""

import textwrap

import matplotlib

matplotlib.use("Agg")  # no display on workstations' batch nodes or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402
from matplotlib.transforms import offset_copy  # noqa: E402

from . import methods, network  # noqa: E402
from .atomic import atomic_path  # noqa: E402
from .provenance import INPUTS_KEY, inputs_note  # noqa: E402

PAPER_STYLE = {"laptop": ("tab:gray", "s", "paper: laptop i5-1135G7"),
               "xeon": ("tab:brown", "^", "paper: Xeon Gold 6354")}
OURS = "tab:blue"
SD_NOTE = "error bars: ±1 sample sd over seeds"
# A point whose error exceeds this many times the panel's median (and 10 %) failed: drawn off the scale.
FAIL_FACTOR = 3.0
PERIOD_STYLES = ("-", "--", ":", "-.")


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


def with_error(stats):
    """`stats` with the test error in percent, its mean and sd (the sd of the accuracy, in points)."""
    return stats.assign(error_mean=100.0 * (1.0 - stats["accuracy_mean"]),
                        error_sd=100.0 * stats["accuracy_sd"].fillna(0.0))


def sequential_rows(stats):
    return stats[stats["method"] == "sequential"].sort_values("threads", key=lambda t: t.astype(str))


def method_runs(stats):
    """(method, period or None, its rows) for every method of the declaration in the run, local SGD once per
    period, in the declaration's order."""
    out = []
    for m in methods.METHODS:
        rows = stats[stats["method"] == m.name]
        if rows.empty or m.name == "sequential":
            continue
        periods = sorted(rows["period"].dropna().astype(str).unique(), key=lambda p: (not p.isdigit(), p.zfill(9)))
        for period in (periods if m.periodic else [None]):
            out.append((m, period, rows if period is None else rows[rows["period"].astype(str) == period]))
    return out


def label(m, period=None):
    return m.label + (f", period {period}" if period else "")


def period_style(m, period, stats):
    """The line style that tells a method's periods apart (its colour and marker stay its own)."""
    if not period:
        return "-"
    periods = [p for _, p, _ in method_runs(stats[stats["method"] == m.name])]
    return PERIOD_STYLES[periods.index(period) % len(PERIOD_STYLES)]


# --- axes that show their point -----------------------------------------------------------------------------------


def plain(value, _position=None):
    """A log axis' label as a plain number: 20, 1.5, 0.8, never 2×10¹."""
    return f"{value:g}" if value < 1e4 else f"{value:,.0f}"


def byte_label(value, _position=None):
    if value < 1:
        return "0"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:g} {unit}"
    return f"{value:g} B"


def failing(errors):
    """Which of these errors (%) belong to methods that failed: far above the panel's median."""
    errors = np.asarray(errors, dtype=float)
    if not len(errors):
        return np.zeros(0, dtype=bool)
    return errors > max(FAIL_FACTOR * np.nanmedian(errors), 10.0)


def error_axis(ax, good, label="test error (%)"):
    """A log axis spanning the errors of the methods that did not fail, labelled with plain numbers."""
    good = np.asarray([g for g in good if np.isfinite(g) and g > 0])
    ax.set_yscale("log")
    if len(good):
        low, high = good.min() / 1.3, good.max() * 1.3
        ax.set_ylim(low, high)
        ticks = [t for t in (0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100)
                 if low <= t <= high]
        if len(ticks) >= 2:
            ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(plain))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(label)


def off_scale(ax, x, error, colour, marker, shift=0):
    """A failed method's point: an arrow at the top of the panel, its error written beside it; `shift` moves the
    k-th of several at one x aside, in points."""
    top = ax.get_ylim()[1]
    ax.annotate(f"{error:.0f}%", (x, top), xytext=(shift, -14), textcoords="offset points", ha="center", va="top",
                fontsize=7, color=colour, arrowprops={"arrowstyle": "->", "color": colour})
    moved = offset_copy(ax.transData, fig=ax.figure, x=shift, y=0, units="points")
    ax.plot([x], [top], marker=marker, color=colour, ms=6, clip_on=False, zorder=5, transform=moved)


def integer_axis(ax, values, axis="x"):
    """Integer ticks (world sizes, cores): every one from the least to the largest of `values` up to 16 of them,
    else the values themselves; room around them."""
    values = sorted({int(v) for v in values})
    if not values:
        return
    ticks = list(range(values[0], values[-1] + 1)) if values[-1] - values[0] < 16 else values
    getattr(ax, f"set_{axis}ticks")(ticks)
    getattr(ax, f"set_{axis}lim")(values[0] - 0.5, values[-1] + 0.5)


def log_axis(ax, axis="x"):
    """A log axis labelled with plain numbers at 1, 2 and 5 of every decade."""
    getattr(ax, f"set_{axis}scale")("log")
    target = getattr(ax, f"{axis}axis")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(plain))
    target.set_minor_formatter(NullFormatter())


def bytes_axis(ax, values):
    """Bytes on a log axis that also shows 0 (the methods that never talk): linear below 1 kB."""
    ax.set_xscale("symlog", linthresh=1e3, linscale=0.5)
    top = max([1e3, *[v for v in values if np.isfinite(v)]])
    ax.xaxis.set_major_locator(FixedLocator([0] + [10.0 ** k for k in range(3, int(np.log10(top)) + 2)]))
    ax.xaxis.set_major_formatter(FuncFormatter(byte_label))
    ax.xaxis.set_minor_formatter(NullFormatter())


def legend_below(fig, axes, columns=3):
    """One legend for the figure, below its panels, from every labelled artist (each label once)."""
    handles = {}
    for ax in np.atleast_1d(axes).flat:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(text, handle)
    if handles:
        rows = -(-len(handles) // columns)
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=columns, fontsize=7,
                   frameon=False, bbox_to_anchor=(0.5, 0.0))
        return 0.04 + 0.035 * rows * 4.5 / fig.get_size_inches()[1]
    return 0.0


def title(fig, text, width_chars=None):
    """The figure's title, wrapped to the figure's width so that it shows whole."""
    width = width_chars or int(fig.get_size_inches()[0] * 11)
    fig.suptitle("\n".join(textwrap.wrap(text, width)), fontsize=10)


def lay_out(fig, bottom=0.0):
    """Panels between the legend (`bottom`, a fraction of the height) and the title. Where tight_layout leaves a
    panel under the title (a tall figure of many panels), the panels are moved down by the overlap."""
    fig.tight_layout(rect=(0, bottom, 1, 1))
    if fig._suptitle is None or not fig.axes:
        return
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    clear = fig._suptitle.get_window_extent(renderer).y0 - 4
    highest = max(ax.get_tightbbox(renderer).y1 for ax in fig.axes)
    if highest > clear:
        fig.subplots_adjust(top=fig.subplotpars.top - (highest - clear) / fig.bbox.height)


def save(fig, path, inputs="", bottom=0.0):
    lay_out(fig, bottom)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png", metadata={INPUTS_KEY: inputs})
    plt.close(fig)


def draw_errors(ax, points, lines=True):
    """Points (x, error, sd, colour, marker, label, line style) of one panel on a log error axis: the failed ones
    off the scale. With `lines`, each label's points are joined in x order in its style; a style other than solid
    (a method's second or later averaging period) also draws its markers hollow."""
    errors = [p[1] for p in points]
    bad = failing(errors)
    error_axis(ax, [e for e, b in zip(errors, bad) if not b])
    groups = {}
    for (x, error, sd, colour, marker, name, style), off in zip(points, bad):
        if off:
            ax.plot([], [], marker, color=colour, label=name)
            continue
        groups.setdefault((name, colour, marker, style), []).append((x, error, sd))
    for (name, colour, marker, style), pts in groups.items():
        pts.sort()
        xs, ys, sds = zip(*pts)
        ax.errorbar(xs, ys, yerr=[min(s, y * 0.9) for s, y in zip(sds, ys)], fmt=marker + (style if lines else ""),
                    color=colour, mfc=colour if style == "-" else "white", capsize=3, ms=6, label=name)
    off = [p for p, b in zip(points, bad) if b]
    for x in dict.fromkeys(p[0] for p in off):  # several failed at one x: side by side, 22 points apart
        here = [p for p in off if p[0] == x]
        for k, (_, error, _, colour, marker, *_) in enumerate(here):
            off_scale(ax, x, error, colour, marker, shift=22 * (k - (len(here) - 1) / 2))


# --- the paper's figures ------------------------------------------------------------------------------------------


def sequential_figure(stats, paper):
    """Fig. 5: sequential accuracy and fit time, the paper's machines beside ours."""
    labels, acc, fit, acc_sd, fit_sd, colors = [], [], [], [], [], []
    for machine, (color, _, name) in PAPER_STYLE.items():
        labels.append(name.replace("paper: ", "paper\n"))
        acc.append(paper_values(paper, "sequential_accuracy")[machine]["1"])
        fit.append(paper_values(paper, "sequential_fit_seconds")[machine]["1"])
        acc_sd.append(0.0), fit_sd.append(0.0), colors.append(color)
    for row in sequential_rows(stats).itertuples():
        labels.append(f"ours\nthreads={row.threads}")
        acc.append(100 * row.accuracy_mean), acc_sd.append(100 * np.nan_to_num(row.accuracy_sd))
        fit.append(row.fit_seconds_mean_mean), fit_sd.append(np.nan_to_num(row.fit_seconds_mean_sd))
        colors.append(OURS)
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
    title(fig, f"Fig. 5: the sequential baseline, the paper's values (grey, brown) beside ours (blue); {SD_NOTE}")
    return fig, 0.0


def scaling_figure(stats, paper):
    """Figs. 6/7: time decrease and ensemble accuracy against the number of ranks (cores)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ranks = set(stats["ranks"])
    for machine, (color, marker, name) in PAPER_STYLE.items():
        values = paper_values(paper, "time_decrease")[machine]
        ax1.plot([int(c) for c in values], list(values.values()), marker=marker, color=color, label=name)
        ranks |= {int(c) for c in values}
        lo = paper_values(paper, "ensemble_accuracy_min")[machine]
        hi = paper_values(paper, "ensemble_accuracy_max")[machine]
        span = [int(c) for c in next(iter(lo)).split("-")]
        ax2.fill_between(span, list(lo.values()) * 2, list(hi.values()) * 2, color=color, alpha=0.25,
                         label=name + " (its range)")
    for over, style in ((False, "o-"), (True, "o--")):
        x, y, err = series(stats, "ensemble_majority", "time_decrease_pct", oversubscribed=over)
        if x:
            tag = "ours, ranks > cores (times do not count)" if over else "ours"
            ax1.errorbar(x, y, yerr=err, fmt=style, color=OURS, mfc="white" if over else OURS, capsize=3, label=tag)
    x, y, err = series(stats, "ensemble_majority", "accuracy", 100.0)
    ax2.errorbar(x, y, yerr=err, fmt="o-", color=OURS, capsize=3, label="ours: majority-vote ensemble")
    for row in sequential_rows(stats).itertuples():
        ax2.axhline(100 * row.accuracy_mean, color=OURS, ls=":" if str(row.threads) == "all" else "--", lw=1,
                    label=f"ours: sequential threads={row.threads}")
    ax1.axhline(0, color="black", lw=0.5)
    ax1.set(xlabel="MPI ranks (cores)", ylabel="fit() time decrease vs sequential (%)")
    ax2.set(xlabel="MPI ranks (cores)", ylabel="test accuracy (%)")
    for ax in (ax1, ax2):
        integer_axis(ax, ranks)
        ax.grid(alpha=0.3)
    title(fig, f"Figs. 6/7: training-time decrease and ensemble accuracy against the number of ranks; {SD_NOTE}")
    return fig, legend_below(fig, (ax1, ax2))


def speedup_figure(stats, paper):
    """Fit-time speed-up against the cores used: ideal, ours (against the 1-thread baseline, each point labelled
    with its ranks; oversubscribed runs left out) and the paper's two machines (from their time decrease)."""
    fig, ax = plt.subplots(figsize=(7, 5.5))
    ours = stats[stats["method"].isin(["ensemble_majority", "sequential"]) & ~stats["oversubscribed"].astype(bool)]
    ours = ours.dropna(subset=["speedup_mean"]).sort_values(["cores_used", "ranks"])
    paper_td = paper_values(paper, "time_decrease")
    top = max([1, *ours["cores_used"], *(int(c) for v in paper_td.values() for c in v)])
    ax.plot([1, top], [1, top], color="black", lw=1, ls="--", label="ideal (speed-up = cores used)")
    for machine, (color, marker, name) in PAPER_STYLE.items():
        values = paper_td[machine]
        ax.plot([int(c) for c in values], [paper_speedup(v) for v in values.values()], marker=marker, color=color,
                label=name + " (from its time decrease; cores = ranks)")
    for method, marker in (("ensemble_majority", "o"), ("sequential", "D")):
        rows = ours[ours["method"] == method]
        if rows.empty:
            continue
        ax.errorbar(rows["cores_used"], rows["speedup_mean"], yerr=rows["speedup_sd"].fillna(0.0), fmt=marker,
                    color=OURS, capsize=3, label=f"ours: {method}, 1-thread fit / slowest rank's fit")
        ax.plot(rows["cores_used"], rows["job_speedup_mean"], marker, color="tab:cyan", mfc="white",
                label=f"ours: {method}, job wall-time speed-up")
        for row in rows.itertuples():
            tag = f"N={row.ranks}" if method != "sequential" else f"seq {row.threads}"
            ax.annotate(tag, (row.cores_used, row.speedup_mean), fontsize=7, xytext=(4, 2),
                        textcoords="offset points")
    ax.set(xlabel="cores used (ranks × threads per rank)", ylabel="speed-up of fit()", xscale="log", yscale="log")
    ax.set_xticks([t for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128) if t <= top])
    ax.xaxis.set_major_formatter(FuncFormatter(plain))
    ax.xaxis.set_minor_formatter(NullFormatter())
    log_axis(ax, "y")  # 1, 2, 5, 10: a decade with one label says too little
    ax.grid(alpha=0.3, which="both")
    title(fig, f"Speed-up against the cores used, runs with more ranks than cores left out; {SD_NOTE}")
    return fig, legend_below(fig, ax, columns=2)


def rank_times_figure(rank_times):
    """Each rank's fit() time per world size: the spread shows imbalance (the last rank's remainder, noise,
    shared cores); the slowest rank sets the phase's wall time."""
    fig, ax = plt.subplots(figsize=(7, 5))
    ens = rank_times[(rank_times["method"] == "ensemble_majority")].dropna(subset=["fit_seconds"])
    for (n, _seed), run in ens.groupby(["ranks", "seed"]):
        over = bool(run["oversubscribed"].iloc[0])
        fits = run.sort_values("rank")["fit_seconds"].to_numpy()
        xs = n + np.linspace(-0.15, 0.15, len(fits)) if len(fits) > 1 else [n]
        ax.scatter(xs, fits, s=18, color="tab:orange" if over else OURS, alpha=0.8, marker="x" if over else "o")
        ax.hlines(fits.max(), n - 0.25, n + 0.25, color="black", lw=1)
    ax.scatter([], [], color=OURS, s=18, label="one rank's fit() time")
    ax.scatter([], [], color="tab:orange", marker="x", s=18, label="one rank, ranks > cores")
    ax.hlines([], 0, 0, color="black", lw=1, label="slowest rank (the phase's wall time)")
    ax.set(xlabel="MPI ranks N", ylabel="fit() time per rank (s)", ylim=(0, None))
    integer_axis(ax, ens["ranks"])
    ax.grid(alpha=0.3)
    title(fig, "Per-rank fit() time of the ensemble's members: the spread across ranks (resumed jobs left out)")
    return fig, legend_below(fig, ax, columns=2)


# --- the methods beyond the paper ---------------------------------------------------------------------------------


def sequential_lines(ax, stats, metric, scale=1.0, error=False):
    for row in sequential_rows(stats).itertuples():
        mean = scale * getattr(row, f"{metric}_mean")
        mean = 100.0 - mean if error else mean
        ax.axhline(mean, color="black", ls=":" if str(row.threads) == "all" else "--", lw=1,
                   label=f"sequential threads={row.threads}")


def methods_figure(stats):
    """Test error, slowest rank's fit time and job wall time against N, one curve per method (and period)."""
    stats = with_error(stats.assign(period=stats["period"].astype(str).where(stats["period"].notna())))
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    points = []
    for m, period, rows in method_runs(stats):
        style = period_style(m, period, stats)
        points += [(r.ranks, r.error_mean, r.error_sd, m.colour, m.marker, label(m, period), style)
                   for r in rows.dropna(subset=["error_mean"]).itertuples()]
        for ax, metric in ((axes[1], "fit_seconds_max"), (axes[2], "job_seconds")):
            x, y, err = series(rows, m.name, metric)
            if x:
                ax.errorbar(x, y, yerr=err, fmt=m.marker + style, color=m.colour, mfc=m.colour if style == "-"
                            else "white", capsize=3, label=label(m, period))
    draw_errors(axes[0], points)
    sequential_lines(axes[0], stats, "accuracy", 100.0, error=True)
    for ax, metric, name in ((axes[1], "fit_seconds_max", "fit time, slowest rank (s)"),
                             (axes[2], "job_seconds", "job wall time: training + vote or evaluation (s)")):
        sequential_lines(ax, stats, metric)
        ax.set_ylabel(name)
    for ax in axes:
        ax.set_xlabel("MPI ranks N")
        integer_axis(ax, stats["ranks"])
        ax.grid(alpha=0.3, which="both")
    n = int(stats["n_seeds"].max()) if len(stats) else 0
    title(fig, f"Methods against the number of ranks: test error (log), fit time and job time, mean over {n} seed(s); "
               f"{SD_NOTE}; arrows: methods that failed, their error written beside")
    return fig, legend_below(fig, axes, columns=4)


def voting_figure(stats):
    """How each combination rule compares with its own members, and the rules' errors with the single shard."""
    stats = with_error(stats)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8))
    points = []
    for name in ("ensemble_majority", "ensemble_majority_tiebreak", "ensemble_soft", "single_shard"):
        m = methods.method(name)
        rows = stats[stats["method"] == name].dropna(subset=["member_accuracy_mean_mean"]).sort_values("ranks")
        if rows.empty:
            continue
        if name != "single_shard":
            gain = 100 * (rows["accuracy_mean"] - rows["member_accuracy_mean_mean"])
            ax1.plot(rows["ranks"], gain, m.marker + "-", color=m.colour, label=m.label)
        points += [(r.ranks, r.error_mean, r.error_sd, m.colour, m.marker, m.label, "-") for r in rows.itertuples()]
    draw_errors(ax2, points)
    ax1.axhline(0, color="black", lw=0.8)
    ax1.set(ylabel="ensemble − mean member accuracy (points)")
    ax1.set_title("gain over its own members (below 0: the vote hurts)", fontsize=9)
    ax2.set_title("the rules' test error, with the single-shard control", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xlabel("MPI ranks N")
        integer_axis(ax, stats["ranks"])
        ax.grid(alpha=0.3, which="both")
    title(fig, f"Combining N members: majority (ties to the lowest class), confidence tie-break, soft vote; {SD_NOTE}")
    return fig, legend_below(fig, (ax1, ax2), columns=2)


def read_histories(labelled):
    """`labelled`: (label, history.csv path) pairs -> one frame; a label's files (an ensemble's ranks, the seeds)
    are averaged per epoch by `training_curves_figure`."""
    frames = [pd.read_csv(path).assign(label=label) for label, path in labelled]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["label", "epoch"])


def training_curves_figure(histories):
    """Accuracy and loss per epoch, one panel per method, one colour per N (or threads, or period): training solid,
    validation dashed. An ensemble's curve is the mean over its members, every curve the mean over seeds."""
    curves = histories.groupby(["label", "epoch"], sort=True).mean(numeric_only=True).reset_index()
    curves["method"] = curves["label"].str.split("/").str[0]
    names = list(dict.fromkeys(histories["label"].str.split("/").str[0])) or ["(none)"]  # the workflow's order
    fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names), 7.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, name in enumerate(names):
        runs = curves[curves["method"] == name]
        for i, (run, curve) in enumerate(runs.groupby("label", sort=True)):
            color, tag = colors[i % len(colors)], run.split("/", 1)[-1]
            for ax, metric in ((axes[0, col], "accuracy"), (axes[1, col], "loss")):
                ax.plot(curve["epoch"], curve[metric], "o-", color=color, ms=3, label=f"{tag}, training")
                if curve.get(f"val_{metric}") is not None and curve[f"val_{metric}"].notna().any():
                    ax.plot(curve["epoch"], curve[f"val_{metric}"], "s--", color=color, ms=3, mfc="white",
                            label=f"{tag}, validation")
        axes[0, col].set_title(name, fontsize=9)
        axes[0, col].legend(fontsize=5, loc="lower right")
        axes[0, col].set(ylabel="accuracy" if col == 0 else None)
        axes[1, col].set(xlabel="epoch", ylabel="loss" if col == 0 else None, yscale="log")
        axes[1, col].yaxis.set_major_formatter(FuncFormatter(plain))
        axes[1, col].yaxis.set_minor_formatter(NullFormatter())
        for ax in axes[:, col]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    title(fig, "Training curves per method: training solid, validation dashed (an ensemble: the mean over its "
               "members; every curve the mean over seeds)")
    return fig, 0.0


def communication_figure(stats):
    """The project's answer to "how often should the ranks talk": per world size, the test error against the
    bytes each rank put on the wire (MPICH's algorithm between nodes) and against the core-seconds the fit held,
    one point per method (mean ± sd over seeds); the methods that never talk sit at 0 bytes."""
    stats = with_error(stats[stats["ranks"] > 1])
    sizes, alone = compared_sizes(stats)
    fig, axes = plt.subplots(len(sizes), 2, figsize=(12, 4.2 * len(sizes)), squeeze=False)
    for row_axes, n in zip(axes, sizes):
        at_n = stats[stats["ranks"] == n]
        for ax, cost, name in ((row_axes[0], "wire_bytes_per_rank_mean", "bytes on the wire per rank (log)"),
                               (row_axes[1], "core_seconds_mean", "core-seconds of the fit (log)")):
            points = [(getattr(r, cost), r.error_mean, r.error_sd, m.colour, m.marker, label(m, period),
                       period_style(m, period, at_n))
                      for m, period, rows in method_runs(at_n)
                      for r in rows.dropna(subset=["error_mean", cost]).itertuples()]
            draw_errors(ax, points, lines=False)
            if cost.startswith("wire"):
                bytes_axis(ax, [p[0] for p in points])
            else:
                log_axis(ax)
            over = bool(at_n["oversubscribed"].astype(bool).any())
            ax.set_xlabel(name + (" — ranks > cores: times do not count" if over and cost.startswith("core") else ""))
            ax.set_title(f"N = {n}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
    note = f"; N = {', '.join(map(str, alone))}: one method only, not drawn" if alone else ""
    title(fig, f"How often should the ranks talk? Test error against what the talking cost, per world size{note}; "
               f"{SD_NOTE}")
    return fig, legend_below(fig, axes, columns=3)


def compared_sizes(stats):
    """The world sizes at which at least two methods ran (a comparison), and those with one method alone (the
    default run's ensemble at N = 3...8), which a panel of one point would not answer."""
    counts = stats.groupby("ranks")["method"].nunique()
    sizes = [int(n) for n in counts.index if counts[n] > 1]
    if not sizes:  # nothing to compare anywhere: draw what there is
        return [int(n) for n in counts.index] or [2], []
    return sizes, [int(n) for n in counts.index if counts[n] == 1]


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


def cost_figure(stats, networks=()):
    """Test error against what it cost: core-seconds (cores used x the slowest rank's fit time), the fit's wall time
    on this machine, and on each network of `networks` (modelled); one colour and marker per method, each point
    labelled with its N. Oversubscribed runs are left out."""
    rows = with_error(stats[~stats["oversubscribed"].astype(bool)].dropna(subset=["accuracy_mean",
                                                                                  "core_seconds_mean"]))
    panels = [("core-seconds (cores used × slowest rank's fit time)", lambda r: r.core_seconds_mean),
              ("fit wall seconds, this machine (shared memory)", lambda r: r.fit_seconds_max_mean)]
    panels += [(f"fit wall seconds, {n['name']} network (modelled)", lambda r, n=n: network_seconds(r, n))
               for n in networks]
    rows_of_panels = -(-len(panels) // 2)
    fig, axes = plt.subplots(rows_of_panels, 2, figsize=(12, 4.5 * rows_of_panels), squeeze=False)
    runs = [(m, period, part) for m, period, part in method_runs(rows)]
    runs += [(methods.method("sequential"), None, rows[rows["method"] == "sequential"])]
    for ax, (name, cost) in zip(axes.flat, panels):
        points = [(cost(r), r.error_mean, r.error_sd, m.colour, m.marker, label(m, period),
                   period_style(m, period, rows)) for m, period, part in runs for r in part.itertuples()]
        draw_errors(ax, points, lines=False)
        for (x, error, *_), r in zip(points, [r for _, _, part in runs for r in part.itertuples()]):
            if ax.get_ylim()[0] <= error <= ax.get_ylim()[1]:
                ax.annotate(f"N={r.ranks}" if r.method != "sequential" else f"t={r.threads}", (x, error),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(name)
        log_axis(ax)
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    title(fig, f"Test error against cost: the frontier to pick from, down and to the left ({SD_NOTE}; networks: the "
               "α–β model of docs/network.md)")
    return fig, legend_below(fig, axes, columns=3)


# --- the README's figure ------------------------------------------------------------------------------------------


def headline_figure(stats, paper, caption=""):
    """The paper's claim and ours in one picture: the training-time decrease against N (the paper's metric, and
    the job wall time a user waits for), and the test error against N beside the paper's reported ranges."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    ranks = set(stats["ranks"])
    for machine, (color, marker, name) in PAPER_STYLE.items():
        values = paper_values(paper, "time_decrease")[machine]
        cores = [int(c) for c in values if int(c) <= max(8, max(ranks))]
        ax1.plot(cores, [values[str(c)] for c in cores], marker=marker, color=color, label=name)
        lo, hi = (paper_values(paper, f"ensemble_accuracy_{k}")[machine] for k in ("max", "min"))
        span = [int(c) for c in next(iter(lo)).split("-")]
        ax2.fill_between(span, [100 - v for v in lo.values()] * 2, [100 - v for v in hi.values()] * 2, color=color,
                         alpha=0.25, label=name + ", its range")
    ensemble = stats[stats["method"] == "ensemble_majority"].sort_values("ranks")
    fits = ensemble[~ensemble["oversubscribed"].astype(bool)]
    ax1.errorbar(fits["ranks"], fits["time_decrease_pct_mean"], yerr=fits["time_decrease_pct_sd"].fillna(0),
                 fmt="o-", color=OURS, capsize=3, label="ours: fit() time, the paper's metric")
    seq_job = stats[(stats["method"] == "sequential") & (stats["threads"].astype(str) == "all")]["job_seconds_mean"]
    if len(seq_job):
        waited = 100 * (1 - fits["job_seconds_mean"] / seq_job.iloc[0])
        ax1.plot(fits["ranks"], waited, "o--", color=OURS, mfc="white", label="ours: job wall time a user waits for")
    ax1.axhline(0, color="black", lw=0.5)
    ax1.set(xlabel="MPI ranks N (cores)", ylabel="time decrease vs sequential, all threads (%)")
    errors = 100 * (1 - ensemble["accuracy_mean"])
    ax2.errorbar(ensemble["ranks"], errors, yerr=100 * ensemble["accuracy_sd"].fillna(0), fmt="o-", color=OURS,
                 capsize=3, label="ours: majority-vote ensemble")
    error_axis(ax2, [*errors, *(100 - v for m in PAPER_STYLE for v in paper_values(paper, "ensemble_accuracy_min")[m]
                                .values()), *(100 - v for m in PAPER_STYLE
                                              for v in paper_values(paper, "ensemble_accuracy_max")[m].values())])
    sequential_lines(ax2, stats, "accuracy", 100.0, error=True)
    ax2.set_xlabel("MPI ranks N (cores)")
    for ax in (ax1, ax2):
        integer_axis(ax, ranks | {2, 8})
        ax.grid(alpha=0.3, which="both")
    title(fig, "Rehman et al. reproduced: training-time decrease and test error against the number of ranks; "
               + (caption or SD_NOTE))
    return fig, legend_below(fig, (ax1, ax2), columns=2)


DRAW = {
    "fig_sequential": lambda t: sequential_figure(t["stats"], t["paper"]),
    "fig_scaling": lambda t: scaling_figure(t["stats"], t["paper"]),
    "fig_speedup": lambda t: speedup_figure(t["stats"], t["paper"]),
    "fig_rank_times": lambda t: rank_times_figure(t["rank_times"]),
    "fig_methods": lambda t: methods_figure(t["stats"]),
    "fig_voting": lambda t: voting_figure(t["stats"]),
    "fig_training_curves": lambda t: training_curves_figure(t["histories"]),
    "fig_communication": lambda t: communication_figure(t["stats"]),
    "fig_cost": lambda t: cost_figure(t["stats"], t["networks"]),
    "fig_headline": lambda t: headline_figure(t["stats"], t["paper"], t.get("caption", "")),
}


def load_tables(stats_path, rank_times_path, paper_path, histories=(), networks=()):
    return {"stats": pd.read_csv(stats_path, dtype={"threads": str, "period": str}),
            "rank_times": pd.read_csv(rank_times_path), "paper": pd.read_csv(paper_path, dtype={"cores": str}),
            "histories": read_histories(histories), "networks": list(networks),
            "inputs": inputs_note([stats_path, rank_times_path])}


def figures(stats_path, rank_times_path, paper_path, outputs, histories=(), networks=(), caption=""):
    """Draw every figure named in `outputs` ({figure key: path}) from the summarize stage's tables and the models'
    histories ((label, history.csv) pairs); each records the SHA-256 of the tables it was drawn from."""
    tables = {**load_tables(stats_path, rank_times_path, paper_path, histories, networks), "caption": caption}
    for key, path in outputs.items():
        fig, bottom = DRAW[key](tables)
        save(fig, path, tables["inputs"], bottom)

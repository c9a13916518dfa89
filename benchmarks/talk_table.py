"""The communication study's table: per method (and averaging period) and world size N, the test accuracy's mean
± sample sd over the seeds, and what each rank sent; from the workflow's own results/summary_stats.csv.

    .venv/bin/python benchmarks/talk_table.py results/summary_stats.csv [more summary_stats.csv ...] > table.md

Several files (runs of the same config at different N) are read as one table; a method, period and N in more
than one of them is an error.

Methods in the declaration's order (src/mpi_ensemble/methods.py); the sequential baseline is left out (it does
not depend on N). A cell is `mean ± sd` in percent, with `n` seeds when fewer than the most any cell has (one seed: the value
alone).
"""

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mpi_ensemble import methods  # noqa: E402


def cell(row, most):
    # One seed has no sd: its cell is the value alone, marked n = 1.
    spread = "" if pd.isna(row.accuracy_sd) else f" ± {100 * row.accuracy_sd:.2f}"
    text = f"{100 * row.accuracy_mean:.2f}{spread}"
    return text if row.n_seeds == most else f"{text} (n = {row.n_seeds})"


def table(stats):
    """Markdown: one row per method and period, one column per N, and the wire megabytes per rank at the
    largest N."""
    stats = stats[stats["method"] != "sequential"].copy()
    stats["period"] = stats["period"].fillna("")
    ranks = sorted(stats["ranks"].unique())
    most = stats["n_seeds"].max()
    order = {name: i for i, name in enumerate(methods.NAMES)}
    stats["order"] = stats["method"].map(order)
    head = ["method", "period", *(f"N = {n}" for n in ranks), f"wire MB per rank, N = {ranks[-1]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (_, method, period), rows in stats.groupby(["order", "method", "period"], sort=True):
        by_n = {row.ranks: row for row in rows.itertuples()}
        last = by_n.get(ranks[-1])
        wire = "" if last is None or pd.isna(last.wire_bytes_per_rank_mean) else f"{last.wire_bytes_per_rank_mean / 1e6:.1f}"
        cells = [cell(by_n[n], most) if n in by_n else "" for n in ranks]
        lines.append("| " + " | ".join([f"`{method}`", period, *cells, wire]) + " |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.exit(__doc__)
    print(table(read(argv)))


def read(paths):
    stats = pd.concat([pd.read_csv(path, dtype={"threads": str, "period": str}) for path in paths])
    rows = stats[stats["method"] != "sequential"]
    twice = rows[rows.duplicated(["method", "period", "ranks"], keep=False)]
    if len(twice):
        first = twice.iloc[0]
        raise SystemExit(f"{first.method} (period {first.period}) at N = {first.ranks} is in more than one of "
                         f"{', '.join(map(str, paths))}: give each N's statistics once")
    return stats


if __name__ == "__main__":
    main()

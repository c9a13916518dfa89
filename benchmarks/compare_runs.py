"""Every column that changed between two results folders' summary.csv, row by row. Prints a Markdown table.

    .venv/bin/python benchmarks/compare_runs.py BEFORE/summary.csv AFTER/summary.csv [--times BEFORE_DIR AFTER_DIR]

Rows are matched on (method, ranks, threads, seed); rows of local SGD (a `period`) exist only after. Columns
present on one side only and rows present on one side only are listed first. With --times, the job wall times of
both runs (every `results/benchmarks/**/*.tsv`, Snakemake's `s` column) are listed side by side as well.
"""

import argparse
from pathlib import Path

import pandas as pd

KEY = ["method", "ranks", "threads", "seed"]


def read_summary(path):
    frame = pd.read_csv(path, dtype={"threads": str})
    if "period" in frame:
        frame = frame[frame["period"].isna()]
    return frame


def changed_cells(before, after, rtol=1e-9):
    """(method, ranks, threads, seed, column, before, after) for every cell that differs."""
    merged = before.merge(after, on=KEY, suffixes=("_before", "_after"))
    columns = [c for c in before.columns if c in after.columns and c not in KEY]
    rows = []
    for _, row in merged.iterrows():
        for column in columns:
            old, new = row[f"{column}_before"], row[f"{column}_after"]
            if (pd.isna(old) and pd.isna(new)) or str(old) == str(new):
                continue
            try:
                if abs(float(old) - float(new)) <= rtol * max(1.0, abs(float(old))):
                    continue
            except (TypeError, ValueError):
                pass
            rows.append({**{k: row[k] for k in KEY}, "column": column, "before": old, "after": new})
    return pd.DataFrame(rows, columns=[*KEY, "column", "before", "after"])


def job_times(folder):
    """Job name (the benchmark file's path under results/benchmarks) -> wall seconds."""
    root = Path(folder) / "results" / "benchmarks"
    return pd.Series({str(p.relative_to(root).with_suffix("")): pd.read_csv(p, sep="\t")["s"].iloc[-1]
                      for p in sorted(root.rglob("*.tsv"))}, name="seconds", dtype=float)


def cell(value):
    if pd.isna(value):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def markdown(frame):
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in frame.values.tolist()])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--times", nargs=2, metavar=("BEFORE_DIR", "AFTER_DIR"))
    args = p.parse_args(argv)
    before, after = read_summary(args.before), read_summary(args.after)
    print("columns only before:", [c for c in before.columns if c not in after.columns])
    print("columns only after:", [c for c in after.columns if c not in before.columns])
    keys = lambda f: set(map(tuple, f[KEY].astype(str).values.tolist()))
    print("rows only before:", sorted(keys(before) - keys(after)))
    print("rows only after:", sorted(keys(after) - keys(before)))
    print()
    print(markdown(changed_cells(before, after)))
    if args.times:
        times = pd.concat([job_times(d).rename(n) for d, n in zip(args.times, ("before", "after"))], axis=1)
        times.loc["total"] = times.sum()
        print()
        print(markdown(times.reset_index(names="job")))


if __name__ == "__main__":
    main()

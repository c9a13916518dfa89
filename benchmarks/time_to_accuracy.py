"""Time to an accuracy on a cluster network: the epochs each method's delivered model took to reach each target
validation accuracy, measured by the workflow at N ≤ 16 (config/communication.yaml), priced epoch by epoch with
the α–β model and the step times of a benchmarks/network.py folder (benchmarks/cost_model.py).

    .venv/bin/python benchmarks/time_to_accuracy.py --results results \\
        --model benchmarks/results/network-model-2026-12-07 --out benchmarks/results/talk-MACHINE-DATE

Writes OUT/delivered.csv (one row per run and epoch, from results/**/result.json; without --results it is read
back from OUT), OUT/time_to_accuracy.csv (one row per network, run and target) and OUT/time_to_accuracy.md (mean
± sd over the seeds that reached the target, and how many did), which it also prints. Only the N that were
measured are priced: steps to an accuracy are not extrapolated. The modelled seconds count training steps; the
workflow's validation after every epoch is left out.
"""

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cost_model  # noqa: E402
from mpi_ensemble import methods, summarize  # noqa: E402


def delivered_rows(results):
    """One row per epoch of every training result under `results` that the model prices."""
    rows = []
    for path in sorted(Path(results).glob("**/result.json")):
        result = json.loads(path.read_text())
        history = summarize.delivered_history(result) if result["method"] in cost_model.PRICED else None
        for epoch, accuracy in enumerate(history or [], start=1):
            rows.append({"method": result["method"], "period": none_or_str(result.get("period")),
                         "ranks": result["ranks"], "seed": result["seed"], "epoch": epoch,
                         methods.DELIVERED: accuracy})
    if not rows:
        raise SystemExit(f"no training result with a delivered history under {results}: run the workflow first "
                         "(config/communication.yaml)")
    return pd.DataFrame(rows)


def none_or_str(period):
    # "16" and "epoch" alike, as delivered.csv reads them back.
    return None if period is None else str(period)


def table(stats):
    """Markdown, one block per network and target: a row per method and period, a column per N."""
    ranks = sorted(stats["ranks"].unique())
    order = {name: i for i, name in enumerate(methods.NAMES)}
    lines = []
    for (network, target), block in stats.groupby(["network", "target"], sort=False):
        lines += ["", f"{network}, validation accuracy {target:g}: modelled seconds of training, mean ± sd over the "
                  "seeds that reached it (reached/seeds, mean epochs)", "",
                  "| method | period | " + " | ".join(f"N = {n}" for n in ranks) + " |",
                  "|" + " --- |" * (len(ranks) + 2)]
        block = block.assign(order=block["method"].map(order), period=block["period"].fillna(""))
        for (_, method, period), rows in block.groupby(["order", "method", "period"], sort=True):
            by_n = {row.ranks: row for row in rows.itertuples()}
            lines.append(f"| `{method}` | {period} | " + " | ".join(cell(by_n.get(n)) for n in ranks) + " |")
    return "\n".join(lines).lstrip("\n")


def cell(row):
    if row is None:
        return ""
    if not row.reached:
        return f"never (0/{row.seeds})"
    spread = "" if pd.isna(row.seconds_sd) else f" ± {row.seconds_sd:.1f}"
    return f"{row.seconds_mean:.1f}{spread} ({row.reached}/{row.seeds}, {row.epochs_mean:.1f} ep.)"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", help="the workflow's results folder (else OUT/delivered.csv is read)")
    p.add_argument("--model", required=True, help="a benchmarks/network.py folder: compute.csv and fit.json")
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--targets", type=float, nargs="+", default=[0.98, 0.99])
    p.add_argument("--ranks", type=int, nargs="+", help="only these world sizes (default: every one found)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history = delivered_rows(args.results) if args.results else pd.read_csv(out / "delivered.csv",
                                                                              dtype={"period": str})
    if args.ranks:
        history = history[history["ranks"].isin(args.ranks)]
    steps = pd.read_csv(Path(args.model) / "compute.csv")
    fits = json.loads((Path(args.model) / "fit.json").read_text())["projected"]
    rows = cost_model.time_to_accuracy(history, steps, fits, args.targets)
    text = table(cost_model.time_to_accuracy_stats(rows)) + "\n"
    history.to_csv(out / "delivered.csv", index=False)
    rows.to_csv(out / "time_to_accuracy.csv", index=False)
    (out / "time_to_accuracy.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Repeat statistics, method differences, the paper comparison, HTML tables and the method figures."""

import csv
import html
import io as _io
import math

from . import comparison, io, method_plots, report, stats

STATS_COLUMNS = ["method", "ranks", "threads", "n_seeds"] + [
    f"{m}_{s}" for m in stats.STAT_METRICS for s in ("mean", "sd")
]
DIFF_COLUMNS = ["metric", "ranks", "method", "threads", "reference", "mean", "reference_mean", "difference",
                "spread", "n_seeds", "exceeds_spread"]


def to_csv(rows, columns):
    out = _io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: report._cell(row.get(k)) for k in columns})
    return out.getvalue()


def _html_cell(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def html_table(rows, columns, table_id):
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f"<td>{_html_cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


STYLE = ("<style>body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse;margin-bottom:2em}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} th{background:#eee}</style>")


def html_page(title, sections):
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}"
             f"</head><body><h1>{html.escape(title)}</h1>"]
    for heading, text, table in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(text)}</p>{table}")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def flat_provenance(prov, prefix=""):
    """Nested provenance as (key, value) rows: versions.keras, threads.<row>, ..."""
    rows = []
    for key, value in prov.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flat_provenance(value, name + ".")
        else:
            rows.append({"key": name, "value": value if not isinstance(value, list) else ", ".join(map(str, value))})
    return rows


def spread_sentence(diffs):
    """The report's plain-language verdict: which differences exceed the seed-to-seed spread."""
    judged = [d for d in diffs if d["exceeds_spread"] != "n/a"]
    if not judged:
        return ("Every group ran with a single seed, so no seed-to-seed spread is known: run with several seeds "
                "(config key seeds) to tell real differences from noise.")
    big = [f"{d['method']} vs {d['reference']} at {d['ranks']} ranks ({d['metric']}: {d['difference']:+.4g})"
           for d in judged if d["exceeds_spread"] == "yes"]
    if not big:
        return "No difference exceeds the seed-to-seed spread (sum of the two standard deviations)."
    return ("Differences larger than the seed-to-seed spread (sum of the two standard deviations): "
            + "; ".join(big) + ". All others are within the spread.")


def run(args):
    rows = stats.read_summary(args.summary)
    paper = report.read_paper(args.paper)
    group = stats.group_stats(rows)
    diffs = stats.differences(group)
    comp = comparison.compare(paper, rows)
    io.write_text(args.stats, to_csv(group, STATS_COLUMNS))
    io.write_text(args.differences, to_csv(diffs, DIFF_COLUMNS))
    io.write_text(args.comparison, to_csv(comp, comparison.COLUMNS))
    verdict = spread_sentence(diffs)
    short_stats = ["method", "ranks", "threads", "n_seeds", "accuracy_mean", "accuracy_sd", "fit_seconds_max_mean",
                   "fit_seconds_max_sd", "job_seconds_mean", "job_seconds_sd", "time_decrease_pct_mean",
                   "time_decrease_pct_sd", "speedup_mean"]
    io.write_text(args.summary_html, html_page("Summary", [
        ("Mean ± sd over seeds", "One row per method, number of ranks and threads (summary_stats.csv).",
         html_table(group, short_stats, "summary-stats")),
        ("Which differences exceed the seed-to-seed spread", verdict,
         html_table(diffs, DIFF_COLUMNS, "differences")),
        ("Paper comparison", "The paper's numbers next to ours (paper_comparison.csv); difference_pp in "
         "percentage points for percentages, ratio = ours / paper.", html_table(comp, comparison.COLUMNS,
                                                                                   "paper-comparison")),
        ("Every run", "summary.csv: one row per method, ranks, threads and seed.",
         html_table(rows, list(rows[0]) if rows else [], "summary")),
    ]))
    prov = io.read_json(args.provenance)
    io.write_text(args.provenance_html, html_page("Run provenance", [
        ("Where and with what these numbers were made",
         "Package versions, CPU model and count, cores given to the workflow, MPI library, threads per job, "
         "git commit of the workflow.", html_table(flat_provenance(prov), ["key", "value"], "provenance")),
    ]))
    method_plots.methods_figure(group, args.fig_methods)
    method_plots.voting_figure(group, args.fig_voting)
    print(verdict)

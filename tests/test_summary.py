"""The summarize stage: summary.csv's columns, the statistics over seeds, the differences against the spread, the
paper comparison and the figures."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from mpi_ensemble import audit, methods, model, plots, summarize

PAPER = ROOT / "paper" / "reported_results.csv"


def bench(tmp_path, name, seconds, max_rss=500.0):
    path = tmp_path / f"{name}.tsv"
    path.write_text(f"s\th:m:s\tmax_rss\tmax_vms\n{seconds}\t0:00:{int(seconds)}\t{max_rss}\t1000\n")
    return str(path)


def result(method, ranks, threads, fits, seed=0, cores=2, images=48000, accuracy=0.97, precision="float32",
           rss=(700.0,), resumed=0):
    members = len(fits)
    per_rank = cores if threads == "all" else threads
    return {
        "method": method, "ranks": ranks, "seed": seed, "threads": threads, "precision": precision, "epochs": 5,
        "batch_size": 64,
        "job_cores": cores, "cores_used": min(members * per_rank, cores), "oversubscribed": ranks * per_rank > cores,
        "metrics": {"accuracy": accuracy, "precision": accuracy, "recall": accuracy, "f1": accuracy},
        "ties": 0, "member_accuracy": [accuracy - 0.01] * members, "resumed_from_epoch": resumed,
        "rank_timing": [{"rank": r, "fit_seconds": f, "wall_seconds": f + 3.0, "train_images": images // max(ranks, 1),
                         "validation_images": images // 4 // max(ranks, 1), "cpu_seconds": 1.0,
                         "peak_rss_mib": rss[r % len(rss)]} for r, f in enumerate(fits)],
    }


@pytest.fixture
def table(tmp_path):
    """Sequential 1 thread (40 s fit, 45 s job) and all threads (30 s, 35 s); an ensemble of 1 rank with 2
    threads; an ensemble of 2 ranks (fits 18 and 22 s, training job 25 s, vote job 5 s); its single-shard control;
    8 oversubscribed ranks; data-parallel on 2 ranks."""
    results = [
        (result("sequential", 1, 1, [40.0]), [bench(tmp_path, "s1", 45)]),
        (result("sequential", 1, "all", [30.0]), [bench(tmp_path, "sall", 35)]),
        (result("ensemble_majority", 1, 2, [28.0]), [bench(tmp_path, "t1", 32, 900), bench(tmp_path, "v1", 4)]),
        (result("ensemble_majority", 2, 1, [18.0, 22.0], rss=(700.0, 750.0)),
         [bench(tmp_path, "t2", 25, 1400), bench(tmp_path, "v2", 5)]),
        (result("single_shard", 2, 1, [18.0]), [bench(tmp_path, "t2", 25, 1400), bench(tmp_path, "ss2", 1)]),
        (result("ensemble_majority", 8, 1, [40.0] * 8), [bench(tmp_path, "t8", 50), bench(tmp_path, "v8", 9)]),
        (result("data_parallel", 2, 1, [30.0, 30.0], precision="mixed_bfloat16"), [bench(tmp_path, "dp2", 33)]),
    ]
    return summarize.summary_table(results).set_index(["method", "ranks"], drop=False)


def test_efficiency_is_throughput_per_core_against_the_one_thread_baseline(table):
    one_rank_two_threads = table.loc[("ensemble_majority", 1)]
    assert one_rank_two_threads["cores_used"] == 2
    assert one_rank_two_threads["speedup"] == pytest.approx(40 / 28)
    assert one_rank_two_threads["efficiency"] == pytest.approx(40 / 28 / 2)  # same work: speed-up per core used
    eight = table.loc[("ensemble_majority", 8)]
    assert eight["oversubscribed"] and eight["cores_used"] == 2
    assert eight["efficiency"] == pytest.approx(1.0 / 2)  # 8 ranks share the job's 2 cores, not 8
    # Rank 0 alone trains on half the images: 24,000 a epoch in 18 s on one core, against 48,000 in 40 s. Its
    # speed-up per core (40 / 18 = 2.22) would credit it with work it never did.
    shard = table.loc[("single_shard", 2)]
    assert shard["speedup"] == pytest.approx(40 / 18)
    assert shard["efficiency"] == pytest.approx((24000 / 18) / (48000 / 40))


def test_job_times_compare_like_with_like(table):
    ens = table.loc[("ensemble_majority", 2)]
    assert ens["train_job_seconds"] == 25 and ens["job_seconds"] == 30  # training job + its vote job
    assert ens["job_speedup"] == pytest.approx(45 / 30)  # sequential training + evaluation, one job
    shard = table.loc[("single_shard", 2)]
    # One rank of the 2-rank job: its own process's wall time (18 s fit + 3 s), not the whole job's 25 s, next to
    # its one rank's cores; then its own evaluation job, not the ensemble's vote over N members. The training job's
    # memory is N ranks', not its own: none (its rank's peak is rank_peak_rss_mib).
    assert shard["train_job_seconds"] == 21 and shard["job_seconds"] == 21 + 1
    assert shard["cores_used"] == 1 and np.isnan(shard["train_job_max_rss_mib"])
    assert shard["rank_peak_rss_mib"] == 700.0
    assert table.loc[("data_parallel", 2)]["job_seconds"] == 33  # rank 0 evaluates inside the training job


def test_paper_metric_and_speedup_references(table):
    ens = table.loc[("ensemble_majority", 2)]
    assert ens["time_decrease_pct"] == pytest.approx(100 * (1 - 20.0 / 30.0))  # mean rank fit vs threads=all
    assert ens["speedup"] == pytest.approx(40.0 / 22.0)  # 1-thread baseline vs the slowest rank
    seq = table[table["method"] == "sequential"].set_index("threads")
    assert np.isnan(seq.loc["all", "time_decrease_pct"]) and seq.loc[1, "speedup"] == pytest.approx(1.0)
    assert seq.loc["all", "speedup"] == pytest.approx(40 / 30) and seq.loc["all", "efficiency"] == pytest.approx(40 / 60)


def test_every_row_has_its_precision_memory_and_throughput(table):
    assert table.loc[("data_parallel", 2)]["compute_precision"] == "mixed_bfloat16"
    assert table.loc[("single_shard", 2)]["compute_precision"] == "float32"
    ens = table.loc[("ensemble_majority", 2)]
    assert ens["rank_peak_rss_mib"] == 750.0 and ens["train_job_max_rss_mib"] == 1400.0
    assert ens["images_per_second_per_core"] == pytest.approx(2 * 24000 * 5 / 22.0 / 2)
    # The fit time holds the validation passes too, so their forward FLOPs count: 2 ranks x (24,000 training steps
    # + 6,000 validated images) x 5 epochs, over the slowest rank's 22 s, per core.
    per_epoch = 2 * (24000 * model.training_flops_per_image() + 6000 * model.forward_flops())
    assert ens["gflops_per_core"] == pytest.approx(per_epoch * 5 / 22.0 / 2 / 1e9)
    # The same by hand: 16,376,064 FLOPs a training step and 5,588,480 a validated image (tests/test_benchmarks.py).
    assert ens["gflops_per_core"] == pytest.approx(2 * (24000 * 16_376_064 + 6000 * 5_588_480) * 5 / 22.0 / 2 / 1e9)
    assert list(table.columns) == summarize.COLUMNS


def summary_frame(rows):
    frame = pd.DataFrame(rows)
    defaults = {"cores_used": 1, "oversubscribed": False, "compute_precision": "float32", "threads": 1,
                "resumed_from_epoch": 0}
    for column in summarize.COLUMNS:
        frame[column] = frame[column].fillna(defaults[column]) if column in frame and column in defaults \
            else frame.get(column, defaults.get(column, np.nan))
    return frame[summarize.COLUMNS]


def row(method, ranks, seed, accuracy, fit, threads=1, tdp=np.nan):
    return {"method": method, "ranks": ranks, "seed": seed, "threads": threads, "accuracy": accuracy,
            "fit_seconds_max": fit, "fit_seconds_mean": fit, "time_decrease_pct": tdp}


def test_group_stats_mean_and_sample_sd():
    rows = [row("ensemble_majority", 2, s, a, f) for s, a, f in ((0, 0.90, 10), (1, 0.92, 12), (2, 0.94, 14))]
    rows.append(row("ensemble_majority", 4, 0, 0.8, 5))
    out = summarize.group_stats(summary_frame(rows)).set_index("ranks")
    assert out.loc[2, "n_seeds"] == 3
    assert out.loc[2, "accuracy_mean"] == pytest.approx(0.92)
    assert out.loc[2, "accuracy_sd"] == pytest.approx(0.02)  # sample sd (ddof=1) of 0.90, 0.92, 0.94
    assert out.loc[2, "fit_seconds_max_sd"] == pytest.approx(2.0)
    assert np.isnan(out.loc[4, "accuracy_sd"]) and np.isnan(out.loc[2, "job_seconds_mean"])  # one seed; no data


def test_a_time_to_a_target_is_averaged_over_the_seeds_that_reached_it_and_says_how_many():
    """Seed 1 never reached 0.98 and seed 3 was resumed (its times cover part of the run): the mean time is seeds 0
    and 2's, and n_reached_0.98 says 2 of the 4 seeds; the audit counts the same way."""
    rows = [row("local_sgd", 2, seed, 0.98, 50.0) for seed in range(4)]
    frame = summary_frame(rows)
    frame["seconds_to_0.98"] = [20.0, np.nan, 30.0, 5.0]
    frame["resumed_from_epoch"] = [0, 0, 0, 3]
    stats = summarize.group_stats(frame).iloc[0]
    assert (stats["n_seeds"], stats["n_timed"], stats["n_reached_0.98"]) == (4, 3, 2)
    assert stats["seconds_to_0.98_mean"] == pytest.approx(25.0)
    assert methods.reached_column("core_seconds_to_0.98") is None and methods.reached_column("accuracy") is None
    members = [{"seed": seed, "resumed_from_epoch": resumed, "cores_used": 2, "oversubscribed": False,
                "seconds_to_0.98": value} for seed, resumed, value in ((0, 0, 20.0), (1, 0, None), (2, 0, 30.0))]
    assert audit.group_values(members)["n_reached_0.98"] == 2


def test_resumed_timings_are_empty_and_left_out_of_the_statistics(tmp_path):
    """A resumed job's accuracy counts (its model is the uninterrupted one's); its times and traffic, covering only
    the epochs after the checkpoint, are empty in summary.csv (flagged by resumed_from_epoch), so they never enter
    the statistics, the rank times or another row's speed-up."""
    results = [
        (result("sequential", 1, 1, [40.0]), [bench(tmp_path, "s1", 45)]),
        (result("sequential", 1, 1, [16.0], seed=1, resumed=3), [bench(tmp_path, "s1r", 20)]),
        (result("ensemble_majority", 2, 1, [20.0, 22.0], accuracy=0.95), [bench(tmp_path, "e0", 25)]),
        (result("ensemble_majority", 2, 1, [9.0, 8.0], seed=1, accuracy=0.93, resumed=2), [bench(tmp_path, "e1", 12)]),
        (result("ensemble_majority", 2, 1, [21.0, 23.0], seed=2, accuracy=0.94), [bench(tmp_path, "e2", 26)]),
    ]
    summary = summarize.summary_table(results)
    marked = summary.set_index(["method", "seed"])["resumed_from_epoch"]
    assert marked[("sequential", 1)] == 3 and marked[("ensemble_majority", 1)] == 2
    assert marked[("ensemble_majority", 0)] == 0
    by = summary.set_index(["method", "seed"])
    assert np.isnan(by.loc[("ensemble_majority", 2), "speedup"])  # no seed-2 base
    for name in methods.PARTIAL_WHEN_RESUMED:  # a speed-up of 2.74 from the resumed epochs alone, no more
        assert pd.isna(by.loc[("ensemble_majority", 1), name]) and pd.isna(by.loc[("sequential", 1), name]), name
    assert by.loc[("ensemble_majority", 1), "accuracy"] == 0.93 and by.loc[("ensemble_majority", 1), "updates_per_rank"] > 0
    stats = summarize.group_stats(summary).set_index("method")
    ens = stats.loc["ensemble_majority"]
    assert ens["n_seeds"] == 3 and ens["n_resumed"] == 1
    assert ens["accuracy_mean"] == pytest.approx(0.94)  # all three seeds
    assert ens["fit_seconds_max_mean"] == pytest.approx(22.5)  # seeds 0 and 2 only: 22 and 23, not the resumed 9
    assert stats.loc["sequential", "fit_seconds_max_mean"] == pytest.approx(40.0)
    assert stats.loc["sequential", "speedup_mean"] == pytest.approx(1.0)  # the resumed seed's 16 s left out
    times = summarize.rank_times(results)
    assert times[times["resumed_from_epoch"] > 0]["fit_seconds"].isna().sum() == 3
    assert sorted(times[times["resumed_from_epoch"] == 0]["fit_seconds"]) == [20.0, 21.0, 22.0, 23.0, 40.0]


def test_training_curves_average_an_ensembles_members(tmp_path):
    paths = []
    for r, losses in enumerate(([2.0, 1.0], [4.0, 3.0])):
        path = tmp_path / f"rank{r}_history.csv"
        pd.DataFrame({"rank": r, "epoch": [1, 2], "loss": losses, "accuracy": [0.5, 0.7], "val_loss": losses,
                      "val_accuracy": [0.4, 0.6]}).to_csv(path, index=False)
        paths.append(("ensemble_member/N:2", path))
    histories = plots.read_histories(paths)
    curves = histories.groupby(["label", "epoch"]).mean(numeric_only=True)
    assert list(curves["loss"]) == [3.0, 2.0]
    out = tmp_path / "curves.png"
    plots.save(*plots.training_curves_figure(histories)[:1], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_differences_against_the_spread():
    rows = [row("sequential", 1, s, a, 30, threads="all") for s, a in ((0, 0.98), (1, 0.98))]
    rows += [row("ensemble_majority", 2, s, a, 20) for s, a in ((0, 0.96), (1, 0.97))]  # sd 0.00707
    rows += [row("ensemble_soft", 2, s, a, 20) for s, a in ((0, 0.965), (1, 0.975))]  # diff 0.005
    rows += [row("single_shard", 2, s, a, 19) for s, a in ((0, 0.90), (1, 0.91))]  # diff -0.065
    diffs = summarize.differences(summarize.group_stats(summary_frame(rows)))
    verdict = {(d.method, d.reference, d.metric): d.exceeds_spread for d in diffs.itertuples()}
    assert verdict[("ensemble_soft", "ensemble_majority", "accuracy")] == "no"
    assert verdict[("single_shard", "ensemble_majority", "accuracy")] == "yes"
    assert verdict[("ensemble_majority", "sequential threads=all", "accuracy")] == "yes"  # 0.965 vs 0.98, sd 0
    assert ("ensemble_majority", "ensemble_majority", "accuracy") not in verdict
    assert summarize.exceeds_spread(0.1, np.nan, 0.0) == "one seed"


def test_paper_comparison_says_what_our_runs_had():
    rows = [row("sequential", 1, 0, 0.97, 40, threads="all"),
            row("ensemble_majority", 2, 0, 0.96, 20, tdp=10.0), row("ensemble_majority", 2, 1, 0.98, 20, tdp=14.0),
            {**row("ensemble_majority", 3, 0, 0.95, 20, tdp=30.0), "oversubscribed": True, "cores_used": 2}]
    frame = summary_frame(rows)
    frame.loc[frame["threads"].astype(str) == "all", "cores_used"] = 2
    frame.loc[frame["ranks"] == 2, "cores_used"] = 2
    stats = summarize.group_stats(frame)
    out = summarize.compare(pd.read_csv(PAPER, dtype={"cores": str}), stats)
    out = {(c.machine, c.cores, c.metric): c for c in out.itertuples()}
    td2 = out[("laptop", "2", "time_decrease")]
    assert td2.paper == 22.52 and td2.ours_mean == pytest.approx(12.0) and td2.n_seeds == 2 and td2.n_ranks == 1
    assert td2.difference_pp == pytest.approx(12.0 - 22.52) and td2.ratio == pytest.approx(12.0 / 22.52)
    assert td2.our_cores_used == 2 and td2.our_oversubscribed is False
    td3 = out[("laptop", "3", "time_decrease")]
    assert td3.our_oversubscribed is True and td3.our_cores_used == 2  # 3 ranks on 2 cores: not a failed reproduction
    fit = out[("xeon", "1", "sequential_fit_seconds")]
    assert fit.ours_mean == 40 and pd.isna(fit.difference_pp) and fit.ratio == pytest.approx(40 / 58.55)
    assert out[("laptop", "1", "sequential_accuracy")].difference_pp == pytest.approx(97.0 - 98.20)
    lo, hi = out[("laptop", "2-8", "ensemble_accuracy_min")], out[("laptop", "2-8", "ensemble_accuracy_max")]
    assert lo.ours_mean == pytest.approx(95.0) and hi.ours_mean == pytest.approx(97.0)  # per-N means
    assert lo.n_ranks == 2 and lo.n_seeds == 1 and lo.our_oversubscribed is True  # seeds and world sizes apart
    assert pd.isna(out[("laptop", "8", "time_decrease")].ours_mean)  # no 8-rank run here


def test_paper_speedup_from_time_decrease():
    assert plots.paper_speedup(0.0) == 1.0
    assert plots.paper_speedup(50.0) == pytest.approx(2.0)
    assert plots.paper_speedup(91.49) == pytest.approx(1 / 0.0851)


def test_every_figure_draws_from_the_tables(table, tmp_path):
    stats = summarize.group_stats(table.reset_index(drop=True))
    stats_path, ranks_path = tmp_path / "stats.csv", tmp_path / "ranks.csv"
    stats.to_csv(stats_path, index=False)
    pd.DataFrame([{"method": "ensemble_majority", "ranks": 2, "seed": 0, "oversubscribed": False, "rank": r,
                   "fit_seconds": 10.0 + r, "host": "h"} for r in range(2)]).to_csv(ranks_path, index=False)
    outputs = {key: tmp_path / f"{key}.png" for key in methods.FIGURES}
    history = tmp_path / "history.csv"
    pd.DataFrame({"rank": 0, "epoch": [1, 2], "loss": [2.0, 1.0], "accuracy": [0.5, 0.7], "val_loss": [2.1, 1.2],
                  "val_accuracy": [0.4, 0.6]}).to_csv(history, index=False)
    plots.figures(stats_path, ranks_path, PAPER, outputs, [("sequential/threads:1", history)])
    assert set(plots.DRAW) == set(methods.FIGURES)
    for path in outputs.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def stats_of(rows):
    """summary_stats.csv's rows for hand-made runs: (method, ranks, accuracy, fit seconds) of one seed each."""
    frame = summary_frame([{**row(method, n, s, a + 0.001 * s, fit), "threads": "all" if method == "sequential" and
                            n == 0 else 1, "ranks": max(n, 1), "job_seconds": fit + 2, "core_seconds": fit,
                            "cores_used": 1 if method == "sequential" else n, "period": period,
                            "wire_bytes_per_rank": 0.0 if method.startswith(("ens", "weight_average_by", "single"))
                            else 1e6 * n, "member_accuracy_mean": a - 0.01, "allreduces_per_rank": 10,
                            "allreduce_bytes_per_rank": 1e5, "time_decrease_pct": 20.0 * n,
                            "speedup": 1.0 + n / 2, "job_speedup": 1.0 + n / 3}
                           for method, n, a, fit, period in rows for s in (0, 1)])
    return summarize.group_stats(frame)


def figure_facts(fig):
    """What a test can see of a drawn figure: its title's and the figure's extent, and each panel's x ticks and
    labels, y limits and texts."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [{"xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "xticks": list(ax.get_xticks()),
               "xlabels": [t.get_text() for t in ax.get_xticklabels()], "ylim": ax.get_ylim(),
               "texts": [t.get_text() for t in ax.texts], "top": ax.get_tightbbox(renderer).y1}
              for ax in fig.axes if ax.get_visible()]
    return fig._suptitle.get_window_extent(renderer), fig.bbox, panels


@pytest.mark.parametrize("sizes", [[2], [1, 2, 3, 4, 8]])
def test_figures_show_their_point(sizes):
    """On a run with one world size and on one with several: every axis over N has integer ticks and labels, every
    title fits, and the test-error axis spans the methods that work (98.5 % against 99.0 % accuracy, 1.5 against 1
    % error) while a method at 45 % accuracy is written above it, not drawn into it."""
    rows = [("sequential", 0, 0.990, 40, None)]
    for n in sizes:
        rows += [("ensemble_majority", n, 0.985, 40 / n, None), ("ensemble_soft", n, 0.986, 40 / n, None),
                 ("data_parallel", n, 0.990, 30 / n, None), ("local_sgd", n, 0.988, 35 / n, "16"),
                 ("local_sgd", n, 0.987, 35 / n, "epoch"), ("weight_average_by_test", n, 0.45, 40 / n, None)]
    stats = stats_of([r for r in rows if r[0] != "data_parallel" or r[1] > 1])
    tables = {"stats": stats, "paper": pd.read_csv(PAPER, dtype={"cores": str}), "networks": [],
              "rank_times": pd.DataFrame([{"method": "ensemble_majority", "ranks": n, "seed": 0, "rank": r,
                                           "oversubscribed": False, "fit_seconds": 5.0, "host": "h"}
                                          for n in sizes for r in range(n)]),
              "histories": plots.read_histories([])}
    import matplotlib.pyplot as plt

    for key, draw in plots.DRAW.items():
        if key == "fig_training_curves":
            continue
        fig, bottom = draw(tables)
        plots.lay_out(fig, bottom)
        title_box, figure_box, panels = figure_facts(fig)
        assert figure_box.x0 <= title_box.x0 and title_box.x1 <= figure_box.x1, (key, "title cut off")
        assert all(panel["top"] <= title_box.y0 + 1 for panel in panels), (key, "title on a panel")
        if key in ("fig_methods", "fig_voting", "fig_communication", "fig_cost", "fig_headline"):
            assert any(panel["ylabel"] == "test error (%)" for panel in panels), key
        for panel in panels:
            if "ranks" in panel["xlabel"] or "cores" in panel["xlabel"]:
                assert all(float(t).is_integer() for t in panel["xticks"]), (key, panel["xticks"])
                assert all("." not in text for text in panel["xlabels"] if text), (key, panel["xlabels"])
            if panel["ylabel"] == "test error (%)":
                low, high = panel["ylim"]
                assert 0.3 < low < 1.5 < high < 10, (key, panel["ylim"])  # the working methods, not 55 %
                if key in ("fig_methods", "fig_communication", "fig_cost"):  # those with every method
                    assert low < 1.0, (key, panel["ylim"])
                    assert any(text.startswith("55") for text in panel["texts"]), (key, panel["texts"])
        plt.close(fig)


def test_the_communication_figure_draws_the_world_sizes_that_compare_methods():
    """A world size where one method ran alone (the default run's ensemble at N = 3) gets no panel of one point;
    the title names it. Where every size has one method, each is drawn."""
    rows = [("ensemble_majority", n, 0.985, 20.0, None) for n in (2, 3, 4)]
    rows += [("local_sgd", n, 0.99, 20.0, "16") for n in (2, 4)]
    fig, _ = plots.communication_figure(stats_of(rows))
    assert [ax.get_title() for ax in fig.axes[::2]] == ["N = 2", "N = 4"]
    assert "N = 3: one method only" in fig._suptitle.get_text()
    fig, _ = plots.communication_figure(stats_of(rows[:3]))
    assert [ax.get_title() for ax in fig.axes[::2]] == ["N = 2", "N = 3", "N = 4"]


def test_summarize_finds_each_results_benchmarks_where_the_declaration_puts_them(table, tmp_path):
    """summarize reads the result files it is given, and their jobs' benchmarks from where methods.benchmarks puts
    them below the results folder: each job's seconds land in its row."""
    root = tmp_path / "results"
    paths = []
    for i, (_, r) in enumerate(table.iterrows()):
        record = result(r["method"], int(r["ranks"]), r["threads"], [r["fit_seconds_max"]], seed=i)
        record.update(host="h", cpu_model="c", cpu_count=2, isa_flags=["avx2"], versions={"keras": "3"},
                      mpi_library=None, thread_settings={"env": {}})
        run = methods.run_of(record)
        paths.append(Path(methods.result_path(run, root)))
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        paths[-1].write_text(json.dumps(record))
        for j, job in enumerate(methods.benchmarks(run, root)):
            Path(job).parent.mkdir(parents=True, exist_ok=True)
            Path(job).write_text(f"s\th:m:s\tmax_rss\tmax_vms\n{100 * i + 10 + j}\t0:00:10\t500\t1000\n")
    outs = {k: tmp_path / f"{k}.out" for k in ("summary", "stats", "differences", "comparison", "rank_times",
                                                "provenance")}
    verdict = summarize.summarize(paths, PAPER, 2, outs, root)
    assert "single seed" in verdict
    summary = pd.read_csv(outs["summary"]).set_index("seed")
    assert len(summary) == len(table)
    for i, (_, r) in enumerate(table.iterrows()):
        jobs = len(methods.benchmarks(methods.run_of({"method": r["method"], "ranks": r["ranks"], "seed": i,
                                                      "threads": r["threads"]})))
        own = 18.0 + 3.0 if r["method"] == "single_shard" else 100 * i + 10  # rank 0's own process
        assert summary.loc[i, "job_seconds"] == pytest.approx(own + sum(100 * i + 10 + j for j in range(1, jobs)))
    prov = json.loads(outs["provenance"].read_text())
    assert prov["workflow_cores"] == 2 and prov["isa_flags"] == ["avx2"] and prov["versions"]["keras"] == "3"


def test_time_to_a_target_is_the_slowest_process_epochs_until_the_delivered_model_reached_it():
    base = result("data_parallel", 2, 1, [9.0, 10.0])
    base["rank_timing"][0]["epoch_seconds"], base["rank_timing"][1]["epoch_seconds"] = [2.0, 3.0, 4.0], [3.0, 2.0, 5.0]
    base["rank_timing"][0]["history"] = {methods.DELIVERED: [0.85, 0.92, 0.95]}
    out = summarize.time_to_targets(base, [0.9, 0.95, 0.99])
    assert out["seconds_to_0.9"] == 5.0 and out["core_seconds_to_0.9"] == 5.0 * base["cores_used"]
    assert out["seconds_to_0.95"] == 10.0 and out["seconds_to_0.99"] is None  # never reached: empty
    ensemble = {**base, "method": "ensemble_majority", methods.DELIVERED: [0.95, 0.96, 0.97]}
    assert summarize.time_to_targets(ensemble, [0.9])["seconds_to_0.9"] == 3.0  # the vote's history, its own key
    for derived in ("ensemble_soft", "single_shard", "weight_average_by_test"):  # no training of their own
        assert summarize.time_to_targets({**ensemble, "method": derived}, [0.9])["seconds_to_0.9"] is None
    assert methods.target_columns([0.98, 0.99]) == ["seconds_to_0.98", "core_seconds_to_0.98", "seconds_to_0.99",
                                                    "core_seconds_to_0.99"]
    assert methods.partial_when_resumed("core_seconds_to_0.98") and not methods.partial_when_resumed("accuracy")

"""The whole workflow through the Snakemake CLI, with real mpiexec ranks, on a small subset; what a user sees:
the summary and its statistics, saved models and records, figures, the HTML report in a browser, refusals of a
wrong config, the plan for several seeds, another dataset, lint."""

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import BIN, ROOT, SMOKE, assert_audit_clean, project_copy, skip_unless_required, snakemake
from test_data import FASHION_DIR, fashion_files_or_skip

from mpi_ensemble import methods

PAPER_METHODS = ("sequential", "ensemble_majority")
NEW_METHODS = tuple(name for name in methods.NAMES if name not in PAPER_METHODS)
FIGURES = set(methods.FIGURES.values())
METHODS = methods.NAMES


def read_csv(path):
    return pd.read_csv(path, dtype={"threads": str})


def summary_of(work):
    return read_csv(work / "results" / "summary.csv")


def by_method(rows):
    return {(r.method, r.ranks): r for r in rows.itertuples()}


# --- the smoke run (conftest.smoke_run): 6,000 / 1,000 images, 1 epoch, ranks 1 and 2 on 2 cores --------------


@pytest.mark.workflow
def test_summary_rows_of_every_method(smoke_run):
    rows = summary_of(smoke_run)
    assert set(zip(rows.method, rows.ranks, rows.threads, rows.period.fillna(""))) == {
        ("sequential", 1, "1", ""), ("sequential", 1, "all", ""),
        *{(m, n, str(2 // n), "") for m in ("ensemble_majority", "ensemble_soft", "ensemble_majority_tiebreak")
          for n in (1, 2)},
        ("data_parallel", 2, "1", ""), ("data_parallel_rank_batch", 2, "1", ""),
        ("weight_average_by_test", 2, "1", ""), ("weight_average_by_validation", 2, "1", ""),
        ("single_shard", 2, "1", ""), ("weight_average_shared_start", 2, "1", "end"),
        ("local_sgd", 2, "1", "16"), ("local_sgd", 2, "1", "epoch"),
        ("post_local_sgd", 2, "1", "16"), ("post_local_sgd", 2, "1", "epoch"),
    }
    for row in rows[~rows.method.str.startswith("weight_average_by")].itertuples():
        assert 0.5 < row.accuracy <= 1.0, row  # chance is 0.1
        assert 0 < row.fit_seconds_mean <= row.fit_seconds_max < row.train_job_seconds <= row.job_seconds
        assert not row.oversubscribed and row.compute_precision == "float32" and row.cores_used >= 1
        assert row.images_per_second_per_core > 0 and row.cpu_seconds > 0 and row.rank_peak_rss_mib > 100
        # Images per second per core against the 1-thread run's: the speed-up per core where the work is the same
        # (all 4,800 images), half of it for rank 0 alone, which trains on half (6 digits in the CSV).
        work = 0.5 if row.method == "single_shard" else 1.0
        assert row.efficiency == pytest.approx(row.speedup / row.cores_used * work, rel=1e-5)
        if row.method != "sequential":
            assert not np.isnan(row.time_decrease_pct)
    by = by_method(rows)
    ens2 = by[("ensemble_majority", 2)]
    assert ens2.train_images_per_rank == 2400 and ens2.ties > 0  # 0.8 of 6000/2; two disagreeing members tie
    assert ens2.train_job_max_rss_mib > ens2.rank_peak_rss_mib  # the job holds both ranks
    for method in ("ensemble_soft", "ensemble_majority_tiebreak"):  # one member: every vote rule is that member
        assert by[(method, 1)].accuracy == by[("ensemble_majority", 1)].accuracy
        assert by[(method, 2)].fit_seconds_max == ens2.fit_seconds_max  # the same members
        assert by[(method, 2)].job_seconds > ens2.job_seconds  # plus its own vote job
    assert by[("ensemble_majority_tiebreak", 2)].ties == ens2.ties
    ens = json.loads((smoke_run / "results/ensemble_majority/ranks2/seed0/result.json").read_text())
    assert by[("single_shard", 2)].accuracy == pytest.approx(ens["member_accuracy"][0])
    assert by[("single_shard", 2)].train_images_per_rank == 2400  # 0.8 of the first 3000 images
    # One rank's process, not the whole 2-rank job: its own wall time, beside its one core.
    rank0 = json.loads((smoke_run / "results/models/ranks2/seed0/rank0.json").read_text())
    assert by[("single_shard", 2)].train_job_seconds == pytest.approx(rank0["wall_seconds"], rel=1e-5)
    assert by[("single_shard", 2)].train_job_seconds < ens2.train_job_seconds
    # Every process is measured from its start to its saved model, before any scoring: the sequential run on all
    # (2) threads and the 1-member ensemble (2 threads) train the same images and peak alike.
    seq_all = rows[(rows.method == "sequential") & (rows.threads == "all")].iloc[0]
    assert seq_all.rank_peak_rss_mib == pytest.approx(by[("ensemble_majority", 1)].rank_peak_rss_mib, rel=0.05)


@pytest.mark.workflow
def test_methods_that_talk_count_what_they_sent(smoke_run):
    """1 epoch of 2,400 images per rank at N = 2 (38 local steps of 64): local SGD averaging every 16 steps does
    it twice in the epoch and once more at the end, 373,288 bytes (the model) each time; averaging at the epoch's
    end is, for one epoch, the one-shot average from the shared start, bit for bit; data-parallel training
    allreduces every one of its 75 global steps, plus the validation; the ensemble sends nothing."""
    rows = summary_of(smoke_run).fillna({"period": ""})
    row = {(r.method, r.ranks, r.period): r for r in rows.itertuples()}
    model_bytes = 93322 * 4
    k16, epoch, shared = row[("local_sgd", 2, "16")], row[("local_sgd", 2, "epoch")], \
        row[("weight_average_shared_start", 2, "end")]
    assert (k16.steps_per_epoch, k16.averagings_per_epoch, k16.allreduces_per_rank) == (38, 2, 3)
    assert k16.allreduce_bytes_per_rank == 3 * model_bytes
    assert (epoch.averagings_per_epoch, epoch.allreduces_per_rank, epoch.allreduce_bytes_per_rank) == (1, 1, model_bytes)
    assert (shared.averagings_per_epoch, shared.allreduces_per_rank) == (0, 1)
    sums = [json.loads((smoke_run / f"results/{m}/seed0/result.json").read_text())["rank_timing"][0]["weights_sha256"]
            for m in ("local_sgd/periodepoch/ranks2", "weight_average_shared_start/ranks2")]
    assert sums[0] == sums[1] and epoch.accuracy == shared.accuracy
    dp = row[("data_parallel", 2, "")]
    assert (dp.steps_per_epoch, dp.averagings_per_epoch, dp.allreduces_per_rank) == (75, 75, 76)
    assert (dp.batch_per_rank, dp.global_batch, dp.updates_per_rank) == (32, 64, 75)
    validation = 3 * 8  # the held-out images' summed loss, correct ones and count
    assert dp.allreduce_bytes_per_rank == 75 * (93322 + 2) * 4 + validation
    # Synchronous SGD at 64 images per rank on the shards local SGD trains on: its 38 steps, not the 75 of 64 images
    # in all; post-local SGD's first epoch is that, and with one epoch the whole of it.
    for method in ("data_parallel_rank_batch", "post_local_sgd"):
        sync = row[(method, 2, "16" if method == "post_local_sgd" else "")]
        assert (sync.batch_per_rank, sync.global_batch, sync.updates_per_rank, sync.allreduces_per_rank) == \
            (64, 128, 38, 39), method
        assert sync.allreduce_bytes_per_rank == 38 * (93322 + 2) * 4 + validation
        # a wire byte per payload byte between 2 ranks (reduce-scatter + allgather: 2 (N - 1) / N)
        assert sync.wire_bytes_per_rank == pytest.approx(sync.allreduce_bytes_per_rank, rel=1e-3)
    assert (k16.batch_per_rank, k16.global_batch, k16.updates_per_rank) == (64, 128, 38)
    assert row[("ensemble_majority", 2, "")].allreduces_per_rank == 0
    assert row[("ensemble_majority", 2, "")].averagings_per_epoch == 0


@pytest.mark.workflow
def test_one_shot_weight_averages(smoke_run):
    """The two members' weights averaged once, weighted by their test accuracies (the paper's code) or by their
    last validation accuracies, as each result says."""
    members = [json.loads((smoke_run / f"results/models/ranks2/seed0/rank{r}.json").read_text()) for r in range(2)]
    ensemble = json.loads((smoke_run / "results/ensemble_majority/ranks2/seed0/result.json").read_text())
    by_test = json.loads((smoke_run / "results/weight_average_by_test/ranks2/seed0/result.json").read_text())
    by_val = json.loads((smoke_run / "results/weight_average_by_validation/ranks2/seed0/result.json").read_text())
    assert by_test["averaging_weights"] == pytest.approx(ensemble["member_accuracy"])
    assert by_val["averaging_weights"] == pytest.approx([m["history"]["val_accuracy"][-1] for m in members])


@pytest.mark.workflow
def test_models_and_rank_records(smoke_run):
    models = smoke_run / "results" / "models"
    for n in (1, 2):
        for r in range(n):
            assert (models / f"ranks{n}" / "seed0" / f"rank{r}.keras").stat().st_size > 100_000
            record = json.loads((models / f"ranks{n}" / "seed0" / f"rank{r}.json").read_text())
            assert record["rank"] == r and record["ranks"] == n
            assert record["thread_settings"]["env"]["TF_NUM_INTRAOP_THREADS"] == str(2 // n)
            assert len(record["thread_settings"]["affinity"]) == 2 // n  # bound by mpiexec
            assert record["mpi_library"].startswith("MPICH") and "avx2" in record["isa_flags"]
            kernels = record["kernel_settings"]  # chosen from this CPU's flags before TensorFlow started
            assert kernels["cpu_tuning"] == "auto" and kernels["env"]["TF_ENABLE_ONEDNN_OPTS"] == "1"
            assert record["peak_rss_mib"] > 100 and record["versions"]["keras"].startswith("3.")
            assert record["precision"] == "float32" and 0 < record["fit_cpu_seconds"] < record["cpu_seconds"]
            # The fit's CPU covers the fit's spans: no more busy cores than the rank was bound to (with slack for
            # the clock's granularity and TensorFlow's own housekeeping thread).
            assert record["fit_cpu_seconds"] < record["fit_seconds"] * len(record["thread_settings"]["affinity"]) * 1.25
            assert len(record["weights_sha256"]) == 64
    assert not list((smoke_run / "results").rglob(".*tmp*"))  # no temporary files left behind


@pytest.mark.workflow
def test_data_parallel_replicas_stay_identical(smoke_run):
    import keras

    from mpi_ensemble import training

    for n in (2,):
        folder = smoke_run / "results" / "data_parallel" / f"ranks{n}" / "seed0"
        ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(n)]
        assert len({r["weights_sha256"] for r in ranks}) == 1, f"ranks{n}: the replicas diverged"
        result = json.loads((folder / "result.json").read_text())
        assert result["weights_identical"] and result["steps_per_epoch"] == 75  # ceil(4800 / 64), as sequential
        assert sum(t["train_images"] for t in result["rank_timing"]) == 4800
        model = keras.models.load_model(folder / "model.keras")
        assert training.weights_sha256(model.get_weights()) == ranks[0]["weights_sha256"]


@pytest.mark.workflow
def test_statistics_comparison_and_tables(smoke_run):
    res = smoke_run / "results"
    summary, stats = summary_of(smoke_run), read_csv(res / "summary_stats.csv")
    assert set(zip(stats.method, stats.ranks, stats.threads)) == set(zip(summary.method, summary.ranks,
                                                                        summary.threads))
    assert (stats["n_seeds"] == 1).all() and stats["accuracy_sd"].isna().all()  # one seed: no sd, not 0
    diffs = read_csv(res / "method_differences.csv")
    assert len(diffs) and (diffs["exceeds_spread"] == "one seed").all()
    comp = {(c.machine, str(c.cores), c.metric): c for c in read_csv(res / "paper_comparison.csv").itertuples()}
    ours = summary[(summary.method == "ensemble_majority") & (summary.ranks == 2)].time_decrease_pct.item()
    row = comp[("laptop", "2", "time_decrease")]
    assert row.ours_mean == pytest.approx(ours, abs=1e-4) and row.difference_pp == pytest.approx(ours - 22.52, abs=1e-4)
    assert row.our_cores_used == 2 and not row.our_oversubscribed and row.n_seeds == 1
    assert np.isnan(comp[("laptop", "5", "time_decrease")].ours_mean)
    times = read_csv(res / "rank_times.csv")
    assert len(times[(times.method == "ensemble_majority") & (times.ranks == 2)]) == 2
    page = (res / "tables" / "summary.html").read_text()
    assert page.count("<tr>") == 1 + len(stats) + 1 + len(diffs) + 1 + len(comp) + 1 + len(summary)


@pytest.mark.workflow
def test_every_model_has_its_history_and_the_logs_show_progress(smoke_run):
    """One epoch: each model's history.csv has its line, each rank printed it to the job's log, and the finished
    jobs left no checkpoint behind."""
    from mpi_ensemble import training

    res = smoke_run / "results"
    histories = [res / f"sequential/threads{t}/seed0/history.csv" for t in ("1", "all")]
    histories += [res / f"models/ranks{n}/seed0/rank{r}_history.csv" for n in (1, 2) for r in range(n)]
    histories += [res / "data_parallel/ranks2/seed0/history.csv"]
    for path in histories:
        frame = pd.read_csv(path)
        assert list(frame.columns) == list(training.HISTORY_COLUMNS) and len(frame) == 1, path
        assert frame["epoch"].tolist() == [1] and not frame["from_checkpoint"].any()
        assert 0 < frame["loss"].item() and 0 < frame["val_accuracy"].item() <= 1
        assert frame["images_per_second"].item() > 0
    log = (smoke_run / "logs" / "train_mpi" / "ranks2" / "seed0.log").read_text()
    assert all(f"ensemble_member rank {r}/2 epoch 1/1: loss " in log for r in range(2))
    sequential = (smoke_run / "logs" / "train_sequential" / "threads1" / "seed0.log").read_text()
    assert "sequential rank 0/1 epoch 1/1: loss " in sequential
    assert not (res / "checkpoints").exists()
    assert (summary_of(smoke_run)["resumed_from_epoch"] == 0).all()


@pytest.mark.workflow
def test_figures_and_provenance(smoke_run):
    for name in FIGURES:
        png = (smoke_run / "results" / "figures" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    prov = json.loads((smoke_run / "results" / "provenance.json").read_text())
    assert prov["cpu_model"] and prov["versions"]["tensorflow-cpu"] and prov["mpi_library"] and prov["isa_flags"]
    assert prov["kernel_settings"]["cpu_kind"] in ("avx2", "avx512") and prov["kernel_settings"]["cpu_tuning"] == "auto"


@pytest.mark.workflow
def test_the_run_audits_itself_clean(smoke_run):
    """The workflow's last rule recomputes every number it saved and finds nothing to disagree with; it counts
    only what it compared."""
    verdict = (smoke_run / "results" / "audit.txt").read_text()
    assert verdict.startswith("audit: clean (") and len(verdict.splitlines()) == 1, verdict
    checked = {k: int(v) for v, k in re.findall(r"(\d+) ([a-z ]+?)(?:,| checked)", verdict)}
    summary = summary_of(smoke_run)
    # 1 + 2 ensemble members, 2 sequential, 2 data-parallel, 2 local SGD, 2 post-local SGD, 1 shared start, 2
    # weight averages; rows: those but the members, 3 vote rules at N = 1 and 2, single_shard
    assert checked["models"] == 14 and checked["results"] == len(summary) == 18
    assert checked["summary cells"] == summary.size  # every cell of every row: each is recomputed
    stats = read_csv(smoke_run / "results" / "summary_stats.csv")
    assert checked["statistics cells"] == stats.size - 5 * len(stats)  # all but 5 labels (method, ranks, ...)
    assert checked["difference cells"] == 6 * len(read_csv(smoke_run / "results" / "method_differences.csv"))
    assert checked["comparison cells"] == 10 * len(read_csv(smoke_run / "results" / "paper_comparison.csv"))
    assert checked["rank time cells"] == 3 * len(read_csv(smoke_run / "results" / "rank_times.csv"))
    assert checked["histories"] == 2 + 3 + 7  # sequential x 2, members (1 + 2), one model of each method of N ranks
    assert checked["figures"] == len(FIGURES) and checked["tables"] == 2 + len(METHODS)


@pytest.mark.workflow
def test_a_second_config_in_the_same_folder_audits_clean(smoke_run, tmp_path):
    """A user runs one config, then another in the same folder (the default run, then config/communication.yaml):
    the second run's tables cover its own results only, and so does its audit; the results the first run left
    (N = 1, the all-threads baseline) are not counted against it. The folder was copied first, which reruns
    nothing: no job's input or params name the folder."""
    work = tmp_path / "second"
    shutil.copytree(smoke_run, work, symlinks=True, ignore=shutil.ignore_patterns("report.html"))
    moved = snakemake(work, "--dry-run", "--config", *SMOKE)
    assert "Nothing to be done" in moved.stdout + moved.stderr, moved.stdout[-3000:]
    snakemake(work, "--config", *SMOKE, "ranks=[2]", "baseline_threads=[1]")
    summary = summary_of(work)
    assert set(summary["ranks"]) == {1, 2} and set(summary[summary["ranks"] == 1]["method"]) == {"sequential"}
    assert set(summary["threads"].astype(str)) == {"1"}  # the all-threads run, still in the folder, left out
    assert_audit_clean(work)


def audit(work):
    run = subprocess.run([str(BIN / "python"), "-m", "mpi_ensemble", "audit", "results", "--paper",
                          str(ROOT / "paper" / "reported_results.csv")], cwd=work, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT / "src")})
    return run.returncode, [line for line in run.stdout.splitlines() if line.startswith("results/")]


def edit_csv(path, row, column, value):
    """Set one cell of a results CSV (row: a function of the row's cells choosing it); returns its line number."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    at = next(i for i, cells in frame.iterrows() if row(cells))
    frame.loc[at, column] = value
    frame.to_csv(path, index=False)
    return at + 2


@pytest.mark.workflow
def test_the_audit_names_every_tampering(smoke_run, tmp_path):
    """A copy of the smoke run's results, tampered in every file the audit covers: a rank record's fit time doubled,
    two members' models swapped, a cell of each table changed, a member's accuracy and a history value altered, a
    figure deleted. The audit names each, exits 1, and is clean on the untouched folder."""
    work = tmp_path / "copy"
    shutil.copytree(smoke_run / "results", work / "results", ignore=shutil.ignore_patterns("report.html"))
    assert audit(work) == (0, [])
    res = work / "results"
    members = res / "models" / "ranks2" / "seed0"
    record = json.loads((members / "rank1.json").read_text())
    (members / "rank1.json").write_text(json.dumps({**record, "fit_seconds": 2 * record["fit_seconds"]}))
    (members / "rank0.keras").rename(members / "swap.keras")
    (members / "rank1.keras").rename(members / "rank0.keras")
    (members / "swap.keras").rename(members / "rank1.keras")
    summary_line = edit_csv(res / "summary.csv", lambda c: c.method == "sequential" and c.threads == "1",
                            "accuracy", "0.5")
    edit_csv(res / "paper_comparison.csv", lambda c: c.metric == "time_decrease" and c.cores == "2", "ours_mean", "99")
    edit_csv(res / "method_differences.csv", lambda c: c.method == "data_parallel", "exceeds_spread", "yes")
    edit_csv(res / "rank_times.csv", lambda c: c.method == "data_parallel" and c["rank"] == "1", "fit_seconds", "0.1")
    history = res / "data_parallel" / "ranks2" / "seed0" / "history.csv"
    edit_csv(history, lambda c: c.epoch == "1", "val_accuracy", "0.123")
    shard = res / "single_shard" / "ranks2" / "seed0" / "result.json"
    (shard.write_text(json.dumps({**json.loads(shard.read_text()), "member_accuracy": [0.5]})))
    (res / "figures" / "fig_voting.png").unlink()
    status, lines = audit(work)
    print("\n" + "\n".join(lines))
    assert status == 1
    said = "\n".join(lines)
    assert "results/models/ranks2/seed0/rank1.json" not in said  # the record itself is only known by its copies
    assert "results/ensemble_majority/ranks2/seed0/result.json: rank_timing[1], column fit_seconds" in said
    assert "(ensemble_majority ranks=2 threads=1 seed=0), column fit_seconds_max" in said
    for rank in (0, 1):
        assert f"results/models/ranks2/seed0/rank{rank}.keras: -, column weights_sha256" in said
    assert "results/single_shard/ranks2/seed0/result.json: metrics, column accuracy" in said  # rank 0 is another
    assert "results/single_shard/ranks2/seed0/result.json: member 0, column member_accuracy: value 0.5" in said
    assert f"results/summary.csv: line {summary_line} (sequential ranks=1 threads=1 seed=0), column accuracy: value 0.5" \
        in said
    assert "results/tables/summary.html: -, column made from summary.csv" in said  # built from the old summary
    assert "results/paper_comparison.csv: laptop 2 time_decrease, column ours_mean: value 99" in said
    assert "results/method_differences.csv: " in said and "column exceeds_spread: value yes" in said
    assert "results/rank_times.csv: " in said and "column fit_seconds: value 0.1" in said
    assert "results/data_parallel/ranks2/seed0/history.csv: epoch 1, column val_accuracy: value 0.123" in said
    assert "results/figures/fig_voting.png: -, column file: value missing" in said


@pytest.mark.workflow
def test_same_config_gives_the_same_models(smoke_run, tmp_path):
    """The 2-rank ensemble job run again, by its own command line, into another folder: bitwise the same members.
    (Not through Snakemake, whose rerun would redo every job after it.)"""
    arrays = {name: smoke_run / "results" / "data" / "mnist" / f"{name}.npy" for name in ("train_x", "train_y")}
    command = [str(BIN / "mpiexec"), "-n", "2", str(BIN / "python"), "-m", "mpi4py", "-m", "mpi_ensemble",
               "train_mpi", "--threads", "1", "--job-cores", "2", "--seed", "0", "--epochs", "1",
               "--batch-size", "64", "--validation-split", "0.2", "--precision", "float32",
               "--out-dir", str(tmp_path), *(f"--{k.replace('_', '-')}={v}" for k, v in arrays.items())]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in range(2):
        again = json.loads((tmp_path / f"rank{rank}.json").read_text())["weights_sha256"]
        first = json.loads((smoke_run / f"results/models/ranks2/seed0/rank{rank}.json").read_text())
        assert again == first["weights_sha256"]


@pytest.mark.workflow
def test_nothing_left_to_do_after_a_complete_run(smoke_run):
    out = snakemake(smoke_run, "--config", *SMOKE, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def find_chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.workflow
def test_report_renders_in_headless_chromium(smoke_run, tmp_path):
    browser = find_chromium()
    if browser is None:
        skip_unless_required("Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
    snakemake(smoke_run, "--config", *SMOKE, "--report", "results/report.html")
    page = (smoke_run / "results" / "report.html").read_text()
    assert len(page) > 100_000 and "summary.csv" in page and "fig6_scaling.png" in page
    # Drive the report's own viewer (as a click does) and record what the browser rendered.
    probe = (Path(__file__).parent / "report_render_check.js").read_text()
    at = page.rindex("</body>")
    (tmp_path / "report.html").write_text(page[:at] + f"<script>{probe}</script>" + page[at:])
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=60000", "--dump-dom",
           (tmp_path / "report.html").as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    found = re.search(r'<pre id="render-check">(.*?)</pre>', dom, re.S)
    assert found, "the probe never ran: the report did not load in Chromium\n" + dom[-2000:]
    check = json.loads(html.unescape(found.group(1)))
    assert check["stage"] == "done" and not check["errors"], check
    assert set(check["categories"]) >= {"Summary", "Figures", "Methods", "Provenance"}
    visible = re.sub(r"<script.*?</script>", "", dom, flags=re.S)
    for category in ("Summary", "Figures", "Methods", "Provenance"):
        assert category in visible  # in the rendered navigation, not only in the data
    figures = {Path(p).name: f for p, f in check["figures"].items()}
    assert set(figures) == FIGURES
    for name, fig in figures.items():
        assert fig["shown"] and fig["width"] > 500 and fig["height"] > 200 and fig["caption"] > 50, (name, fig)
    tables = check["tables"]["results/tables/summary.html"]
    summary = summary_of(smoke_run)
    assert tables["iframe"] and tables["tables"]["summary"]["rows"] == len(summary)
    assert tables["tables"]["summary"]["header"] == list(summary.columns)
    assert 'class="render-check-table"><table id="summary"' in dom  # the table itself, rendered in the page
    for method in (*PAPER_METHODS, *NEW_METHODS):
        shown = check["tables"][f"results/tables/methods/{method}.html"]
        assert shown["iframe"] and shown["tables"][f"method-{method}"]["rows"] >= 1
    prov = check["tables"]["results/tables/provenance.html"]["tables"]["provenance"]["text"]
    for key in ("cpu_model", "cpu_count", "isa_flags", "versions.tensorflow-cpu", "versions.keras", "mpi_library",
                "git_commit", "workflow_cores", "threads."):
        assert key in prov, key


# --- plans and refusals, no training --------------------------------------------------------------------------


def job_counts(text):
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", text, re.M)}


def test_every_method_runs_for_every_seed(tmp_path):
    # In a fresh copy: results of an earlier run in the checkout would hide jobs from the dry run.
    out = snakemake(project_copy(tmp_path), "-n", "--config", "ranks=[1,2]", "seeds=[0,1,2]",
                    "max_train_images=6000", "local_sgd_periods=[16,epoch]")
    counts = job_counts(out.stdout)
    assert counts["train_sequential"] == 6  # 2 baselines x 3 seeds
    for rule in ("train_mpi_ranks1", "train_mpi_ranks2", "train_data_parallel_ranks2", "single_shard",
                 "train_data_parallel_rank_batch_ranks2", "train_weight_average_shared_start_ranks2", "weight_average"):
        assert counts[rule] == 3, (rule, counts)
    assert counts["vote_variants"] == 6 and counts["ensemble"] == 6  # N = 1 and 2
    assert counts["train_local_sgd_ranks2"] == counts["train_post_local_sgd_ranks2"] == 6  # 2 periods x 3 seeds


def test_controls_run_where_the_ranks_fit_unless_asked_for_every_rank_or_none(tmp_path):
    work = project_copy(tmp_path)
    default = job_counts(snakemake(work, "-n", "--config", "ranks=[1,2,3,4]").stdout)
    assert {r for r in default if r.startswith("train_mpi")} == {f"train_mpi_ranks{n}" for n in (1, 2, 3, 4)}
    # the methods whose ranks talk, and those that need two members, from N = 2
    assert {r for r in default if r.startswith("train_data_parallel")} == {"train_data_parallel_ranks2",
                                                                           "train_data_parallel_rank_batch_ranks2"}
    assert default["ensemble"] == 4 and default["vote_variants"] == 2 and default["single_shard"] == 1
    every = job_counts(snakemake(work, "-n", "--config", "ranks=[1,2,3,4]", "control_ranks=all").stdout)
    assert every["train_data_parallel_ranks4"] == 1 and every["vote_variants"] == 4 and every["single_shard"] == 3
    paper = job_counts(snakemake(work, "-n", "--config", "ranks=[1,2,3,4]", "control_ranks=none").stdout)
    assert {r for r in paper if r.startswith("train_")} == {"train_sequential"} | {
        f"train_mpi_ranks{n}" for n in (1, 2, 3, 4)}
    assert paper["ensemble"] == 4 and not {"vote_variants", "single_shard", "weight_average"} & set(paper)


@pytest.mark.parametrize(
    "override, key",
    [("ranks=[0]", "ranks"), ("epochs=0", "epochs"), ("validation_split=1.5", "validation_split"),
     ("bogus_key=1", "bogus_key"), ("dataset=cifar", "dataset"), ("batch_size=-4", "batch_size"),
     ("control_ranks=some", "control_ranks")],
)
def test_invalid_config_is_rejected_naming_the_key(override, key):
    out = snakemake(ROOT, "-n", "--config", override, check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "Error validating config" in text and key in text


def test_kmnist_is_refused_before_any_job():
    out = snakemake(ROOT, "-n", "--config", "dataset=kmnist", check=False)
    assert out.returncode != 0
    assert "kmnist" in out.stdout + out.stderr and "not recorded" in out.stdout + out.stderr


def test_lint_and_format_are_clean():
    lint = snakemake(ROOT, "--lint", check=False)
    assert lint.returncode == 0 and "good condition" in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    fmt = subprocess.run([str(BIN / "snakefmt"), "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr


def test_one_cli_with_a_sub_command_per_rule(tmp_path):
    """Every job's shell command (a dry run with every method and world size) calls `python -m mpi_ensemble <its
    rule name>` (`train_mpi` for every train_mpi_ranks{N}); every sub-command is a rule's, but `clean_shm`,
    the first step of the MPI training rules (it must run before the launcher starts the ranks), and
    `unpack_bundled`, the rule of a workflow read from git (tests/test_deploy.py runs it)."""
    from mpi_ensemble import cli

    out = snakemake(project_copy(tmp_path), "-n", "-p", "--config", "ranks=[1,2]", "control_ranks=all").stdout
    called = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block)[1]
        command = re.search(r"^Shell command: (.*)$", block, re.M)
        if command and command[1] != "None":  # the target rules run nothing
            called[rule] = set(re.findall(r"-m mpi_ensemble (\w+)", command[1])) - {"clean_shm"}
    assert len(called) == 18  # the data, training, combine and summarize rules at N = 1 and 2
    for rule, subs in called.items():
        assert subs == {re.sub(r"_ranks\d+$", "", rule)}, (rule, subs)
    commands = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert commands == set().union(*called.values()) | {"clean_shm", "unpack_bundled"}
    assert "rule unpack_bundled:" in (ROOT / "workflow" / "rules" / "data.smk").read_text()


# --- another dataset ------------------------------------------------------------------------------------------


@pytest.mark.workflow
def test_fashion_mnist_smoke_run(tmp_path):
    fashion_files_or_skip()
    work = project_copy(tmp_path)
    target = "results/ensemble_majority/ranks2/seed0/result.json"
    snakemake(work, target, "results/data_parallel/ranks2/seed0/result.json", "--config", "dataset=fashion_mnist",
              f"data_dir={FASHION_DIR}", "max_train_images=4000", "max_test_images=500", "epochs=1", "ranks=[2]",
              "seeds=[0]")
    log = (work / "logs" / "fetch_data.log").read_text()
    assert log.count("SHA-256 verified") == 4 and str(FASHION_DIR) in log
    labels = np.load(work / "results" / "data" / "fashion_mnist" / "train_y.npy")
    assert len(labels) == 4000 and len(np.unique(labels)) == 10
    result = json.loads((work / target).read_text())
    assert result["ranks"] == 2 and result["metrics"]["accuracy"] > 0.3  # chance is 0.1
    dp = json.loads((work / "results" / "data_parallel" / "ranks2" / "seed0" / "result.json").read_text())
    assert dp["weights_identical"] and dp["metrics"]["accuracy"] > 0.3

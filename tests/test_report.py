import json

import pytest

from mpi_ensemble import report


def bench(tmp_path, name, seconds):
    path = tmp_path / f"{name}.tsv"
    path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:{int(seconds)}\t100\n")
    return path


def seq_record(tmp_path, threads, fit):
    rec = {
        "seed": 0, "fit_seconds": fit, "train_images": 48000, "peak_rss_mb": 900.0,
        "thread_settings": {"threads": threads},
        "metrics": {"accuracy": 0.98, "precision": 0.98, "recall": 0.98, "f1": 0.98},
    }
    path = tmp_path / f"seq{threads}.json"
    path.write_text(json.dumps(rec))
    return path


def ens_result(tmp_path, ranks, fits):
    res = {
        "method": "ensemble_majority", "ranks": ranks, "seed": 0, "ties": 3, "oversubscribed": False,
        "metrics": {"accuracy": 0.97, "precision": 0.97, "recall": 0.97, "f1": 0.97},
        "member_accuracy": [0.96] * ranks,
        "timing": {"fit_seconds_mean": sum(fits) / len(fits), "fit_seconds_max": max(fits), "peak_rss_mb_max": 700.0,
                   "train_images_per_rank": [48000 // ranks] * ranks, "threads_per_rank": 1},
    }
    path = tmp_path / f"ens{ranks}.json"
    path.write_text(json.dumps(res))
    return path


def test_relative_columns(tmp_path):
    rows = report.build_rows(
        [(seq_record(tmp_path, 1, 40.0), bench(tmp_path, "s1", 50)),
         (seq_record(tmp_path, "all", 30.0), bench(tmp_path, "sall", 40))],
        [(ens_result(tmp_path, 2, [18.0, 22.0]), bench(tmp_path, "e2", 25))],
        cores=2,
    )
    ens = rows[-1]
    assert ens["time_decrease_pct"] == pytest.approx(100 * (1 - 20.0 / 30.0))  # paper's metric vs threads=all
    assert ens["speedup"] == pytest.approx(40.0 / 22.0)  # 1-thread baseline vs the slowest rank
    assert ens["efficiency"] == pytest.approx(40.0 / 22.0 / 2)
    assert ens["job_speedup"] == pytest.approx(50 / 25)
    text = report.to_csv(rows)
    assert text.splitlines()[0].split(",") == report.COLUMNS
    assert text.count("\n") == 4


def test_throughput_columns(tmp_path):
    seq = json.loads(seq_record(tmp_path, 1, 40.0).read_text())
    seq.update(cpu_seconds=45.0, precision="float32", settings={"epochs": 5})
    (tmp_path / "seq1.json").write_text(json.dumps(seq))
    ens_path = ens_result(tmp_path, 2, [18.0, 20.0])
    ens = json.loads(ens_path.read_text())
    ens["timing"].update(cpu_seconds_sum=41.0, precision="mixed_bfloat16", epochs=5)
    ens_path.write_text(json.dumps(ens))
    rows = report.build_rows([(tmp_path / "seq1.json", bench(tmp_path, "s1", 50))],
                             [(ens_path, bench(tmp_path, "e2", 25))], cores=2)
    seq_row, ens_row = rows
    assert seq_row["cores_used"] == 1 and ens_row["cores_used"] == 2
    assert seq_row["images_per_second_per_core"] == pytest.approx(48000 * 5 / 40.0)
    assert ens_row["images_per_second_per_core"] == pytest.approx(2 * 24000 * 5 / 20.0 / 2)
    assert seq_row["gflops_per_core"] == pytest.approx(6000 * 16.76544e6 / 1e9)
    assert ens_row["cpu_seconds"] == 41.0 and ens_row["compute_precision"] == "mixed_bfloat16"
    header = report.to_csv(rows).splitlines()[0].split(",")
    assert header[-5:] == ["compute_precision", "cores_used", "cpu_seconds", "images_per_second_per_core",
                           "gflops_per_core"]


def test_cores_used_caps_at_the_job_and_counts_all_threads():
    assert report.cores_used({"ranks": 1, "threads": "all"}, 2) == 2
    assert report.cores_used({"ranks": 8, "threads": 1}, 2) == 2  # oversubscribed: still only 2 cores
    assert report.cores_used({"ranks": 2, "threads": 2}, 16) == 4


def test_paper_speedup_from_time_decrease():
    from mpi_ensemble import plots

    assert plots.paper_speedup(0.0) == 1.0
    assert plots.paper_speedup(50.0) == pytest.approx(2.0)
    assert plots.paper_speedup(91.49) == pytest.approx(1 / 0.0851)


def test_speedup_and_rank_time_figures(tmp_path):
    from mpi_ensemble import plots

    paper = report.read_paper(report_paper())
    rows = [
        {"method": "ensemble_majority", "ranks": 2, "speedup": 1.8, "job_speedup": 1.5, "oversubscribed": False},
        {"method": "ensemble_majority", "ranks": 4, "speedup": 1.1, "job_speedup": 1.0, "oversubscribed": True},
    ]
    plots.speedup_figure(rows, paper, tmp_path / "speedup.png")
    results = [{"ranks": 2, "oversubscribed": False, "timing": {"fit_seconds_per_rank": [10.0, 12.0]}},
               {"ranks": 4, "oversubscribed": True, "timing": {"fit_seconds_per_rank": [9.0, 9.5, 8.0, 11.0]}}]
    plots.rank_times_figure(results, tmp_path / "ranks.png")
    for name in ("speedup.png", "ranks.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def report_paper():
    from conftest import ROOT

    return ROOT / "paper" / "reported_results.csv"

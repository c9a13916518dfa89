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

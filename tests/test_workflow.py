"""The whole workflow through the Snakemake CLI, with real mpiexec ranks, on a small subset."""

import csv
import json

import numpy as np
import pytest

from conftest import BIN, ROOT, SMOKE, snakemake

pytestmark = pytest.mark.workflow


def read_summary(work):
    with open(work / "results" / "summary.csv") as handle:
        return list(csv.DictReader(handle))


def test_summary_rows_and_sanity(smoke_run):
    rows = read_summary(smoke_run)
    # The paper's methods; the controls beyond it (issue 4) are checked in test_beyond.py.
    paper_methods = ("sequential", "ensemble_majority")
    keys = {(r["method"], r["ranks"], r["threads"]) for r in rows if r["method"] in paper_methods}
    assert keys == {
        ("sequential", "1", "1"), ("sequential", "1", "all"),
        ("ensemble_majority", "1", "2"), ("ensemble_majority", "2", "1"),
    }
    for row in rows:
        assert 0.5 < float(row["accuracy"]) <= 1.0, row  # chance is 0.1
        assert 0 < float(row["fit_seconds_mean"]) <= float(row["fit_seconds_max"]) < float(row["job_seconds"])
        assert row["oversubscribed"] == "false"
        assert row["compute_precision"] == "float32"
        if row["method"] in paper_methods:  # throughput columns: the paper's methods (blank for data_parallel...)
            per_core = float(row["images_per_second_per_core"])
            assert float(row["cpu_seconds"]) > 0 and per_core > 0
            assert float(row["gflops_per_core"]) == pytest.approx(per_core * 16.76544e-3, rel=1e-3)
    ens2 = next(r for r in rows if r["method"] == "ensemble_majority" and r["ranks"] == "2")
    assert int(ens2["train_images_per_rank"]) == 2400  # 0.8 of 6000/2
    assert int(ens2["ties"]) > 0  # two members disagreeing always tie
    assert ens2["time_decrease_pct"] != "" and float(ens2["speedup"]) > 0


def test_models_and_rank_records(smoke_run):
    models = smoke_run / "results" / "models"
    for n in (1, 2):
        for r in range(n):
            assert (models / f"ranks{n}" / "seed0" / f"rank{r}.keras").stat().st_size > 100_000
            record = json.loads((models / f"ranks{n}" / "seed0" / f"rank{r}.json").read_text())
            assert record["rank"] == r and record["ranks"] == n
            assert record["thread_settings"]["env"]["TF_NUM_INTRAOP_THREADS"] == str(2 // n)
            assert len(record["thread_settings"]["affinity"]) == 2 // n  # bound by mpiexec
            assert record["mpi_library"].startswith("MPICH")
            assert record["peak_rss_mb"] > 100 and record["versions"]["keras"].startswith("3.")
            assert record["precision"] == "float32" and 0 < record["fit_cpu_seconds"] < record["cpu_seconds"]
    assert not list(models.rglob(".*tmp*"))  # no temporary files left behind


def test_figures_and_provenance(smoke_run):
    for name in ("fig5_sequential.png", "fig6_scaling.png", "speedup.png", "rank_times.png"):
        png = (smoke_run / "results" / "figures" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    prov = json.loads((smoke_run / "results" / "provenance.json").read_text())
    assert prov["cpu_model"] and prov["versions"]["tensorflow-cpu"] and prov["mpi_library"]


def test_same_config_gives_same_ensemble_predictions(smoke_run):
    probs = smoke_run / "results" / "ensemble" / "ranks2" / "seed0" / "probabilities.npy"
    before = np.load(probs)
    snakemake(smoke_run, "--config", *SMOKE, "--forcerun", "train_mpi_ranks2")
    after = np.load(probs)
    np.testing.assert_array_equal(before.argmax(axis=2), after.argmax(axis=2))
    np.testing.assert_allclose(before, after, atol=1e-6)


def test_nothing_left_to_do_after_a_complete_run(smoke_run):
    out = snakemake(smoke_run, "--config", *SMOKE, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_html_report_is_self_contained(smoke_run):
    snakemake(smoke_run, "--config", *SMOKE, "--report", "results/report.html")
    html = (smoke_run / "results" / "report.html").read_text(errors="replace")
    assert len(html) > 100_000 and "summary.csv" in html and "fig6_scaling.png" in html


@pytest.mark.parametrize(
    "override, key",
    [("ranks=[0]", "ranks"), ("epochs=0", "epochs"), ("validation_split=1.5", "validation_split"),
     ("bogus_key=1", "bogus_key"), ("dataset=cifar", "dataset"), ("batch_size=-4", "batch_size")],
)
def test_invalid_config_is_rejected_naming_the_key(override, key):
    out = snakemake(ROOT, "-n", "--config", override, check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "Error validating config" in text and key in text


def test_lint_and_format_are_clean():
    lint = snakemake(ROOT, "--lint", check=False)
    assert lint.returncode == 0 and "good condition" in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    import subprocess

    fmt = subprocess.run([str(BIN / "snakefmt"), "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr

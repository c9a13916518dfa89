"""Beyond the paper (issue 4): vote variants, single-shard control, data-parallel training, repeat statistics,
the paper comparison, other datasets and the rendered Snakemake report."""

import csv
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, ROOT, SMOKE, project_copy, skip_unless_required, snakemake, write_gz
from mpi_ensemble import comparison, controls, data, data_parallel, datasets, report, stats, voting

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
NEW_METHODS = ("ensemble_soft", "ensemble_majority_tiebreak", "single_shard", "data_parallel")


def read_csv(path):
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- voting rules, hand-computed ------------------------------------------------------------------------------


def probs(*members):
    """members: lists of per-image class-probability rows over 3 classes."""
    return np.array(members, dtype=np.float64)


def test_soft_vote_averages_probabilities():
    # image 0: member means (0.45, 0.5, 0.05) -> class 1 although member 0 is sure of class 0
    # image 1: means (0.2, 0.3, 0.5) -> class 2
    p = probs([[0.9, 0.1, 0.0], [0.2, 0.2, 0.6]], [[0.0, 0.9, 0.1], [0.2, 0.4, 0.4]])
    assert voting.soft_vote(p).tolist() == [1, 2]


def test_tiebreak_two_members_pick_the_more_confident():
    # image 0: member 0 says 2 (0.6), member 1 says 0 (0.7): tie; summed p: class 0 = 0.3+0.7 = 1.0, class 2 = 0.6+0.1
    #          -> 0 (the paper's rule also gives 0, the lowest class)
    # image 1: member 0 says 2 (0.9), member 1 says 0 (0.5): summed p: class 0 = 0.05+0.5, class 2 = 0.9+0.3 -> 2
    #          (the paper's rule gives 0)
    # image 2: agreement on 1 -> 1, no tie
    p = probs(
        [[0.3, 0.1, 0.6], [0.05, 0.05, 0.9], [0.1, 0.8, 0.1]],
        [[0.7, 0.2, 0.1], [0.5, 0.2, 0.3], [0.2, 0.5, 0.3]],
    )
    winners, ties = voting.majority_vote_tiebreak(p)
    assert winners.tolist() == [0, 2, 1]
    assert ties.tolist() == [True, True, False]
    paper, paper_ties = voting.majority_vote(p.argmax(axis=2), 3)
    assert paper.tolist() == [0, 0, 1] and paper_ties.tolist() == ties.tolist()


def test_tiebreak_only_among_tied_classes_and_majority_wins():
    # three members: votes 1, 1, 0 -> class 1 wins by majority even though class 0 has the largest summed p
    # (0.4 + 0.4 + 1.0 = 1.8 against 0.6 + 0.6 + 0 = 1.2)
    p = probs([[0.4, 0.6, 0.0]], [[0.4, 0.6, 0.0]], [[1.0, 0.0, 0.0]])
    winners, ties = voting.majority_vote_tiebreak(p)
    assert winners.tolist() == [1] and ties.tolist() == [False]
    # four members, 2-2 tie between 0 and 2; class 1 has the largest summed p but holds no top vote -> never chosen
    p = probs([[0.5, 0.45, 0.05]], [[0.5, 0.45, 0.05]], [[0.0, 0.45, 0.55]], [[0.0, 0.45, 0.55]])
    winners, ties = voting.majority_vote_tiebreak(p)
    assert winners.tolist() == [2] and ties.tolist() == [True]  # summed p: class 0 = 1.0, class 2 = 1.2


def test_vote_variants_reject_wrong_shape():
    with pytest.raises(ValueError, match="members, images, classes"):
        voting.soft_vote(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="members, images, classes"):
        voting.majority_vote_tiebreak(np.zeros((2, 3)))


def ensemble_result(ranks=2):
    return {
        "method": "ensemble_majority", "ranks": ranks, "seed": 0, "oversubscribed": False,
        "member_accuracy": [0.5] * ranks, "ties": 1, "metrics": {},
        "timing": {"fit_seconds_mean": 2.0, "fit_seconds_max": 3.0, "peak_rss_mb_max": 10.0,
                   "train_images_per_rank": [4] * ranks, "threads_per_rank": 1},
    }


def test_variant_results_score_and_keep_timing():
    p = probs(
        [[0.3, 0.1, 0.6], [0.05, 0.05, 0.9], [0.1, 0.8, 0.1]],
        [[0.7, 0.2, 0.1], [0.5, 0.2, 0.3], [0.2, 0.5, 0.3]],
    )
    y = np.array([0, 2, 1])
    out = controls.variant_results(ensemble_result(), p, y)
    assert out["ensemble_majority_tiebreak"]["metrics"]["accuracy"] == 1.0
    assert out["ensemble_majority_tiebreak"]["ties"] == 2
    assert out["ensemble_soft"]["ties"] == 0
    # soft: image 0 means (0.5, 0.15, 0.35) -> 0; image 1 (0.275, 0.125, 0.6) -> 2; image 2 -> 1
    assert out["ensemble_soft"]["metrics"]["accuracy"] == 1.0
    for result in out.values():
        assert result["timing"] == ensemble_result()["timing"]
        report.ensemble_row(result, 5.0)  # the summary accepts it as it is


def test_single_shard_result_is_rank0_alone():
    p = probs([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]], [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    record = {"rank": 0, "fit_seconds": 1.5, "wall_seconds": 9.0, "peak_rss_mb": 7.0, "train_images": 4,
              "shard": [0, 5], "thread_settings": {"threads": 1, "affinity": [0]}}
    out = controls.single_shard_result(ensemble_result(), record, p, np.array([0, 0]))
    assert out["metrics"]["accuracy"] == 0.5  # rank 0 predicts [0, 1]; rank 1's model is ignored
    assert out["job_seconds"] == 9.0 and out["timing"]["fit_seconds_max"] == 1.5
    with pytest.raises(ValueError, match="pair up"):
        report.extra_rows(["a.json"], [])
    with pytest.raises(ValueError, match="rank 0"):
        controls.single_shard_result(ensemble_result(), {**record, "rank": 1}, p, np.array([0, 0]))


# --- data-parallel building blocks ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_train, batch, ranks", [(100, 64, 2), (130, 64, 3), (7, 4, 8), (64, 64, 1)])
def test_global_batches_split_across_ranks_cover_each_image_once(n_train, batch, ranks):
    batches = data_parallel.epoch_batches(n_train, batch, seed=3, epoch=1)
    assert [len(b) for b in batches[:-1]] == [batch] * (len(batches) - 1)  # the global batch, as sequential
    seen = []
    for b in batches:
        parts = [data_parallel.local_part(b, ranks, r) for r in range(ranks)]
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        seen += [i for part in parts for i in part]
    assert sorted(seen) == list(range(n_train))
    again = data_parallel.epoch_batches(n_train, batch, seed=3, epoch=1)
    assert all((a == b).all() for a, b in zip(batches, again))  # every rank draws the same permutation
    other = data_parallel.epoch_batches(n_train, batch, seed=3, epoch=2)
    assert n_train < 8 or any((a != b).any() for a, b in zip(batches, other))  # reshuffled each epoch


def test_flatten_roundtrip_and_checksum_sensitivity():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, dtype=np.float32)]
    flat = data_parallel.flatten(arrays)
    back = data_parallel.unflatten(flat, [a.shape for a in arrays])
    for a, b in zip(arrays, back):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="buffer holds"):
        data_parallel.unflatten(flat, [(2, 3)])
    nudged = [arrays[0], np.nextafter(arrays[1], np.float32(2))]  # one ulp
    assert data_parallel.weights_sha256(arrays) != data_parallel.weights_sha256(nudged)
    data_parallel.check_identical(["a", "a", "a"])
    with pytest.raises(RuntimeError, match=r"rank\(s\) \[2\]"):
        data_parallel.check_identical(["a", "a", "b"])


def dp_command(arrays, out_dir, ranks=2):
    return [str(BIN / "mpiexec"), "-n", str(ranks), str(BIN / "python"), "-m", "mpi4py", "-m",
            "mpi_ensemble.controls", "data-parallel", "--threads", "1", "--seed", "0", "--epochs", "1",
            "--batch-size", "32", "--validation-split", "0.2", "--job-cores", "2", "--out-dir", str(out_dir),
            *(f"--{k.replace('_', '-')}={v}" for k, v in arrays.items())]


@pytest.fixture(scope="module")
def tiny_arrays(tmp_path_factory):
    """600 training and 100 test MNIST images as the workflow's arrays."""
    work = tmp_path_factory.mktemp("dp")
    names = datasets.file_names("mnist")
    outs = {name: work / f"{name}.npy" for name in data.ARRAY_NAMES}
    data.preprocess([ROOT / "data" / "mnist" / n for n in names], outs, "mnist", 600, 100)
    return {k: str(v) for k, v in outs.items()}


def run_dp(arrays, out_dir, env=None):
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run(dp_command(arrays, out_dir), capture_output=True, text=True, timeout=600, env=full_env)


def test_data_parallel_catches_a_diverging_rank(tiny_arrays, tmp_path):
    """The allreduce keeps replicas identical; a rank that drifts (test hook) is caught and fails the job."""
    out = run_dp(tiny_arrays, tmp_path, env={data_parallel.DIVERGE_ENV: "1"})
    assert out.returncode != 0
    assert "diverged" in out.stdout + out.stderr and "rank(s) [1]" in out.stdout + out.stderr
    sums = [json.loads((tmp_path / f"rank{r}.json").read_text())["weights_sha256"] for r in range(2)]
    assert sums[0] != sums[1]
    assert not (tmp_path / "record.json").exists() and not (tmp_path / "model.keras").exists()


# --- repeats and the paper comparison -------------------------------------------------------------------------


def summary_row(method, ranks, seed, accuracy, fit, threads="1", tdp=""):
    return {"method": method, "ranks": str(ranks), "seed": str(seed), "threads": threads, "accuracy": str(accuracy),
            "fit_seconds_max": str(fit), "fit_seconds_mean": str(fit), "time_decrease_pct": str(tdp)}


def test_group_stats_mean_and_sample_sd():
    rows = [summary_row("ensemble_majority", 2, s, a, f) for s, a, f in ((0, 0.90, 10), (1, 0.92, 12), (2, 0.94, 14))]
    rows.append(summary_row("ensemble_majority", 4, 0, 0.8, 5))
    out = {s["ranks"]: s for s in stats.group_stats(rows)}
    assert out["2"]["n_seeds"] == 3
    assert out["2"]["accuracy_mean"] == pytest.approx(0.92)
    assert out["2"]["accuracy_sd"] == pytest.approx(0.02)  # sample sd of 0.90, 0.92, 0.94
    assert out["2"]["fit_seconds_max_sd"] == pytest.approx(2.0)
    assert out["4"]["accuracy_sd"] is None and out["2"]["job_seconds_mean"] is None  # one seed; missing column


def test_differences_against_the_spread():
    rows = [summary_row("sequential", 1, s, a, 30, threads="all") for s, a in ((0, 0.98), (1, 0.98))]
    rows += [summary_row("ensemble_majority", 2, s, a, 20) for s, a in ((0, 0.96), (1, 0.97))]  # sd 0.00707
    rows += [summary_row("ensemble_soft", 2, s, a, 20) for s, a in ((0, 0.965), (1, 0.975))]  # diff 0.005
    rows += [summary_row("single_shard", 2, s, a, 19) for s, a in ((0, 0.90), (1, 0.91))]  # diff -0.065
    diffs = stats.differences(stats.group_stats(rows))
    verdict = {(d["method"], d["reference"], d["metric"]): d["exceeds_spread"] for d in diffs}
    assert verdict[("ensemble_soft", "ensemble_majority", "accuracy")] == "no"
    assert verdict[("single_shard", "ensemble_majority", "accuracy")] == "yes"
    assert verdict[("ensemble_majority", "sequential threads=all", "accuracy")] == "yes"  # 0.965 vs 0.98, sd 0
    assert stats.exceeds_spread(0.1, None, 0.0) == "n/a"


def test_paper_comparison_differences_and_ratio():
    paper = report.read_paper(ROOT / "paper" / "reported_results.csv")
    rows = [summary_row("sequential", 1, 0, 0.97, 40, threads="all"),
            summary_row("ensemble_majority", 2, 0, 0.96, 20, tdp=10.0),
            summary_row("ensemble_majority", 2, 1, 0.98, 20, tdp=14.0),
            summary_row("ensemble_majority", 3, 0, 0.95, 20, tdp=30.0)]
    out = {(c["machine"], c["cores"], c["metric"]): c for c in comparison.compare(paper, rows)}
    td2 = out[("laptop", "2", "time_decrease")]
    assert td2["paper"] == 22.52 and td2["ours_mean"] == pytest.approx(12.0) and td2["ours_n"] == 2
    assert td2["difference_pp"] == pytest.approx(12.0 - 22.52)
    assert td2["ratio"] == pytest.approx(12.0 / 22.52)
    fit = out[("xeon", "1", "sequential_fit_seconds")]
    assert fit["ours_mean"] == 40 and fit["difference_pp"] is None and fit["ratio"] == pytest.approx(40 / 58.55)
    acc = out[("laptop", "1", "sequential_accuracy")]
    assert acc["difference_pp"] == pytest.approx(97.0 - 98.20)
    lo, hi = out[("laptop", "2-8", "ensemble_accuracy_min")], out[("laptop", "2-8", "ensemble_accuracy_max")]
    assert lo["ours_mean"] == pytest.approx(95.0) and hi["ours_mean"] == pytest.approx(97.0)  # per-N means
    assert out[("laptop", "8", "time_decrease")]["ours_mean"] is None  # no 8-rank run here


# --- datasets -------------------------------------------------------------------------------------------------


def test_dataset_registry():
    for name in ("mnist", "fashion_mnist", "kmnist"):
        assert datasets.file_names(name) == datasets.file_names("mnist")
        assert datasets.dataset_spec(name)["mirrors"]
    assert not datasets.missing_checksums("fashion_mnist")
    assert all(len(d) == 64 for _, d in datasets.dataset_spec("fashion_mnist")["files"].values())
    # KMNIST: no trustworthy SHA-256 of the decompressed files is recorded, so it fails closed
    with pytest.raises(datasets.UnknownChecksumError, match="not recorded"):
        datasets.expected_sha256("kmnist", "train-images-idx3-ubyte.gz")


def test_kmnist_is_refused_before_any_job():
    out = snakemake(ROOT, "-n", "--config", "dataset=kmnist", check=False)
    assert out.returncode != 0
    assert "kmnist" in out.stdout + out.stderr and "not recorded" in out.stdout + out.stderr


def test_every_method_runs_for_every_seed(tmp_path):
    # In a fresh copy: results of an earlier run in the checkout would hide jobs from the dry run.
    out = snakemake(project_copy(tmp_path), "-n", "--config", "ranks=[1,2]", "seeds=[0,1,2]", "max_train_images=6000")
    text = out.stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", text, re.M))
    assert counts["train_sequential"] == "6"  # 2 baselines x 3 seeds
    for rule in ("train_mpi_ranks1", "train_mpi_ranks2", "train_data_parallel_ranks1", "train_data_parallel_ranks2",
                 "single_shard"):
        assert counts[rule] == "3", (rule, counts)
    assert counts["vote_variants"] == "6" and counts["ensemble"] == "6"


# --- the small integration run (tests/conftest.py smoke_run) --------------------------------------------------


pytestmark_workflow = pytest.mark.workflow


@pytestmark_workflow
def test_new_methods_have_summary_rows(smoke_run):
    rows = read_csv(smoke_run / "results" / "summary.csv")
    got = {(r["method"], r["ranks"]) for r in rows}
    for method in ("ensemble_soft", "ensemble_majority_tiebreak", "data_parallel"):
        assert {(method, "1"), (method, "2")} <= got
    assert ("single_shard", "2") in got
    by = {(r["method"], r["ranks"]): r for r in rows}
    for method in NEW_METHODS:
        for row in (r for r in rows if r["method"] == method):
            assert 0.5 < float(row["accuracy"]) <= 1.0, row
            assert 0 < float(row["fit_seconds_mean"]) <= float(row["fit_seconds_max"]) < float(row["job_seconds"])
            assert row["time_decrease_pct"] != ""
    # one member: every vote rule is that member
    for method in ("ensemble_soft", "ensemble_majority_tiebreak"):
        assert by[(method, "1")]["accuracy"] == by[("ensemble_majority", "1")]["accuracy"]
        assert by[(method, "2")]["job_seconds"] == by[("ensemble_majority", "2")]["job_seconds"]  # same models
    assert by[("ensemble_majority_tiebreak", "2")]["ties"] == by[("ensemble_majority", "2")]["ties"]
    ens = json.loads((smoke_run / "results" / "ensemble" / "ranks2" / "seed0" / "metrics.json").read_text())
    assert float(by[("single_shard", "2")]["accuracy"]) == pytest.approx(ens["member_accuracy"][0])
    assert int(by[("single_shard", "2")]["train_images_per_rank"]) == 2400  # 0.8 of the first 3000 images


@pytestmark_workflow
def test_data_parallel_replicas_stay_identical(smoke_run):
    import keras

    weights = {}
    for n in (1, 2):
        folder = smoke_run / "results" / "data_parallel" / f"ranks{n}" / "seed0"
        ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(n)]
        sums = {r["weights_sha256"] for r in ranks}
        assert len(sums) == 1, f"ranks{n}: the replicas diverged: {sums}"
        record = json.loads((folder / "record.json").read_text())
        assert record["weights_identical"] and record["weights_sha256"] == [ranks[0]["weights_sha256"]] * n
        assert record["steps_per_epoch"] == 75  # ceil(4800 / 64): the global batch, as the sequential fit
        assert sum(record["timing"]["train_images_per_rank"]) == 4800
        assert len(set(record["timing"]["train_images_per_rank"])) == 1
        model = keras.models.load_model(folder / "model.keras")
        assert data_parallel.weights_sha256(model.get_weights()) == ranks[0]["weights_sha256"]
        weights[n] = model.get_weights()
    # Same seed, same global batches: 2 ranks compute the same mean gradients as 1, up to float summation order.
    for a, b in zip(weights[1], weights[2]):
        np.testing.assert_allclose(a, b, atol=1e-3)


@pytestmark_workflow
def test_stats_comparison_and_tables(smoke_run):
    res = smoke_run / "results"
    summary = read_csv(res / "summary.csv")
    stat_rows = read_csv(res / "summary_stats.csv")
    assert {(r["method"], r["ranks"], r["threads"]) for r in stat_rows} == {
        (r["method"], r["ranks"], r["threads"]) for r in summary}
    assert all(r["n_seeds"] == "1" and r["accuracy_sd"] == "" for r in stat_rows)  # one seed: no sd, not 0
    diffs = read_csv(res / "method_differences.csv")
    assert diffs and all(d["exceeds_spread"] == "n/a" for d in diffs)
    comp = {(c["machine"], c["cores"], c["metric"]): c for c in read_csv(res / "paper_comparison.csv")}
    ours = next(float(r["time_decrease_pct"]) for r in summary if r["method"] == "ensemble_majority" and r["ranks"] == "2")
    row = comp[("laptop", "2", "time_decrease")]
    assert float(row["ours_mean"]) == pytest.approx(ours, abs=1e-4)
    assert float(row["difference_pp"]) == pytest.approx(ours - 22.52, abs=1e-4)
    assert comp[("laptop", "5", "time_decrease")]["ours_mean"] == ""
    for name in ("fig_methods.png", "fig_voting.png"):
        png = (res / "figures" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    page = (res / "report" / "summary.html").read_text()
    assert page.count("<tr>") == 1 + len(stat_rows) + 1 + len(diffs) + 1 + len(comp) + 1 + len(summary)


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytestmark_workflow
def test_report_renders_in_headless_chromium(smoke_run, tmp_path):
    browser = find_chromium()
    if browser is None:
        skip_unless_required("Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
    snakemake(smoke_run, "--config", *SMOKE, "--report", "results/report_beyond.html")
    page = (smoke_run / "results" / "report_beyond.html").read_text()
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
    assert set(figures) == {"fig5_sequential.png", "fig6_scaling.png", "fig_methods.png", "fig_voting.png",
                            "speedup.png", "rank_times.png"}
    for name, fig in figures.items():
        assert fig["shown"] and fig["width"] > 500 and fig["height"] > 200 and fig["caption"] > 50, (name, fig)
    tables = check["tables"]["results/report/summary.html"]
    assert tables["iframe"]
    summary = read_csv(smoke_run / "results" / "summary.csv")
    assert tables["tables"]["summary"]["rows"] == len(summary)
    assert tables["tables"]["summary"]["header"] == list(summary[0])
    assert 'class="render-check-table"><table id="summary"' in dom  # the table itself, rendered in the page
    for method in ("sequential", "ensemble_majority", *NEW_METHODS):
        shown = check["tables"][f"results/report/methods/{method}.html"]
        assert shown["iframe"] and shown["tables"][f"method-{method}"]["rows"] >= 1
    prov = check["tables"]["results/report/provenance.html"]["tables"]["provenance"]["text"]
    for key in ("cpu_model", "cpu_count", "versions.tensorflow-cpu", "versions.keras", "mpi_library", "git_commit",
                "workflow_cores", "threads."):
        assert key in prov, key


# --- Fashion-MNIST from Debian's package ----------------------------------------------------------------------


def fashion_files_or_skip():
    names = datasets.file_names("fashion_mnist")
    missing = data.missing_files(FASHION_DIR, names)
    if missing:
        skip_unless_required(f"Fashion-MNIST not found in {FASHION_DIR} (missing {', '.join(missing)}); "
                    "install Debian's package: apt-get install -y dataset-fashion-mnist (.ci/run does)")
    return names


def test_fashion_mnist_debian_copy_verifies_and_altered_copy_fails(tmp_path):
    names = fashion_files_or_skip()
    name = "t10k-labels-idx1-ubyte.gz"
    expected = datasets.expected_sha256("fashion_mnist", name)
    raw = data.verify(FASHION_DIR / name, expected)  # Debian re-gzipped it: the decompressed content still matches
    labels = data.parse_idx(raw)
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10
    altered = bytearray(raw)
    altered[-1] = (altered[-1] + 1) % 10
    with pytest.raises(data.ChecksumError, match="checksum mismatch"):
        data.verify(write_gz(tmp_path / name, bytes(altered)), expected)
    assert names == datasets.file_names("mnist")


@pytestmark_workflow
def test_fashion_mnist_smoke_run(tmp_path):
    fashion_files_or_skip()
    work = project_copy(tmp_path)
    target = "results/ensemble/ranks2/seed0/metrics.json"
    snakemake(work, target, "results/data_parallel/ranks2/seed0/record.json", "--config", "dataset=fashion_mnist",
              f"data_dir={FASHION_DIR}", "max_train_images=4000", "max_test_images=500", "epochs=1", "ranks=[2]",
              "seeds=[0]")
    log = (work / "logs" / "fetch_data.log").read_text()
    assert log.count("SHA-256 verified") == 4 and str(FASHION_DIR) in log
    labels = np.load(work / "results" / "data" / "fashion_mnist" / "train_y.npy")
    assert len(labels) == 4000 and len(np.unique(labels)) == 10
    result = json.loads((work / target).read_text())
    assert result["ranks"] == 2 and result["metrics"]["accuracy"] > 0.3  # chance is 0.1
    dp = json.loads((work / "results" / "data_parallel" / "ranks2" / "seed0" / "record.json").read_text())
    assert dp["weights_identical"] and dp["metrics"]["accuracy"] > 0.3

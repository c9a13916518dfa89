"""The scaling benchmark script: its arithmetic, and one tiny real run (both code paths under real mpiexec)."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT


def load_script(name="scaling"):
    spec = importlib.util.spec_from_file_location(f"{name}_bench", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_comparison_lists_each_changed_cell_and_nothing_else():

    compare = load_script("compare_runs")
    key = {"method": ["sequential", "ensemble_majority"], "ranks": [1, 2], "threads": ["all", "1"], "seed": [0, 0]}
    before = pd.DataFrame({**key, "accuracy": [0.98, 0.97], "fit_seconds_mean": [80.0, 40.0]})
    after = pd.DataFrame({**key, "accuracy": [0.98, 0.975], "fit_seconds_mean": [80.0 + 1e-12, 39.0]})
    changed = compare.changed_cells(before, after)
    assert changed[["method", "column", "before", "after"]].values.tolist() == [
        ["ensemble_majority", "accuracy", 0.97, 0.975], ["ensemble_majority", "fit_seconds_mean", 40.0, 39.0]]


def run(impl, ranks, precision, fit_s, job_s, img, rss=700.0, accuracy=None):
    return {"impl": impl, "ranks": ranks, "threads": 1, "precision": precision, "cores_used": 2, "fit_s": fit_s,
            "fit_s_mean": fit_s, "img_s_core": img, "cpu_s": 1.0, "fit_cpu_s": 1.0, "img_cpu_s": img, "rss_mb": rss, "job_s": job_s,
            "accuracy": accuracy}


def test_medians_over_repeats_and_first_accuracy():
    bench = load_script()
    runs = [run("ours", 2, "fp32", f, 10.0, 100.0 * f, accuracy=a) for f, a in ((3.0, 0.9), (1.0, None), (2.0, None))]
    (row,) = bench.median_rows(runs)
    assert row["fit_s"] == 2.0 and row["img_s_core"] == 200.0 and row["repeats"] == 3 and row["accuracy"] == 0.9


def test_ratios_against_targets():
    bench = load_script()
    rows = [run("paper", 2, "fp64-input", 10.0, 20.0, 1000.0), run("ours", 2, "fp32", 6.0, 12.0, 1600.0),
            run("ours", 2, "bf16", 4.0, 10.0, 2100.0), run("ours-1t", 1, "fp32", 11.4, 21.0, 800.0, rss=1100.0)]
    checks = {c["ratio"]: c for c in bench.ratios(rows, 2)}
    fp32 = checks["ours fp32 / paper, img/s per core at N=2"]
    assert fp32["value"] == pytest.approx(1.6) and fp32["met"]
    bf16 = checks["ours bf16 / paper, img/s per core at N=2"]
    assert bf16["value"] == pytest.approx(2.1) and not bf16["met"]
    speedup = checks["fit speed-up at N=2 (1-thread fit / slowest rank)"]
    assert speedup["value"] == pytest.approx(11.4 / 6.0) and speedup["met"]
    assert checks["job wall speed-up at N=2"]["value"] == pytest.approx(21.0 / 12.0)
    assert checks["ours fp32 / paper, images per fit CPU-second at N=2"]["met"] is None  # informative, no target
    assert not checks["ours peak RSS per rank at N=1, GiB"]["met"]  # 1100 MB > 1 GiB
    assert checks["ours peak RSS per rank at N=2, GiB"]["met"]
    ceiling = checks["ceiling: ours fp32 1 thread / paper at N=2, img/s per core"]
    assert ceiling["value"] == pytest.approx(0.8) and ceiling["met"] is None
    assert checks["parallel efficiency: ours fp32 at N=2 / 1 thread, img/s per core"]["value"] == pytest.approx(2.0)
    assert "ceiling: ours bf16 1 thread / paper at N=2, img/s per core" not in checks  # no bf16 1-thread run


@pytest.mark.workflow
def test_benchmark_runs_both_code_paths(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--quick", "--ranks", "2", "--precision", "float32",
         "--train-images", "4000", "--test-images", "500", "--skip-probe", "--json", str(tmp_path / "b.json")],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    paper = next(line.split() for line in lines if line.split()[:2] == ["paper", "2"])
    ours = next(line.split() for line in lines if line.split()[:2] == ["ours", "2"])
    assert paper[3] == "fp64-input" and ours[3] == "fp32"
    assert float(ours[-1]) > 0.5 and float(paper[-1]) > 0.5  # majority-vote accuracy of both (chance is 0.1)
    assert "ours fp32 / paper, img/s per core at N=2" in out.stdout


def test_warmup_is_the_first_epoch_over_a_steady_one():
    bench = load_script()
    records = [{"epoch_seconds": [3.0, 1.0, 1.2, 1.1]}, {"epoch_seconds": [2.5, 1.0, 1.0]}]
    assert bench.warmup_seconds(records) == pytest.approx(1.9)
    assert bench.warmup_seconds([{"fit_seconds": 4.0}]) is None  # the paper's code records no epochs
    rows = bench.median_rows([{**run("paper", 2, "fp64-input", 1.0, 2.0, 3.0), "warmup_s": None}])
    assert rows[0]["warmup_s"] is None


# --- the per-core probe ------------------------------------------------------------------------------------------


def load_probe():
    spec = importlib.util.spec_from_file_location("probe_bench", ROOT / "benchmarks" / "probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_emulates_the_avx2_kind_only_on_an_avx512_cpu():
    probe = load_probe()
    avx512 = [name for name, _ in probe.settings_to_try({"avx2", "fma", "avx512f"})]
    avx2 = dict(probe.settings_to_try({"avx2", "fma"}))
    assert "AVX2 emulated, auto" in avx512 and not any(name.startswith("AVX2") for name in avx2)
    assert avx2["oneDNN off (Eigen)"]["TF_ENABLE_ONEDNN_OPTS"] == "0" and "auto (chosen)" in avx2
    assert avx2["plain fit, auto"]["PROBE_PIPELINE"] == "keras"  # plain fit on arrays: Keras' own pipeline


def test_probe_plain_fit_times_its_two_epochs():
    """The probe's plain-`fit` row (PROBE_PIPELINE=keras): Keras' own pipeline, its two epochs timed."""
    import keras  # not import_keras: another test in this process may have started TensorFlow's thread pools

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 28, 28, 1), dtype=np.float32), np.arange(64, dtype=np.int64) % 10
    net, facts = load_probe().plain_fit(keras, x, y, 0, [])
    assert len(facts["epoch_seconds"]) == 2 and all(s > 0 for s in facts["epoch_seconds"])
    assert net.count_params() == 93322


def test_probe_profile_per_step_and_conv_gflops():
    probe = load_probe()
    line = ("onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,backward_weights,src:f32::blocked:acdb::f0,,"
            "alg:convolution_direct,mb64_ic32oc64_ih13oh11kh3sh1dh0ph0_iw13ow11kw3sw1dw0pw0,{ms}")
    predict = line.replace("mb64", "mb1024").format(ms=50.0)  # the test-set predictions: not a training step
    text = "\n".join([line.format(ms=3.0), line.format(ms=1.0), predict, "onednn_verbose,v1,info,cpu,isa:AVX2"])
    (row,), steps = probe.profile_lines(text)
    assert steps == 2 and row["ms_per_step"] == pytest.approx(2.0) and row["pass"] == "backward_weights"
    flops = 2 * 64 * 32 * 64 * 11 * 11 * 3 * 3
    assert probe.conv_flops("mb64_ic32oc64_ih13oh11kh3sh1dh0ph0_iw13ow11kw3sw1dw0pw0") == flops
    assert row["gflops"] == pytest.approx(flops / 2e-3 / 1e9)


def test_probe_rows_judge_every_repeat_against_the_limit_and_pair_seeds():
    probe = load_probe()
    kernels = {"env": {"TF_ENABLE_ONEDNN_OPTS": "1"}}

    def runs(gflops, accuracy):
        return [{"gflops": g, "cpu_gflops": g, "busy": 1.0, "waited": 0.0, "accuracy": a, "kernel_settings": kernels}
                for g, a in zip(gflops, accuracy)]

    measured = {"auto (chosen)": runs([70, 80, 90], [0.97, 0.98, 0.96]),
                "AVX2 emulated, auto": runs([50, 30, 60], [0.96, 0.98, 0.95])}
    rows = probe.setting_rows(list(measured), measured, {"native": 100.0, "AVX2 (OpenBLAS Haswell)": 80.0},
                              "auto (chosen)")
    auto, avx2 = rows
    assert auto["met"] == "yes" and auto["worst_fraction"] == pytest.approx(0.7)
    assert avx2["met"] == "NO" and avx2["fraction"] == pytest.approx(50 / 80)  # one slow repeat fails the target
    assert avx2["same_seed_diff"] == pytest.approx(-0.02 / 3) and auto["same_seed_diff"] == 0
    assert auto["accuracy_sd"] == pytest.approx(0.01)


# The CNN's FLOPs per image, by hand (2 per multiply-add): the convolutions 2·3·3·1·26·26·32 = 389,376,
# 2·3·3·32·11·11·64 = 4,460,544 and 2·3·3·64·3·3·64 = 663,552, the dense layers 2·576·64 = 73,728 and 2·64·10 = 1,280:
# a forward pass 5,588,480; a training step adds every weight gradient (the same again) and every input gradient but
# the first convolution's (5,199,104).
FORWARD_FLOPS = 5_588_480
TRAINING_FLOPS = 2 * FORWARD_FLOPS + FORWARD_FLOPS - 389_376


def test_probe_scaling_and_summary_share_one_gflops_formula(tmp_path):
    """The same 2-rank run (records of 24,000 training and 6,000 validated images per rank, 5 epochs, slowest rank
    40 s, 1 core each) gives the same GFLOP/s per core in summary.csv, in the scaling benchmark and, for one rank's
    one epoch, in the probe: every training step and every validation pass its fit time holds."""
    import json

    from mpi_ensemble import model, summarize

    records = [{"rank": r, "fit_seconds": 40.0 - r, "train_images": 24000, "validation_images": 6000,
                "cpu_seconds": 80.0, "fit_cpu_seconds": 70.0, "peak_rss_mib": 700.0, "wall_seconds": 45.0,
                "epoch_seconds": [9.0, 8.0, 8.0, 8.0, 7.0]} for r in range(2)]
    bench_file = tmp_path / "train.tsv"
    bench_file.write_text("s\tmax_rss\n50\t1400\n")
    result = {"method": "ensemble_majority", "ranks": 2, "seed": 0, "threads": 1, "cores_used": 2,
              "oversubscribed": False, "ties": 0, "precision": "float32", "epochs": 5, "batch_size": 64,
              "metrics": dict.fromkeys(("accuracy", "precision", "recall", "f1"), 0.9), "member_accuracy": [0.9],
              "rank_timing": records}
    summary = summarize.summary_table([(result, [str(bench_file)])]).iloc[0]
    args = load_script().parse_args(["--epochs", "5"])
    bench = type("Bench", (), {"args": args, "cores": 2})()
    scaling = load_script().Bench.measure(bench, "ours", 2, 1, "float32", records, 50.0, 0.9)
    one_epoch = load_probe().rates({"images": 24000, "validation_images": 6000, "wall_s": 8.0, "cpu_s": 8.0,
                                    "runqueue_s": 0.0})
    per_core = (24000 * TRAINING_FLOPS + 6000 * FORWARD_FLOPS) * 2 * 5 / 40.0 / 2 / 1e9
    assert summary["gflops_per_core"] == pytest.approx(per_core) == pytest.approx(scaling["gflops_core"])
    assert one_epoch["gflops"] == pytest.approx((24000 * TRAINING_FLOPS + 6000 * FORWARD_FLOPS) / 8.0 / 1e9)
    # Training images alone would understate it by the validation passes' share, about 7 % at validation_split 0.2.
    assert 0.06 < 1 - 24000 * model.training_flops_per_image() / model.fit_flops(24000, 6000) < 0.09
    json.dumps(scaling)


def test_the_probes_native_limit_runs_this_cpus_own_blas_kernels(monkeypatch):
    """An inherited OPENBLAS_CORETYPE (here SSE4-era kernels) does not reach the native matmul row; the AVX2
    row asks for its kernels itself, and each row says which kernels OpenBLAS ran."""
    probe = load_script("probe")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Nehalem")
    core = sorted(__import__("os").sched_getaffinity(0))[-1]
    native = probe.matmul_once(core, seconds=0.05)
    assert native["blas_core"] not in ("Nehalem", "unknown (not OpenBLAS)") and native["gflops"] > 0
    assert probe.matmul_once(core, seconds=0.05, extra=probe.AVX2_BLAS)["blas_core"] == "Haswell"
    monkeypatch.setattr(probe.scaling, "BLAS_ENV", ())  # the check can fail: without the clearing, Nehalem runs
    assert probe.matmul_once(core, seconds=0.05)["blas_core"] == "Nehalem"


def test_the_communication_table_has_a_cell_per_method_and_n():

    talk = load_script("talk_table")
    rows = [("sequential", 1, None, 0.99, 0.001, 3, None), ("ensemble_majority", 2, None, 0.985, 0.0023, 3, 0.0),
            ("ensemble_majority", 16, None, 0.97, 0.004, 2, 0.0), ("local_sgd", 16, "16", 0.981, 0.0005, 3, 9.7e6),
            ("post_local_sgd", 16, "16", 0.975, float("nan"), 1, 3.1e6)]
    stats = pd.DataFrame(rows, columns=["method", "ranks", "period", "accuracy_mean", "accuracy_sd", "n_seeds",
                                        "wire_bytes_per_rank_mean"])
    lines = talk.table(stats).splitlines()
    assert lines[0] == "| method | period | N = 2 | N = 16 | wire MB per rank, N = 16 |"
    assert lines[2] == "| `ensemble_majority` |  | 98.50 ± 0.23 | 97.00 ± 0.40 (n = 2) | 0.0 |"
    assert lines[3] == "| `local_sgd` | 16 |  | 98.10 ± 0.05 | 9.7 |"
    assert lines[4] == "| `post_local_sgd` | 16 |  | 97.50 (n = 1) | 3.1 |" and len(lines) == 5  # no sequential row


def test_time_to_accuracy_reads_the_delivered_histories_and_prices_only_what_was_measured(tmp_path):
    script = load_script("time_to_accuracy")
    results = tmp_path / "results"
    runs = [("local_sgd", 16, 4, (0.97, 0.985, 0.991)), ("local_sgd", "epoch", 8, (0.96, 0.975, 0.979)),
            ("single_shard", None, 4, (0.99, 0.99, 0.99))]  # rank 0 alone: no training of its own
    for method, period, ranks, delivered in runs:
        folder = results / method / f"ranks{ranks}" / str(period)
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({
            "method": method, "period": period, "ranks": ranks, "seed": 0, "delivered_val_accuracy": delivered,
            "rank_timing": [{"history": {}}]}))
    out = tmp_path / "out"
    script.main(["--results", str(results), "--model", str(ROOT / "benchmarks/results/network-model-2026-12-07"),
                 "--out", str(out)])
    rows = pd.read_csv(out / "time_to_accuracy.csv", dtype={"period": str})
    assert set(rows["method"]) == {"local_sgd"} and set(rows["ranks"]) == {4, 8}
    k16 = rows[(rows["ranks"] == 4) & (rows["network"] == "1 Gbit/s")].set_index("target")
    assert k16.loc[0.98, "epochs_to_target"] == 2 and k16.loc[0.99, "epochs_to_target"] == 3
    assert k16.loc[0.99, "seconds_to_target"] == pytest.approx(1.5 * k16.loc[0.98, "seconds_to_target"])
    text = (out / "time_to_accuracy.md").read_text()
    assert "| `local_sgd` | epoch |  | never (0/1) |" in text
    assert f"| `local_sgd` | 16 | {k16.loc[0.98, 'seconds_to_target']:.1f} (1/1, 2.0 ep.) |  |" in text
    # Read back without --results: the same table from delivered.csv.
    script.main(["--model", str(ROOT / "benchmarks/results/network-model-2026-12-07"), "--out", str(out)])
    assert (out / "time_to_accuracy.md").read_text() == text
    script.main(["--results", str(results), "--model", str(ROOT / "benchmarks/results/network-model-2026-12-07"),
                 "--out", str(out), "--ranks", "4"])
    assert set(pd.read_csv(out / "time_to_accuracy.csv")["ranks"]) == {4}


def test_the_communication_table_joins_runs_at_different_n_and_refuses_one_n_twice(tmp_path):
    talk = load_script("talk_table")
    columns = ["method", "ranks", "period", "accuracy_mean", "accuracy_sd", "n_seeds", "wire_bytes_per_rank_mean"]
    pd.DataFrame([("sequential", 1, None, 0.99, 0.001, 3, None), ("local_sgd", 2, "16", 0.99, 0.001, 3, 4e7)],
                 columns=columns).to_csv(tmp_path / "two.csv", index=False)
    pd.DataFrame([("sequential", 1, None, 0.99, 0.001, 3, None), ("local_sgd", 16, "16", 0.98, 0.002, 3, 9e6)],
                 columns=columns).to_csv(tmp_path / "sixteen.csv", index=False)
    lines = talk.table(talk.read([tmp_path / "two.csv", tmp_path / "sixteen.csv"])).splitlines()
    assert lines[2] == "| `local_sgd` | 16 | 99.00 ± 0.10 | 98.00 ± 0.20 | 9.0 |"
    with pytest.raises(SystemExit, match="local_sgd .period 16. at N = 2 is in more than one"):
        talk.read([tmp_path / "two.csv", tmp_path / "two.csv"])

"""What communication costs: the α–β model's arithmetic (benchmarks/cost_model.py, pure), and the shaped links of
the multi-node test cluster measured (tests/slurm_cluster.py, NodeNetwork.shape)."""

import importlib.util

import pandas as pd
import pytest
import slurm_cluster
from conftest import ROOT, skip_unless_slurm


def load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_bench", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cm = load("cost_model")
M = cm.MODEL_BYTES


# --- the Allreduce algorithms -------------------------------------------------------------------------------------


def test_each_algorithm_pays_its_steps_and_bytes():
    assert cm.terms("ring", 2, M) == (2, M)
    assert cm.terms("ring", 3, M) == (4, pytest.approx(4 / 3 * M))
    assert cm.terms("reduce_scatter_allgather", 2, M) == (2, M)
    assert cm.terms("reduce_scatter_allgather", 4, M) == (4, pytest.approx(1.5 * M))
    # 3 ranks: one pair folds first and unfolds last (m each way), the other two halve and double.
    assert cm.terms("reduce_scatter_allgather", 3, M) == (4, pytest.approx(3 * M))
    assert cm.terms("reduce_scatter_allgather", 1024, M) == (20, pytest.approx(2 * 1023 / 1024 * M))
    assert cm.terms("recursive_doubling", 4, M) == (2, 2 * M)
    assert cm.terms("recursive_doubling", 3, M) == (3, 3 * M)
    assert cm.terms("ring", 1, M) == (0, 0.0)
    with pytest.raises(ValueError, match="unknown Allreduce algorithm"):
        cm.terms("butterfly", 4, M)


def test_mpich_picks_recursive_doubling_only_for_the_smallest_messages():
    assert cm.mpich_algorithm(2, 8) == "recursive_doubling"
    assert cm.mpich_algorithm(2, 64) == "reduce_scatter_allgather"
    assert cm.mpich_algorithm(1024, M) == "reduce_scatter_allgather"
    assert cm.mpich_algorithm(1024, 4 * 1000) == "recursive_doubling"  # 1,000 floats < 1,024 ranks
    assert cm.pof2(3) == 2 and cm.pof2(1024) == 1024 and cm.pof2(1023) == 512


def test_bytes_each_rank_sends_on_average():
    assert cm.bytes_sent("ring", 3, 300) == pytest.approx(400)
    assert cm.bytes_sent("reduce_scatter_allgather", 2, 300) == pytest.approx(300)
    # 3 ranks: the folding rank sends m, its partner 2m, the third m: 4m / 3 on average, as the ring.
    assert cm.bytes_sent("reduce_scatter_allgather", 3, 300) == pytest.approx(400)
    assert cm.bytes_sent("recursive_doubling", 4, 300) == pytest.approx(600)
    assert cm.bytes_sent("ring", 1, 300) == 0.0


# --- the fit -------------------------------------------------------------------------------------------------------


def synthetic(alpha, beta, network="net", sizes=(8, 64, 4096, 65536, M, 4 * 2**20)):
    rows = []
    for n in (2, 3):
        for m in sizes:
            algorithm = cm.mpich_algorithm(n, m)
            rows.append({"network": network, "ranks": n, "bytes": m, "algorithm": algorithm,
                         "seconds": cm.allreduce_seconds(alpha, beta, n, m, algorithm)})
    return pd.DataFrame(rows)


def test_the_fit_recovers_alpha_and_beta_of_exact_data():
    points = pd.concat([synthetic(30e-6, 8e-9, "1gbit"), synthetic(30e-6, 0.8e-9, "10gbit")])
    fits = cm.fit_all(points)
    assert fits["1gbit"]["alpha_s"] == pytest.approx(30e-6)
    assert fits["1gbit"]["beta_s_per_byte"] == pytest.approx(8e-9)
    assert fits["1gbit"]["effective_gbit_s"] == pytest.approx(1.0)
    assert fits["10gbit"]["effective_gbit_s"] == pytest.approx(10.0)
    checked = cm.residuals(points, fits)
    assert checked["model_over_measured"].to_numpy() == pytest.approx(1.0)


def test_alpha_comes_from_the_small_messages_and_beta_weighs_relative_error():
    points = synthetic(30e-6, 8e-9)
    points.loc[points["bytes"] == 8, "seconds"] *= 2  # the 8-byte messages twice as slow
    fit = cm.fit_network(points)
    # Per step, the 8 B messages now say 60 us and the 64 B ones 30 us: the median of the four is 45 us.
    assert fit["alpha_s"] == pytest.approx(45e-6, rel=0.01)
    # The larger α explains part of every large message's time, most of the 4 KB one's: β drops, by < 10 %.
    assert 7.2e-9 < fit["beta_s_per_byte"] < 8e-9
    with pytest.raises(ValueError, match="messages of at most 64 bytes and of at least 131072"):
        cm.fit_network(points[points["bytes"] > 64])


# --- compute per step and the projection ---------------------------------------------------------------------------


def steps_table(local=(1e-3, 2e-4), dp=(3e-3, 2e-4), spe1=(2e-3, 2e-4), copies=5e-4):
    """Step seconds linear in the images: fixed + per image, for each kind, at the benchmark's batch sizes; and
    the copies of one weight averaging."""
    rows = [{"kind": kind, "images": b, "seconds": fixed + per * b, "repeat": r}
            for kind, (fixed, per), sizes in (("local", local, (1, 16, 32, 47, 64)),
                                              ("local_spe1", spe1, (1, 47, 64)),
                                              ("data_parallel", dp, (1, 2, 22, 32, 64)),
                                              ("averaging", (copies, 0.0), (0,)))
            for b in sizes for r in range(3)]
    return pd.DataFrame(rows)


def test_step_time_interpolates_and_never_extrapolates():
    steps = steps_table()
    assert cm.step_time(steps, "local", 40) == pytest.approx(1e-3 + 40 * 2e-4)
    summary = cm.compute_summary(steps).set_index("kind")
    assert summary.loc["data_parallel", "fixed_s"] == pytest.approx(3e-3)
    assert summary.loc["local", "per_image_s"] == pytest.approx(2e-4)
    with pytest.raises(ValueError, match="outside the measured"):
        cm.step_time(steps, "local", 65)


def test_ensemble_and_local_sgd_train_the_largest_shard():
    steps = steps_table()
    t64 = 1e-3 + 64 * 2e-4
    assert cm.shard_batches(2) == (375, 0)
    assert cm.shard_batches(1024) == (0, 47)  # ceil(48000 / 1024) = 47 images: one short batch
    assert cm.shard_batches(3, images=6400) == (33, 22)
    ensemble = cm.epoch_time("ensemble", 2, steps, 1e-5, 1e-9)
    assert ensemble == {"compute_s": pytest.approx(375 * t64), "communication_s": 0.0,
                        "seconds": pytest.approx(375 * t64)}
    assert cm.epoch_time("ensemble", 1024, steps, 1e-5, 1e-9)["compute_s"] == pytest.approx(1e-3 + 47 * 2e-4)
    ar = cm.allreduce_seconds(1e-5, 1e-9, 2, M)
    # 375 steps an epoch, 1,875 in 5: 117 averagings at k = 16 counted across epochs, and the last 3 steps leave
    # the weights apart: one more at the end.
    k16 = cm.epoch_time("local_sgd", 2, steps, 1e-5, 1e-9, k=16, epochs=5)
    assert k16["communication_s"] == pytest.approx((117 + 1) / 5 * ar)
    assert k16["compute_s"] == pytest.approx(375 * t64 + (117 + 1) / 5 * 5e-4)  # the averaging's copies
    assert cm.epoch_time("local_sgd", 2, steps, 1e-5, 1e-9, k="epoch")["communication_s"] == pytest.approx(ar)
    assert cm.epoch_time("one_shot", 2, steps, 1e-5, 1e-9, epochs=5)["communication_s"] == pytest.approx(ar / 5)
    assert cm.epoch_time("local_sgd", 1, steps, 1e-5, 1e-9, k=1)["communication_s"] == 0.0


def test_averaging_every_step_runs_one_step_per_call_into_the_graph():
    steps = steps_table()
    k1 = cm.epoch_time("local_sgd", 2, steps, 1e-5, 1e-9, k=1)
    assert k1["compute_s"] == pytest.approx(375 * (2e-3 + 64 * 2e-4) + 375 * 5e-4)
    assert cm.local_kind(1) == cm.local_kind(8) == "local_spe1"
    assert cm.local_kind(16) == cm.local_kind(32) == cm.local_kind("epoch") == "local"
    # One local step per epoch at N = 1,024: at k = 16 no averaging within the 5, one at the end of training.
    assert cm.averagings(16, 1, epochs=5) == pytest.approx(0.2)
    assert cm.averagings(16, 32, epochs=5) == 2
    assert cm.averagings(16, 12, epochs=5) == pytest.approx(4 / 5)  # 60 steps: at 16, 32, 48, and the end


def test_data_parallel_keeps_750_steps_and_its_slowest_rank_holds_ceil_64_over_n():
    steps = steps_table()
    ar = cm.allreduce_seconds(1e-5, 1e-9, 3, cm.GRADIENT_BYTES)
    three = cm.epoch_time("data_parallel", 3, steps, 1e-5, 1e-9)
    assert three["compute_s"] == pytest.approx(750 * (3e-3 + 22 * 2e-4))
    assert three["communication_s"] == pytest.approx(750 * ar)
    # Beyond 64 ranks the busiest rank still holds one image; the others join the Allreduce with none.
    many = cm.epoch_time("data_parallel", 1000, steps, 1e-5, 1e-9)
    assert many["compute_s"] == pytest.approx(750 * (3e-3 + 2e-4))
    assert cm.epoch_time("data_parallel", 1, steps, 1e-5, 1e-9)["communication_s"] == 0.0
    with pytest.raises(ValueError, match="unknown method"):
        cm.epoch_time("gossip", 2, steps, 1e-5, 1e-9)


def test_data_parallel_at_the_rank_batch_steps_through_the_largest_shard():
    steps = steps_table()
    ar = cm.allreduce_seconds(1e-5, 1e-9, 4, cm.GRADIENT_BYTES)
    # 12,000 images per rank at N = 4: 187 full batches and one of 32, each step an Allreduce of the gradient.
    four = cm.epoch_time("data_parallel_rank_batch", 4, steps, 1e-5, 1e-9)
    assert four["compute_s"] == pytest.approx(187 * (3e-3 + 64 * 2e-4) + (3e-3 + 32 * 2e-4))
    assert four["communication_s"] == pytest.approx(188 * ar)


def test_time_to_accuracy_prices_the_measured_epochs_up_to_the_first_that_reached_the_target():
    steps = steps_table()
    fit = {"alpha_s": 1e-5, "beta_s_per_byte": 1e-9}
    local = cm.epoch_time("local_sgd", 4, steps, 1e-5, 1e-9, k=16, epochs=3)["seconds"]
    synchronous = cm.epoch_time("data_parallel_rank_batch", 4, steps, 1e-5, 1e-9)["seconds"]
    assert cm.epoch_seconds("post_local_sgd", "16", 4, steps, 1e-5, 1e-9, epochs=3) == \
        pytest.approx([synchronous, local, local])
    assert cm.epochs_to([0.97, 0.985, 0.99], 0.98) == 2 and cm.epochs_to([0.97, 0.979], 0.98) is None
    history = pd.DataFrame([{"method": m, "period": p, "ranks": 4, "seed": s, "epoch": e, "delivered_val_accuracy": a}
                            for m, p, s, accuracies in (("post_local_sgd", "16", 0, (0.97, 0.981, 0.99)),
                                                        ("post_local_sgd", "16", 1, (0.981, 0.982, 0.985)),
                                                        ("ensemble_majority", None, 0, (0.9, 0.95, 0.97)),
                                                        ("weight_average_shared_start", "end", 0, (0.9, 0.98, 0.99)))
                            for e, a in enumerate(accuracies, start=1)])
    rows = cm.time_to_accuracy(history, steps, {"net": fit}, [0.98])
    post = rows[rows["method"] == "post_local_sgd"].set_index("seed")["seconds_to_target"]
    assert post[0] == pytest.approx(synchronous + local) and post[1] == pytest.approx(synchronous)
    one_shot = cm.epoch_time("one_shot", 4, steps, 1e-5, 1e-9, epochs=3)["seconds"]
    assert rows.set_index("method").loc["weight_average_shared_start", "seconds_to_target"] == \
        pytest.approx(2 * one_shot)
    stats = cm.time_to_accuracy_stats(rows).set_index("method")
    assert stats.loc["post_local_sgd", ["seeds", "reached", "epochs_mean"]].tolist() == [2, 2, 1.5]
    assert stats.loc["ensemble_majority", "reached"] == 0 and pd.isna(stats.loc["ensemble_majority", "seconds_mean"])
    with pytest.raises(ValueError, match="does not price 'single_shard'"):
        cm.epoch_seconds("single_shard", None, 4, steps, 1e-5, 1e-9)


def test_projection_and_crossovers():
    steps = steps_table()
    fits = {"slow": {"alpha_s": 50e-6, "beta_s_per_byte": 8e-9}, "fast": {"alpha_s": 50e-6, "beta_s_per_byte": 0.0}}
    table = cm.projection(steps, fits, ranks=[1, 2, 4, 8, 64, 1024])
    assert set(table["method"]) == {"ensemble", "one-shot averaging", "local_sgd k=1", "local_sgd k=16",
                                    "local_sgd k=epoch", "data-parallel"}
    crossing = cm.crossovers(table).set_index(["network", "method"])
    assert ("slow", "ensemble") not in crossing.index
    # Data-parallel at 1 Gbit/s-like β, per step: compute 3 ms + 0.2 ms per image of ceil(64/N); the Allreduce
    # 2·log2(N)·50 us + 2(N-1)/N · 2.99 ms. N = 4: 6.2 ms against 4.7; N = 8: 4.6 against 5.5, so communication
    # overtakes at 8. Steps: 15.8 ms alone, 9.7 ms at 64 (the least), 10.2 ms at 1024: never slower than alone.
    dp = crossing.loc[("slow", "data-parallel")]
    assert dp["comm_ge_compute_n"] == 8 and dp["best_n"] == 64 and dp["slower_than_one_rank_n"] is None
    assert dp["best_s"] == pytest.approx(750 * (3.2e-3 + 12 * 50e-6 + 2 * 63 / 64 * cm.GRADIENT_BYTES * 8e-9))
    one_shot = crossing.loc[("fast", "one-shot averaging")]
    # At 1024 a rank holds 47 images, less than one batch: outside every method's regime, and out of the crossovers.
    assert one_shot["best_n"] == 64 and one_shot["valid_up_to_n"] == 64 and one_shot["slower_than_one_rank_n"] is None
    # 12 local steps an epoch at 64, 60 in 5 epochs: still k = 16; at 1024 less than a batch.
    assert crossing.loc[("fast", "local_sgd k=16"), "valid_up_to_n"] == 64
    assert crossing.loc[("fast", "local_sgd k=1"), "valid_up_to_n"] == 64


def test_a_projected_point_outside_its_method_says_why():
    """Local SGD needs k local steps in all its epochs, counted across them as the workflow does (at N = 256 a
    rank has 3 an epoch, 15 in 5: k = 16 would average only at the end); data-parallel's global batch of 64
    leaves ranks beyond 64 without an image; no method trains on less than one batch per rank (N = 1,024: 47
    images)."""
    assert cm.regime("local_sgd", 128, 16) == ""  # 6 local steps an epoch, 30 in 5 epochs
    assert cm.regime("local_sgd", 256, 16) == "fewer than k = 16 local steps in 5 epochs"  # 3 an epoch
    assert cm.regime("local_sgd", 64, "epoch") == "" and cm.regime("local_sgd", 512, 1) == ""
    assert cm.regime("data_parallel", 64) == "" and "no image" in cm.regime("data_parallel", 128)
    assert cm.regime("ensemble", 750) == "" and cm.regime("ensemble", 1024) == "less than one batch per rank"


def test_measured_points_use_the_measured_allreduce_of_one_model():
    steps = steps_table()
    medians = pd.DataFrame([{"network": "1 Gbit/s", "ranks": 2, "bytes": M, "seconds": 0.004},
                            {"network": "1 Gbit/s", "ranks": 2, "bytes": 8, "seconds": 0.00003}])
    points = cm.measured_points(steps, medians).set_index("method")
    assert points.loc["data-parallel", "communication_s"] == pytest.approx(750 * 0.004)
    assert points.loc["local_sgd k=epoch", "communication_s"] == pytest.approx(0.004)
    with pytest.raises(ValueError, match="no Allreduce of 373288 bytes"):
        cm.measured_points(steps, medians[medians["bytes"] == 8])


def test_a_real_jobs_records_against_the_model():
    fit = {"alpha_s": 20e-6, "beta_s_per_byte": 8e-9}
    per_call = cm.allreduce_seconds(20e-6, 8e-9, 2, M)
    rank = {"allreduce_count": 100, "allreduce_seconds": 100 * per_call, "allreduce_bytes": 100 * M,
            "fit_seconds": 10.0}
    table = cm.check_records([rank, dict(rank, allreduce_seconds=200 * per_call)], fit)
    assert table["payload_bytes"].tolist() == [M, M]
    assert table["model_over_measured"].tolist() == pytest.approx([1.0, 0.5])
    assert table["allreduce_share_of_fit"][0] == pytest.approx(100 * per_call / 10.0)
    with pytest.raises(KeyError, match="allreduce_bytes"):
        cm.check_records([{"allreduce_count": 1, "allreduce_seconds": 1.0, "fit_seconds": 1.0}], fit)


# --- the shaped links, measured on a 2-node cluster ----------------------------------------------------------------

RATE = 1e9
MESSAGE = 4 * 2**20
CALLS = 10
# The shaped bound, loosely: TCP, IP and Ethernet headers and the wire overhead only add to the payload's time, and a
# token bucket releases at most 64 KB ahead of its rate (1.6 %); 0.8 leaves room for timer slack, not for a missing
# shaper.
SAFETY = 0.8


@pytest.fixture
def two_nodes(tmp_path):
    reason = slurm_cluster.unavailable_reason(nodes=True) or slurm_cluster.shaping_unavailable()
    if reason:
        skip_unless_slurm(reason)
    cluster = slurm_cluster.NodesCluster(tmp_path / "cluster", nodes=2, cpus=1, memory_mb=2000)
    with slurm_cluster.running(cluster) as up:
        yield up


@pytest.mark.workflow
def test_an_allreduce_over_links_shaped_to_1_gbit_takes_what_the_rate_allows(two_nodes, tmp_path):
    """A 4 MB Allreduce at N = 2 across two nodes: unshaped, then with every link shaped to 1 Gbit/s. Shaped, no
    call may beat the rate (the ring's 2(N-1)/N of the payload per rank, at 1 Gbit/s); unshaped, the fastest call
    must: so the shaping is what slowed it. Each rank's eth0 must have sent at least the payload."""
    network = load("network")
    bound = SAFETY * 2 * (2 - 1) / 2 * MESSAGE * 8 / RATE
    free = network.run_probe(two_nodes, 2, [MESSAGE], [CALLS], tmp_path / "unshaped.json", timeout=120)
    two_nodes.network.shape(RATE)
    for k in (1, 2):
        inside, outside = two_nodes.network.qdiscs(k)
        assert [q["kind"] for q in inside + outside] == ["tbf", "tbf"]
        assert inside[0]["options"]["rate"] == outside[0]["options"]["rate"] == RATE / 8
    shaped = network.run_probe(two_nodes, 2, [MESSAGE], [CALLS], tmp_path / "shaped.json", timeout=120)
    two_nodes.network.unshape()
    assert not any(q["kind"] == "tbf" for k in (1, 2) for side in two_nodes.network.qdiscs(k) for q in side)
    [free], [shaped] = free["sizes"], shaped["sizes"]
    print(f"\n4 MiB Allreduce, 2 nodes: unshaped fastest {1e3 * min(free['seconds']):.1f} ms, median "
          f"{1e3 * sorted(free['seconds'])[CALLS // 2]:.1f} ms; at 1 Gbit/s fastest {1e3 * min(shaped['seconds']):.1f} "
          f"ms, median {1e3 * sorted(shaped['seconds'])[CALLS // 2]:.1f} ms (bound {1e3 * bound:.1f} ms); "
          f"tx per rank and call {[tx // CALLS for tx in shaped['tx_bytes']]} B, unshaped "
          f"{[tx // CALLS for tx in free['tx_bytes']]} B")
    assert min(shaped["seconds"]) >= bound
    assert min(free["seconds"]) < bound / 1.5
    assert all(tx >= CALLS * MESSAGE for tx in shaped["tx_bytes"] + free["tx_bytes"])

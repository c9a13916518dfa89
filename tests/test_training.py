"""The training stage: the model, threads and launchers, the input pipeline, fit, the data-parallel building
blocks and its gradient, and the rank record."""

import json
import os
import signal
import subprocess
import textwrap

import numpy as np
import pytest

from conftest import BIN, ROOT
from mpi_ensemble import checkpoint, collective, data_parallel, model, provenance, records, runtime, training

# --- the model ------------------------------------------------------------------------------------------------


def test_parameter_count_matches_paper():
    assert model.parameter_count() == 93322


def test_keras_model_matches_architecture():
    import keras

    net = model.build_model(keras)
    assert net.count_params() == 93322
    assert [layer.__class__.__name__ for layer in net.layers] == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "Flatten", "Dense", "Dense"
    ]
    assert net.output_shape == (None, 10)


def test_training_flops_count_what_runs():
    # forward: conv 0.389 + 4.461 + 0.664 MFLOP, dense 0.074 + 0.001: 5.59 MFLOP
    assert model.layer_flops() == [389376, 4460544, 663552, 73728, 1280]
    assert model.forward_flops() == 5588480
    # forward + weight gradients (2 x forward) + input gradients of every layer but the first conv, whose input is
    # the image: 3 x forward would count that one too (389,376 FLOP, 2.4 % too many)
    assert model.training_flops_per_image() == 3 * 5588480 - 389376 == 16376064


def initial_weights(keras, seed, rank):
    settings = {"batch_size": 64}
    return training.weights_sha256(training.initial_model(keras, seed, rank, model.IMAGE_SHAPE, settings).get_weights())


def test_no_two_seed_rank_pairs_start_from_the_same_weights(monkeypatch):
    """Seeds 0-2, ranks 0-3 (world sizes 1-4): twelve different starts. With the initial weights seeded by
    seed + rank, (s, r + 1) and (s + 1, r) started alike, so ensembles of neighbouring seeds shared members."""
    import keras

    pairs = [(seed, rank) for seed in range(3) for rank in range(4)]
    starts = {pair: initial_weights(keras, *pair) for pair in pairs}
    assert len(set(starts.values())) == len(pairs)
    assert initial_weights(keras, 1, 2) == starts[(1, 2)]  # and each pair always starts alike
    monkeypatch.setattr(training, "init_seed", lambda seed, rank: seed + rank)  # the old derivation: caught
    assert initial_weights(keras, 0, 1) == initial_weights(keras, 1, 0)


def test_output_layer_computes_in_float32_under_mixed_bfloat16():
    """Keras' mixed-precision rule: the softmax that feeds the loss and the saved probabilities stays float32."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        net = model.build_model(keras)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert net.layers[0].compute_dtype == "bfloat16"  # the convolutions do compute in bfloat16
    assert net.layers[-1].compute_dtype == "float32" and net.layers[-1].dtype_policy.name == "float32"
    probs = net.predict(np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32), verbose=0)
    assert probs.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: its rows sum to 1 within ~4e-3; float32 within ~1e-6.
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


# --- threads, binding, launchers, precision -------------------------------------------------------------------


@pytest.mark.parametrize("cores, ranks, expected", [(2, 1, 2), (2, 2, 1), (2, 8, 1), (16, 4, 4), (16, 5, 3)])
def test_threads_per_rank(cores, ranks, expected):
    assert runtime.threads_per_rank(cores, ranks) == expected


def test_oversubscribed_ranks():
    assert runtime.oversubscribed_ranks([1, 2, 3, 8], lambda n: max(1, 2 // n), 2) == [3, 8]


def test_binding_flags_by_launcher():
    assert runtime.binding_args("mpich", 2, True) == ["-bind-to", "core:2"]
    assert runtime.binding_args("openmpi", 3, True)[:4] == ["--map-by", "slot:PE=3", "--bind-to", "core"]
    assert runtime.binding_args("mpich", 1, False) == ["-bind-to", "none"]
    assert "--oversubscribe" in runtime.binding_args("openmpi", 1, False)


def test_launch_prefix_for_each_kind_of_launcher():
    mpiexec = str(BIN / "mpiexec")
    assert runtime.launch_prefix("mpiexec", 2, 1, True, str(BIN)) == [mpiexec, "-n", "2", "-bind-to", "core:1"]
    assert runtime.launch_prefix("mpiexec -v", 3, 1, False, str(BIN)) == [mpiexec, "-n", "3", "-bind-to", "none", "-v"]
    assert runtime.launch_prefix("srun --mpi=pmi2", 2, 4, True) == ["srun", "--mpi=pmi2", "-n", "2", "--cpus-per-task=4",
                                                                  "--kill-on-bad-exit=1"]
    assert runtime.launch_prefix("", 1, 2, True) == []
    with pytest.raises(ValueError, match="only run 1 rank"):
        runtime.launch_prefix("", 2, 1, True)


def test_launcher_flavour_from_version_text():
    assert runtime.flavour_from_version("HYDRA build details:\n    Version: 5.0.2") == "mpich"
    assert runtime.flavour_from_version("mpiexec (Open MPI) 4.1.5") == "openmpi"
    assert runtime.flavour_from_version("something else") == "unknown"


def test_parse_threads():
    assert runtime.parse_threads("all") is None
    assert runtime.parse_threads("3") == 3
    with pytest.raises(ValueError, match="positive"):
        runtime.parse_threads("0")


def test_missing_launcher_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="make venv"):
        runtime.find_launcher("mpiexec", search_path=str(tmp_path))


def test_real_pip_mpiexec_is_mpich():
    launcher = runtime.find_launcher("mpiexec", search_path=str(BIN))
    assert runtime.launcher_flavour(launcher) == "mpich"


def test_precision_check_refuses_bf16_without_native_support():
    assert runtime.check_precision("float32", set()) == "float32"
    assert runtime.check_precision("mixed_bfloat16", {"avx2", "avx512_bf16"}) == "mixed_bfloat16"
    assert runtime.check_precision("mixed_bfloat16", {"amx_bf16"}) == "mixed_bfloat16"
    with pytest.raises(ValueError, match="native bfloat16.*precision: float32"):
        runtime.check_precision("mixed_bfloat16", {"avx2", "avx512f"})
    with pytest.raises(ValueError, match="one of float32, mixed_bfloat16"):
        runtime.check_precision("float16", {"avx512_bf16"})


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\nbugs\t: none\n")
    assert runtime.cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert runtime.cpu_flags(tmp_path / "missing") == set()
    assert provenance.isa_flags({"fpu", "avx2", "fma", "amx_tile", "sse4_2", "aes"}) == ["amx_tile", "avx2", "fma", "sse4_2"]


# --- the input pipeline and fit -------------------------------------------------------------------------------


def test_input_pipeline_follows_the_epoch_order_and_keeps_pairs():
    x = np.arange(10, dtype=np.float32).reshape(10, 1) * 10
    y = np.arange(10, dtype=np.int64)
    for epoch in range(2):
        order = training.epoch_order(10, seed=3, rank=1, epoch=epoch)
        batches = [(bx.numpy(), by.numpy()) for bx, by in training.tf_dataset(x, y, batch_size=4, order=order)]
        assert [len(by) for _, by in batches] == [4, 4, 2]  # a last partial batch, as Keras' batch_size
        xs, ys = np.concatenate([bx for bx, _ in batches]), np.concatenate([by for _, by in batches])
        np.testing.assert_array_equal(xs[:, 0], ys * 10)  # images stay with their labels
        np.testing.assert_array_equal(ys, order)  # exactly the epoch's order: every image once
    plain = [by.numpy() for _, by in training.tf_dataset(x, y, batch_size=4)]
    np.testing.assert_array_equal(np.concatenate(plain), y)  # validation: in order


def test_epoch_order_is_a_pure_function_of_seed_rank_and_epoch():
    """What lets a resumed job see the orders the uninterrupted one saw: the same (seed, rank, epoch) always gives
    the same permutation, any other key another one."""
    first = training.epoch_order(500, 0, 1, 2)
    assert sorted(first) == list(range(500))
    np.testing.assert_array_equal(first, training.epoch_order(500, 0, 1, 2))
    for key in ((1, 1, 2), (0, 0, 2), (0, 1, 3)):
        assert not np.array_equal(first, training.epoch_order(500, *key)), key


def test_input_pipeline_is_not_autotuned():
    # tf.data's autotuner left a 1-thread rank's core idle for a third of fit(); the fix must stay in place.
    x, y = np.zeros((8, 1), dtype=np.float32), np.zeros(8, dtype=np.int64)
    for order in (None, np.arange(8)[::-1]):
        assert training.tf_dataset(x, y, batch_size=4, order=order).options().autotune.enabled is False


def test_fit_records_every_epoch_time_and_the_rank_record_carries_it():
    import time

    import keras  # not import_keras: another test in this process may have started TensorFlow's thread pools

    x = np.random.default_rng(0).random((40, 28, 28, 1), dtype=np.float32)
    y = np.arange(40, dtype=np.int64) % 10
    settings = {"epochs": 3, "batch_size": 16, "validation_split": 0.25, "precision": "float32"}
    began = time.perf_counter()
    _, facts = training.fit(keras, x, y, seed=0, settings=settings)
    spent = time.perf_counter() - began - facts["warm_up_seconds"]  # building the model, the epochs, nothing else
    assert len(facts["epoch_seconds"]) == 3 and all(s > 0 for s in facts["epoch_seconds"])
    # The clock runs over the epochs, not beside them: they are most of the call once the tracing is done.
    assert 0.5 * spent < sum(facts["epoch_seconds"]) <= facts["fit_seconds"] <= spent
    assert facts["train_images"] == 30 and facts["validation_images"] == 10
    record = records.rank_record("sequential", 0, 1, 0, settings, 2, 2, time.perf_counter(), facts)
    assert record["precision"] == "float32" and record["oversubscribed"] is False
    assert record["peak_rss_mib"] > 50 and record["thread_settings"]["threads"] == 2
    assert records.rank_record("x", 0, 3, 0, settings, 1, 2, time.perf_counter(), facts)["oversubscribed"] is True


def test_weights_checksum_sees_one_ulp():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, dtype=np.float32)]
    nudged = [arrays[0], np.nextafter(arrays[1], np.float32(2))]
    assert training.weights_sha256(arrays) == training.weights_sha256([a.copy() for a in arrays])
    assert training.weights_sha256(arrays) != training.weights_sha256(nudged)


# --- data-parallel: the building blocks and the gradient -------------------------------------------------------


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


def test_flatten_roundtrip_and_replica_check():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, dtype=np.float32)]
    back = collective.unflatten(collective.flatten(arrays), [a.shape for a in arrays])
    for a, b in zip(arrays, back):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="buffer holds"):
        collective.unflatten(collective.flatten(arrays), [(2, 3)])
    collective.check_identical(["a", "a", "a"])
    with pytest.raises(RuntimeError, match=r"rank\(s\) \[2\]"):
        collective.check_identical(["a", "a", "b"])


def gradient_check(ranks, tmp_path, *flags):
    out = tmp_path / f"grad{ranks}{''.join(flags)}.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run([str(BIN / "mpiexec"), "-n", str(ranks), str(BIN / "python"),
                          str(ROOT / "tests" / "gradient_check.py"), str(out), *flags],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return json.loads(out.read_text())


def test_allreduced_gradient_is_the_global_batch_gradient(tmp_path):
    """One rank: the allreduce path is the single-process computation, bit for bit. Two ranks: the same mean
    gradient up to float32 summation order (relative 1e-5 of the largest component), the same on every rank, and
    at the right scale; dividing by the local count instead of the global batch (2x too large) is caught."""
    one = gradient_check(1, tmp_path)
    assert one["bitwise_equal"] and one["max_abs_difference"] == 0.0
    two = gradient_check(2, tmp_path)
    assert two["same_on_every_rank"]
    assert two["max_abs_difference"] <= 1e-5 * two["max_abs_gradient"], two
    assert two["norm_ratio"] == pytest.approx(1.0, abs=1e-5)
    wrong = gradient_check(2, tmp_path, "--local-scale")
    assert wrong["norm_ratio"] == pytest.approx(2.0, rel=1e-4)
    assert wrong["max_abs_difference"] > 1e-5 * wrong["max_abs_gradient"]


@pytest.mark.parametrize("ranks, every", [(2, 1), (3, 4)])
def test_local_sgd_is_the_simulated_computation(tmp_path, ranks, every):
    """With plain SGD, local SGD's weights equal those of one process that steps N models on the same batches and
    averages their weights at the same points (float32 summation order apart): k = 1 (averaging every step, which
    for plain SGD is gradient averaging, but for the last rank's extra step) and k = 4 with 4 steps per call into
    the graph, on uneven shards with a partial last batch and a validation part, over two epochs (the period runs
    on over an epoch's end). Averaging every k + 1 steps is another computation, and the comparison sees it."""
    out = tmp_path / "local_sgd.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run([str(BIN / "mpiexec"), "-n", str(ranks), str(BIN / "python"),
                          str(ROOT / "tests" / "local_sgd_check.py"), str(every), str(out)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    check = json.loads(out.read_text())
    print(f"\nlocal SGD k={every} against its simulation, {ranks} ranks: {check}")
    assert check["steps_per_execution"] == every and check["common_steps"] == 4
    assert check["max_abs_difference"] <= 1e-5 * check["max_abs_weight"]
    assert check["control_difference"] > 100 * max(check["max_abs_difference"], 1e-7)


# --- checkpoints, progress and history ------------------------------------------------------------------------

FINGERPRINT = {"method": "sequential", "epochs": 5, "batch_size": 32, "shard": [0, 600], "data_sha256": "ab"}


def saved_state(epoch):
    weights = [np.full((2, 3), epoch, dtype=np.float32), np.arange(4, dtype=np.float32)]
    return checkpoint.State(epoch, weights, [np.int64(epoch * 10), np.ones(3, dtype=np.float32)],
                            [{"epoch": e + 1, "loss": 1.0 / (e + 1)} for e in range(epoch)])


def test_checkpoint_round_trip_keeps_only_the_latest_epoch(tmp_path):
    store = checkpoint.Store(tmp_path / "rank0", FINGERPRINT, log=lambda text: None)
    assert store.load() is None
    store.put(saved_state(1))
    store.put(saved_state(2))
    assert [p.name for p in store.epochs()] == ["epoch2"]
    state = store.load()
    assert state.epoch == 2 and [row["epoch"] for row in state.history] == [1, 2]
    for got, want in zip(state.weights + state.optimizer, saved_state(2).weights + saved_state(2).optimizer):
        np.testing.assert_array_equal(got, want)
    store.remove()
    assert not (tmp_path / "rank0").exists()


def test_a_store_that_keeps_two_epochs_can_go_back_one(tmp_path):
    """Ranks that resume together (local SGD) keep two epochs: a rank stopped while writing epoch 3 leaves the others
    with epoch 3 and itself with epoch 2, and all of them can then resume from epoch 2."""
    store = checkpoint.Store(tmp_path / "rank0", FINGERPRINT, keep=2, log=lambda text: None)
    for epoch in (1, 2, 3):
        store.put(saved_state(epoch))
    assert store.saved_epochs() == [3, 2] and [p.name for p in store.epochs()] == ["epoch3", "epoch2"]
    older = store.load(2)
    assert older.epoch == 2 and np.array_equal(older.weights[0], saved_state(2).weights[0])
    (store.folder / "epoch3" / checkpoint.STATE).write_bytes(b"cut short")
    assert checkpoint.Store(tmp_path / "rank0").saved_epochs() == [2]  # read-only: nothing deleted
    assert (store.folder / "epoch3").exists()


def test_damaged_checkpoint_is_discarded_never_trusted(tmp_path):
    messages = []
    store = checkpoint.Store(tmp_path / "rank0", FINGERPRINT, log=messages.append)
    path = store.put(saved_state(2))
    blob = bytearray((path / checkpoint.STATE).read_bytes())
    blob[len(blob) // 2] ^= 1  # one bit of one weight
    (path / checkpoint.STATE).write_bytes(bytes(blob))
    assert store.load() is None
    assert "discarded: damaged (state.npz has SHA-256" in messages[-1] and str(path) in messages[-1]
    assert not path.exists()
    path = store.put(saved_state(3))
    (path / checkpoint.MANIFEST).write_text('{"epoch": 3, "state_sha')  # cut short
    assert store.load() is None and "discarded: damaged (unreadable" in messages[-1]


def test_checkpoint_from_other_settings_is_discarded_naming_the_difference(tmp_path):
    messages = []
    checkpoint.Store(tmp_path / "rank0", {**FINGERPRINT, "epochs": 3}, log=messages.append).put(saved_state(2))
    store = checkpoint.Store(tmp_path / "rank0", FINGERPRINT, log=messages.append)
    assert store.load() is None
    assert messages == [f"checkpoint {tmp_path / 'rank0' / 'epoch2'} discarded: made with other settings "
                        "(epochs: checkpoint 3, this job 5)"]
    assert checkpoint.differences({**FINGERPRINT, "shard": [0, 300], "data_sha256": "cd"}, FINGERPRINT) == [
        "data_sha256: checkpoint 'cd', this job 'ab'", "shard: checkpoint [0, 300], this job [0, 600]"]


def test_a_writer_killed_mid_checkpoint_leaves_the_previous_epoch(tmp_path):
    """SIGTERM (what SLURM sends before the kill) to a process halfway through writing epoch 2: epoch 1 stays
    whole and loads; the half-written temporary is cleared away by the next load."""
    writer = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from mpi_ensemble import atomic, checkpoint
        store = checkpoint.Store({str(tmp_path / 'rank0')!r}, {FINGERPRINT!r})
        weights = [np.ones((2, 3), dtype=np.float32)]
        store.put(checkpoint.State(1, weights, [np.int64(10)], []))
        def stall(path, obj):  # state.npz written, the manifest never is
            print("half written", flush=True)
            time.sleep(600)
        atomic.write_json = stall
        store.put(checkpoint.State(2, weights, [np.int64(20)], []))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([str(BIN / "python"), "-c", writer], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "half written"
    assert [p.name for p in (tmp_path / "rank0").iterdir() if p.name.startswith(".epoch2.tmp")]  # really mid-write
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    state = checkpoint.Store(tmp_path / "rank0", FINGERPRINT, log=lambda text: None).load()
    assert state.epoch == 1 and int(state.optimizer[0]) == 10
    assert sorted(p.name for p in (tmp_path / "rank0").iterdir()) == ["epoch1"]


def test_resumed_fit_ends_with_the_same_weights_bit_for_bit(tmp_path):
    """Stopped after epoch 2 of 4 (an exception from a callback, as a kill would), resumed from the checkpoint:
    the final weights equal an uninterrupted fit's. A resume that restored the weights but not Adam's moments and
    iteration count would differ."""
    import keras

    x = np.random.default_rng(1).random((60, 28, 28, 1), dtype=np.float32)
    y = np.arange(60, dtype=np.int64) % 10
    settings = {"epochs": 4, "batch_size": 16, "validation_split": 0.25, "precision": "float32"}
    full, _ = training.fit(keras, x, y, seed=0, settings=settings)

    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    store = checkpoint.Store(tmp_path / "rank0", FINGERPRINT, log=lambda text: None)
    with pytest.raises(KeyboardInterrupt):
        training.fit(keras, x, y, seed=0, settings=settings, callbacks=[Stop()], store=store)
    assert [p.name for p in store.epochs()] == ["epoch2"]
    resumed, facts = training.fit(keras, x, y, seed=0, settings=settings, store=store)
    assert facts["resumed_from_epoch"] == 2 and len(facts["epoch_seconds"]) == 2
    assert [row["from_checkpoint"] for row in facts["history_rows"]] == [True, True, False, False]
    assert training.weights_sha256(resumed.get_weights()) == training.weights_sha256(full.get_weights())
    assert int(resumed.optimizer.iterations.numpy()) == int(full.optimizer.iterations.numpy()) == 4 * 3

    fresh = checkpoint.Store(tmp_path / "other", FINGERPRINT, log=lambda text: None)
    with pytest.raises(KeyboardInterrupt):
        training.fit(keras, x, y, seed=0, settings=settings, callbacks=[Stop()], store=fresh)
    state = fresh.load()
    state.optimizer = [np.zeros_like(v) for v in state.optimizer]  # weights kept, Adam's state lost
    fresh.put(state)
    wrong, _ = training.fit(keras, x, y, seed=0, settings=settings, store=fresh)
    assert training.weights_sha256(wrong.get_weights()) != training.weights_sha256(full.get_weights())


def test_resume_in_another_environment_is_recorded_as_not_bitwise(tmp_path):
    """A checkpoint from another thread count (or kernels, TensorFlow, CPU) resumes, since the settings match, but
    the facts say the model is not bitwise the uncut run's, naming the change; the same environment resumes
    exactly."""
    import keras

    x = np.random.default_rng(2).random((40, 28, 28, 1), dtype=np.float32)
    y = np.arange(40, dtype=np.int64) % 10
    settings = {"epochs": 3, "batch_size": 16, "validation_split": 0.25, "precision": "float32"}
    one_thread = {"threads": 1, "cpu_tuning": "auto", "onednn": True, "tensorflow": "2.21.0", "isa_flags": ["avx2"]}

    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    messages = []
    for folder, env, exact in (("same", one_thread, True), ("moved", {**one_thread, "threads": 2}, False)):
        first = checkpoint.Store(tmp_path / folder, FINGERPRINT, one_thread, log=messages.append)
        with pytest.raises(KeyboardInterrupt):
            training.fit(keras, x, y, seed=0, settings=settings, callbacks=[Stop()], store=first)
        again = checkpoint.Store(tmp_path / folder, FINGERPRINT, env, log=messages.append)
        _, facts = training.fit(keras, x, y, seed=0, settings=settings, store=again)
        assert facts["resumed_from_epoch"] == 1 and facts["resumed_exactly"] is exact
        record = records.rank_record("sequential", 0, 1, 0, settings, 1, 2, 0.0, facts)
        assert records.result_record("sequential", [record], {"accuracy": 0.5})["resumed_exactly"] is exact
    assert facts["resume_changes"] == ["threads: checkpoint 1, this job 2"]
    assert messages[-1].endswith("resuming after epoch 1; made in another environment (threads: checkpoint 1, "
                                 "this job 2), so the result is not bitwise the uncut run's")


def test_progress_line_and_history_csv():
    row = training.epoch_row(1, 2, 5, {"loss": 0.25, "accuracy": 0.9, "val_loss": 0.3, "val_accuracy": 0.875},
                             2.0, 4800)
    assert training.progress_line("ensemble_member rank 1/2", row) == (
        "ensemble_member rank 1/2 epoch 3/5: loss 0.2500 accuracy 0.9000 val_loss 0.3000 val_accuracy 0.8750, "
        "2.00 s, 2400 images/s")
    text = training.history_csv([{**row, "from_checkpoint": True}, row])
    # an ensemble member's delivered accuracy is the ensemble rule's to vote: empty here
    assert text.splitlines() == [",".join(training.HISTORY_COLUMNS), "1,3,5,0.25,0.9,0.3,0.875,,2,2400,True",
                                 "1,3,5,0.25,0.9,0.3,0.875,,2,2400,False"]


def test_stale_mpich_segments_are_those_no_process_maps(tmp_path):
    """What a requeued SLURM job must not attach to: segments its killed ranks left. One that a live process maps
    (here, this one) is in use and stays; other files are not MPICH's."""
    import mmap

    for name in ("mpich_shm_2a_0", "mpich_vci_2a_0", "mpich_shm_3b_0", "other_file"):
        (tmp_path / name).write_bytes(b"\0" * 4096)
    with open(tmp_path / "mpich_shm_3b_0", "r+b") as handle, mmap.mmap(handle.fileno(), 4096):
        assert [p.name for p in runtime.stale_mpich_segments(tmp_path)] == ["mpich_shm_2a_0", "mpich_vci_2a_0"]
        assert [p.name for p in runtime.remove_stale_mpich_segments(tmp_path)] == ["mpich_shm_2a_0", "mpich_vci_2a_0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mpich_shm_3b_0", "other_file"]


def test_a_mapped_file_whose_name_is_not_utf8_neither_stops_the_clean_up_nor_loses_its_segment(tmp_path):
    """Any process of the machine may map a file whose name is not UTF-8; the clean-up before every launch reads
    all their maps and must still tell which segments are in use."""
    import mmap

    odd = os.fsencode(tmp_path) + b"/mpich_shm_\xff_0"
    with open(odd, "wb") as handle:
        handle.write(b"\0" * 4096)
    (tmp_path / "mpich_vci_2a_0").write_bytes(b"\0" * 4096)
    with open(odd, "r+b") as handle, mmap.mmap(handle.fileno(), 4096):
        assert [p.name for p in runtime.remove_stale_mpich_segments(tmp_path)] == ["mpich_vci_2a_0"]
    assert os.listdir(os.fsencode(tmp_path)) == [b"mpich_shm_\xff_0"]


def test_a_segment_that_goes_away_while_listed_is_not_stale_and_stops_nothing(tmp_path):
    """Other jobs' ranks remove their segments at any moment, also between the listing and the look at one."""
    (tmp_path / "mpich_shm_2a_0").write_bytes(b"\0")
    (tmp_path / "mpich_shm_4c_0").symlink_to(tmp_path / "mpich_shm_2a_0")
    assert not runtime.owned_file(tmp_path / "mpich_shm_9z_0")
    assert runtime.owned_file(tmp_path / "mpich_shm_2a_0") and not runtime.owned_file(tmp_path / "mpich_shm_4c_0")
    assert [p.name for p in runtime.stale_mpich_segments(tmp_path, mapped=set())] == ["mpich_shm_2a_0"]


def test_one_learning_rate_rule_scales_by_the_images_an_update_averages():
    assert model.learning_rate("none", 64 * 8, 64) == model.BASE_LEARNING_RATE == 0.001
    assert model.learning_rate("linear", 64 * 8, 64) == pytest.approx(0.008)
    assert model.learning_rate("sqrt", 64 * 4, 64) == pytest.approx(0.002)
    assert model.learning_rate("linear", 64, 64) == 0.001  # an update of batch_size images: the paper's rate
    with pytest.raises(ValueError, match="learning_rate_scaling must be one of none, linear, sqrt"):
        model.learning_rate("cubic", 64, 64)


def test_the_vote_sample_is_held_out_by_every_rank_and_evenly_spread():
    from mpi_ensemble import data

    sample = data.vote_sample(1000, 3, 0.2, size=60)
    held_out = set()
    for r in range(3):
        start, stop = data.shard_range(1000, 3, r)
        held_out |= set(range(start + data.validation_split_index(stop - start, 0.2), stop))
    assert len(sample) == 60 and set(sample) <= held_out and len(set(sample)) == 60
    assert {r for r in range(3) if any(data.shard_range(1000, 3, r)[0] <= i < data.shard_range(1000, 3, r)[1]
                                       for i in sample)} == {0, 1, 2}  # every shard's part is in it
    assert list(data.vote_sample(1000, 3, 0.2, size=5000)) == sorted(held_out)  # fewer than asked: all of them


def test_local_sgd_counts_its_period_across_epochs():
    from mpi_ensemble import local_sgd

    # 19 common steps an epoch, k = 16, 5 epochs: 95 local steps, 5 averagings (every 16, not 5 x 1 with the count
    # starting again each epoch, which made the real period 19)
    assert local_sgd.averagings(16, 19, 5) == 5 and local_sgd.averagings("epoch", 19, 5) == 5
    assert local_sgd.averagings(None, 19, 5) == 0 and local_sgd.averagings(1, 19, 5) == 95


def test_tracing_before_the_clock_changes_no_bit_of_the_model(monkeypatch):
    """The training and validation functions are traced on one batch before the first epoch's clock starts, and the
    model is put back: the weights after training are bitwise those of a run that traces in its first epoch."""
    import keras  # not import_keras: another test in this process may have started TensorFlow's thread pools

    x = np.random.default_rng(1).random((80, 28, 28, 1), dtype=np.float32)
    y = np.arange(80, dtype=np.int64) % 10
    settings = {"epochs": 2, "batch_size": 16, "validation_split": 0.25, "precision": "float32"}
    warmed, facts = training.fit(keras, x, y, seed=0, settings=settings)
    monkeypatch.setattr(training.KerasEpochs, "warm_up", lambda self: None)
    cold, cold_facts = training.fit(keras, x, y, seed=0, settings=settings)
    assert training.weights_sha256(warmed.get_weights()) == training.weights_sha256(cold.get_weights())
    assert facts["warm_up_seconds"] > 0 and len(facts["epoch_seconds"]) == len(cold_facts["epoch_seconds"]) == 2

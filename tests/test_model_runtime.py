import pytest

from mpi_ensemble import model, runtime


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


def test_training_flops_per_image():
    # conv 0.39 + 4.46 + 0.66 MFLOP, dense 0.075: 5.59 MFLOP forward, x3 for training
    assert model.forward_flops() == 5588480
    assert model.training_flops_per_image() / 1e6 == pytest.approx(16.8, abs=0.1)


@pytest.mark.parametrize("cores, ranks, expected", [(2, 1, 2), (2, 2, 1), (2, 8, 1), (16, 4, 4), (16, 5, 3)])
def test_threads_per_rank(cores, ranks, expected):
    assert runtime.threads_per_rank(cores, ranks) == expected


def test_binding_flags_by_launcher():
    assert runtime.binding_args("mpich", 2, True) == ["-bind-to", "core:2"]
    assert runtime.binding_args("openmpi", 3, True)[:4] == ["--map-by", "slot:PE=3", "--bind-to", "core"]
    assert runtime.binding_args("mpich", 1, False) == ["-bind-to", "none"]
    assert "--oversubscribe" in runtime.binding_args("openmpi", 1, False)


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
    launcher = runtime.find_launcher("mpiexec", search_path=str(__import__("conftest").BIN))
    assert runtime.launcher_flavour(launcher) == "mpich"


def test_precision_check_refuses_bf16_without_native_support():
    from mpi_ensemble import training

    assert training.check_precision("float32", set()) == "float32"
    assert training.check_precision("mixed_bfloat16", {"avx2", "avx512_bf16"}) == "mixed_bfloat16"
    assert training.check_precision("mixed_bfloat16", {"amx_bf16"}) == "mixed_bfloat16"
    with pytest.raises(ValueError, match="native bfloat16.*precision: float32"):
        training.check_precision("mixed_bfloat16", {"avx2", "avx512f"})
    with pytest.raises(ValueError, match="one of float32, mixed_bfloat16"):
        training.check_precision("float16", {"avx512_bf16"})


def test_cpu_flags_reads_the_flags_line(tmp_path):
    from mpi_ensemble import training

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\nbugs\t: none\n")
    assert training.cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert training.cpu_flags(tmp_path / "missing") == set()


def test_input_pipeline_shuffles_every_epoch_and_keeps_pairs():
    import numpy as np

    from mpi_ensemble import training

    x = np.arange(10, dtype=np.float32).reshape(10, 1) * 10
    y = np.arange(10, dtype=np.int64)
    ds = training.tf_dataset(x, y, batch_size=4, seed=3)
    epochs = [[(bx.numpy(), by.numpy()) for bx, by in ds] for _ in range(2)]
    for batches in epochs:
        assert [len(by) for _, by in batches] == [4, 4, 2]  # a last partial batch, as Keras' batch_size
        xs, ys = np.concatenate([bx for bx, _ in batches]), np.concatenate([by for _, by in batches])
        np.testing.assert_array_equal(xs[:, 0], ys * 10)  # images stay with their labels
        assert sorted(ys) == list(range(10))  # every image once per epoch
    orders = [np.concatenate([by for _, by in batches]) for batches in epochs]
    assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch
    plain = [by.numpy() for _, by in training.tf_dataset(x, y, batch_size=4)]
    np.testing.assert_array_equal(np.concatenate(plain), y)  # validation: in order


def test_input_pipeline_is_not_autotuned():
    # tf.data's autotuner left a 1-thread rank's core idle for a third of fit(); the fix must stay in place.
    import numpy as np

    from mpi_ensemble import training

    x, y = np.zeros((8, 1), dtype=np.float32), np.zeros(8, dtype=np.int64)
    for seed in (None, 1):
        assert training.tf_dataset(x, y, batch_size=4, seed=seed).options().autotune.enabled is False


def test_fit_records_every_epoch_time():
    import numpy as np

    from mpi_ensemble import training

    import keras  # not import_keras: another test in this process may have started TensorFlow's thread pools

    x = np.random.default_rng(0).random((40, 28, 28, 1), dtype=np.float32)
    y = np.arange(40, dtype=np.int64) % 10
    settings = {"epochs": 3, "batch_size": 16, "validation_split": 0.25}
    _, facts = training.fit(keras, x, y, seed=0, settings=settings)
    assert len(facts["epoch_seconds"]) == 3 and all(s > 0 for s in facts["epoch_seconds"])
    assert sum(facts["epoch_seconds"]) <= facts["fit_seconds"]

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
